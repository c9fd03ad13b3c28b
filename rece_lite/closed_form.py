"""The closed forms of UCE and RECE, as pure tensor functions.

References:
    Gandikota et al., *Unified Concept Editing in Diffusion Models*, WACV 2024
    (arXiv 2308.14761), eq. 7.
    Gong et al., *Reliable and Efficient Concept Erasure of Text-to-Image
    Diffusion Models*, ECCV 2024 (arXiv 2407.12383), §3.2-3.3.

Conventions: embeddings are *rows* (``c`` of shape ``(n, d)``); a projection is
``W`` of shape ``(out, d)`` acting as ``W @ c.T``.  Every ``d x d`` system is
solved in float64 with ``torch.linalg.solve`` (never an explicit inverse): the
matrices are ``λ I`` plus a low-rank Gram, badly conditioned, and float32
solves drift by about a percent.  Results come back in the caller's dtype.

Devices: each function solves on its inputs' device (:func:`solve_device`: the
device itself where it has float64, as CUDA and the CPU do; the CPU for Apple's
``mps``, which has none) and names that device for every tensor it creates.

No diffusers here: these functions run on toy matrices (notebook 1) and on the
stacked K/V weights of a real UNet alike.  Their defaults (λ, s_e, s_p, the regulariser and
λ') are :data:`rece_lite.settings.EDIT` and :data:`rece_lite.settings.RECE`, the standard
library's dataclasses: this module still needs nothing but torch.

The float64 plumbing shared with the null-space edits (:func:`solve_device`, :class:`SolveError`,
:func:`check_uce_settings`) lives in :mod:`rece_lite.solve`; the null-space edits themselves
(:func:`null_space_weights`, :func:`null_space_map`, ...) in :mod:`rece_lite.null_space_math`.
Both are re-exported here, so ``closed_form.null_space_map`` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from rece_lite.settings import EDIT, RECE
from rece_lite.solve import (  # noqa: F401  (SolveError, solve_device, check_uce_settings: public here too)
    SolveError,
    _back,
    _check_finite,
    _f64,
    _number,
    _rows,
    check_uce_settings,
    solve_device,
)

Reg = Literal["zero", "standard", "surrogate"]
REGULARISERS: tuple[str, ...] = ("zero", "standard", "surrogate")


def check_derivation_settings(reg: str, reg_scale: float) -> None:
    """Refuse a regulariser or λ' the RECE derivation cannot use, naming the argument."""
    if reg not in REGULARISERS:
        raise ValueError(f"reg must be one of {REGULARISERS}, got {reg!r}")
    if _number("reg_scale", reg_scale) < 0 or (reg != "surrogate" and reg_scale == 0):
        raise ValueError(f"reg_scale must be > 0 for reg={reg!r}, got {reg_scale}")


def uce_weights(
    W: torch.Tensor,
    erase: torch.Tensor,
    targets: torch.Tensor,
    preserve: torch.Tensor | None = None,
    *,
    lamb: float = EDIT.lamb,
    erase_scale: float = EDIT.erase_scale,
    preserve_scale: float = EDIT.preserve_scale,
) -> torch.Tensor:
    """UCE's closed-form edit of one projection matrix (UCE eq. 7).

    Minimises ``λ‖W'−W‖² + s_e Σ_i ‖W' c_i − v*_i‖² + s_p Σ_j ‖W' c_j − W c_j‖²``:

        W' = (λ W + s_e Σ v*_i c_iᵀ + s_p Σ W c_j c_jᵀ)(λ I + s_e Σ c_i c_iᵀ + s_p Σ c_j c_jᵀ)⁻¹

    Args:
        W: (out, d) current weights.
        erase: (n, d) embeddings of the concept to erase, c_i.
        targets: (n, out) what W' should output for them, v*_i (UCE: ``W c*_i``).
        preserve: (m, d) embeddings whose outputs must not change, c_j.
        lamb: λ > 0, the pull toward the current weights.
        erase_scale: s_e ≥ 0.
        preserve_scale: s_p ≥ 0.

    Returns:
        (out, d) the edited weights, in ``W``'s dtype, on its device.
    """
    check_uce_settings(lamb, erase_scale, preserve_scale)
    dev, d = solve_device(W.device), W.shape[1]
    W64, ce, cp = _f64(W, dev, "W"), _rows(erase, d, dev, "erase"), _rows(preserve, d, dev, "preserve")
    v = _f64(targets, dev, "targets").reshape(-1, W.shape[0])
    if v.shape[0] != ce.shape[0]:
        raise ValueError(f"{ce.shape[0]} erase embeddings but {v.shape[0]} targets")
    A = lamb * torch.eye(d, dtype=torch.float64, device=dev) + erase_scale * ce.T @ ce + preserve_scale * cp.T @ cp
    B = lamb * W64 + erase_scale * v.T @ ce + preserve_scale * (W64 @ cp.T) @ cp
    # W' = B A⁻¹  <=>  A W'ᵀ = Bᵀ (A is symmetric)
    return _back(_check_finite(torch.linalg.solve(A, B.T).T, "the UCE solve"), W)


def uce_map(
    erase: torch.Tensor,
    guide: torch.Tensor,
    preserve: torch.Tensor | None = None,
    *,
    lamb: float = EDIT.lamb,
    erase_scale: float = EDIT.erase_scale,
    preserve_scale: float = EDIT.preserve_scale,
) -> torch.Tensor:
    """The ``d x d`` matrix M with ``uce_weights(W, c, W c*, c_p) == W @ M`` for *every* W.

    Because UCE's targets are the current matrix applied to other embeddings
    (``W c*_i`` and ``W c_j``), the edit factors through the embedding space:

        M = (λ I + s_e Σ c*_i c_iᵀ + s_p Σ c_j c_jᵀ)(λ I + s_e Σ c_i c_iᵀ + s_p Σ c_j c_jᵀ)⁻¹

    One M serves every key and value matrix of every layer.

    Args:
        erase: (n, d) erase embeddings c_i.
        guide: (n, d) guide embeddings c*_i, row-aligned with ``erase``.
        preserve: (m, d) preserve embeddings c_j.

    Returns:
        (d, d) float64, on :func:`solve_device` of ``erase``'s device.
    """
    check_uce_settings(lamb, erase_scale, preserve_scale)
    dev, d = solve_device(erase.device), erase.shape[-1]
    ce, cg, cp = _rows(erase, d, dev, "erase"), _rows(guide, d, dev, "guide"), _rows(preserve, d, dev, "preserve")
    if cg.shape != ce.shape:
        raise ValueError(
            f"erase and guide embeddings must align row by row, got {tuple(ce.shape)} and {tuple(cg.shape)}"
        )
    keep = preserve_scale * cp.T @ cp
    keep.diagonal().add_(lamb)
    A = torch.addmm(keep, ce.T, ce, alpha=erase_scale)
    N = torch.addmm(keep, cg.T, ce, alpha=erase_scale)
    return _check_finite(torch.linalg.solve(A, N.T).T, "the UCE solve")


def gram(weights: list[torch.Tensor], others: list[torch.Tensor] | None = None) -> torch.Tensor:
    """``Σ_l W_lᵀ V_l`` in float64 (``V_l = W_l`` when ``others`` is None).

    Args:
        weights: (out_l, d) matrices W_l.
        others: (out_l, d) matrices V_l, one per W_l.

    Returns:
        (d, d) float64, on :func:`solve_device` of the first matrix's device.
    """
    if not weights:
        raise ValueError("no matrices given")
    if others is not None and len(others) != len(weights):
        raise ValueError(f"{len(weights)} weights but {len(others)} others")
    dev, d = solve_device(weights[0].device), weights[0].shape[1]
    for w in [*weights, *(others or [])]:
        if w.is_complex():
            raise TypeError(f"gram: a complex matrix ({w.dtype}); the closed forms take real tensors")
    # one float64 buffer per operand and one for the product, reused matrix after matrix
    rows = max(w.shape[0] for w in weights)
    w64 = torch.empty(rows, d, dtype=torch.float64, device=dev)
    v64 = w64 if others is None else torch.empty(rows, d, dtype=torch.float64, device=dev)
    prod, acc = torch.empty(d, d, dtype=torch.float64, device=dev), torch.zeros(d, d, dtype=torch.float64, device=dev)
    for i, w in enumerate(weights):
        a = w64[: w.shape[0]].copy_(w.detach())
        b = a if others is None else v64[: w.shape[0]].copy_(others[i].detach())
        acc += torch.mm(a.T, b, out=prod)
    return acc


def derive_embedding(
    H: torch.Tensor,
    K: torch.Tensor | None,
    concept: torch.Tensor,
    *,
    reg: Reg = RECE.reg,
    reg_scale: float = RECE.reg_scale,
    old_target: torch.Tensor | None = None,
    Kc: torch.Tensor | None = None,
) -> torch.Tensor:
    """RECE's closed-form embedding c' that makes the edited model act like the original on c.

    Minimises ``Σ_l ‖W_l c' − W_l^orig c‖² + R(c')`` for each row c of ``concept``, with
    ``H = Σ_l W_lᵀ W_l`` and ``K = Σ_l W_lᵀ W_l^orig`` (see :func:`gram`):

    ============  ===============================  ==========================================
    ``reg``       R(c')                            solution
    ============  ===============================  ==========================================
    ``zero``      λ'‖c'‖²                          (λ'I + H) c' = K c
    ``standard``  λ'‖c' − c_old‖²                  (λ'I + H) c' = λ' c_old + K c
    ``surrogate`` λ' Σ_l ‖W_l c' − W_l c‖²         (1+λ') H c' = K c + λ' H c
    ============  ===============================  ==========================================

    With the edits so far written as ``W_l = W_l^orig P`` and ``G = Σ W_l^origᵀ W_l^orig``,
    ``H = Pᵀ G P`` and ``K = Pᵀ G``: nothing here depends on the number of layers.

    Args:
        H: (d, d) Σ W_lᵀ W_l of the current (edited) matrices.
        K: (d, d) Σ W_lᵀ W_l^orig.
        concept: (T, d) the concept's embeddings c (one row per token).
        reg: which regulariser (RECE's close_regzero / close_standardreg / close_surrogatereg).
        reg_scale: λ' > 0 (``surrogate``: ≥ 0).
        old_target: (T, d) c_old, required by ``standard``.
        Kc: (d, T) ``K @ concept.T``, if already known (then ``K`` may be None): computing
            ``Σ_l W_lᵀ (W_l^orig cᵀ)`` directly costs T columns instead of d.

    Returns:
        (T, d) c', in ``concept``'s dtype, on its device.
    """
    check_derivation_settings(reg, reg_scale)
    if K is None and Kc is None:
        raise ValueError("give K (Σ W_lᵀ W_l^orig) or Kc (K @ concept.T)")
    dev, d = solve_device(H.device), H.shape[0]
    c = _rows(concept, d, dev, "concept")
    H64 = _f64(H, dev, "H")
    rhs = _f64(Kc, dev, "Kc") if Kc is not None else _f64(K, dev, "K") @ c.T  # (d, T)
    if reg == "surrogate":
        A = (1 + reg_scale) * H64
        rhs = rhs + reg_scale * H64 @ c.T
    else:
        A = reg_scale * torch.eye(d, dtype=torch.float64, device=dev) + H64
        if reg == "standard":
            if old_target is None:
                raise ValueError("reg='standard' needs old_target= (the embedding of the old target concept)")
            old = _rows(old_target, d, dev, "old_target")
            if old.shape != c.shape:
                raise ValueError(f"old_target must have the concept's shape {tuple(c.shape)}, got {tuple(old.shape)}")
            rhs = rhs + reg_scale * old.T
    out = _check_finite(torch.linalg.solve(A, rhs).T, "the RECE derivation")
    return _back(out.reshape(concept.shape), concept)


@dataclass(frozen=True, eq=False)
class Grams:
    """RECE's running state: the Gram matrices of the current weights, kept up to date by algebra.

    With ``W_l`` the current K/V matrices and ``W_l^orig`` the original ones,

        H = Σ_l W_lᵀ W_l,    K = Σ_l W_lᵀ W_l^orig,

    and ``Q`` the product of the edits made since :meth:`start`.  An edit ``W_l ← W_l M``
    takes the state to ``H ← Mᵀ H M``, ``K ← Mᵀ K``, ``Q ← Q M`` (:meth:`after`), so a
    whole RECE run reads the UNet's matrices once, to start, and writes them once, ``W · Q``.

    Attributes:
        H: (d, d) float64.
        K: (d, d) float64.
        Q: (d, d) float64; the identity at the start.
    """

    H: torch.Tensor
    K: torch.Tensor
    Q: torch.Tensor

    @classmethod
    def start(cls, H: torch.Tensor, K: torch.Tensor | None = None) -> Grams:
        """The state before this run's first edit.

        Args:
            H: (d, d) ``Σ W_lᵀ W_l`` of the current matrices (see :func:`gram`).
            K: (d, d) ``Σ W_lᵀ W_l^orig``; default ``H`` (the current matrices are the original).
        """
        eye = torch.eye(H.shape[0], dtype=torch.float64, device=H.device)
        return cls(H, H if K is None else K, eye)

    def after(self, M: torch.Tensor) -> Grams:
        """The state after the edit ``W_l ← W_l M`` of every matrix.

        Args:
            M: (d, d) float64, e.g. :func:`uce_map`.
        """
        return Grams(M.T @ self.H @ M, M.T @ self.K, self.Q @ M)

    def derive(self, concept: torch.Tensor, **settings) -> torch.Tensor:
        """:func:`derive_embedding` against this state (``settings``: reg, reg_scale, old_target)."""
        return derive_embedding(self.H, self.K, concept, **settings)


def residual(H: torch.Tensor, K: torch.Tensor, G: torch.Tensor, c_new: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``Σ_l ‖W_l c' − W_l^orig c‖²`` per row, from Gram matrices alone (float64).

    Expanding the square: c'ᵀ H c' − 2 c'ᵀ K c + cᵀ G c, with ``G = Σ W_l^origᵀ W_l^orig``.
    """
    dev, d = solve_device(H.device), H.shape[0]
    x, y = _f64(c_new, dev, "c_new").reshape(-1, d), _f64(c, dev, "c").reshape(-1, d)
    H64, K64, G64 = _f64(H, dev, "H"), _f64(K, dev, "K"), _f64(G, dev, "G")
    return ((x @ H64) * x).sum(1) - 2 * ((x @ K64) * y).sum(1) + ((y @ G64) * y).sum(1)


# the null-space edits (SPEED, AlphaEdit), kept importable from here as before
from rece_lite.null_space_math import (  # noqa: E402
    NoRoomError,
    check_rank_tol,
    filter_priors,
    influence,
    null_space_map,
    null_space_projector,
    null_space_weights,
)

__all__ = [
    "REGULARISERS", "Grams", "NoRoomError", "Reg", "SolveError", "check_derivation_settings", "check_rank_tol",
    "check_uce_settings", "derive_embedding", "filter_priors", "gram", "influence", "null_space_map",
    "null_space_projector", "null_space_weights", "residual", "solve_device", "uce_map", "uce_weights",
]  # fmt: skip
