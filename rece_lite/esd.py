"""A fine-tuning baseline in the spirit of ESD-x, to measure RECE's efficiency claim side by side.

ESD (Gandikota et al., *Erasing Concepts from Diffusion Models*, ICCV 2023, arXiv
2303.07345) fine-tunes the UNet so that, conditioned on the concept ``c``, it predicts
the *negatively guided* noise of the frozen original model:

    ε_θ(x_t, c, t)  →  ε*(x_t, c, t) = ε_orig(x_t, "", t) - η (ε_orig(x_t, c, t) - ε_orig(x_t, "", t))

ESD-x trains the cross-attention only.  Here that is the ``to_k`` and ``to_v`` of every
``attn2`` — the very matrices UCE and RECE edit — for two reasons: only they read the
text, so only they can make the change concept-specific (``to_q`` and ``to_out`` act on
every picture); and the result is then a :class:`rece_lite.Patch` like every other edit
here, saved, applied and undone the same way (the official ESD-x also trains ``to_q`` and
``to_out``).

Simplifications, for a laptop: ``x_t`` are noised latents of pictures the original model
draws for the concept (ESD runs partial DDIM trajectories of the model being trained),
and the frozen model's predictions for every training step are computed once, before
training, with the original weights — no second copy of the UNet.
"""

from __future__ import annotations

import math
import numbers
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rece_lite import layers
from rece_lite.erase import Patch, edit_metadata
from rece_lite.evaluate import concept_prompts
from rece_lite.pipeline import check_prompts, check_supported, encode, image_latents, sample
from rece_lite.settings import SAMPLING

IMAGE_SEED = 2000  # the original model draws the concept's pictures with seeds 2000, 2001, ...


@dataclass(frozen=True)
class EsdResult:
    """What :func:`esd_erase` did.

    Attributes:
        patch: the fine-tuned ``to_k``/``to_v`` matrices (already in the pipeline).
        seconds: wall time of the whole erasure: drawing the concept's pictures,
            the frozen model's predictions and the fine-tuning.
        losses: the training loss at every step.
    """

    patch: Patch
    seconds: float
    losses: tuple[float, ...]


def esd_erase(
    pipe,
    concept: str,
    *,
    prompts: Sequence[str] | None = None,
    eta: float = 1.0,
    steps: int = 300,
    lr: float = 3e-4,
    batch: int = 8,
    images_per_prompt: int = 8,
    seed: int = 0,
    sample_steps: int = SAMPLING.steps,
    guidance: float = SAMPLING.guidance,
    progress: bool = True,
) -> EsdResult:
    """Erase ``concept`` by fine-tuning the cross-attention keys and values toward negative guidance.

    Edits ``pipe`` in place, like :func:`rece_lite.uce_erase`.

    Args:
        pipe: a Stable Diffusion 1.x pipeline with float32 weights.
        concept: e.g. ``"red"``.
        prompts: prompts naming the concept (default: :func:`rece_lite.evaluate.concept_prompts`,
            "a red circle", ...).  The original model draws ``images_per_prompt`` pictures
            of each (seeds ``2000 + i``); every training sample is one of them, noised,
            conditioned on its own prompt.
        eta: η, the negative-guidance strength (ESD: 1).
        steps: Adam steps; batch: samples per step.
        lr: Adam's step size.  The default is calibrated on the miniature model: the
            smallest of 1e-4, 2e-4, 3e-4, 1e-3 that leaves at most 20% of the named "red"
            prompts' pictures red (left: 100%, 69%, 19%, 0%; other concepts kept: 100%,
            60%, 54%, 15%; 4 seeds).  ESD used 1e-5 (1000 steps, batch 1) on SD 1.4.
        seed: seeds the time steps and noise.
        sample_steps, guidance: how the pictures are drawn.
        progress: show progress bars.

    Returns:
        An :class:`EsdResult`.
    """
    # 0. check the arguments (the model is not touched before they all hold)
    t0 = time.perf_counter()
    check_supported(pipe)
    mods = layers.projections(pipe.unet)
    params = [m.weight for m in mods.values()]
    if any(p.dtype != torch.float32 for p in params):
        raise TypeError(
            f"pipe: ESD fine-tunes in float32, this pipeline's UNet is {params[0].dtype}: load it with "
            "dtype=torch.float32 (on a GPU as well)"
        )
    counts = (("steps", steps, 1), ("batch", batch, 1), ("images_per_prompt", images_per_prompt, 1),
              ("sample_steps", sample_steps, 1), ("seed", seed, 0))  # fmt: skip
    for name, value, low in counts:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    for name, value in (("eta", eta), ("lr", lr), ("guidance", guidance)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    prompts = _prompts(concept, prompts)
    check_prompts(pipe, prompts, "prompts")
    unet = pipe.unet
    dev = unet.device

    # 1. the concept as the original model draws it
    images = sample(pipe, prompts, seeds=[IMAGE_SEED + i for i in range(images_per_prompt)], steps=sample_steps,
                    guidance=guidance)  # fmt: skip
    z0 = image_latents(pipe, images).float().cpu()
    which = torch.arange(len(prompts), device="cpu").repeat_interleave(images_per_prompt)
    cond = encode(pipe, prompts).detach().to(dev, unet.dtype)
    uncond = encode(pipe, [""]).detach().to(dev, unet.dtype)

    # 2. every step's noised latents and the frozen model's negatively guided targets
    # (drawn on the CPU, for the same numbers on every device, then moved)
    g = torch.Generator(device="cpu").manual_seed(seed)
    n = steps * batch
    acp = pipe.scheduler.alphas_cumprod.to(device="cpu", dtype=torch.float32)
    idx = torch.randint(0, len(z0), (n,), generator=g, device="cpu")
    t = torch.randint(0, len(acp), (n,), generator=g, device="cpu")
    noise = torch.randn((n, *z0.shape[1:]), generator=g, device="cpu")
    a = acp[t].view(-1, 1, 1, 1)
    xt = (a.sqrt() * z0[idx] + (1 - a).sqrt() * noise).to(dev)
    t, c_idx = t.to(dev), which[idx].to(dev)
    target = torch.empty_like(xt)
    chunk = max(1, 16384 // (xt.shape[-1] * xt.shape[-2]))  # 256 latents of 8x8, 4 of SD's 64x64
    with torch.no_grad():
        for i in tqdm(range(0, n, chunk), desc="ESD: frozen predictions", disable=not progress, leave=False):
            sl = slice(i, i + chunk)
            m = len(xt[sl])
            e_c = unet(xt[sl], t[sl], cond[c_idx[sl]]).sample
            e_u = unet(xt[sl], t[sl], uncond.expand(m, -1, -1)).sample
            target[sl] = e_u - eta * (e_c - e_u)

    # 3. fine-tune the keys and values only (all of them or, if interrupted, none)
    flags = [p.requires_grad for p in params]
    before = [p.detach().clone() for p in params]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=lr)
    losses: list[float] = []
    try:
        with torch.enable_grad():
            for k in (bar := tqdm(range(steps), desc="ESD: fine-tuning", disable=not progress, leave=False)):
                sl = slice(k * batch, (k + 1) * batch)
                pred = unet(xt[sl], t[sl], cond[c_idx[sl]]).sample
                loss = F.mse_loss(pred, target[sl])
                grads = torch.autograd.grad(loss, params)  # nothing else gets a .grad
                for p, gr in zip(params, grads, strict=True):
                    p.grad = gr
                opt.step()
                losses.append(loss.item())
                bar.set_postfix(loss=f"{losses[-1]:.4f}", refresh=False)
    except BaseException:
        with torch.no_grad():
            for p, w in zip(params, before, strict=True):
                p.copy_(w)
        raise
    finally:
        for p, f in zip(params, flags, strict=True):
            p.grad = None
            p.requires_grad_(f)
    # 4. the result as a patch, like every other edit here
    trained = "attn2.to_k, attn2.to_v"
    meta = edit_metadata("esd-x", eta=eta, steps=steps, lr=lr, batch=batch, prompts=list(prompts), trained=trained)
    patch = Patch({name: m.weight.detach().clone() for name, m in mods.items()}, layers.fingerprint(pipe), meta)
    return EsdResult(patch, time.perf_counter() - t0, tuple(losses))


def _prompts(concept: str, prompts: str | Sequence[str] | None) -> list[str]:
    """``prompts`` as a non-empty list of non-empty strings, or the miniature world's prompts naming ``concept``."""
    if prompts is None:
        if not isinstance(concept, str) or not concept.strip():
            raise ValueError(f"concept must be a non-empty word, e.g. 'red', got {concept!r}")
        try:
            return concept_prompts(concept)
        except ValueError as e:
            raise ValueError(f"{e}; for another model, give prompts= that name the concept") from None
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError("prompts must hold at least one prompt, got none")
    for p in prompts:
        if not isinstance(p, str) or not p.strip():
            raise ValueError(f"prompts must be non-empty strings, got {p!r}")
    return prompts
