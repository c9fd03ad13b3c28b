"""The stored edit: :class:`Patch`, its safetensors file format, and :func:`snapshot`.

A patch is the cross-attention K/V weights of one model, by module name, with the model's
:func:`rece_lite.layers.fingerprint`, free-form metadata and, for a closed-form edit, the
``d x d`` map ``M`` it applied (``weights == W_before · M``).  It is written into a pipeline
all or nothing (every matrix is checked, and found finite in the model's dtype, before the
first is written), and saved atomically as safetensors (a temp file renamed into place):

* tensors: one ``(out, d)`` weight per module name, and the map under :data:`MAP_KEY`;
* header: ``rece_lite.fingerprint`` and ``rece_lite.metadata`` (a JSON object of strings).

The algorithms that make patches are in :mod:`rece_lite.erase`; the LoRA and
``save_pretrained`` exports of a patch are in :mod:`rece_lite.export`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from rece_lite import checks, files, layers
from rece_lite import closed_form as cf
from rece_lite.errors import InputError
from rece_lite.files import save_tensors

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
        fp = layers.fingerprint(pipe)
        if not layers.same_model(fp, self.fingerprint):
            raise InputError(
                f"this patch was made for model {self.fingerprint}, not this one ({fp}): load the model it was made "
                "for, or make a new patch on this one"
            )
        _check_names(set(self.weights), set(mods), "this patch")
        meta = [n for n, w in self.weights.items() if w.is_meta]
        if meta:
            raise InputError(
                f"this patch's weights are on the meta device (shapes without values, e.g. {meta[0]}): "
                "make the patch from real weights; nothing was changed"
            )
        new = {}
        for name, w in self.weights.items():
            target = mods[name].weight
            if tuple(w.shape) != tuple(target.shape):
                raise InputError(f"{name}: patch shape {tuple(w.shape)} != model shape {tuple(target.shape)}")
            new[name] = w.to(target.device, target.dtype)  # the values as the model will hold them
        bad = _first_non_finite(new)
        if bad is not None:
            what = "holds NaN or inf" if not _finite(self.weights[bad]) else f"overflows the model's {new[bad].dtype}"
            raise InputError(f"{bad}: the patch {what}; nothing was changed")
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
        from rece_lite import export  # the LoRA math needs a patch's parts only; export imports this module

        if base is None and self.map is not None:
            checks.check_stored_map(self)  # a file's map may belong to another edit: checked against the witness
        return export.to_lora(path, self.weights, self.map, rank=rank, base=base, fingerprint=self.fingerprint,
                              metadata=self.metadata)  # fmt: skip

    def save(self, path: str | os.PathLike) -> None:
        """Write as safetensors (tensors on the CPU), atomically: a temp file renamed into place."""
        path = file_to_write(path, "Patch.save", "save the patch")
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
        files.check_regular_file(path)  # a FIFO or device would block or stream forever
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (OSError, SafetensorError) as e:
            raise InputError(
                f"{path} is not a readable safetensors file (empty, truncated or another format; {e}); "
                f"Patch.load expects {expected}"
            ) from e
        if "rece_lite.fingerprint" not in meta:
            raise InputError(f"{path} is not a rece-lite patch (no fingerprint in its metadata)")
        try:
            metadata = json.loads(meta.get("rece_lite.metadata", "{}"))
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: its rece_lite.metadata is not JSON ({e})") from e
        if not isinstance(metadata, dict):
            raise InputError(f"{path}: its rece_lite.metadata is JSON but not an object ({type(metadata).__name__})")
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
    raise InputError(
        f"{what} names other cross-attention matrices than the model has ({'; '.join(parts)}): "
        "it was made for another model; nothing was changed"
    )


def _check_path(path: object, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what}: path must be a file name (a str or os.PathLike), got {type(path).__name__} {path!r}")
    return Path(path)


def file_to_write(path: object, what: str, doing: str, hint: str = "") -> Path:
    """``path`` as a file name that can be written: not a folder, in a folder that exists.

    The one check :meth:`Patch.save` and :func:`rece_lite.export.to_lora` share; ``doing``
    says what for ("save the patch"), ``hint`` what to give instead of a folder.
    """
    path = _check_path(path, what)
    if path.is_dir():
        raise IsADirectoryError(f"cannot {doing} to {path}: it is a folder; give a file name in it{hint}")
    if not path.parent.is_dir():
        raise FileNotFoundError(f"cannot {doing} to {path}: the folder {path.parent} does not exist; create it first")
    return path


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
        layers.fingerprint(pipe),
        {"kind": "snapshot"},
    )

