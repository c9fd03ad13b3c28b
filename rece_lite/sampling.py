"""Drawing pictures from a pipeline, seeded per picture: :func:`sample` (and the VAE's :func:`image_latents`).

Defaults (steps, guidance): :data:`rece_lite.settings.SAMPLING`.
"""

from __future__ import annotations

import math
import numbers
import operator
from collections.abc import Iterable, Sequence

import torch

from rece_lite import parallel
from rece_lite.errors import InputError
from rece_lite.loading import Pipeline, _check_pipe, is_sdxl
from rece_lite.settings import SAMPLING
from rece_lite.text import _prompt_list, check_prompts, encode


@torch.no_grad()
def sample(
    pipe: Pipeline,
    prompts: str | Sequence[str] | None = None,
    *,
    embeds: torch.Tensor | None = None,
    pooled: torch.Tensor | None = None,
    seeds: Sequence[int] = (0,),
    steps: int = SAMPLING.steps,
    guidance: float = SAMPLING.guidance,
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
        raise InputError("give prompts or embeds (not both)")
    steps = _whole(steps, "steps", "the number of sampling steps, e.g. 20")
    batch_size = _whole(batch_size, "batch_size", "pictures drawn at once, e.g. 64")
    scale = f"the classifier-free guidance scale, e.g. {SAMPLING.guidance}"
    if isinstance(guidance, bool) or not isinstance(guidance, numbers.Real):
        raise TypeError(f"guidance must be a number ({scale}), got {guidance!r}")
    if not math.isfinite(guidance):
        raise InputError(f"guidance must be finite ({scale}), got {guidance}")
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
            raise InputError(f"paired=True needs one seed per prompt: {len(conds)} prompts, {len(seeds)} seeds")
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
        raise InputError(f"{what} must be a whole number >= 1 ({meaning}), got {value}")
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
        raise InputError("seeds is empty: give at least one seed, e.g. seeds=[0]")
    return out


def _check_embeds(pipe: Pipeline, embeds: object) -> torch.Tensor:
    """``embeds`` as (P, T, d) real and finite, d the cross-attention's width; a list of (T, d) is stacked."""
    if isinstance(embeds, (list, tuple)) and embeds and all(isinstance(e, torch.Tensor) for e in embeds):
        try:
            embeds = torch.stack(list(embeds))
        except RuntimeError as e:
            raise InputError(f"embeds: the list's tensors do not stack into one (P, T, d) tensor ({e})") from None
    if not isinstance(embeds, torch.Tensor) or not embeds.is_floating_point():
        got = f"a {embeds.dtype} tensor" if isinstance(embeds, torch.Tensor) else type(embeds).__name__
        raise TypeError(f"embeds must be a real floating-point (P, T, d) tensor or a list of (T, d) ones, got {got}")
    if embeds.ndim == 2:
        embeds = embeds[None]
    width = pipe.unet.config.cross_attention_dim
    if embeds.ndim != 3 or embeds.shape[0] == 0:
        raise InputError(f"embeds has shape {tuple(embeds.shape)}; give (P, T, {width}) or one (T, {width})")
    if isinstance(width, int) and embeds.shape[-1] != width:
        raise InputError(
            f"embeds has width {embeds.shape[-1]}; this model's cross-attention expects {width} (shape (P, T, {width}))"
        )
    if not bool(torch.isfinite(embeds).all()):
        raise InputError("embeds contains NaN or inf")
    return embeds


def _pooled_rows(pipe: Pipeline, pooled: torch.Tensor | None, embeds: torch.Tensor | None, sdxl: bool):
    """``pooled`` as (P, width) rows, one per embedding, after checking it goes with this call."""
    if pooled is None:
        return None
    if not sdxl:
        raise InputError(f"pooled= is for SDXL pipelines (their pooled text embedding); {type(pipe).__name__} has none")
    if embeds is None:
        raise InputError("pooled= goes with embeds=; with prompts the pipeline pools each prompt itself")
    if not isinstance(pooled, torch.Tensor):
        raise TypeError(f"pooled must be a tensor of shape (P, width) or (width,), got {type(pooled).__name__}")
    rows = pooled[None] if pooled.ndim == 1 else pooled
    width = pipe.text_encoder_2.config.projection_dim
    if rows.ndim != 2 or rows.shape != (len(embeds), width):
        raise InputError(
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

