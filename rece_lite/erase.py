"""UCE and RECE on a diffusers pipeline; each edit returns a :class:`~rece_lite.patch.Patch`.

Every edit here is ``W ← W · M`` for all cross-attention key/value matrices at once,
with one ``d x d`` matrix ``M`` (see :func:`rece_lite.closed_form.uce_map`).  So:

* a UCE edit costs one ``d x d`` solve plus one product per matrix;
* RECE keeps two Gram matrices, ``H = Σ W_lᵀW_l`` and ``K = Σ W_lᵀW_l^orig``, and
  updates them algebraically after each of its edits (:class:`rece_lite.closed_form.Grams`),
  so a whole run touches the UNet's matrices twice: once to build the Gram, once to
  apply the product of its edits;
* nothing is deep-copied; modules are edited in place (``weight.copy_``), so outside
  references and attention processors stay valid;
* every input is checked, and every new matrix computed and found finite, before the
  first one is written: an edit is applied to all matrices or to none;
* the math runs where the weights live, in float64 (:func:`rece_lite.closed_form.solve_device`:
  on the CPU for a device without float64), and every tensor made here names its device.

The stored edit (:class:`~rece_lite.patch.Patch`, its file format, :func:`~rece_lite.patch.snapshot`)
is :mod:`rece_lite.patch`; its names are re-exported here.  Each call reads what it edits from
the pipeline once, as a :class:`Target` (the K/V modules, the embedding width, the device the
math runs on, the model's fingerprint), and passes it down.  Defaults: :mod:`rece_lite.settings`.
"""

from __future__ import annotations

import numbers
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm

from rece_lite import checks, layers
from rece_lite import closed_form as cf
from rece_lite._version import __version__
from rece_lite.errors import InputError
from rece_lite.loading import check_supported
from rece_lite.patch import (  # noqa: F401  (re-exported: `from rece_lite.erase import Patch` keeps working)
    MAP_KEY,
    Patch,
    _check_names,
    _first_non_finite,
    _same,
    _write,
    snapshot,
)
from rece_lite.settings import EDIT, RECE
from rece_lite.text import check_prompts, encode, last_subject_index

Item = str | torch.Tensor
Tokens = Literal["all", "last_subject"]


# ---------------------------------------------------------------------------- target
@dataclass(frozen=True, eq=False)
class Target:
    """What one edit acts on, read from the pipeline once and passed down.

    Attributes:
        pipe: the pipeline (checked by :func:`rece_lite.pipeline.check_supported`).
        modules: the cross-attention K/V projections by name (:func:`rece_lite.layers.projections`).
        width: d, the width of the embedding they act on.
        device: where the edit's math runs: the K/V weights' device, or the CPU if it lacks
            float64 (:func:`rece_lite.closed_form.solve_device`).
        fingerprint: :func:`rece_lite.layers.fingerprint` of the pipeline, UNet and text encoder (it leaves the K/V
            weights out, so an edit does not change it).
    """

    pipe: object
    modules: dict[str, torch.nn.Linear]
    width: int
    device: torch.device
    fingerprint: str

    @classmethod
    def of(cls, pipe) -> Target:
        check_supported(pipe)
        unet = pipe.unet
        modules = layers.projections(unet)
        device = cf.solve_device(next(iter(modules.values())).weight.device)
        return cls(pipe, modules, layers.embedding_width(unet), device, layers.fingerprint(pipe))

    def weights(self) -> list[torch.Tensor]:
        return [m.weight for m in self.modules.values()]


def _apply_map(target: Target, M: torch.Tensor, metadata: dict[str, str]) -> Patch:
    """``W ← W · M`` for every K/V matrix; all new matrices are checked before any is written."""
    checks.no_unfused_lora(target.modules, "pipe")
    witness = checks.map_witness({n: m.weight for n, m in target.modules.items()})
    new = {}
    cast: dict[tuple, torch.Tensor] = {}  # M in each (device, dtype) the matrices need, converted once
    for name, m in target.modules.items():
        w = m.weight.detach()
        work = torch.promote_types(w.dtype, torch.float32)
        key = (w.device, work)
        if key not in cast:
            cast[key] = M.to(work).to(w.device)
        new[name] = torch.mm(w.to(work), cast[key]).to(w.dtype)
    bad = _first_non_finite(new)
    if bad is not None:
        raise cf.SolveError(f"{bad}: the edited weights overflow {new[bad].dtype} (nothing was changed)")
    _write(target.modules, new)
    return Patch(new, target.fingerprint, metadata, M.detach().to("cpu"), witness)


# ------------------------------------------------------------------------ embeddings
def _as_list(x: Item | Sequence[Item] | None) -> list[Item]:
    if x is None:
        return []
    if isinstance(x, (str, torch.Tensor)) or not isinstance(x, Sequence):
        return [x]
    return list(x)


def _embeddings(target: Target, items: list[tuple[str, Item]], tokens: Tokens) -> list[torch.Tensor]:
    """Each ``(argument name, item)`` as (rows, d) float64 on the target's device; its prompts are encoded in
    one batch."""
    pipe, d, device = target.pipe, target.width, target.device
    if tokens not in ("all", "last_subject"):
        raise InputError(f"tokens must be 'all' or 'last_subject', got {tokens!r}")
    for what, item in items:
        if isinstance(item, str):
            check_prompts(pipe, item, what)
    prompts = [i for _, i in items if isinstance(i, str)]
    enc = iter(encode(pipe, prompts).detach().to(device).double()) if prompts else iter(())
    out = []
    for what, item in items:
        if isinstance(item, str):
            e = next(enc)
            if tokens == "last_subject":
                e = e[last_subject_index(pipe, item)][None]
        elif isinstance(item, torch.Tensor):
            if tokens == "last_subject":
                raise InputError(f"tokens='last_subject' needs {what} as prompts, not embeddings (positions unknown)")
            if item.is_complex() or not item.is_floating_point():
                raise TypeError(f"{what}: embeddings must be real floating-point tensors, got {item.dtype}")
            if item.numel() == 0:
                raise InputError(f"{what}: the embedding is empty {tuple(item.shape)}; give (T, {d}) rows")
            e = item.detach().to(device).double()
            e = e.reshape(-1, e.shape[-1]) if e.ndim >= 1 else e
        else:
            raise TypeError(
                f"{what} items must be prompts (str) or (T, d) embedding tensors, got {type(item).__name__}"
            )
        if e.ndim != 2 or e.shape[-1] != d:
            shape = tuple(item.shape) if isinstance(item, torch.Tensor) else tuple(e.shape)
            raise InputError(f"{what} embedding has shape {shape}, but this model's cross-attention expects (T, {d})")
        if not torch.isfinite(e).all():
            raise InputError(f"{what} embedding contains NaN or inf")
        out.append(e)
    return out


def _show(item: Item) -> str:
    return repr(item) if isinstance(item, str) else f"a {tuple(item.shape)} tensor"


def _erase_rows(
    target: Target, erase: list[Item], guide: list[Item], preserve: list[Item], tokens: Tokens
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Per erase item its (rows, d) embedding and its guide's, row-aligned; the preserve rows (n, d).

    Refuses edits that would change nothing or contradict themselves: the empty prompt as
    a concept, an item erased toward itself, an item both erased and preserved.
    """
    if not erase:
        raise InputError("erase: nothing to erase: give at least one concept")
    for item in erase:
        if isinstance(item, str) and not item.strip():
            raise InputError(
                "erase: the empty prompt is the unconditional branch every picture is guided away from; "
                "erasing it changes every image. Give a concept to erase"
            )
    if len(guide) == 1:
        guide = guide * len(erase)
    if len(guide) != len(erase):
        raise InputError(f"give one guide for all erase items or one per item: {len(erase)} erase, {len(guide)} guide")
    both = _embeddings(target, [("erase", e) for e in erase] + [("guide", g) for g in guide], tokens)
    ce, cg = both[: len(erase)], both[len(erase) :]
    cp = _embeddings(target, [("preserve", p) for p in preserve], tokens)
    for item, a, b in zip(erase, ce, cg):
        if a.shape != b.shape:
            raise InputError(
                f"an erase item and its guide must have the same number of tokens: {tuple(a.shape)} vs {tuple(b.shape)}"
            )
        if torch.equal(a, b):
            raise InputError(
                f"erase: {_show(item)} is its own guide, so the edit would change nothing; give another guide"
            )
    for item, p in zip(preserve, cp):
        if any(p.shape == a.shape and torch.equal(p, a) for a in ce):
            raise InputError(
                f"preserve: {_show(item)} is also erased; a concept cannot be erased and preserved at once: "
                "drop it from preserve"
            )
    keep = torch.cat(cp) if cp else torch.zeros(0, target.width, dtype=torch.float64, device=target.device)
    return ce, cg, keep


def edit_metadata(method: str, **settings) -> dict[str, str]:
    """What a Patch records about the edit that made it: method, settings, package version."""
    return {"method": method, "version": __version__, **{k: str(v) for k, v in settings.items()}}


# ----------------------------------------------------------------------------- UCE
def uce_erase(
    pipe,
    erase: Item | Sequence[Item],
    guide: Item | Sequence[Item] = "",
    preserve: Sequence[Item] = (),
    *,
    lamb: float = EDIT.lamb,
    erase_scale: float = EDIT.erase_scale,
    preserve_scale: float = EDIT.preserve_scale,
    tokens: Tokens = "all",
) -> Patch:
    """Erase concepts with UCE's closed form, editing ``pipe`` in place.

    Args:
        pipe: a Stable Diffusion 1.x pipeline.
        erase: prompts or (T, d) embeddings of what to erase (not the empty prompt).
        guide: what the erased concepts should look like instead: one item for all or
            one per erase item (default: the empty prompt, the unconditional branch).
        preserve: prompts or embeddings whose keys and values must not change (not
            an erased item).
        lamb: λ > 0, the pull toward the current weights.
        erase_scale: s_e ≥ 0.
        preserve_scale: s_p ≥ 0.
        tokens: ``"all"`` (every padded position, as RECE) or ``"last_subject"`` (each
            prompt's last word token, as the newer UCE code).

    Returns:
        A :class:`Patch` of the edited matrices, with the edit's map ``M``.
    """
    target = Target.of(pipe)
    cf.check_uce_settings(lamb, erase_scale, preserve_scale)
    ce, cg, cp = _erase_rows(target, _as_list(erase), _as_list(guide), _as_list(preserve), tokens)
    M = cf.uce_map(torch.cat(ce), torch.cat(cg), cp, lamb=lamb, erase_scale=erase_scale, preserve_scale=preserve_scale)
    meta = edit_metadata("uce", lamb=lamb, erase_scale=erase_scale, preserve_scale=preserve_scale, tokens=tokens)
    return _apply_map(target, M, meta)


# ----------------------------------------------------------------------------- RECE
def _check_original(target: Target, original: Patch | None) -> dict[str, torch.Tensor]:
    """``original``'s weights in the pipeline's module order, if it is a snapshot of this model."""
    if original is None:
        raise InputError("original= is required: the rl.snapshot(pipe) taken before the erasure")
    if not isinstance(original, Patch):
        raise TypeError(
            f"original= must be a Patch (rl.snapshot(pipe) before the erasure), got {type(original).__name__}"
        )
    fp = target.fingerprint
    if not layers.same_model(original.fingerprint, fp):
        raise InputError(f"original= is a snapshot of model {original.fingerprint}, not of this one ({fp})")
    names = list(target.modules)
    _check_names(set(original.weights), set(names), "original=")
    return {n: original.weights[n] for n in names}


def _holds(mods: dict[str, torch.nn.Linear], weights: dict[str, torch.Tensor]) -> bool:
    """Whether every matrix holds exactly ``weights`` (same dtype, same values)."""
    return all(_same(m.weight.detach(), weights[n]) for n, m in mods.items())


def derive_embedding(
    pipe,
    concept: Item,
    *,
    original: Patch,
    reg: cf.Reg = RECE.reg,
    reg_scale: float = RECE.reg_scale,
    old_target: Item | None = None,
    tokens: Tokens = "all",
) -> torch.Tensor:
    """RECE's closed-form embedding that makes the *edited* ``pipe`` act like ``original`` on ``concept``.

    Args:
        pipe: the edited pipeline.
        concept: prompt or (T, d) embedding of the erased concept.
        original: :func:`snapshot` of the weights before erasure.
        reg: ``"zero" | "standard" | "surrogate"`` (see :func:`rece_lite.closed_form.derive_embedding`).
        reg_scale: λ'.
        old_target: for ``reg="standard"``: prompt or embedding of the old target concept.

    Returns:
        (T, d) in the text encoder's dtype, on its device; feed it to the pipeline as
        ``prompt_embeds=c[None]``.
    """
    target = Target.of(pipe)
    checks.non_blank(concept, "concept")
    checks.non_blank(old_target, "old_target")
    cf.check_derivation_settings(reg, reg_scale)
    orig = _check_original(target, original)
    dev, mods = target.device, target.modules
    (c,) = _embeddings(target, [("concept", concept)], tokens)
    old = _embeddings(target, [("old_target", old_target)], tokens) if old_target is not None else []
    H = cf.gram(target.weights())
    # K only ever appears as K cᵀ = Σ W_lᵀ (W_l^orig cᵀ): T columns instead of d
    Kc = sum(m.weight.detach().to(dev).double().T @ (orig[n].to(dev).double() @ c.T) for n, m in mods.items())
    out = cf.derive_embedding(H, None, c, reg=reg, reg_scale=reg_scale, old_target=old[0] if old else None, Kc=Kc)
    te = pipe.text_encoder
    return out.to(te.dtype).to(te.device)


@dataclass(frozen=True)
class ReceResult:
    """What :func:`rece_erase` did.

    Attributes:
        patch: the final edited matrices (already written into the pipeline); its map is
            the product of the maps below.
        derived: per epoch, the embedding derived before that epoch's edit: (T, d) for
            one concept, (n, T, d) for several.
        seconds: wall time of the whole call (text encoding included).
        maps: per edit (the initial UCE, if any, then one per epoch), its (d, d) matrix M.
    """

    patch: Patch
    derived: list[torch.Tensor]
    seconds: float
    maps: list[torch.Tensor]


def _check_epochs(epochs: object) -> int:
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral):
        raise TypeError(f"epochs must be a whole number, got {type(epochs).__name__} {epochs!r}")
    if epochs < 0:
        raise InputError(f"epochs must be >= 0, got {epochs}")
    return int(epochs)


def _start_grams(
    target: Target, original: Patch | None, orig: dict[str, torch.Tensor] | None, already_edited: bool
) -> cf.Grams:
    """RECE's Gram state for ``pipe``'s current weights against ``original`` (default: the current ones).

    ``orig``: ``original``'s weights in module order (see :func:`_check_original`).
    """
    mods = target.modules
    current = target.weights()
    if original is None or orig is None:
        return cf.Grams.start(cf.gram(current))  # the current weights are the original
    if not already_edited and _holds(mods, orig):
        return cf.Grams.start(original.gram.to(target.device))  # reuse the snapshot's Gram
    # the pipe was edited since the snapshot (said so or not): H against the current weights, K across
    return cf.Grams.start(cf.gram(current), cf.gram(current, [orig[n] for n in mods]))


def rece_erase(
    pipe,
    erase: Item | Sequence[Item] | None = None,
    guide: Item | Sequence[Item] = "",
    preserve: Sequence[Item] = (),
    *,
    epochs: int = RECE.epochs,
    reg: cf.Reg = RECE.reg,
    reg_scale: float = RECE.reg_scale,
    lamb: float = EDIT.lamb,
    erase_scale: float = EDIT.erase_scale,
    preserve_scale: float = EDIT.preserve_scale,
    old_target: Item | None = None,
    already_edited: bool = False,
    original: Patch | None = None,
    tokens: Tokens = "all",
    progress: bool = False,
    concepts: Item | Sequence[Item] | None = None,
    hold_erased: bool = False,
) -> ReceResult:
    """RECE: UCE, then ``epochs`` rounds of derive-an-embedding + erase-it, in place.

    Without ``already_edited``, the first step is the UCE edit of ``erase`` toward
    ``guide`` with ``preserve``.  Each epoch derives, for every concept, the embedding
    that makes the current model reproduce the original model's keys/values
    (:func:`rece_lite.closed_form.derive_embedding`), then applies one UCE edit that
    maps those embeddings to the guide, relative to the current weights, as the
    official loop does.

    Args:
        erase: prompts or (T, d) embeddings of the concepts to erase.
        guide: one item for all, or one per concept (default: the empty prompt).
        preserve: prompts or embeddings to preserve in every edit.
        epochs: rounds of derivation + edit (paper: 1-3; default :data:`rece_lite.settings.RECE`'s 3,
            the top of the paper's range; a :class:`~rece_lite.recipes.Recipe` defaults to 2, see there).
        reg, reg_scale, old_target: the derivation's regulariser and λ'.
        lamb, erase_scale, preserve_scale: the UCE edits' settings.
        already_edited: skip the initial UCE (``pipe`` is already erased); then
            ``original`` (a :func:`snapshot` from before erasure) is required.
        original: the pre-erasure weights; default: ``pipe``'s current weights.  It need
            not be what ``pipe`` holds now: the derivations always aim at ``original``.
        tokens: see :func:`uce_erase`.
        progress: show a progress bar over epochs.
        concepts: the old name of ``erase`` (deprecated).
        hold_erased: each epoch's edit also preserves the ``erase`` items' rows, at the keys and
            values the edits so far gave them (not in the official code, which preserves only
            ``preserve``).  An epoch is fit to the derived embeddings and the preserved rows
            alone, so it can carry the erased prompts back toward the concept; this holds them
            where UCE put them.  The miniature model's recipe sets it (``tiny_recipe``'s table).
    """
    t0 = time.perf_counter()
    if concepts is not None:
        if erase is not None:
            raise TypeError("give erase= only (concepts= is its old name)")
        warnings.warn("rece_erase(concepts=...) is now rece_erase(erase=...)", DeprecationWarning, stacklevel=2)
        erase = concepts
    target = Target.of(pipe)
    epochs = _check_epochs(epochs)
    cf.check_uce_settings(lamb, erase_scale, preserve_scale)
    cf.check_derivation_settings(reg, reg_scale)
    if already_edited and original is None:
        raise InputError("already_edited=True needs original= (a snapshot taken before the erasure)")
    orig = _check_original(target, original) if original is not None else None
    per_concept, guides, cp = _erase_rows(target, _as_list(erase), _as_list(guide), _as_list(preserve), tokens)
    ce, cg = torch.cat(per_concept), torch.cat(guides)
    old = _embeddings(target, [("old_target", old_target)], tokens)[0] if old_target is not None else None
    uce = dict(lamb=lamb, erase_scale=erase_scale, preserve_scale=preserve_scale)

    # 1. the Gram state of the current weights against the original ones
    grams = _start_grams(target, original, orig, already_edited)
    maps: list[torch.Tensor] = []

    def edit(state: cf.Grams, erase_rows: torch.Tensor, keep: torch.Tensor) -> cf.Grams:
        M = cf.uce_map(erase_rows, cg, keep, **uce)
        maps.append(M.float())
        return state.after(M)

    # 2. UCE, then per epoch: derive the embeddings that undo the edits so far, erase them too
    if not already_edited:
        grams = edit(grams, ce, cp)
    keep_epochs = torch.cat([cp, ce]) if hold_erased else cp
    derived = []
    for _ in tqdm(range(epochs), desc="RECE epochs", disable=not progress):
        new = [grams.derive(c, reg=reg, reg_scale=reg_scale, old_target=old) for c in per_concept]
        derived.append(new[0] if len(new) == 1 else torch.stack(new))
        grams = edit(grams, torch.cat(new), keep_epochs)
    Q = grams.Q
    del grams  # free the Gram matrices before the new weights are allocated

    # 3. the product of the edits, applied to the weights once
    te = pipe.text_encoder
    derived = [x.to(te.dtype).to(te.device) for x in derived]
    meta = edit_metadata("rece", epochs=epochs, reg=reg, reg_scale=reg_scale, tokens=tokens, **uce,
                         **({"hold_erased": True} if hold_erased else {}))  # fmt: skip
    patch = _apply_map(target, Q, meta)
    return ReceResult(patch, derived, time.perf_counter() - t0, maps)

