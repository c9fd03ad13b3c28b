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
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Literal

import torch

from rece_lite.settings import EDIT, RECE

Reg = Literal["zero", "standard", "surrogate"]
REGULARISERS: tuple[str, ...] = ("zero", "standard", "surrogate")

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


# ------------------------------------------------------------------ null-space edits
class NoRoomError(ValueError):
    """The kept rows span the whole embedding space: a null-space edit could change nothing."""


def check_rank_tol(rank_tol: float) -> float:
    """Refuse a rank tolerance outside ``[0, 1)``, naming the argument."""
    if not 0 <= _number("rank_tol", rank_tol) < 1:
        raise ValueError(f"rank_tol must be in [0, 1) (a share of the largest singular value), got {rank_tol}")
    return float(rank_tol)


def null_space_projector(keep: torch.Tensor | None, d: int | None = None, *, rank_tol: float = 1e-6):
    """The projector onto the orthogonal complement of the kept rows, and the rank it holds.

    With ``K₀`` the (m, d) kept rows,

        P = I − K₀ᵀ (K₀ K₀ᵀ)⁺ K₀ = I − U_r U_rᵀ,

    ``U_r`` the eigenvectors of ``K₀ᵀ K₀`` whose singular value ``σ = √eigenvalue`` exceeds
    ``rank_tol · σ_max``: those are the directions held exactly.  ``W P c_j = 0`` for every
    kept row c_j (up to the dropped singular values), so any edit ``Δ = Δ P`` leaves
    ``W c_j`` unchanged.  The null space has ``d − rank`` dimensions.

    Float64 eigenvalues are accurate to about ``d · 2e-16`` of the largest, so singular values
    below ``√(d · 2e-16)`` of the largest (1e-7 for d = 64, 4e-7 for d = 768) cannot be told
    from zero and are never held: ``rank_tol`` below that means "exact".

    Args:
        keep: (m, d) kept rows c_j (None or empty: nothing kept, P = I).
        d: the embedding width, needed when ``keep`` is None or empty.
        rank_tol: in [0, 1), a share of the largest singular value.

    Returns:
        ``(P, rank)``: (d, d) float64 on :func:`solve_device` of ``keep``'s device, and the
        number of directions held.
    """
    rank_tol = check_rank_tol(rank_tol)
    if d is None:
        if keep is None or keep.ndim == 0:
            raise ValueError("give d= (the embedding width) when nothing is kept")
        d = keep.shape[-1]
    dev = solve_device(keep.device if keep is not None else "cpu")
    return _projector(_rows(keep, d, dev, "keep"), rank_tol)


def _projector(k: torch.Tensor, rank_tol: float) -> tuple[torch.Tensor, int]:
    """:func:`null_space_projector` of (m, d) float64 rows, on their device."""
    d, dev = k.shape[1], k.device
    eye = torch.eye(d, dtype=torch.float64, device=dev)
    if k.shape[0] == 0:
        return eye, 0
    _check_finite(k, "the kept rows")
    eig, U = torch.linalg.eigh(k.T @ k)  # ascending
    top = max(float(eig[-1]), 0.0)
    # held: σ > rank_tol σ_max, and never a direction at the eigensolver's rounding level
    held = eig > top * max(rank_tol**2, d * torch.finfo(torch.float64).eps)
    Ur = U[:, held]
    return eye - Ur @ Ur.T, int(held.sum())


def _null_space_delta(
    R: torch.Tensor, ce: torch.Tensor, P: torch.Tensor, lamb: float, erase_scale: float
) -> torch.Tensor:
    """``Δ = s_e R C_e P (λ I + s_e P C_eᵀ C_e P)⁻¹`` (float64), the constrained optimum's update."""
    A = erase_scale * P @ (ce.T @ ce) @ P
    A.diagonal().add_(lamb)
    B = erase_scale * (R @ ce) @ P
    return torch.linalg.solve(A, B.T).T  # A symmetric: Δ = B A⁻¹ <=> A Δᵀ = Bᵀ


def _room(rank: int, d: int, rank_tol: float) -> None:
    if rank >= d:
        raise NoRoomError(
            f"the kept rows span all {d} dimensions (rank {rank} at rank_tol={rank_tol:g}): their null space "
            "is empty, so an edit that keeps them exactly changes nothing. Keep fewer rows (fewer concepts, or "
            "tokens='last_subject'), raise rank_tol to hold only their main directions, or use UCE's "
            "least-squares preserve term; nothing was changed"
        )


def null_space_weights(
    W: torch.Tensor,
    erase: torch.Tensor,
    targets: torch.Tensor,
    keep: torch.Tensor | None,
    *,
    lamb: float = 0.1,
    erase_scale: float = 1.0,
    rank_tol: float = 1e-6,
) -> torch.Tensor:
    """UCE's erase and λ terms, minimised with the kept rows' outputs held exactly (SPEED, AlphaEdit).

    Minimises ``s_e Σ_i ‖W' c_i − v*_i‖² + λ‖W' − W‖²`` subject to ``W' c_j = W c_j`` for
    every kept row c_j.  Writing ``W' = W + Δ`` with ``Δ = Δ P`` (:func:`null_space_projector`,
    which makes the constraint hold) and setting the gradient within that subspace to zero:

        Δ (λ I + s_e P C_eᵀ C_e P) = s_e R C_e P,    R = V* − W C_eᵀ

        W' = W + s_e R C_e P (λ I + s_e P C_eᵀ C_e P)⁻¹

    (the matrix commutes with P, so Δ = Δ P holds).  It is the limit of
    :func:`uce_weights` as ``preserve_scale → ∞``, without UCE's trade-off: the kept rows'
    error is zero, not a floor.  SPEED (Li et al., arXiv 2503.07392) writes the same update
    as ``W (S_at − S_tt) P (S_tt P + λ I)⁻¹``.

    Args:
        W: (out, d) current weights.
        erase: (n, d) embeddings of the concept to erase, c_i.
        targets: (n, out) what W' should output for them, v*_i.
        keep: (m, d) rows whose outputs must not change at all, c_j.
        lamb: λ > 0, the pull toward the current weights.
        erase_scale: s_e ≥ 0.
        rank_tol: see :func:`null_space_projector`.

    Returns:
        (out, d) the edited weights, in ``W``'s dtype, on its device.

    Raises:
        NoRoomError: the kept rows have full rank d (nothing was computed).
    """
    check_uce_settings(lamb, erase_scale, 0.0)
    dev, d = solve_device(W.device), W.shape[1]
    W64, ce = _f64(W, dev, "W"), _rows(erase, d, dev, "erase")
    v = _f64(targets, dev, "targets").reshape(-1, W.shape[0])
    if v.shape[0] != ce.shape[0]:
        raise ValueError(f"{ce.shape[0]} erase embeddings but {v.shape[0]} targets")
    P, rank = _projector(_rows(keep, d, dev, "keep"), check_rank_tol(rank_tol))
    _room(rank, d, rank_tol)
    delta = _null_space_delta((v - ce @ W64.T).T, ce, P, lamb, erase_scale)
    return _back(_check_finite(W64 + delta, "the null-space solve"), W)


def null_space_map(
    erase: torch.Tensor,
    guide: torch.Tensor,
    keep: torch.Tensor | None,
    *,
    lamb: float = 0.1,
    erase_scale: float = 1.0,
    rank_tol: float = 1e-6,
) -> tuple[torch.Tensor, int]:
    """The ``d x d`` matrix M with ``null_space_weights(W, c, W c*, c_keep) == W @ M`` for every W.

    With targets ``v*_i = W c*_i`` the residual is ``R = W (C_g − C_e)ᵀ``, so

        M = I + s_e (C_g − C_e)ᵀ C_e P (λ I + s_e P C_eᵀ C_e P)⁻¹

    and one M serves every key and value matrix, as :func:`uce_map` does.  ``K₀ M = K₀``
    row by row for the kept rows (``M c_j = c_j`` acting on columns: ``P c_j = 0``).

    Args:
        erase: (n, d) erase embeddings c_i.
        guide: (n, d) guide embeddings c*_i, row-aligned with ``erase``.
        keep: (m, d) rows held exactly.

    Returns:
        ``(M, rank)``: (d, d) float64 on :func:`solve_device` of ``erase``'s device, and the
        number of kept directions held (the null space has ``d − rank``).

    Raises:
        NoRoomError: the kept rows have full rank d.
    """
    check_uce_settings(lamb, erase_scale, 0.0)
    dev, d = solve_device(erase.device), erase.shape[-1]
    ce, cg = _rows(erase, d, dev, "erase"), _rows(guide, d, dev, "guide")
    if cg.shape != ce.shape:
        raise ValueError(
            f"erase and guide embeddings must align row by row, got {tuple(ce.shape)} and {tuple(cg.shape)}"
        )
    P, rank = _projector(_rows(keep, d, dev, "keep"), check_rank_tol(rank_tol))
    _room(rank, d, rank_tol)
    M = _null_space_delta((cg - ce).T, ce, P, lamb, erase_scale)
    M.diagonal().add_(1.0)
    return _check_finite(M, "the null-space solve"), rank


def influence(M: torch.Tensor, G: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """How far the edit ``W_l ← W_l M`` moves each row's keys and values, over all matrices.

    For each row c_j, ``s_j = √(Σ_l ‖W_l (M − I) c_jᵀ‖²) = √(x_jᵀ G x_j)`` with ``x_j = (M − I) c_jᵀ``
    and ``G = Σ_l W_lᵀ W_l`` (:func:`gram`).  SPEED's Influence-based Prior Filtering scores kept
    rows this way with the *unconstrained* erase edit, and holds only the most influenced
    (:func:`filter_priors`): the others barely move anyway.

    Args:
        M: (d, d) an edit's map (e.g. :func:`uce_map` with nothing preserved).
        G: (d, d) ``Σ_l W_lᵀ W_l``.
        rows: (m, d) the rows to score.

    Returns:
        (m,) float64 scores, on :func:`solve_device` of ``M``'s device.
    """
    dev, d = solve_device(M.device), M.shape[0]
    M64, G64, c = _f64(M, dev, "M"), _f64(G, dev, "G"), _rows(rows, d, dev, "rows")
    X = M64 @ c.T - c.T  # (d, m)
    return ((G64 @ X) * X).sum(0).clamp_min(0).sqrt()


def filter_priors(scores: torch.Tensor) -> torch.Tensor:
    """SPEED's prior filter: the rows whose influence is above the mean (a boolean mask).

    Args:
        scores: (m,) from :func:`influence`.

    Returns:
        (m,) bool, True for the rows to hold exactly.
    """
    if scores.ndim != 1 or scores.numel() == 0:
        raise ValueError(f"scores must be a non-empty 1-d tensor, got shape {tuple(scores.shape)}")
    return scores > scores.mean()
