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


def fingerprint(unet: nn.Module) -> str:
    """A short id of the model a patch belongs to, unchanged by any K/V edit or dtype cast.

    Hashes the names and shapes of the edited matrices and the values (rounded to
    float16) of two matrices no edit touches: ``conv_in`` and the first ``attn2.to_q``.
    """
    h = hashlib.sha256()
    for name, m in projections(unet).items():
        h.update(f"{name}:{tuple(m.weight.shape)};".encode())
    first = next(iter(cross_attention_layers(unet).values()))
    anchors = [first.to_q.weight]
    conv_in = getattr(unet, "conv_in", None)
    if conv_in is not None:
        anchors.append(conv_in.weight)
    for t in anchors:
        h.update(t.detach().to("cpu", torch.float16).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]
