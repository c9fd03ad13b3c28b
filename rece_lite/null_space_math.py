"""Null-space edits: UCE's erase term with the kept rows' outputs held exactly (SPEED, AlphaEdit).

References:
    Li et al., *SPEED: Scalable, Precise, and Efficient Concept Erasure for Diffusion Models*
    (arXiv 2503.07392): the null-space constraint and Influence-based Prior Filtering.
    Fang et al., *AlphaEdit: Null-Space Constrained Knowledge Editing for Language Models*,
    ICLR 2025: the projector.

An edit ``W' = W + Δ`` with ``Δ = Δ P``, ``P`` the projector onto the orthogonal complement of
the kept rows (:func:`null_space_projector`), leaves ``W c_j`` unchanged for every kept row c_j.
:func:`null_space_weights` minimises UCE's erase and λ terms under that constraint;
:func:`null_space_map` is the same edit as one ``d x d`` matrix shared by every K/V projection;
:func:`influence` and :func:`filter_priors` choose which rows to hold.

Pure torch, with :mod:`rece_lite.closed_form`'s conventions (rows are embeddings; float64 solves on
:func:`~rece_lite.solve.solve_device`).  :mod:`rece_lite.closed_form` re-exports every name here, and
:mod:`rece_lite.null_space` applies the edit to a pipeline.
"""

from __future__ import annotations

import torch

from rece_lite.settings import EDIT
from rece_lite.solve import _back, _check_finite, _f64, _number, _rows, check_uce_settings, solve_device


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
    lamb: float = EDIT.lamb,
    erase_scale: float = EDIT.erase_scale,
    rank_tol: float = 1e-6,
) -> torch.Tensor:
    """UCE's erase and λ terms, minimised with the kept rows' outputs held exactly (SPEED, AlphaEdit).

    Minimises ``s_e Σ_i ‖W' c_i − v*_i‖² + λ‖W' − W‖²`` subject to ``W' c_j = W c_j`` for
    every kept row c_j.  Writing ``W' = W + Δ`` with ``Δ = Δ P`` (:func:`null_space_projector`,
    which makes the constraint hold) and setting the gradient within that subspace to zero:

        Δ (λ I + s_e P C_eᵀ C_e P) = s_e R C_e P,    R = V* − W C_eᵀ

        W' = W + s_e R C_e P (λ I + s_e P C_eᵀ C_e P)⁻¹

    (the matrix commutes with P, so Δ = Δ P holds).  It is the limit of
    :func:`~rece_lite.closed_form.uce_weights` as ``preserve_scale → ∞``, without UCE's trade-off: the kept rows'
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
    lamb: float = EDIT.lamb,
    erase_scale: float = EDIT.erase_scale,
    rank_tol: float = 1e-6,
) -> tuple[torch.Tensor, int]:
    """The ``d x d`` matrix M with ``null_space_weights(W, c, W c*, c_keep) == W @ M`` for every W.

    With targets ``v*_i = W c*_i`` the residual is ``R = W (C_g − C_e)ᵀ``, so

        M = I + s_e (C_g − C_e)ᵀ C_e P (λ I + s_e P C_eᵀ C_e P)⁻¹

    and one M serves every key and value matrix, as :func:`~rece_lite.closed_form.uce_map` does.  ``K₀ M = K₀``
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
    and ``G = Σ_l W_lᵀ W_l`` (:func:`~rece_lite.closed_form.gram`).  SPEED's Influence-based Prior Filtering scores kept
    rows this way with the *unconstrained* erase edit, and holds only the most influenced
    (:func:`filter_priors`): the others barely move anyway.

    Args:
        M: (d, d) an edit's map (e.g. :func:`~rece_lite.closed_form.uce_map` with nothing preserved).
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
