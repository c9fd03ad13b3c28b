"""Loading Stable Diffusion pipelines (1.x, 2.x, XL), encoding prompts, sampling.

``load_pipeline("tiny")`` gives the embedded miniature model; a local folder in
``save_pretrained`` layout or a hub id already in the cache loads as the class its
``model_index.json`` names: ``StableDiffusionPipeline`` (SD 1.x, 2.x) or
``StableDiffusionXLPipeline`` (SDXL).  Models whose text reaches the image through
joint attention (FLUX, SD 3: MMDiT) have no cross-attention K/V to edit and are refused
(``docs/mmdit.md`` says how the closed form maps there).  Nothing here downloads unless
the caller's environment allows it.

What the edits see, per family (``d`` = width of the embedding the cross-attention attends to):

* SD 1.x / 2.x: the text encoder's last hidden state, (77, 768) / (77, 1024);
* SDXL: both encoders' penultimate hidden states, concatenated per token, (77, 2048).
  SDXL's pooled embedding (1280) and time ids enter the UNet through ``add_embedding``,
  not through cross-attention: no K/V edit touches that path (see :func:`sample`).
"""

from __future__ import annotations

import contextlib
import math
import numbers
import operator
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from rece_lite import parallel
from rece_lite.paths import is_embedded, model_path, tiny_path

if TYPE_CHECKING:
    from diffusers import AutoencoderKL, UNet2DConditionModel

# the embedded model's folder (data/tiny in a checkout, inside the package in a wheel), or $RECE_LITE_TINY
TINY_PATH = tiny_path()  # as of import; load_pipeline reads tiny_path() afresh (RECE_LITE_TINY may change)

#: ``model_index.json`` class names that :func:`load_pipeline` loads.
SUPPORTED_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionXLPipeline")

_MMDIT = (
    "{what} denoises with a transformer (MMDiT/DiT, as FLUX and SD 3 do): its text tokens are transformed "
    "block by block by joint attention, so there are no cross-attention key/value matrices acting on a fixed "
    "text embedding for rece-lite's closed form to edit. docs/mmdit.md explains how the closed form maps there "
    "(one linear map, the context embedder). rece-lite edits StableDiffusionPipeline (SD 1.x, 2.x) and "
    "StableDiffusionXLPipeline (SDXL)"
)

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class Pipeline(Protocol):
    """The pipeline argument of rece-lite's functions: a diffusers Stable Diffusion pipeline.

    ``StableDiffusionPipeline`` (SD 1.x, 2.x, the miniature model) and
    ``StableDiffusionXLPipeline`` (which adds ``text_encoder_2`` and ``tokenizer_2``) have
    these attributes.  A type for hints and readers; nothing checks it at run time.
    """

    unet: UNet2DConditionModel
    text_encoder: torch.nn.Module
    tokenizer: Any
    vae: AutoencoderKL
    scheduler: Any

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


# ------------------------------------------------------------------------ what we edit
def is_sdxl(pipe: Pipeline) -> bool:
    """Whether ``pipe`` conditions like SDXL: two text encoders, diffusers' SDXL ``encode_prompt``."""
    return (
        getattr(pipe, "text_encoder_2", None) is not None
        and getattr(pipe, "tokenizer_2", None) is not None
        and callable(getattr(pipe, "encode_prompt", None))
    )


def check_supported(pipe: Pipeline) -> None:
    """Refuse pipelines the closed forms here do not cover, saying why."""
    name = type(pipe).__name__
    if getattr(pipe, "unet", None) is None and getattr(pipe, "transformer", None) is not None:
        raise NotImplementedError(_MMDIT.format(what=name))
    for part in ("unet", "text_encoder", "tokenizer"):
        if getattr(pipe, part, None) is None:
            raise ValueError(
                f"{name} has no {part}: a Stable Diffusion pipeline (StableDiffusionPipeline or "
                "StableDiffusionXLPipeline) is needed"
            )
    if "StableDiffusionXL" in name and not is_sdxl(pipe):
        raise ValueError(
            f"{name} lacks text_encoder_2 or tokenizer_2: SDXL conditions on two text encoders. If these are "
            "SD 1.x/2.x weights, their model_index.json should name StableDiffusionPipeline"
        )
    if getattr(pipe, "text_encoder_2", None) is not None and not is_sdxl(pipe):
        raise NotImplementedError(
            f"{name} has two text encoders but is not an SDXL pipeline (it lacks tokenizer_2 or diffusers' "
            "encode_prompt): rece-lite edits StableDiffusionPipeline (SD 1.x, 2.x) and StableDiffusionXLPipeline"
        )


def _check_pipe(pipe: Pipeline, parts: tuple[str, ...] = ("unet", "text_encoder", "tokenizer")) -> None:
    """Refuse what is not a diffusers pipeline (None, a string, a lone module) before any attribute is used."""
    if not callable(pipe) or isinstance(pipe, torch.nn.Module) or any(getattr(pipe, p, None) is None for p in parts):
        raise TypeError(
            f"pipe is not a diffusers pipeline (got {type(pipe).__name__}): "
            "give a Stable Diffusion pipeline, e.g. rl.load_pipeline('tiny')"
        )


# ------------------------------------------------------------------------ building, loading
@contextlib.contextmanager
def _quiet(bars: bool = False):
    """Loading without deprecation notes of the libraries' own internals, notes about optional
    image-processor backends (SD pipelines import them; rece-lite never uses them), and, unless
    ``bars``, without the libraries' progress bars."""
    import diffusers
    import transformers

    level = transformers.logging.get_verbosity()
    had = transformers.utils.logging.is_progress_bar_enabled(), diffusers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    if not bars:
        transformers.utils.logging.disable_progress_bar()
        diffusers.utils.logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            # diffusers' load_config passes an argument huggingface_hub has deprecated: not the user's to fix
            warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*", category=UserWarning)
            yield
    finally:
        transformers.logging.set_verbosity(level)
        if had[0]:
            transformers.utils.logging.enable_progress_bar()
        if had[1]:
            diffusers.utils.logging.enable_progress_bar()


def _pipeline_classes() -> dict[str, type]:
    with _quiet():
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    return {"StableDiffusionPipeline": StableDiffusionPipeline, "StableDiffusionXLPipeline": StableDiffusionXLPipeline}


def _ready(pipe):
    for part in (pipe.unet, pipe.text_encoder, getattr(pipe, "text_encoder_2", None), pipe.vae):
        if part is not None:
            part.eval()  # as from_pretrained leaves them
    pipe.set_progress_bar_config(disable=True)
    return pipe


def assemble_pipeline(*, unet, text_encoder, tokenizer, vae, scheduler):
    """A ``StableDiffusionPipeline`` from its parts: no safety checker, progress bar off, parts in eval mode.

    The one place the pipeline's eight constructor arguments are spelled out (the miniature
    model's training export, the random-weight SD 1.4 / 2.1 pipelines and the tests all use it).
    """
    StableDiffusionPipeline = _pipeline_classes()["StableDiffusionPipeline"]
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
    return _ready(pipe)


def assemble_sdxl_pipeline(*, unet, text_encoder, text_encoder_2, tokenizer, tokenizer_2, vae, scheduler):
    """A ``StableDiffusionXLPipeline`` from its parts: no watermarker, progress bar off, parts in eval mode.

    ``force_zeros_for_empty_prompt`` stays on, as in SDXL 1.0's ``model_index.json``: without a
    negative prompt the unconditional branch sees zeros, not the empty prompt's embedding.
    """
    StableDiffusionXLPipeline = _pipeline_classes()["StableDiffusionXLPipeline"]
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
        add_watermarker=False,
    )
    return _ready(pipe)


def default_device() -> str:
    """``cuda`` when available, else ``mps`` (Apple GPUs) when available, else ``cpu``."""
    if torch.cuda.is_available():
        return "cuda"
    if torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def _check_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device(default_device())
    if isinstance(device, str):
        try:
            dev = torch.device(device)
        except RuntimeError:
            raise ValueError(f"device={device!r} is not a device name: use 'cuda', 'cuda:1', 'mps' or 'cpu'") from None
    elif isinstance(device, torch.device):
        dev = device
    else:
        raise TypeError(f"device must be a string such as 'cuda' or 'cpu' (or a torch.device), got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={device!r}, but this torch sees no CUDA device: use 'cpu', or leave device unset")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device={device!r}, but this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device={device!r}, but MPS is not available here: use 'cpu', or leave device unset")
    elif dev.type != "cpu":
        raise ValueError(f"device={device!r}: rece-lite runs on 'cuda', 'mps' or 'cpu'")
    return dev


def _check_dtype(dtype: torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype such as torch.float16 or torch.float32, got {dtype!r}")
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"dtype must be float16, bfloat16, float32 or float64, got {dtype}")
    if device.type == "mps" and dtype == torch.float64:
        raise ValueError("dtype=torch.float64 is not supported on 'mps': use torch.float32")
    return dtype


class _NotAnIndex(ValueError):
    """A ``model_index.json`` that is JSON but not an object: said as it is, not as a missing model."""


def _pipeline_class(index: dict, model: str | os.PathLike) -> type:
    """The class a ``model_index.json`` names, if rece-lite can edit it; a clear refusal otherwise."""
    if not isinstance(index, dict):
        raise _NotAnIndex(
            f"{str(model)!r}: its model_index.json holds a JSON {type(index).__name__}, not an object naming the "
            "pipeline class (`_class_name`): it is not a diffusers model folder"
        )
    name = index.get("_class_name")
    classes = _pipeline_classes()
    if isinstance(name, str) and name in classes:
        return classes[name]
    if "transformer" in index and "unet" not in index:
        raise NotImplementedError(_MMDIT.format(what=f"{str(model)!r} ({name})"))
    raise NotImplementedError(
        f"{str(model)!r} is a {name}, not a text-to-image Stable Diffusion pipeline: rece-lite loads "
        f"{' and '.join(SUPPORTED_PIPELINES)} folders (SD 1.x, 2.x and XL)"
    )


def load_pipeline(
    model: str | os.PathLike = "tiny",
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
) -> Pipeline:
    """A Stable Diffusion pipeline ready to sample and to edit, of the class its folder names.

    Args:
        model: ``"tiny"`` (the embedded miniature model; ``"tiny-grounded"`` and
            ``"tiny-ungrounded"`` name its variants, see :mod:`rece_lite.paths`), a local folder in
            ``save_pretrained`` layout, or a hub id already in the local cache
            (e.g. ``"CompVis/stable-diffusion-v1-4"``, ``"stabilityai/stable-diffusion-2-1"``,
            ``"stabilityai/stable-diffusion-xl-base-1.0"``).
        device: ``"cuda"``, ``"mps"`` or ``"cpu"`` (or ``"cuda:1"``, a ``torch.device``);
            default ``cuda`` when available, else ``mps`` when available, else ``cpu``.
        dtype: a floating ``torch.dtype``; default float16 on CUDA, float32 elsewhere.

    Returns:
        A ``StableDiffusionPipeline`` (SD 1.x, 2.x) or ``StableDiffusionXLPipeline`` (SDXL)
        on ``device``.  Real models keep diffusers' progress bars (loading and sampling);
        the miniature model, which samples in a blink, has them off.

    Raises:
        FileNotFoundError: the model is neither the embedded one, a folder, nor cached.
        NotImplementedError: the folder holds another kind of pipeline (e.g. FLUX or SD 3,
            which have no cross-attention K/V: see ``docs/mmdit.md``).
    """
    if not isinstance(model, (str, os.PathLike)):
        raise TypeError(
            f"model must be 'tiny', a folder or a hub id (a str or os.PathLike), got {type(model).__name__} {model!r}"
        )
    dev = _check_device(device)
    dtype = _check_dtype(dtype, dev)
    tiny = is_embedded(str(model))  # "tiny", "tiny-grounded", "tiny-ungrounded"
    if tiny:
        folder = model_path(str(model))
        if not (folder / "model_index.json").exists():
            raise FileNotFoundError(
                f"the embedded model is missing from {folder}; reinstall rece-lite, or train it with "
                "`python -m rece_lite.tiny.train`"
            )
        source: str | os.PathLike = folder
    else:
        source = model
    local = Path(source).is_dir()
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    cls = None
    try:
        with _quiet(bars=not tiny):
            from diffusers import DiffusionPipeline

            # 1. Which pipeline: model_index.json's class name (read before any weights are)
            index = DiffusionPipeline.load_config(source, local_files_only=local or offline)
            cls = _pipeline_class(index, model)
            # 2. Its weights, in the dtype asked for
            pipe = cls.from_pretrained(source, local_files_only=local or offline, dtype=dtype)
    except (OSError, ValueError) as e:
        if isinstance(e, _NotAnIndex):
            raise
        where = (
            "is not a folder in save_pretrained layout"
            if local
            else "is neither a local folder nor in the Hugging Face cache"
        )
        if cls is not None:
            where = f"has a model_index.json for {cls.__name__} but its weights could not be loaded"
        raise FileNotFoundError(
            f"could not load {str(model)!r}: it {where}"
            f"{' (HF_HUB_OFFLINE is set, so nothing is downloaded)' if offline else ''}. "
            "Use 'tiny' for the embedded model, or download the weights first where you have network access. "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
        ) from e
    check_supported(pipe)
    if tiny:
        pipe.set_progress_bar_config(disable=True)
    return pipe.to(dev)


# ------------------------------------------------------------------------ prompts
@torch.no_grad()
def encode(pipe: Pipeline, prompts: str | Sequence[str]) -> torch.Tensor:
    """The per-token text embeddings the UNet's cross-attention attends to (the conditional branch).

    SD 1.x / 2.x: the text encoder's output for prompts padded to the tokenizer's
    ``model_max_length``.  SDXL: diffusers' own ``encode_prompt`` (both encoders'
    penultimate states, concatenated per token); its pooled embedding is
    :func:`encode_pooled`.  All positions are included, padding too.

    Returns:
        (B, T, d) in the text encoder's dtype, on its device (SD 1.x: d = 768; SD 2.x:
        1024; SDXL: 2048).
    """
    _check_pipe(pipe, ("text_encoder", "tokenizer"))
    prompts = _prompt_list(prompts)
    if is_sdxl(pipe):
        embeds, _, _, _ = pipe.encode_prompt(
            list(prompts), device=pipe.text_encoder.device, do_classifier_free_guidance=False
        )
        return embeds
    ids = pipe.tokenizer(
        list(prompts),
        padding="max_length",
        max_length=pipe.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids.to(pipe.text_encoder.device)
    return pipe.text_encoder(ids)[0]


@torch.no_grad()
def encode_pooled(pipe: Pipeline, prompts: str | Sequence[str]) -> torch.Tensor:
    """SDXL's pooled text embedding (``text_encoder_2``'s projected EOS state), as ``encode_prompt`` makes it.

    It reaches the UNet through ``add_embedding`` (with the time ids), not through
    cross-attention, so no K/V edit changes what it does.

    Returns:
        (B, 1280) for SDXL, in the text encoder's dtype, on its device.
    """
    if not is_sdxl(pipe):
        raise ValueError(f"{type(pipe).__name__} has no pooled text embedding: only SDXL pipelines have one")
    if isinstance(prompts, str):
        prompts = [prompts]
    device = pipe.text_encoder.device
    _, _, pooled, _ = pipe.encode_prompt(list(prompts), device=device, do_classifier_free_guidance=False)
    return pooled


def _prompt_list(prompts: object, what: str = "prompts") -> list[str]:
    """``prompts`` as a non-empty list of strings (one string is a list of one), or a refusal naming ``what``."""
    if isinstance(prompts, str):
        return [prompts]
    if not isinstance(prompts, Iterable) or isinstance(prompts, (bytes, dict, torch.Tensor)):
        raise TypeError(f"{what} must be a prompt (str) or a list of prompts, got {type(prompts).__name__}")
    out = list(prompts)
    if not out:
        raise ValueError(f"{what} is empty: give at least one prompt")
    for i, p in enumerate(out):
        if not isinstance(p, str):
            raise TypeError(f"{what} must be strings, got {type(p).__name__} {p!r} at position {i}")
    return out


def check_prompts(
    pipe: Pipeline, prompts: str | Sequence[str], what: str = "prompt", *, check_length: bool = True
) -> None:
    """Refuse prompts the text encoder would silently change: too long (cut) or with unknown words.

    CLIP's byte-level BPE knows every word, so only length matters for real SD; the miniature
    model's word-level tokenizer maps a word it does not know to ``<|unk|>``, which would erase
    (or preserve) the unknown-word token instead of the concept the user meant.  SDXL's two
    tokenizers are both checked.

    Args:
        prompts: the prompt(s) to check.
        what: the argument's name, for the message (``"erase"``, ``"preserve"``, ...).
        check_length: refuse prompts longer than the text encoder's context too (``sample``
            leaves them to diffusers, which cuts them with a warning, as prompt files expect).
    """
    tokenizers = [pipe.tokenizer]
    second = getattr(pipe, "tokenizer_2", None)
    if second is not None and second is not pipe.tokenizer:
        tokenizers.append(second)
    for p in [prompts] if isinstance(prompts, str) else list(prompts):
        if not isinstance(p, str):
            raise TypeError(f"{what}: prompts must be strings, got {type(p).__name__}")
        for tok in tokenizers:
            _check_prompt(tok, p, what, check_length)


def _check_prompt(tok, p: str, what: str, check_length: bool = True) -> None:
    ids = tok(p, truncation=False, verbose=False).input_ids
    if check_length and len(ids) > tok.model_max_length:
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


def last_subject_index(pipe: Pipeline, prompt: str) -> int:
    """Position of a prompt's last word token (the one before EOS), as the newer UCE uses.

    For the empty prompt this is 0, the start token.
    """
    mask = pipe.tokenizer(
        prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).attention_mask
    return int(mask.sum().item()) - 2


# ------------------------------------------------------------------------ sampling
@torch.no_grad()
def sample(
    pipe: Pipeline,
    prompts: str | Sequence[str] | None = None,
    *,
    embeds: torch.Tensor | None = None,
    pooled: torch.Tensor | None = None,
    seeds: Sequence[int] = (0,),
    steps: int = 20,
    guidance: float = 6.0,
    batch_size: int = 64,
    paired: bool = False,
):
    """Images for every prompt (or embedding) and seed, deterministically.

    Each image has its own generator seeded with its seed, so an image does not
    depend on what else is in the batch (up to the rounding of batched kernels).

    With ``embeds`` the negative (unconditional) branch is what the pipeline itself uses
    without a negative prompt: the empty prompt's embedding (SD 1.x, 2.x), zeros for SDXL
    1.0 (``force_zeros_for_empty_prompt``).

    **SDXL's pooled embedding.** SDXL also conditions on a pooled text embedding, added to
    the time embedding (``add_embedding``) and so seen by every ResNet block: a path that a
    cross-attention-only edit (UCE, RECE) never touches.  With ``embeds`` and no
    ``pooled``, the conditional branch gets the *empty prompt's* pooled embedding, the
    guide UCE maps erased concepts to.  Then the per-token embedding, the one thing the
    edit and RECE's derivation act on, is the only way a concept reaches the image: what
    the pictures show measures the cross-attention alone.  Passing the concept prompt's
    pooled embedding instead (``pooled=encode_pooled(pipe, prompt)``) measures what a user
    typing the prompt gets, leak through ``add_embedding`` included; an erased concept can
    reappear that way whatever the K/V edit did.

    Args:
        prompts: P prompts; or
        embeds: (P, T, d) text embeddings instead (e.g. a derived embedding), fed
            as ``prompt_embeds``.
        pooled: SDXL only, with ``embeds``: (P, 1280) or (1280,) pooled embeddings for
            the conditional branch; default: the empty prompt's (see above).
        seeds: S seeds; images come prompt-major: [p0 s0, p0 s1, ..., p1 s0, ...].
        paired: ``seeds`` holds one seed per prompt (a prompt file's ``evaluation_seed``):
            one image each, [p0 s0, p1 s1, ...].
        steps: sampling steps.
        guidance: classifier-free guidance scale.

    Returns:
        (P * S, H, W, 3) uint8.
    """
    import numpy as np

    _check_pipe(pipe)
    if (prompts is None) == (embeds is None):
        raise ValueError("give prompts or embeds (not both)")
    steps = _whole(steps, "steps", "the number of sampling steps, e.g. 20")
    batch_size = _whole(batch_size, "batch_size", "pictures drawn at once, e.g. 64")
    if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real):
        raise TypeError(f"guidance must be a number (the classifier-free guidance scale, e.g. 6.0), got {guidance!r}")
    if not math.isfinite(guidance):
        raise ValueError(f"guidance must be finite (the classifier-free guidance scale, e.g. 6.0), got {guidance}")
    seeds = _seed_list(seeds)
    sdxl = is_sdxl(pipe)
    if embeds is not None:
        embeds = _check_embeds(pipe, embeds)
        conds = list(embeds)
    else:
        conds = _prompt_list(prompts)
        check_prompts(pipe, conds, "sample", check_length=False)  # diffusers cuts long prompts, with a warning
    pooled_rows = _pooled_rows(pipe, pooled, embeds, sdxl)
    if paired:
        if len(seeds) != len(conds):
            raise ValueError(f"paired=True needs one seed per prompt: {len(conds)} prompts, {len(seeds)} seeds")
        jobs = list(enumerate(seeds))
    else:
        jobs = [(i, s) for i in range(len(conds)) for s in seeds]
    device = pipe.unet.device
    starts = list(range(0, len(jobs), batch_size))
    split = parallel.current()
    done: dict[int, np.ndarray] = {}
    # under `accelerate launch`, this process draws only its share of the batches (see rece_lite.parallel)
    for b in split.mine(len(starts)) if split else range(len(starts)):
        chunk = jobs[starts[b] : starts[b] + batch_size]
        gens = [torch.Generator(device="cpu").manual_seed(int(s)) for _, s in chunk]
        kw = dict(num_inference_steps=steps, guidance_scale=guidance, generator=gens, output_type="np")
        # latents drawn on the CPU from each image's generator, for the same images on every device
        kw["latents"] = _latents(pipe, gens)
        if embeds is None:
            res = pipe([conds[i] for i, _ in chunk], **kw)
        elif sdxl:
            pe = torch.stack([conds[i] for i, _ in chunk]).to(device, pipe.text_encoder_2.dtype)
            empty, neg, empty_pooled, neg_pooled = pipe.encode_prompt(
                [""] * len(chunk), device=device, do_classifier_free_guidance=True
            )
            pool = empty_pooled if pooled_rows is None else pooled_rows[[i for i, _ in chunk]].to(device, pe.dtype)
            res = pipe(
                prompt_embeds=pe,
                pooled_prompt_embeds=pool,
                negative_prompt_embeds=neg,
                negative_pooled_prompt_embeds=neg_pooled,
                **kw,
            )
        else:
            pe = torch.stack([conds[i] for i, _ in chunk]).to(device, pipe.text_encoder.dtype)
            neg = encode(pipe, [""] * len(chunk)).to(device, pe.dtype)
            res = pipe(prompt_embeds=pe, negative_prompt_embeds=neg, **kw)
        done[b] = np.clip(res.images * 255 + 0.5, 0, 255).astype(np.uint8)
    done = parallel.gather(done)
    out = [done[b] for b in range(len(starts))]
    return np.concatenate(out)


def _whole(value: object, what: str, meaning: str) -> int:
    """``value`` as an int >= 1, or a refusal naming ``what``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{what} must be a whole number >= 1 ({meaning}), got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{what} must be a whole number >= 1 ({meaning}), got {value}")
    return int(value)


def _seed_list(seeds: object) -> list[int]:
    """``seeds`` as a non-empty list of ints (numpy and 0-d integer tensors too), or a refusal naming ``seeds``."""
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Iterable):
        raise TypeError(f"seeds must be a list of whole numbers such as [0, 1], got {type(seeds).__name__} {seeds!r}")
    out = []
    for s in seeds:
        try:
            out.append(operator.index(s))
        except TypeError:
            raise TypeError(f"seeds must be whole numbers, got {type(s).__name__} {s!r}") from None
    if not out:
        raise ValueError("seeds is empty: give at least one seed, e.g. seeds=[0]")
    return out


def _check_embeds(pipe: Pipeline, embeds: object) -> torch.Tensor:
    """``embeds`` as (P, T, d) real and finite, d the cross-attention's width; a list of (T, d) is stacked."""
    if isinstance(embeds, (list, tuple)) and embeds and all(isinstance(e, torch.Tensor) for e in embeds):
        try:
            embeds = torch.stack(list(embeds))
        except RuntimeError as e:
            raise ValueError(f"embeds: the list's tensors do not stack into one (P, T, d) tensor ({e})") from None
    if not isinstance(embeds, torch.Tensor) or not embeds.is_floating_point():
        got = f"a {embeds.dtype} tensor" if isinstance(embeds, torch.Tensor) else type(embeds).__name__
        raise TypeError(f"embeds must be a real floating-point (P, T, d) tensor or a list of (T, d) ones, got {got}")
    if embeds.ndim == 2:
        embeds = embeds[None]
    width = pipe.unet.config.cross_attention_dim
    if embeds.ndim != 3 or embeds.shape[0] == 0:
        raise ValueError(f"embeds has shape {tuple(embeds.shape)}; give (P, T, {width}) or one (T, {width})")
    if isinstance(width, int) and embeds.shape[-1] != width:
        raise ValueError(
            f"embeds has width {embeds.shape[-1]}; this model's cross-attention expects {width} (shape (P, T, {width}))"
        )
    if not bool(torch.isfinite(embeds).all()):
        raise ValueError("embeds contains NaN or inf")
    return embeds


def _pooled_rows(pipe: Pipeline, pooled: torch.Tensor | None, embeds: torch.Tensor | None, sdxl: bool):
    """``pooled`` as (P, width) rows, one per embedding, after checking it goes with this call."""
    if pooled is None:
        return None
    if not sdxl:
        raise ValueError(f"pooled= is for SDXL pipelines (their pooled text embedding); {type(pipe).__name__} has none")
    if embeds is None:
        raise ValueError("pooled= goes with embeds=; with prompts the pipeline pools each prompt itself")
    if not isinstance(pooled, torch.Tensor):
        raise TypeError(f"pooled must be a tensor of shape (P, width) or (width,), got {type(pooled).__name__}")
    rows = pooled[None] if pooled.ndim == 1 else pooled
    width = pipe.text_encoder_2.config.projection_dim
    if rows.ndim != 2 or rows.shape != (len(embeds), width):
        raise ValueError(
            f"pooled has shape {tuple(pooled.shape)}; expected ({len(embeds)}, {width}), one per embedding"
        )
    return rows


def _latents(pipe: Pipeline, gens: list[torch.Generator]) -> torch.Tensor:
    c = pipe.unet.config
    size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
    z = torch.stack([torch.randn(c.in_channels, size, size, generator=g, device="cpu") for g in gens])
    return z.to(pipe.unet.device, pipe.unet.dtype)


@torch.no_grad()
def image_latents(pipe: Pipeline, images, batch: int = 64) -> torch.Tensor:
    """The VAE's latents (scaled as the UNet sees them) of (n, H, W, 3) uint8 pictures."""
    import numpy as np

    vae = pipe.vae
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
    out = [
        vae.encode(x[i : i + batch].to(vae.device, vae.dtype)).latent_dist.mean
        for i in range(0, len(x), batch)
    ]
    return torch.cat(out) * vae.config.scaling_factor
