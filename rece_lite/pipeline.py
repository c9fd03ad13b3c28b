"""Loading a Stable Diffusion 1.x pipeline and encoding prompts.

``load_pipeline("tiny")`` gives the embedded miniature model; any hub id or
local path of an SD 1.x model works the same where its weights are on disk.
Nothing here downloads unless the caller's environment allows it.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

# RECE_LITE_TINY points "tiny" at another checkpoint (e.g. one still training, runs/tiny/pipeline).
TINY_PATH = Path(os.environ.get("RECE_LITE_TINY", Path(__file__).resolve().parents[1] / "data" / "tiny"))


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_supported(pipe) -> None:
    """Refuse pipelines the closed forms here do not cover, saying why."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        raise NotImplementedError(
            f"{type(pipe).__name__} has two text encoders (SDXL-style): rece-lite supports "
            "Stable Diffusion 1.x pipelines (one CLIP text encoder) only, for now"
        )
    for part in ("unet", "text_encoder", "tokenizer"):
        if getattr(pipe, part, None) is None:
            raise ValueError(f"{type(pipe).__name__} has no {part}: a Stable Diffusion 1.x pipeline is needed")


@contextlib.contextmanager
def _quiet():
    """Loading without the libraries' progress bars, deprecation notes of their own internals, and
    notes about optional image-processor backends (SD pipelines import them; rece-lite never uses them)."""
    import diffusers
    import transformers

    level = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        transformers.logging.set_verbosity(level)
        if bars:
            transformers.utils.logging.enable_progress_bar()
        diffusers.utils.logging.enable_progress_bar()


def _pipeline_class():
    with _quiet():
        from diffusers import StableDiffusionPipeline
    return StableDiffusionPipeline


def assemble_pipeline(*, unet, text_encoder, tokenizer, vae, scheduler):
    """A ``StableDiffusionPipeline`` from its parts: no safety checker, progress bar off, parts in eval mode.

    The one place the pipeline's eight constructor arguments are spelled out (the miniature
    model's training export, the random-weight SD 1.4 pipeline and the tests all use it).
    """
    StableDiffusionPipeline = _pipeline_class()
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,  # the miniature model draws coloured shapes; random weights draw noise
        feature_extractor=None,
        requires_safety_checker=False,
    )
    for part in (pipe.unet, pipe.text_encoder, pipe.vae):
        part.eval()  # as from_pretrained leaves them
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_pipeline(model: str | os.PathLike = "tiny", *, device: str | None = None, dtype: torch.dtype | None = None):
    """A ``StableDiffusionPipeline`` ready to sample and to edit.

    Args:
        model: ``"tiny"`` (the embedded miniature model), a local folder in
            ``save_pretrained`` layout, or a hub id already in the local cache
            (e.g. ``"CompVis/stable-diffusion-v1-4"``).
        device: default ``cuda`` when available, else ``cpu``.
        dtype: default float16 on CUDA, float32 elsewhere.
    """
    StableDiffusionPipeline = _pipeline_class()
    device = device or default_device()
    dtype = dtype or (torch.float16 if device.startswith("cuda") else torch.float32)
    if str(model) == "tiny":
        if not (TINY_PATH / "model_index.json").exists():
            raise FileNotFoundError(
                f"the embedded model is missing from {TINY_PATH}; train it with `python -m rece_lite.tiny.train`"
            )
        source: str | os.PathLike = TINY_PATH
    else:
        source = model
    local = Path(source).is_dir()
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        with _quiet():
            pipe = StableDiffusionPipeline.from_pretrained(
                source, local_files_only=local or offline, dtype=dtype
            )
    except (OSError, ValueError) as e:
        where = (
            "is not a folder in save_pretrained layout"
            if local
            else "is neither a local folder nor in the Hugging Face cache"
        )
        raise FileNotFoundError(
            f"could not load {str(model)!r}: it {where}"
            f"{' (HF_HUB_OFFLINE is set, so nothing is downloaded)' if offline else ''}. "
            "Use 'tiny' for the embedded model, or download the weights first where you have network access. "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    check_supported(pipe)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@torch.no_grad()
def encode(pipe, prompts: str | Sequence[str]) -> torch.Tensor:
    """Text-encoder outputs for prompts padded to the tokenizer's ``model_max_length``.

    This is exactly what the pipeline feeds its cross-attention (the conditional
    branch), all positions included.

    Returns:
        (B, T, d) in the text encoder's dtype, on its device.
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    ids = pipe.tokenizer(
        list(prompts),
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(pipe.text_encoder.device)
    return pipe.text_encoder(ids)[0]


def check_prompts(pipe, prompts: str | Sequence[str], what: str = "prompt") -> None:
    """Refuse prompts the text encoder would silently change: too long (cut) or with unknown words.

    CLIP's byte-level BPE knows every word, so only length matters for real SD; the miniature
    model's word-level tokenizer maps a word it does not know to ``<|unk|>``, which would erase
    (or preserve) the unknown-word token instead of the concept the user meant.

    Args:
        prompts: the prompt(s) to check.
        what: the argument's name, for the message (``"erase"``, ``"preserve"``, ...).
    """
    tok = pipe.tokenizer
    for p in [prompts] if isinstance(prompts, str) else list(prompts):
        if not isinstance(p, str):
            raise TypeError(f"{what}: prompts must be strings, got {type(p).__name__}")
        ids = tok(p, truncation=False, verbose=False).input_ids
        if len(ids) > tok.model_max_length:
            raise ValueError(
                f"{what} prompt {p!r} is {len(ids)} tokens long, more than this text encoder's "
                f"{tok.model_max_length}: shorten it (it would be cut silently)"
            )
        unk = tok.unk_token_id
        if unk is not None and unk in ids and unk not in (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id):
            words = [w for w in p.split() if unk in tok(w, add_special_tokens=False).input_ids]
            raise ValueError(
                f"{what} prompt {p!r} has words this model's tokenizer does not know: {', '.join(map(repr, words))} "
                "(they would all become the same unknown-word token); use words from its vocabulary"
            )


def last_subject_index(pipe, prompt: str) -> int:
    """Position of a prompt's last word token (the one before EOS), as the newer UCE uses.

    For the empty prompt this is 0, the start token.
    """
    mask = pipe.tokenizer(
        prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).attention_mask
    return int(mask.sum().item()) - 2


@torch.no_grad()
def sample(
    pipe,
    prompts: str | Sequence[str] | None = None,
    *,
    embeds: torch.Tensor | None = None,
    seeds: Sequence[int] = (0,),
    steps: int = 20,
    guidance: float = 6.0,
    batch_size: int = 64,
):
    """Images for every prompt (or embedding) and seed, deterministically.

    Each image has its own generator seeded with its seed, so an image does not
    depend on what else is in the batch (up to the rounding of batched kernels).

    Args:
        prompts: P prompts; or
        embeds: (P, T, d) text embeddings instead (e.g. a derived embedding), fed
            as ``prompt_embeds`` with the empty prompt as the negative.
        seeds: S seeds; images come prompt-major: [p0 s0, p0 s1, ..., p1 s0, ...].
        steps: sampling steps.
        guidance: classifier-free guidance scale.

    Returns:
        (P * S, H, W, 3) uint8.
    """
    import numpy as np

    if (prompts is None) == (embeds is None):
        raise ValueError("give prompts or embeds (not both)")
    if embeds is not None:
        if embeds.ndim == 2:
            embeds = embeds[None]
        conds = list(embeds)
    else:
        conds = [prompts] if isinstance(prompts, str) else list(prompts)
    jobs = [(c, s) for c in conds for s in seeds]
    device = pipe.unet.device
    out = []
    for i in range(0, len(jobs), batch_size):
        chunk = jobs[i : i + batch_size]
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for _, s in chunk]
        kw = dict(num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="np")
        if embeds is not None:
            pe = torch.stack([c for c, _ in chunk]).to(device, pipe.text_encoder.dtype)
            neg = encode(pipe, [""] * len(chunk)).to(device, pe.dtype)
            # latents drawn on the CPU from each image's generator, for the same images on every device
            res = pipe(prompt_embeds=pe, negative_prompt_embeds=neg, latents=_latents(pipe, gens), **kw)
        else:
            res = pipe([c for c, _ in chunk], latents=_latents(pipe, gens), **kw)
        out.append(np.clip(res.images * 255 + 0.5, 0, 255).astype(np.uint8))
    return np.concatenate(out)


def _latents(pipe, gens: list[torch.Generator]) -> torch.Tensor:
    c = pipe.unet.config
    size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
    z = torch.stack([torch.randn(c.in_channels, size, size, generator=g) for g in gens])
    return z.to(pipe.unet.device, pipe.unet.dtype)


@torch.no_grad()
def image_latents(pipe, images, batch: int = 64) -> torch.Tensor:
    """The VAE's latents (scaled as the UNet sees them) of (n, H, W, 3) uint8 pictures."""
    import numpy as np

    vae = pipe.vae
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    out = [
        vae.encode(x[i : i + batch].to(vae.device, vae.dtype)).latent_dist.mean
        for i in range(0, len(x), batch)
    ]
    return torch.cat(out) * vae.config.scaling_factor
