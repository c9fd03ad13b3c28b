"""Null-space erasure on a diffusers pipeline: erase concepts while the kept ones stay *exactly* as they were.

UCE trades its erase rows against its preserve rows in one least-squares objective, so the
kept concepts' keys and values move a little with every edit (a floor that shrinks only as
``preserve_scale → ∞``).  SPEED (Li et al., arXiv 2503.07392) and AlphaEdit (Fang et al.,
ICLR 2025) instead confine the edit to the null space of the kept rows:

    W' = W M,   M = I + s_e (C_g − C_e)ᵀ C_e P (λ I + s_e P C_eᵀ C_e P)⁻¹,   P = I − K₀ᵀ(K₀K₀ᵀ)⁺K₀

(:func:`rece_lite.closed_form.null_space_map`), so ``W' c_j = W c_j`` for every kept row, and
the erase rows move only as far as their part outside the kept rows' span allows.  The null
space has ``d − rank(K₀)`` dimensions: 64 minus the kept rows' rank on the miniature model,
768 minus it on Stable Diffusion 1.x.  A keep set of full rank leaves no room, and the edit
is refused (:class:`rece_lite.closed_form.NoRoomError`) rather than silently doing nothing.

* :func:`null_space_erase` — the one-shot edit (SPEED without its prior selection).
* :func:`null_space_rece` — RECE's loop with every edit confined to the same null space:
  derive the embedding that brings the concept back, erase it too, keep the kept rows.

Both edit every cross-attention key/value matrix in place, all or none, and return what
:func:`rece_lite.uce_erase` / :func:`rece_lite.rece_erase` return.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from rece_lite import closed_form as cf
from rece_lite.erase import (
    Item,
    Patch,
    ReceResult,
    Target,
    Tokens,
    _apply_map,
    _as_list,
    _check_epochs,
    _erase_rows,
    edit_metadata,
)
from rece_lite.settings import EDIT, NULL_SPACE, RECE

#: The default rank tolerance of the pipeline edits: every direction of the kept rows is held,
#: up to rounding (:func:`rece_lite.closed_form.null_space_projector`).
RANK_TOL = NULL_SPACE.rank_tol

#: The miniature model's rank tolerance, with its recipe's preserve forms as the keep set and
#: ``tokens="all"``: there 12 kept forms x 16 token rows span all 64 dimensions, so holding
#: every direction leaves no room (:class:`~rece_lite.closed_form.NoRoomError`).  Chosen on
#: seeds 0-7 (:func:`rece_lite.measure.measure`, 20 steps; red toward grey, circle toward ""; "showing":
#: "a red …" / "a … circle" pictures still showing it; "kept": the other concepts' pictures
#: right, as a share of the original's), as the largest mean of kept − showing:
#:
#: =========  ==========================  ==========================
#: rank_tol   red: rank, showing, kept    circle: rank, showing, kept
#: =========  ==========================  ==========================
#: UCE        -, 3%, 79%                  -, 20%, 100%
#: 1e-4       63, 100%, 100%              60, 60%, 71%
#: 3e-4       59, 0%, 100%                51, 40%, 93%
#: 1e-3       45, 0%, 88%                 39, 30%, 97%
#: 3e-3       30, 0%, 94%                 25, 20%, 100%
#: =========  ==========================  ==========================
#:
#: Notebook 10 measures it on seeds 100 and up.
from rece_lite.recipes import TINY_RANK_TOL as TINY_RANK_TOL  # noqa: E402  (stated with the recipe that uses it)


def _rows_and_room(target: Target, erase, guide, keep, tokens, rank_tol, prior=None):
    """Erase/guide rows per item, the kept rows to hold, and their projector and rank.

    ``prior``: ``(lamb, erase_scale)`` to hold only the kept rows above the mean influence
    (:func:`rece_lite.closed_form.filter_priors`); None holds them all.  Refuses a keep set
    of full rank (:class:`rece_lite.closed_form.NoRoomError`).
    """
    d = target.width
    ce, cg, ck = _erase_rows(target, _as_list(erase), _as_list(guide), _as_list(keep), tokens)
    if prior is not None and ck.shape[0] > 0:
        lamb, erase_scale = prior
        free = cf.uce_map(torch.cat(ce), torch.cat(cg), None, lamb=lamb, erase_scale=erase_scale, preserve_scale=0)
        G = cf.gram(target.weights())
        ck = ck[cf.filter_priors(cf.influence(free, G, ck))]
    P, rank = cf.null_space_projector(ck, d, rank_tol=rank_tol)
    if rank >= d:
        n = len(_as_list(keep))
        raise cf.NoRoomError(
            f"keep: the {ck.shape[0]} kept rows of {n} item(s) span all {d} dimensions of the text embedding "
            f"(rank {rank} at rank_tol={rank_tol:g}), so no edit can keep them exactly and change anything else. "
            "Keep fewer concepts, use tokens='last_subject' (one row per prompt), prior_filter=True, or raise "
            "rank_tol to hold only their main directions; nothing was changed"
        )
    return ce, cg, ck, P, rank, d


def free_share(erase_rows: torch.Tensor, P: torch.Tensor) -> float:
    """``‖C_e P‖² / ‖C_e‖²``: the share of the erase rows outside the kept rows' span, the part an edit can move."""
    return float((erase_rows @ P).norm() ** 2 / erase_rows.norm().clamp_min(1e-300) ** 2)


def null_space_erase(
    pipe,
    erase: Item | Sequence[Item],
    guide: Item | Sequence[Item] = "",
    keep: Sequence[Item] = (),
    *,
    lamb: float = EDIT.lamb,
    erase_scale: float = EDIT.erase_scale,
    rank_tol: float = RANK_TOL,
    tokens: Tokens = "all",
    prior_filter: bool = False,
) -> Patch:
    """Erase concepts, holding the keys and values of ``keep`` exactly, editing ``pipe`` in place.

    Minimises UCE's erase and λ terms, ``s_e Σ_i ‖W' c_i − W c*_i‖² + λ ‖W' − W‖²``, subject
    to ``W' c_j = W c_j`` for every kept row (see :func:`rece_lite.closed_form.null_space_map`).

    Args:
        pipe: a Stable Diffusion pipeline.
        erase: prompts or (T, d) embeddings of what to erase (not the empty prompt).
        guide: one item for all erase items or one per item (default: the empty prompt).
        keep: prompts or embeddings whose rows are held exactly (not an erased item).
        lamb: λ > 0, the pull toward the current weights.
        erase_scale: s_e ≥ 0.
        rank_tol: kept directions with singular value above ``rank_tol · σ_max`` are held;
            the rest are free to move (0 to about 1e-7: all of them, exactly).
        tokens: ``"all"`` or ``"last_subject"`` (see :func:`rece_lite.uce_erase`); applies to
            the erase, guide and kept items alike.
        prior_filter: hold only the kept rows that the unconstrained edit would move more than
            the average kept row (SPEED's Influence-based Prior Filtering,
            :func:`rece_lite.closed_form.influence`): room for keep sets too large to hold whole.

    Returns:
        A :class:`~rece_lite.erase.Patch` with the edit's map; its metadata records ``held_rows``
        (the kept rows held), ``rank``
        (kept directions held), ``null_dims`` (``d − rank``) and ``free_share`` (the share of
        the erase rows outside the kept span: near 0, the edit can barely move them).

    Raises:
        rece_lite.closed_form.NoRoomError: the kept rows span all d dimensions (nothing changed).
    """
    target = Target.of(pipe)
    cf.check_uce_settings(lamb, erase_scale, 0.0)
    cf.check_rank_tol(rank_tol)
    if not isinstance(prior_filter, bool):
        raise TypeError(f"prior_filter must be True or False, got {type(prior_filter).__name__} {prior_filter!r}")
    prior = (lamb, erase_scale) if prior_filter else None
    ce, cg, ck, P, rank, d = _rows_and_room(target, erase, guide, keep, tokens, rank_tol, prior)
    ce, cg = torch.cat(ce), torch.cat(cg)
    M, _ = cf.null_space_map(ce, cg, ck, lamb=lamb, erase_scale=erase_scale, rank_tol=rank_tol)
    meta = edit_metadata(
        "null_space", lamb=lamb, erase_scale=erase_scale, rank_tol=rank_tol, tokens=tokens, prior_filter=prior_filter,
        held_rows=ck.shape[0], rank=rank, null_dims=d - rank, free_share=f"{free_share(ce, P):.4g}",
    )  # fmt: skip
    return _apply_map(target, M, meta)


def null_space_rece(
    pipe,
    erase: Item | Sequence[Item],
    guide: Item | Sequence[Item] = "",
    keep: Sequence[Item] = (),
    *,
    epochs: int = RECE.epochs,
    reg: cf.Reg = RECE.reg,
    reg_scale: float = RECE.reg_scale,
    lamb: float = EDIT.lamb,
    erase_scale: float = EDIT.erase_scale,
    rank_tol: float = RANK_TOL,
    tokens: Tokens = "all",
    progress: bool = False,
) -> ReceResult:
    """RECE's loop with every edit in the kept rows' null space, in place.

    First :func:`null_space_erase`; then per epoch, for every concept, derive the embedding
    c′ that makes the edited model reproduce the original keys and values
    (:func:`rece_lite.closed_form.derive_embedding`, against the weights before this call) and
    erase c′ toward the guide with the same null-space map.  Each map fixes every kept row
    (``M c_j = c_j``), so their product does too: the kept concepts stay exact through all
    epochs.  The derivations run on Gram matrices (:class:`rece_lite.closed_form.Grams`); the
    weights are read once and written once.

    Args: as :func:`null_space_erase`, plus ``epochs``, ``reg``, ``reg_scale`` (as
        :func:`rece_lite.rece_erase`) and ``progress``.

    Returns:
        A :class:`~rece_lite.erase.ReceResult`; its patch's map is the product of the edits.
    """
    t0 = time.perf_counter()
    target = Target.of(pipe)
    epochs = _check_epochs(epochs)
    cf.check_uce_settings(lamb, erase_scale, 0.0)
    cf.check_derivation_settings(reg, reg_scale)
    cf.check_rank_tol(rank_tol)
    per_concept, guides, ck, P, rank, d = _rows_and_room(target, erase, guide, keep, tokens, rank_tol)
    ce, cg = torch.cat(per_concept), torch.cat(guides)
    grams = cf.Grams.start(cf.gram(target.weights()))
    maps: list[torch.Tensor] = []

    def edit(state: cf.Grams, rows: torch.Tensor) -> cf.Grams:
        M, _ = cf.null_space_map(rows, cg, ck, lamb=lamb, erase_scale=erase_scale, rank_tol=rank_tol)
        maps.append(M.float())
        return state.after(M)

    grams = edit(grams, ce)
    derived = []
    for _ in tqdm(range(epochs), desc="null-space RECE epochs", disable=not progress):
        new = [grams.derive(c, reg=reg, reg_scale=reg_scale) for c in per_concept]
        derived.append(new[0] if len(new) == 1 else torch.stack(new))
        grams = edit(grams, torch.cat(new))
    Q = grams.Q
    del grams
    te = pipe.text_encoder
    derived = [x.to(te.dtype).to(te.device) for x in derived]
    meta = edit_metadata(
        "null_space_rece", epochs=epochs, reg=reg, reg_scale=reg_scale, lamb=lamb, erase_scale=erase_scale,
        rank_tol=rank_tol, tokens=tokens, rank=rank, null_dims=d - rank, free_share=f"{free_share(ce, P):.4g}",
    )  # fmt: skip
    patch = _apply_map(target, Q, meta)
    return ReceResult(patch, derived, time.perf_counter() - t0, maps)
