"""UCE and RECE on a diffusers pipeline, and the :class:`Patch` that holds an edit.

Every edit here is ``W ← W · M`` for all cross-attention key/value matrices at once,
with one ``d x d`` matrix ``M`` (see :func:`rece_lite.closed_form.uce_map`).  So:

* a UCE edit costs one ``d x d`` solve plus one product per matrix;
* RECE keeps two Gram matrices, ``H = Σ W_lᵀW_l`` and ``K = Σ W_lᵀW_l^orig``, and
  updates them algebraically after each of its edits (``H ← MᵀHM``, ``K ← MᵀK``),
  so a whole run touches the UNet's matrices twice: once to build the Gram, once to
  apply the product of its edits;
* nothing is deep-copied; modules are edited in place (``weight.copy_``), so outside
  references and attention processors stay valid;
* every input is checked, and every new matrix computed and found finite, before the
  first one is written: an edit is applied to all matrices or to none.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from safetensors.torch import load_file
from tqdm.auto import tqdm

from rece_lite import closed_form as cf
from rece_lite import layers
from rece_lite.files import save_tensors
from rece_lite.pipeline import check_supported, encode, last_subject_index

Item = str | torch.Tensor
Tokens = Literal["all", "last_subject"]


# ---------------------------------------------------------------------------- patch
@dataclass(frozen=True)
class Patch:
    """Cross-attention K/V weights for one model: an edit, or a snapshot to undo one.

    Attributes:
        weights: parameter-free module name -> (out, d) weight.
        fingerprint: :func:`rece_lite.layers.fingerprint` of the model it belongs to.
        metadata: free-form strings saved with the weights (method, settings, version).
    """

    weights: dict[str, torch.Tensor]
    fingerprint: str
    metadata: dict[str, str] = field(default_factory=dict)
    _memo: dict = field(default_factory=dict, repr=False, compare=False)

    def gram(self) -> torch.Tensor:
        """``Σ W_lᵀ W_l`` over the patch's matrices, (d, d) float64; computed once per patch.

        RECE needs the Gram of the original weights; a snapshot computes it on first use
        and keeps it, so later derivations and RECE runs against it skip the pass over the UNet.
        """
        if "gram" not in self._memo:
            self._memo["gram"] = cf.gram(list(self.weights.values()))
        return self._memo["gram"]

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.weights.values())).dtype

    def __repr__(self) -> str:
        n = sum(w.numel() for w in self.weights.values())
        return f"Patch({len(self.weights)} matrices, {n:,} weights, {self.dtype}, model {self.fingerprint})"

    def apply(self, pipe) -> None:
        """Write these weights into ``pipe``'s UNet (all or none)."""
        unet = pipe.unet if hasattr(pipe, "unet") else pipe
        mods = layers.projections(unet)
        fp = layers.fingerprint(unet)
        if fp != self.fingerprint:
            raise ValueError(
                f"this patch was made for model {self.fingerprint}, not this one ({fp}): load the model it was made "
                "for, or make a new patch on this one"
            )
        if set(mods) != set(self.weights):
            raise ValueError("this patch names other cross-attention matrices than the model has")
        for name, w in self.weights.items():
            if tuple(w.shape) != tuple(mods[name].weight.shape):
                raise ValueError(
                    f"{name}: patch shape {tuple(w.shape)} != model shape {tuple(mods[name].weight.shape)}"
                )
            if not torch.isfinite(w).all():
                raise ValueError(f"{name}: the patch holds NaN or inf")
        _write(mods, self.weights)

    @contextlib.contextmanager
    def applied(self, pipe) -> Iterator[None]:
        """Run a block with these weights in ``pipe``, then put back the weights it had.

            with original.applied(pipe):
                images = rl.sample(pipe, prompts)   # the pre-erasure model's pictures
        """
        current = snapshot(pipe)
        self.apply(pipe)
        try:
            yield
        finally:
            current.apply(pipe)

    def save(self, path: str | os.PathLike) -> None:
        """Write as safetensors, atomically (a temp file renamed into place)."""
        meta = {"rece_lite.fingerprint": self.fingerprint, "rece_lite.metadata": json.dumps(self.metadata)}
        save_tensors(self.weights, path, meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Patch:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if "rece_lite.fingerprint" not in meta:
            raise ValueError(f"{path} is not a rece-lite patch (no fingerprint in its metadata)")
        return cls(
            load_file(str(path)), meta["rece_lite.fingerprint"], json.loads(meta.get("rece_lite.metadata", "{}"))
        )


def _write(mods: dict[str, torch.nn.Linear], weights: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, m in mods.items():
            m.weight.copy_(weights[name].to(m.weight.device, m.weight.dtype))


def snapshot(pipe) -> Patch:
    """The current K/V weights (a copy), e.g. to undo an edit with ``snap.apply(pipe)``."""
    mods = layers.projections(pipe.unet)
    return Patch(
        {n: m.weight.detach().clone() for n, m in mods.items()},
        layers.fingerprint(pipe.unet),
        {"kind": "snapshot"},
    )


def _apply_map(pipe, M: torch.Tensor, metadata: dict[str, str]) -> Patch:
    """``W ← W · M`` for every K/V matrix; all new matrices are checked before any is written."""
    mods = layers.projections(pipe.unet)
    new = {}
    cast: dict[tuple, torch.Tensor] = {}  # M in each (device, dtype) the matrices need, converted once
    for name, m in mods.items():
        w = m.weight.detach()
        work = torch.promote_types(w.dtype, torch.float32)
        key = (w.device, work)
        if key not in cast:
            cast[key] = M.to(w.device, work)
        new[name] = torch.mm(w.to(work), cast[key]).to(w.dtype)
        # one reduction instead of an elementwise test: the sum is finite iff every entry is
        if not torch.isfinite(new[name].sum(dtype=torch.float64)):
            raise cf.SolveError(f"{name}: the edited weights overflow {w.dtype} (nothing was changed)")
    _write(mods, new)
    return Patch(new, layers.fingerprint(pipe.unet), metadata)


# ------------------------------------------------------------------------ embeddings
def _as_list(x: Item | Sequence[Item] | None) -> list[Item]:
    if x is None:
        return []
    if isinstance(x, (str, torch.Tensor)) or not isinstance(x, Sequence):
        return [x]
    return list(x)


def _embeddings(pipe, items: list[Item], d: int, tokens: Tokens, what: str) -> list[torch.Tensor]:
    """Each item as (rows, d) float64 on the CPU; prompts are encoded in one batch."""
    if tokens not in ("all", "last_subject"):
        raise ValueError(f"tokens must be 'all' or 'last_subject', got {tokens!r}")
    prompts = [i for i in items if isinstance(i, str)]
    enc = iter(encode(pipe, prompts).detach().cpu().double()) if prompts else iter(())
    out = []
    for item in items:
        if isinstance(item, str):
            e = next(enc)
            if tokens == "last_subject":
                e = e[last_subject_index(pipe, item)][None]
        elif isinstance(item, torch.Tensor):
            if tokens == "last_subject":
                raise ValueError(f"tokens='last_subject' needs {what} as prompts, not embeddings (positions unknown)")
            e = item.detach().cpu().double()
            e = e.reshape(-1, e.shape[-1]) if e.ndim >= 1 else e
        else:
            raise TypeError(
                f"{what} items must be prompts (str) or (T, d) embedding tensors, got {type(item).__name__}"
            )
        if e.ndim != 2 or e.shape[-1] != d:
            shape = tuple(item.shape) if isinstance(item, torch.Tensor) else tuple(e.shape)
            raise ValueError(f"{what} embedding has shape {shape}, but this model's cross-attention expects (T, {d})")
        if not torch.isfinite(e).all():
            raise ValueError(f"{what} embedding contains NaN or inf")
        out.append(e)
    return out


def _erase_guide_rows(
    pipe, erase: list[Item], guide: list[Item], d: int, tokens: Tokens
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per erase item its (rows, d) embedding, and its guide's, row-aligned (one encoder call)."""
    if not erase:
        raise ValueError("nothing to erase: give at least one concept")
    if len(guide) == 1:
        guide = guide * len(erase)
    if len(guide) != len(erase):
        raise ValueError(f"give one guide for all erase items or one per item: {len(erase)} erase, {len(guide)} guide")
    both = _embeddings(pipe, erase + guide, d, tokens, "erase/guide")
    ce, cg = both[: len(erase)], both[len(erase) :]
    for a, b in zip(ce, cg):
        if a.shape != b.shape:
            raise ValueError(
                f"an erase item and its guide must have the same number of tokens: {tuple(a.shape)} vs {tuple(b.shape)}"
            )
    return ce, cg


def _preserve_rows(pipe, preserve: list[Item], d: int, tokens: Tokens) -> torch.Tensor:
    rows = _embeddings(pipe, preserve, d, tokens, "preserve")
    return torch.cat(rows) if rows else torch.zeros(0, d, dtype=torch.float64)


def edit_metadata(method: str, **settings) -> dict[str, str]:
    """What a Patch records about the edit that made it: method, settings, package version."""
    from rece_lite import __version__

    return {"method": method, "version": __version__, **{k: str(v) for k, v in settings.items()}}


# ----------------------------------------------------------------------------- UCE
def uce_erase(
    pipe,
    erase: Item | Sequence[Item],
    guide: Item | Sequence[Item] = "",
    preserve: Sequence[Item] = (),
    *,
    lamb: float = 0.1,
    erase_scale: float = 1.0,
    preserve_scale: float = 0.1,
    tokens: Tokens = "all",
) -> Patch:
    """Erase concepts with UCE's closed form, editing ``pipe`` in place.

    Args:
        pipe: a Stable Diffusion 1.x pipeline.
        erase: prompts or (T, d) embeddings of what to erase.
        guide: what the erased concepts should look like instead: one item for all or
            one per erase item (default: the empty prompt, the unconditional branch).
        preserve: prompts or embeddings whose keys and values must not change.
        lamb: λ > 0, the pull toward the current weights.
        erase_scale: s_e ≥ 0.
        preserve_scale: s_p ≥ 0.
        tokens: ``"all"`` (every padded position, as RECE) or ``"last_subject"`` (each
            prompt's last word token, as the newer UCE code).

    Returns:
        A :class:`Patch` of the edited matrices.
    """
    check_supported(pipe)
    d = layers.embedding_width(pipe.unet)
    ce, cg = _erase_guide_rows(pipe, _as_list(erase), _as_list(guide), d, tokens)
    cp = _preserve_rows(pipe, _as_list(preserve), d, tokens)
    M = cf.uce_map(torch.cat(ce), torch.cat(cg), cp, lamb=lamb, erase_scale=erase_scale, preserve_scale=preserve_scale)
    meta = edit_metadata("uce", lamb=lamb, erase_scale=erase_scale, preserve_scale=preserve_scale, tokens=tokens)
    return _apply_map(pipe, M, meta)


# ----------------------------------------------------------------------------- RECE
def _check_original(pipe, original: Patch) -> dict[str, torch.Tensor]:
    fp = layers.fingerprint(pipe.unet)
    if original.fingerprint != fp:
        raise ValueError(f"original= is a snapshot of model {original.fingerprint}, not of this one ({fp})")
    names = list(layers.projections(pipe.unet))
    if set(names) != set(original.weights):
        raise ValueError("original= names other cross-attention matrices than the model has")
    return {n: original.weights[n] for n in names}


def derive_embedding(
    pipe,
    concept: Item,
    *,
    original: Patch,
    reg: cf.Reg = "zero",
    reg_scale: float = 0.1,
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
    check_supported(pipe)
    d = layers.embedding_width(pipe.unet)
    orig = _check_original(pipe, original)
    (c,) = _embeddings(pipe, [concept], d, tokens, "concept")
    old = _embeddings(pipe, [old_target], d, tokens, "old_target")[0] if old_target is not None else None
    mods = layers.projections(pipe.unet)
    H = cf.gram([m.weight for m in mods.values()])
    # K only ever appears as K cᵀ = Σ W_lᵀ (W_l^orig cᵀ): T columns instead of d
    Kc = sum(m.weight.detach().double().T @ (orig[n].double() @ c.T) for n, m in mods.items())
    out = cf.derive_embedding(H, None, c, reg=reg, reg_scale=reg_scale, old_target=old, Kc=Kc)
    te = pipe.text_encoder
    return out.to(te.device, te.dtype)


@dataclass(frozen=True)
class ReceResult:
    """What :func:`rece_erase` did.

    Attributes:
        patch: the final edited matrices (already written into the pipeline).
        derived: per epoch, the embedding derived before that epoch's edit: (T, d) for
            one concept, (n, T, d) for several.
        seconds: wall time of the whole call (text encoding included).
        maps: per edit (the initial UCE, if any, then one per epoch), its (d, d) matrix M.
    """

    patch: Patch
    derived: list[torch.Tensor]
    seconds: float
    maps: list[torch.Tensor]


def rece_erase(
    pipe,
    concepts: Item | Sequence[Item],
    guide: Item | Sequence[Item] = "",
    preserve: Sequence[Item] = (),
    *,
    epochs: int = 3,
    reg: cf.Reg = "zero",
    reg_scale: float = 0.1,
    lamb: float = 0.1,
    erase_scale: float = 1.0,
    preserve_scale: float = 0.1,
    old_target: Item | None = None,
    already_edited: bool = False,
    original: Patch | None = None,
    tokens: Tokens = "all",
    progress: bool = False,
) -> ReceResult:
    """RECE: UCE, then ``epochs`` rounds of derive-an-embedding + erase-it, in place.

    Without ``already_edited``, the first step is the UCE edit of ``concepts`` toward
    ``guide`` with ``preserve``.  Each epoch derives, for every concept, the embedding
    that makes the current model reproduce the original model's keys/values
    (:func:`rece_lite.closed_form.derive_embedding`), then applies one UCE edit that
    maps those embeddings to the guide, relative to the current weights, as the
    official loop does.

    Args:
        concepts: prompts or (T, d) embeddings of the concepts to erase.
        guide: one item for all, or one per concept (default: the empty prompt).
        preserve: prompts or embeddings to preserve in every edit.
        epochs: rounds of derivation + edit (paper: 1-3).
        reg, reg_scale, old_target: the derivation's regulariser and λ'.
        lamb, erase_scale, preserve_scale: the UCE edits' settings.
        already_edited: skip the initial UCE (``pipe`` is already erased); then
            ``original`` (a :func:`snapshot` from before erasure) is required.
        original: the pre-erasure weights; default: ``pipe``'s current weights.
        tokens: see :func:`uce_erase`.
        progress: show a progress bar over epochs.
    """
    t0 = time.perf_counter()
    check_supported(pipe)
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    if already_edited and original is None:
        raise ValueError("already_edited=True needs original= (a snapshot taken before the erasure)")
    d = layers.embedding_width(pipe.unet)
    concept_items = _as_list(concepts)
    per_concept, guides = _erase_guide_rows(pipe, concept_items, _as_list(guide), d, tokens)
    ce, cg = torch.cat(per_concept), torch.cat(guides)
    cp = _preserve_rows(pipe, _as_list(preserve), d, tokens)
    old = _embeddings(pipe, [old_target], d, tokens, "old_target")[0] if old_target is not None else None
    uce = dict(lamb=lamb, erase_scale=erase_scale, preserve_scale=preserve_scale)

    mods = layers.projections(pipe.unet)
    current = [m.weight for m in mods.values()]
    if original is None:
        H = K = cf.gram(current)  # current weights are the original
    elif not already_edited:
        _check_original(pipe, original)
        H = K = original.gram()  # the pipeline still holds these weights: reuse their Gram
    else:
        orig = _check_original(pipe, original)
        H, K = cf.gram(current), cf.gram(current, [orig[n] for n in mods])
    Q = torch.eye(d, dtype=torch.float64)  # product of this call's edits
    maps: list[torch.Tensor] = []

    def edit(erase_rows: torch.Tensor) -> None:
        nonlocal H, K, Q
        M = cf.uce_map(erase_rows, cg, cp, **uce)
        H, K, Q = M.T @ H @ M, M.T @ K, Q @ M
        maps.append(M.float())

    if not already_edited:
        edit(ce)
    derived = []
    for _ in tqdm(range(epochs), desc="RECE epochs", disable=not progress):
        new = [cf.derive_embedding(H, K, c, reg=reg, reg_scale=reg_scale, old_target=old) for c in per_concept]
        derived.append(new[0] if len(new) == 1 else torch.stack(new))
        edit(torch.cat(new))
    del H, K  # free the Gram matrices before the new weights are allocated
    te = pipe.text_encoder
    derived = [x.to(te.device, te.dtype) for x in derived]
    meta = edit_metadata("rece", epochs=epochs, reg=reg, reg_scale=reg_scale, tokens=tokens, **uce)
    patch = _apply_map(pipe, Q, meta)
    return ReceResult(patch, derived, time.perf_counter() - t0, maps)
