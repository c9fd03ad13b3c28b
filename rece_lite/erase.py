"""UCE and RECE on a diffusers pipeline, and the :class:`Patch` that holds an edit.

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
"""

from __future__ import annotations

import contextlib
import functools
import json
import numbers
import os
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from rece_lite import checks, export, files, layers
from rece_lite import closed_form as cf
from rece_lite._version import __version__
from rece_lite.files import save_tensors
from rece_lite.pipeline import check_prompts, check_supported, encode, last_subject_index

Item = str | torch.Tensor
Tokens = Literal["all", "last_subject"]

#: The safetensors key under which a patch file keeps its edit's ``d x d`` map (no module has this name).
MAP_KEY = "rece_lite.map"


# ---------------------------------------------------------------------------- patch
@dataclass(frozen=True, eq=False)
class Patch:
    """Cross-attention K/V weights for one model: an edit, or a snapshot to undo one.

    Attributes:
        weights: parameter-free module name -> (out, d) floating-point weight.
        fingerprint: :func:`rece_lite.layers.fingerprint` of the model it belongs to.
        metadata: free-form strings saved with the weights (method, settings, version).
        map: (d, d) float64 on the CPU, for an edit made by :func:`uce_erase` or
            :func:`rece_erase`: the matrix ``M`` with ``weights == W_before · M`` (up to the
            weights' rounding), ``W_before`` the matrices it was applied to; for RECE the
            product of its edits. None for snapshots and edits that are no such map (ESD).
        witness: ``W_before · X`` for two fixed random columns ``X`` (:func:`rece_lite.checks.map_witness`),
            kept with the map so that a file's map is checked against its weights
            (:func:`rece_lite.checks.check_map`); None for snapshots and hand-made patches.
            Not part of equality.

    Two patches are equal when their fingerprints, metadata, weights and maps are.
    """

    weights: dict[str, torch.Tensor]
    fingerprint: str
    metadata: dict[str, str] = field(default_factory=dict)
    map: torch.Tensor | None = None
    witness: torch.Tensor | None = None  # checks.map_witness of the weights before the edit

    def __post_init__(self) -> None:
        if not isinstance(self.weights, dict) or not self.weights:
            raise TypeError("Patch weights must be a non-empty dict of module name -> (out, d) tensor")
        for name, w in self.weights.items():
            if not isinstance(name, str) or not isinstance(w, torch.Tensor):
                raise TypeError(f"Patch weights must map names (str) to tensors, got {name!r}: {type(w).__name__}")
            if not w.is_floating_point() or w.ndim != 2:
                raise TypeError(
                    f"Patch weight {name} is a {w.ndim}-d {w.dtype} tensor; a patch holds 2-d real floating-point "
                    "matrices (convert with .float())"
                )
        if not isinstance(self.fingerprint, str):
            raise TypeError(f"Patch fingerprint must be a str, got {type(self.fingerprint).__name__}")
        if not isinstance(self.metadata, dict):
            raise TypeError(f"Patch metadata must be a dict (a JSON object), got {type(self.metadata).__name__}")
        if self.map is not None:
            d = next(iter(self.weights.values())).shape[1]
            if not isinstance(self.map, torch.Tensor) or not self.map.is_floating_point() or self.map.shape != (d, d):
                raise TypeError(f"Patch map must be a ({d}, {d}) floating-point tensor or None")

    @functools.cached_property
    def gram(self) -> torch.Tensor:
        """``Σ W_lᵀ W_l`` over the patch's matrices, (d, d) float64; computed once per patch.

        RECE needs the Gram of the original weights; a snapshot computes it on first use
        and keeps it, so later RECE runs against it skip the pass over the UNet.
        """
        return cf.gram(list(self.weights.values()))

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.weights.values())).dtype

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Patch):
            return NotImplemented
        return (
            self.fingerprint == other.fingerprint
            and self.metadata == other.metadata
            and self.weights.keys() == other.weights.keys()
            and all(_same(w, other.weights[n]) for n, w in self.weights.items())
            and (self.map is None) == (other.map is None)
            and (self.map is None or _same(self.map, other.map))
        )

    __hash__ = None  # mutable tensors inside: not hashable

    def __repr__(self) -> str:
        n = sum(w.numel() for w in self.weights.values())
        edit = ", with its map" if self.map is not None else ""
        return f"Patch({len(self.weights)} matrices, {n:,} weights, {self.dtype}, model {self.fingerprint}{edit})"

    def apply(self, pipe) -> None:
        """Write these weights into ``pipe``'s UNet (all or none), in each matrix's device and dtype."""
        unet = _unet(pipe, "Patch.apply")
        mods = layers.projections(unet)
        fp = layers.fingerprint(pipe if getattr(pipe, "unet", None) is unet else unet)
        if not layers.same_model(fp, self.fingerprint):
            raise ValueError(
                f"this patch was made for model {self.fingerprint}, not this one ({fp}): load the model it was made "
                "for, or make a new patch on this one"
            )
        _check_names(set(self.weights), set(mods), "this patch")
        meta = [n for n, w in self.weights.items() if w.is_meta]
        if meta:
            raise ValueError(
                f"this patch's weights are on the meta device (shapes without values, e.g. {meta[0]}): "
                "make the patch from real weights; nothing was changed"
            )
        new = {}
        for name, w in self.weights.items():
            target = mods[name].weight
            if tuple(w.shape) != tuple(target.shape):
                raise ValueError(f"{name}: patch shape {tuple(w.shape)} != model shape {tuple(target.shape)}")
            new[name] = w.to(target.device, target.dtype)  # the values as the model will hold them
        bad = _first_non_finite(new)
        if bad is not None:
            what = "holds NaN or inf" if not _finite(self.weights[bad]) else f"overflows the model's {new[bad].dtype}"
            raise ValueError(f"{bad}: the patch {what}; nothing was changed")
        _write(mods, new)

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

    def to_lora(self, path: str | os.PathLike, rank: int | None = None, *, base: Patch | None = None):
        """Write this edit as a LoRA that diffusers loads with ``pipe.load_lora_weights(path)``.

        See :func:`rece_lite.export.to_lora`: exact at the edit's rank, or a truncated SVD whose
        relative error is returned and stored in the file; ``base`` (a snapshot from before the
        edit) makes it exact to float32 even when the edit's map is badly conditioned.
        """
        if base is None and self.map is not None:
            checks.check_stored_map(self)
        return export.to_lora(path, self.weights, self.map, rank=rank, base=base, fingerprint=self.fingerprint,
                              metadata=self.metadata)  # fmt: skip

    def save(self, path: str | os.PathLike) -> None:
        """Write as safetensors (tensors on the CPU), atomically: a temp file renamed into place."""
        path = _check_path(path, "Patch.save")
        if path.is_dir():
            raise IsADirectoryError(f"cannot save the patch to {path}: it is a folder; give a file name in it")
        if not path.parent.is_dir():
            raise FileNotFoundError(f"cannot save the patch to {path}: the folder {path.parent} does not exist")
        tensors = dict(self.weights)
        if self.map is not None:
            tensors[MAP_KEY] = self.map
        if self.witness is not None:
            tensors[checks.WITNESS_KEY] = self.witness
        try:
            text = json.dumps(self.metadata)
        except (TypeError, ValueError) as e:
            raise TypeError(f"cannot save the patch: its metadata is not JSON ({e}); keep strings in it") from None
        meta = {"rece_lite.fingerprint": self.fingerprint, "rece_lite.metadata": text}
        try:
            save_tensors(tensors, path, meta)
        except (OSError, SafetensorError) as e:
            raise OSError(f"cannot save the patch to {path}: {getattr(e, 'strerror', None) or e}") from e

    @classmethod
    def load(cls, path: str | os.PathLike) -> Patch:
        """Read a patch written by :meth:`save`."""
        path = _check_path(path, "Patch.load")
        expected = "a .safetensors file written by Patch.save"
        if path.is_dir():
            raise IsADirectoryError(f"{path} is a folder; Patch.load expects {expected}")
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist; Patch.load expects {expected}")
        files.check_regular_file(path)
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (OSError, SafetensorError) as e:
            raise ValueError(
                f"{path} is not a readable safetensors file (empty, truncated or another format; {e}); "
                f"Patch.load expects {expected}"
            ) from e
        if "rece_lite.fingerprint" not in meta:
            raise ValueError(f"{path} is not a rece-lite patch (no fingerprint in its metadata)")
        try:
            metadata = json.loads(meta.get("rece_lite.metadata", "{}"))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: its rece_lite.metadata is not JSON ({e})") from e
        if not isinstance(metadata, dict):
            raise ValueError(f"{path}: its rece_lite.metadata is JSON but not an object ({type(metadata).__name__})")
        edit_map = tensors.pop(MAP_KEY, None)
        witness = tensors.pop(checks.WITNESS_KEY, None)
        try:
            patch = cls(tensors, meta["rece_lite.fingerprint"], metadata, edit_map, witness)
        except TypeError as e:
            raise TypeError(f"{path}: {e}") from e
        checks.check_loaded_patch(patch, path)
        return patch


def _check_names(have: set[str], model: set[str], what: str) -> None:
    """Refuse a set of K/V matrix names that is not the model's, naming a few that are missing or extra."""
    if have == model:
        return

    def few(names: set[str]) -> str:
        names = sorted(names)
        return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")

    parts = [f"missing {few(model - have)}"] if model - have else []
    parts += [f"extra {few(have - model)}"] if have - model else []
    raise ValueError(
        f"{what} names other cross-attention matrices than the model has ({'; '.join(parts)}): "
        "it was made for another model; nothing was changed"
    )


def _check_path(path: object, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what}: path must be a file name (a str or os.PathLike), got {type(path).__name__} {path!r}")
    return Path(path)


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b.to(a.device))


def _finite(w: torch.Tensor) -> torch.Tensor:
    """Whether every entry of ``w`` is finite, as a 0-d bool tensor on its device (no host sync)."""
    if cf.solve_device(w.device) == w.device:
        # a float64 sum of floats is finite iff every entry is: one reduction, no (out, d) mask
        return torch.isfinite(w.sum(dtype=torch.float64))
    return torch.isfinite(w).all()  # a device without float64


def _first_non_finite(tensors: dict[str, torch.Tensor]) -> str | None:
    """The first name whose tensor holds NaN or inf, or None; one host sync where all share a device."""
    flags = [_finite(w) for w in tensors.values()]
    if len({f.device for f in flags}) == 1 and bool(torch.stack(flags).all()):
        return None
    return next((n for n, f in zip(tensors, flags) if not bool(f)), None)


def _unet(pipe, what: str) -> torch.nn.Module:
    unet = getattr(pipe, "unet", pipe)
    if not isinstance(unet, torch.nn.Module) or (unet is pipe and not _has_cross_attention(unet)):
        raise TypeError(f"{what} needs a Stable Diffusion pipeline (or its UNet), got {type(pipe).__name__}")
    return unet


def _has_cross_attention(module: torch.nn.Module) -> bool:
    try:
        layers.cross_attention_layers(module)
    except ValueError:
        return False
    return True


def _write(mods: dict[str, torch.nn.Linear], weights: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        for name, m in mods.items():
            m.weight.copy_(weights[name].to(m.weight.device, m.weight.dtype))


def snapshot(pipe) -> Patch:
    """The current K/V weights (a copy, on their device), e.g. to undo an edit with ``snap.apply(pipe)``."""
    unet = _unet(pipe, "snapshot")
    mods = layers.projections(unet)
    return Patch(
        {n: m.weight.detach().clone() for n, m in mods.items()},
        layers.fingerprint(pipe if getattr(pipe, "unet", None) is unet else unet),
        {"kind": "snapshot"},
    )


def _apply_map(pipe, M: torch.Tensor, metadata: dict[str, str]) -> Patch:
    """``W ← W · M`` for every K/V matrix; all new matrices are checked before any is written."""
    mods = layers.projections(pipe.unet)
    checks.no_unfused_lora(mods, "pipe")
    fp = layers.fingerprint(pipe)  # before the new weights exist: its scratch memory is free again
    witness = checks.map_witness({n: m.weight for n, m in mods.items()})
    new = {}
    cast: dict[tuple, torch.Tensor] = {}  # M in each (device, dtype) the matrices need, converted once
    for name, m in mods.items():
        w = m.weight.detach()
        work = torch.promote_types(w.dtype, torch.float32)
        key = (w.device, work)
        if key not in cast:
            cast[key] = M.to(work).to(w.device)
        new[name] = torch.mm(w.to(work), cast[key]).to(w.dtype)
    bad = _first_non_finite(new)
    if bad is not None:
        raise cf.SolveError(f"{bad}: the edited weights overflow {new[bad].dtype} (nothing was changed)")
    _write(mods, new)
    return Patch(new, fp, metadata, M.detach().to("cpu"), witness)


# ------------------------------------------------------------------------ embeddings
def _as_list(x: Item | Sequence[Item] | None) -> list[Item]:
    if x is None:
        return []
    if isinstance(x, (str, torch.Tensor)) or not isinstance(x, Sequence):
        return [x]
    return list(x)


def _work_device(pipe) -> torch.device:
    """Where this pipeline's edits are computed: the K/V weights' device, or the CPU if it lacks float64."""
    return cf.solve_device(next(iter(layers.projections(pipe.unet).values())).weight.device)


def _embeddings(
    pipe, items: list[tuple[str, Item]], d: int, tokens: Tokens, device: torch.device
) -> list[torch.Tensor]:
    """Each ``(argument name, item)`` as (rows, d) float64 on ``device``; its prompts are encoded in one batch."""
    if tokens not in ("all", "last_subject"):
        raise ValueError(f"tokens must be 'all' or 'last_subject', got {tokens!r}")
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
                raise ValueError(f"tokens='last_subject' needs {what} as prompts, not embeddings (positions unknown)")
            if item.is_complex() or not item.is_floating_point():
                raise TypeError(f"{what}: embeddings must be real floating-point tensors, got {item.dtype}")
            if item.numel() == 0:
                raise ValueError(f"{what}: the embedding is empty {tuple(item.shape)}; give (T, {d}) rows")
            e = item.detach().to(device).double()
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


def _show(item: Item) -> str:
    return repr(item) if isinstance(item, str) else f"a {tuple(item.shape)} tensor"


def _erase_rows(
    pipe, erase: list[Item], guide: list[Item], preserve: list[Item], d: int, tokens: Tokens, device: torch.device
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Per erase item its (rows, d) embedding and its guide's, row-aligned; the preserve rows (n, d).

    Refuses edits that would change nothing or contradict themselves: the empty prompt as
    a concept, an item erased toward itself, an item both erased and preserved.
    """
    if not erase:
        raise ValueError("erase: nothing to erase: give at least one concept")
    for item in erase:
        if isinstance(item, str) and not item.strip():
            raise ValueError(
                "erase: the empty prompt is the unconditional branch every picture is guided away from; "
                "erasing it changes every image. Give a concept to erase"
            )
    if len(guide) == 1:
        guide = guide * len(erase)
    if len(guide) != len(erase):
        raise ValueError(f"give one guide for all erase items or one per item: {len(erase)} erase, {len(guide)} guide")
    both = _embeddings(pipe, [("erase", e) for e in erase] + [("guide", g) for g in guide], d, tokens, device)
    ce, cg = both[: len(erase)], both[len(erase) :]
    cp = _embeddings(pipe, [("preserve", p) for p in preserve], d, tokens, device)
    for item, a, b in zip(erase, ce, cg):
        if a.shape != b.shape:
            raise ValueError(
                f"an erase item and its guide must have the same number of tokens: {tuple(a.shape)} vs {tuple(b.shape)}"
            )
        if torch.equal(a, b):
            raise ValueError(
                f"erase: {_show(item)} is its own guide, so the edit would change nothing; give another guide"
            )
    for item, p in zip(preserve, cp):
        if any(p.shape == a.shape and torch.equal(p, a) for a in ce):
            raise ValueError(
                f"preserve: {_show(item)} is also erased; a concept cannot be erased and preserved at once: "
                "drop it from preserve"
            )
    keep = torch.cat(cp) if cp else torch.zeros(0, d, dtype=torch.float64, device=device)
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
    lamb: float = 0.1,
    erase_scale: float = 1.0,
    preserve_scale: float = 0.1,
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
    check_supported(pipe)
    cf.check_uce_settings(lamb, erase_scale, preserve_scale)
    d, dev = layers.embedding_width(pipe.unet), _work_device(pipe)
    ce, cg, cp = _erase_rows(pipe, _as_list(erase), _as_list(guide), _as_list(preserve), d, tokens, dev)
    M = cf.uce_map(torch.cat(ce), torch.cat(cg), cp, lamb=lamb, erase_scale=erase_scale, preserve_scale=preserve_scale)
    meta = edit_metadata("uce", lamb=lamb, erase_scale=erase_scale, preserve_scale=preserve_scale, tokens=tokens)
    return _apply_map(pipe, M, meta)


# ----------------------------------------------------------------------------- RECE
def _check_original(pipe, original: Patch | None) -> dict[str, torch.Tensor]:
    """``original``'s weights in the pipeline's module order, if it is a snapshot of this model."""
    if original is None:
        raise ValueError("original= is required: the rl.snapshot(pipe) taken before the erasure")
    if not isinstance(original, Patch):
        raise TypeError(
            f"original= must be a Patch (rl.snapshot(pipe) before the erasure), got {type(original).__name__}"
        )
    fp = layers.fingerprint(pipe)
    if not layers.same_model(original.fingerprint, fp):
        raise ValueError(f"original= is a snapshot of model {original.fingerprint}, not of this one ({fp})")
    names = list(layers.projections(pipe.unet))
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
    checks.non_blank(concept, "concept")
    checks.non_blank(old_target, "old_target")
    cf.check_derivation_settings(reg, reg_scale)
    orig = _check_original(pipe, original)
    d, dev = layers.embedding_width(pipe.unet), _work_device(pipe)
    (c,) = _embeddings(pipe, [("concept", concept)], d, tokens, dev)
    old = _embeddings(pipe, [("old_target", old_target)], d, tokens, dev) if old_target is not None else []
    mods = layers.projections(pipe.unet)
    H = cf.gram([m.weight for m in mods.values()])
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
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    return int(epochs)


def _start_grams(
    pipe, original: Patch | None, orig: dict[str, torch.Tensor] | None, already_edited: bool
) -> cf.Grams:
    """RECE's Gram state for ``pipe``'s current weights against ``original`` (default: the current ones).

    ``orig``: ``original``'s weights in module order (see :func:`_check_original`).
    """
    mods = layers.projections(pipe.unet)
    current = [m.weight for m in mods.values()]
    if original is None or orig is None:
        return cf.Grams.start(cf.gram(current))  # the current weights are the original
    if not already_edited and _holds(mods, orig):
        return cf.Grams.start(original.gram.to(_work_device(pipe)))  # reuse the snapshot's Gram
    # the pipe was edited since the snapshot (said so or not): H against the current weights, K across
    return cf.Grams.start(cf.gram(current), cf.gram(current, [orig[n] for n in mods]))


def rece_erase(
    pipe,
    erase: Item | Sequence[Item] | None = None,
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
    concepts: Item | Sequence[Item] | None = None,
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
        epochs: rounds of derivation + edit (paper: 1-3).
        reg, reg_scale, old_target: the derivation's regulariser and λ'.
        lamb, erase_scale, preserve_scale: the UCE edits' settings.
        already_edited: skip the initial UCE (``pipe`` is already erased); then
            ``original`` (a :func:`snapshot` from before erasure) is required.
        original: the pre-erasure weights; default: ``pipe``'s current weights.  It need
            not be what ``pipe`` holds now: the derivations always aim at ``original``.
        tokens: see :func:`uce_erase`.
        progress: show a progress bar over epochs.
        concepts: the old name of ``erase`` (deprecated).
    """
    t0 = time.perf_counter()
    if concepts is not None:
        if erase is not None:
            raise TypeError("give erase= only (concepts= is its old name)")
        warnings.warn("rece_erase(concepts=...) is now rece_erase(erase=...)", DeprecationWarning, stacklevel=2)
        erase = concepts
    check_supported(pipe)
    epochs = _check_epochs(epochs)
    cf.check_uce_settings(lamb, erase_scale, preserve_scale)
    cf.check_derivation_settings(reg, reg_scale)
    if already_edited and original is None:
        raise ValueError("already_edited=True needs original= (a snapshot taken before the erasure)")
    orig = _check_original(pipe, original) if original is not None else None
    d, dev = layers.embedding_width(pipe.unet), _work_device(pipe)
    per_concept, guides, cp = _erase_rows(pipe, _as_list(erase), _as_list(guide), _as_list(preserve), d, tokens, dev)
    ce, cg = torch.cat(per_concept), torch.cat(guides)
    old = _embeddings(pipe, [("old_target", old_target)], d, tokens, dev)[0] if old_target is not None else None
    uce = dict(lamb=lamb, erase_scale=erase_scale, preserve_scale=preserve_scale)

    # 1. the Gram state of the current weights against the original ones
    grams = _start_grams(pipe, original, orig, already_edited)
    maps: list[torch.Tensor] = []

    def edit(state: cf.Grams, erase_rows: torch.Tensor) -> cf.Grams:
        M = cf.uce_map(erase_rows, cg, cp, **uce)
        maps.append(M.float())
        return state.after(M)

    # 2. UCE, then per epoch: derive the embeddings that undo the edits so far, erase them too
    if not already_edited:
        grams = edit(grams, ce)
    derived = []
    for _ in tqdm(range(epochs), desc="RECE epochs", disable=not progress):
        new = [grams.derive(c, reg=reg, reg_scale=reg_scale, old_target=old) for c in per_concept]
        derived.append(new[0] if len(new) == 1 else torch.stack(new))
        grams = edit(grams, torch.cat(new))
    Q = grams.Q
    del grams  # free the Gram matrices before the new weights are allocated

    # 3. the product of the edits, applied to the weights once
    te = pipe.text_encoder
    derived = [x.to(te.dtype).to(te.device) for x in derived]
    meta = edit_metadata("rece", epochs=epochs, reg=reg, reg_scale=reg_scale, tokens=tokens, **uce)
    patch = _apply_map(pipe, Q, meta)
    return ReceResult(patch, derived, time.perf_counter() - t0, maps)

