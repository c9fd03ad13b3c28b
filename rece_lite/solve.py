"""How every closed form solves: in float64, on a device that has it, with its inputs checked.

The ``d x d`` systems of :mod:`rece_lite.closed_form` and :mod:`rece_lite.null_space_math` are
``λ I`` plus a low-rank Gram, badly conditioned: float32 solves drift by about a percent, so
every input is moved to float64 first (:func:`_f64`, :func:`_rows`) and every result cast back
to the caller's dtype (:func:`_back`).  The solve runs on the inputs' device where it has
float64 (the CPU, CUDA) and on the CPU for Apple's ``mps``, which has none (:func:`solve_device`).
A NaN or inf result is refused (:class:`SolveError`), and so is a setting that is not a finite
number (:func:`check_uce_settings`).  Torch only.
"""

from __future__ import annotations

import math
import numbers

import torch

# device types without float64 arithmetic: their solves run on the CPU
_NO_FLOAT64 = frozenset({"mps"})


class SolveError(FloatingPointError):
    """A closed-form solve produced NaN or inf (nothing was changed)."""


def solve_device(device: torch.device | str) -> torch.device:
    """The device that float64 solves for tensors on ``device`` run on.

    The device itself where it has float64 (the CPU, CUDA); the CPU for one that has
    not (Apple ``mps``): results are moved back to the caller's device afterwards.
    """
    device = torch.device(device)
    return torch.device("cpu") if device.type in _NO_FLOAT64 else device


def _f64(x: torch.Tensor, device: torch.device, what: str) -> torch.Tensor:
    """``x`` as float64 on ``device``: moved first, so a device without float64 never holds it."""
    if x.is_complex():
        raise TypeError(f"{what} is a complex tensor ({x.dtype}); the closed forms take real tensors")
    return x.detach().to(device).to(torch.float64)


def _back(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``x`` in ``like``'s dtype and on its device (cast where ``x`` is, then moved)."""
    return x.to(like.dtype).to(like.device)


def _rows(x: torch.Tensor | None, d: int, device: torch.device, what: str) -> torch.Tensor:
    """(n, d) float64 on ``device``; None or an empty tensor gives (0, d)."""
    if x is None or x.numel() == 0:
        return torch.zeros(0, d, dtype=torch.float64, device=device)
    x = _f64(x, device, what).reshape(-1, x.shape[-1])
    if x.shape[1] != d:
        raise ValueError(f"{what} embeddings have width {x.shape[1]}, expected {d}")
    return x


def _check_finite(x: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(x).all():
        raise SolveError(
            f"{what} produced NaN or inf; the inputs contain non-finite values or the system is "
            "singular: raise lamb / reg_scale, or check the embeddings"
        )
    return x


def _number(name: str, value: object) -> float:
    """``value`` as a float, if it is a finite real number (not a bool, a string or a tensor)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return float(value)


def check_uce_settings(lamb: float, erase_scale: float, preserve_scale: float) -> None:
    """Refuse UCE settings the closed form cannot use, naming the argument."""
    if not _number("lamb", lamb) > 0:
        raise ValueError(f"lamb must be > 0 (it keeps the solve well-posed), got {lamb}")
    for name, value in (("erase_scale", erase_scale), ("preserve_scale", preserve_scale)):
        if _number(name, value) < 0:
            raise ValueError(f"{name} must be >= 0, got {value}")
