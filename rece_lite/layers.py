"""Finding the matrices a closed-form edit touches: ``to_k`` and ``to_v`` of every ``attn2``.

Works on any diffusers ``UNet2DConditionModel`` (the miniature model, SD 1.x, and
anything else whose cross-attention layers are diffusers ``Attention`` modules).
"""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def cross_attention_layers(unet: nn.Module) -> dict[str, nn.Module]:
    """Every cross-attention module, by its name in ``unet``, in module order."""
    layers = {
        name: m
        for name, m in unet.named_modules()
        if getattr(m, "is_cross_attention", False) and hasattr(m, "to_k") and hasattr(m, "to_v")
    }
    if not layers:
        raise ValueError(
            "this UNet has no cross-attention layers (attn2 with to_k/to_v): closed-form concept "
            "erasure needs a text-conditioned UNet such as Stable Diffusion's"
        )
    return layers


def projections(unet: nn.Module) -> dict[str, nn.Linear]:
    """The key and value projections of every cross-attention layer, by parameter-free name.

    Names look like ``down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k``; the
    order is the module order, ``to_k`` before ``to_v`` within a layer.
    """
    out: dict[str, nn.Linear] = {}
    for name, layer in cross_attention_layers(unet).items():
        out[f"{name}.to_k"] = layer.to_k
        out[f"{name}.to_v"] = layer.to_v
    widths = {m.in_features for m in out.values()}
    if len(widths) != 1:
        raise ValueError(f"cross-attention layers disagree on the text-embedding width: {sorted(widths)}")
    return out


def embedding_width(unet: nn.Module) -> int:
    """d: the text-embedding width the cross-attention expects (768 for SD 1.x)."""
    return next(iter(projections(unet).values())).in_features


# sampled from every parameter: runs of _RUN consecutive values (cheap to gather), at least
# _MIN_RUNS of them (all of a small tensor) and one more per _STRIDE values
_RUN, _MIN_RUNS, _STRIDE = 32, 8, 32_768


def _sample(flat: torch.Tensor) -> torch.Tensor:
    """Evenly spaced runs of consecutive entries of a 1-d tensor, as one (runs, _RUN) view."""
    n = flat.numel()
    if n <= _RUN * _MIN_RUNS:
        return flat
    runs = _MIN_RUNS + n // _STRIDE
    return flat.unfold(0, _RUN, max(_RUN, (n - _RUN) // (runs - 1)))


def fingerprint(model: nn.Module) -> str:
    """A short id of the model a patch belongs to, unchanged by any K/V edit or dtype cast.

    Hashes the name and shape of every parameter, and the sign bits of a sample of every
    parameter no edit touches (all but the cross-attention ``to_k``/``to_v``): all of a
    small tensor, evenly spaced runs of a large one; about a million signs for SD 1.4
    (0.1% of its weights), 40 000 for the miniature model.

    Why signs: a cast rounds a value to the nearest one the new dtype holds, and that
    never changes its sign (float16's underflow keeps it too, as -0.0), so the id is the
    same in float32, float16, bfloat16 and float64, exactly.  Rounded values would not
    be: however coarse the grid, a cast moves some values across its boundaries.  A
    fine-tune moves the weights near zero across it (moving each weight by 0.1% of its
    tensor's spread flips about 0.03% of the signs: hundreds in SD 1.4's sample), and
    re-initialising a block flips half of its sampled signs, so either gives another id.

    ``model`` is a pipeline or a bare UNet.  A pipeline's id also covers its text encoder(s)
    (every parameter's signs, the same way): an edit depends on the embeddings they make, so a
    patch does not apply silently to a pipeline with another text encoder of the same shape.
    The id is ``<unet>-<text>`` (16 hex digits each), or ``<unet>`` for a bare UNet; compare
    ids with :func:`same_model`, which accepts ids of patches written before the text part
    existed (UNet only) for the same model.
    """
    unet = getattr(model, "unet", model)
    if not isinstance(unet, nn.Module):
        raise TypeError(f"fingerprint needs a pipeline or a UNet, got {type(model).__name__}")
    edited = {id(m.weight) for m in projections(unet).values()}
    fp = _signs_hash([("", unet)], edited)
    if model is not unet:
        encoders = [(n, getattr(model, n, None)) for n in ("text_encoder", "text_encoder_2")]
        encoders = [(n, m) for n, m in encoders if isinstance(m, nn.Module)]
        if encoders:
            fp += "-" + _signs_hash(encoders, set())
    return fp


def _signs_hash(modules: list[tuple[str, nn.Module]], skip: set[int]) -> str:
    h = hashlib.sha256()
    signs: dict[torch.device, list[torch.Tensor]] = {}  # gathered once per device
    for prefix, module in modules:
        for name, p in module.named_parameters():
            h.update(f"{prefix}{name}:{tuple(p.shape)};".encode())
            if id(p) not in skip:
                flat = p.detach().reshape(-1)
                signs.setdefault(flat.device, []).append(_sample(flat).signbit().reshape(-1))
    for bits in signs.values():
        h.update(torch.cat(bits).to("cpu").numpy().tobytes())
    return h.hexdigest()[:16]


def same_model(a: str, b: str) -> bool:
    """Whether two :func:`fingerprint` ids name one model.

    The UNet parts must be equal, and the text-encoder parts too where both ids have one (an
    id of a bare UNet, or of a patch written before ids covered the text encoder, has none).
    """
    if not isinstance(a, str) or not isinstance(b, str):
        return False
    ua, _, ta = a.partition("-")
    ub, _, tb = b.partition("-")
    return ua == ub and (not ta or not tb or ta == tb)
