"""Where a heat map's mass goes: on an object, per unit of its area, against another object.

A heat map ``A`` (one token's or one word's, any resolution, any device) and an object
mask ``m`` (the picture's pixels, bool or coverage in [0, 1]) give

* the share of the mass on the object, ``Σ A·m / Σ A`` (:func:`attention_mass_on`);
* that share divided by the object's share of the picture, "mass ÷ area"
  (:func:`mass_per_area`): 1 for attention spread evenly, 2 for twice as dense on the
  object as on average;
* the mass on one object divided by the mass on another (:func:`mass_ratio`).

The mask is area-resampled to the map's grid, so a map pixel half covered by the object
counts half, and the object's area share is measured on that same grid: a uniform map
has mass ÷ area exactly 1 at any resolution.  Everything is computed in float64 on the CPU.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _cpu64(x, name: str) -> torch.Tensor:
    """(H, W) float64 on the CPU from a tensor on any device or an array."""
    t = (
        x.detach().to("cpu", torch.float64)
        if isinstance(x, torch.Tensor)
        else torch.as_tensor(np.asarray(x, dtype=np.float64), device="cpu")
    )
    if t.ndim != 2:
        raise ValueError(f"{name} must be one (H, W) map, e.g. store.token_maps()[i]; got shape {tuple(t.shape)}")
    return t


def _heat(heat) -> torch.Tensor:
    h = _cpu64(heat, "heat")
    if not torch.isfinite(h).all() or (h < 0).any():
        raise ValueError("heat must hold finite attention values ≥ 0")
    if h.sum() <= 0:
        raise ValueError("heat holds no attention mass (all zeros)")
    return h


def _mask_on(mask, heat: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """The mask's coverage of each pixel of ``heat``'s grid."""
    m = _cpu64(mask, name)
    if (m < 0).any() or (m > 1).any():
        raise ValueError(f"{name} must be bool or a coverage in [0, 1] per pixel")
    return F.interpolate(m[None, None], size=tuple(heat.shape), mode="area")[0, 0]


def attention_mass_on(heat, mask) -> float:
    """Share of a heat map's mass that falls on an object's pixels: ``Σ A·m / Σ A``.

    Args:
        heat: (H, W) map of one token or word, e.g. ``store.token_maps()[i]``.
        mask: (H_img, W_img) object mask (bool or coverage in [0, 1]), tensor or array.
    """
    h = _heat(heat)
    return float((h * _mask_on(mask, h)).sum() / h.sum())


def mass_per_area(heat, mask) -> float:
    """Mass ÷ area: the share of the map's mass on the object over the object's share of the picture.

    1 means the map is no denser on the object than anywhere else (a uniform map gives
    exactly 1); above 1 the map favours the object; the largest value, 1 / area share,
    puts all the mass on the object.

    Args:
        heat: (H, W) map of one token or word.
        mask: (H_img, W_img) object mask (bool or coverage in [0, 1]), tensor or array.
    """
    h = _heat(heat)
    m = _mask_on(mask, h)
    area = m.mean()
    if area <= 0:
        raise ValueError("mask covers no pixel: there is no object to measure")
    return float((h * m).sum() / h.sum() / area)


def mass_ratio(heat, mask, other) -> float:
    """The map's mass on one object divided by its mass on another.

    2 means twice as much attention lands on ``mask``'s object as on ``other``'s.  The
    objects' sizes enter as they are; for a size-free comparison divide the two
    objects' :func:`mass_per_area` instead.

    Args:
        heat: (H, W) map of one token or word.
        mask: (H_img, W_img) the object the word names (bool or coverage in [0, 1]).
        other: (H_img, W_img) the other object.
    """
    h = _heat(heat)
    on, off = (h * _mask_on(mask, h)).sum(), (h * _mask_on(other, h, "other")).sum()
    if off <= 0:
        raise ValueError("the map has no mass on `other` (or other covers no pixel): the ratio is undefined")
    return float(on / off)
