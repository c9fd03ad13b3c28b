"""Checks before trusting what came from outside: files read from disk, names, weights (issue 22).

Each function refuses one kind of bad input with an error naming the thing and its cause, and
returns nothing (or the checked value); a call site adds one line.

* :func:`non_blank`: a prompt, concept or folder name that is empty or only spaces.
* :func:`finite`, :func:`finite_modules`: tensors (a patch, a base, a model's weights) holding
  NaN or inf.
* :func:`no_unfused_lora`: K/V projections wrapped by a peft LoRA that is not fused (an edit of
  the base weight would ignore the LoRA's part).
* :func:`map_witness`, :func:`check_map`: an edit's map ``M`` (``W_after = W_before · M``) checked
  against the weights it is stored with, through ``W_before · X`` for two fixed random columns
  ``X`` kept beside them (a *witness*): ``W_after · M⁻¹ · X`` must give it back.
* :func:`check_model_folder`: which file of a model folder is broken, when loading it failed.
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path

import torch

from rece_lite.errors import InputError

#: The safetensors key under which a patch file keeps its map's witness (no module has this name).
WITNESS_KEY = "rece_lite.witness"
_WITNESS_COLUMNS, _WITNESS_SEED = 2, 22
#: the parts of a pipeline whose weights are checked before they are saved
PARTS = ("unet", "text_encoder", "text_encoder_2", "vae")


def non_blank(text: object, what: str) -> None:
    """Refuse a string that is empty or only white space (other types are left to the caller)."""
    if isinstance(text, str) and not text.strip():
        raise InputError(f"{what} is {'empty' if not text else 'blank (only spaces)'}: give {_give(what)}")
    if isinstance(text, os.PathLike) and not os.fspath(text).strip():
        raise InputError(f"{what} is empty: give {_give(what)}")


def _give(what: str) -> str:
    return "a folder to write to" if "folder" in what or what.startswith("--") else "a word or a prompt"


def finite(tensors: dict[str, torch.Tensor], what: str) -> None:
    """Refuse tensors holding NaN or inf, naming the first such entry of ``tensors``."""
    for name, t in tensors.items():
        if isinstance(t, torch.Tensor) and t.is_floating_point() and not t.is_meta and not torch.isfinite(t).all():
            raise InputError(f"{what}: {name} holds NaN or inf; nothing was written")


def finite_modules(modules: dict[str, torch.nn.Module | None], what: str) -> None:
    """Refuse modules whose parameters or buffers hold NaN or inf, naming the module and the parameter."""
    for part, module in modules.items():
        if module is None:
            continue
        for name, t in list(module.named_parameters()) + list(module.named_buffers()):
            if t.is_floating_point() and not t.is_meta and not bool(torch.isfinite(t).all()):
                raise InputError(f"{what}: {part}.{name} holds NaN or inf; nothing was written")


def no_unfused_lora(projections: dict[str, torch.nn.Module], what: str = "pipe") -> None:
    """Refuse K/V projections that carry a peft LoRA adapter not fused into their weight."""
    for name, m in projections.items():
        if not hasattr(m, "base_layer") or not getattr(m, "lora_A", None):
            continue
        if not getattr(m, "merged", False):
            raise InputError(
                f"{what} has a LoRA adapter that is not fused ({name}): an edit of the weights would ignore the "
                "LoRA's part; call pipe.fuse_lora() first (or pipe.unload_lora_weights() to drop it)"
            )


# ------------------------------------------------------------------------------ maps
def _columns(d: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(_WITNESS_SEED)
    return torch.randn(d, _WITNESS_COLUMNS, generator=g, dtype=torch.float64)


@torch.no_grad()
def map_witness(before: dict[str, torch.Tensor]) -> torch.Tensor:
    """``W_before · X`` of every matrix, stacked in the order of their names: (Σ out, 2) float64 on the CPU."""
    d = next(iter(before.values())).shape[1]
    X = _columns(d)
    return torch.cat([before[n].detach().to("cpu", torch.float64) @ X for n in sorted(before)])


@torch.no_grad()
def check_map(weights: dict[str, torch.Tensor], edit_map: torch.Tensor, witness: torch.Tensor, what: str) -> None:
    """Refuse a map that does not belong to ``weights``: ``W · M⁻¹ · X`` must give ``witness`` back.

    Tolerance: a tenth of the edit's own size there, ``‖(W − W_before) X‖``, plus the weights'
    rounding magnified by ``‖M⁻¹‖``.  A map of another edit misses by orders of magnitude.
    """
    d = edit_map.shape[0]
    rows = sum(w.shape[0] for w in weights.values())
    if not isinstance(witness, torch.Tensor) or tuple(witness.shape) != (rows, _WITNESS_COLUMNS):
        raise InputError(f"{what}: its map's witness has shape {tuple(getattr(witness, 'shape', ()))}, not "
                         f"({rows}, {_WITNESS_COLUMNS}): the file was changed after it was written")  # fmt: skip
    X = _columns(d)
    M = edit_map.detach().to("cpu", torch.float64)
    try:
        MinvX = torch.linalg.solve(M, X)
        inv_norm = 1.0 / float(torch.linalg.svdvals(M)[-1])
    except RuntimeError:
        raise InputError(f"{what}: its map is singular, so it is no edit of these weights") from None
    ws = [weights[n].detach().to("cpu", torch.float64) for n in sorted(weights)]
    now, back = torch.cat([w @ X for w in ws]), torch.cat([w @ MinvX for w in ws])
    eps = max(torch.finfo(w.dtype).eps for w in weights.values())
    tol = 0.1 * float((now - witness).norm()) + 10 * eps * float(now.norm()) * max(1.0, inv_norm)
    miss = float((back - witness).norm())
    if not miss <= tol:
        raise InputError(
            f"{what}: its stored map does not belong to its weights (W · M⁻¹ misses the weights before the edit by "
            f"{miss:.3g}, allowed {tol:.3g}): the map is another edit's; re-make the patch, or give base="
        )


def check_stored_map(patch) -> None:
    """Before a patch's map is used without the weights before the edit (``to_lora`` without ``base=``)."""
    if patch.witness is None:
        raise InputError(
            "this patch's map cannot be checked against its weights (the patch was made by hand, or saved by a "
            "rece-lite older than its map's check): give base=, the snapshot taken before the edit "
            "(rl.snapshot(pipe) before erasing), or re-make the patch"
        )
    check_map(patch.weights, patch.map, patch.witness, "this patch")


def check_loaded_patch(patch, path: str | os.PathLike) -> None:
    """A patch read from ``path``: its map finite, and its map and weights one edit's (when it keeps a witness)."""
    if patch.map is not None and not torch.isfinite(patch.map).all():
        raise InputError(f"{path}: its stored map holds NaN or inf")
    if patch.witness is not None:
        if patch.map is None:
            raise InputError(f"{path}: it holds a map's witness but no map: the file was changed after it was written")
        check_map(patch.weights, patch.map, patch.witness, str(path))


# ---------------------------------------------------------------------- model folders
def check_model_folder(folder: str | os.PathLike, error: BaseException) -> None:
    """After loading ``folder`` failed with ``error``: raise a ValueError naming the broken file, if one is found.

    Looks, in the order ``model_index.json`` lists the parts: a part's folder missing; a JSON
    file (configs, tokenizers) that does not parse; a safetensors file whose header or length is
    wrong; then each part loaded on its own (a config that does not fit its weights).
    """
    folder = Path(folder)
    index_path = folder / "model_index.json"
    try:
        index = json.loads(index_path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(f"could not load {folder}: {index_path} is not readable JSON ({_first(e)})") from error
    parts = {k: v for k, v in index.items() if not k.startswith("_") and isinstance(v, list) and v and v[0]}
    for part in parts:
        sub = folder / part
        if not sub.is_dir():
            raise InputError(f"could not load {folder}: its part {part!r} has no folder {sub}") from error
        for f in sorted(sub.iterdir()):
            _check_file(folder, f, error)
    for part, (lib, cls_name) in parts.items():
        try:
            cls = getattr(importlib.import_module(lib), cls_name)
        except (ImportError, AttributeError):
            continue
        if not callable(getattr(cls, "from_pretrained", None)):
            continue
        try:
            cls.from_pretrained(str(folder / part))
        except Exception as e:  # noqa: BLE001 - any failure of one part names it
            files = ", ".join(p.name for p in sorted((folder / part).iterdir()))
            raise InputError(
                f"could not load {folder}: its part {folder / part} ({files}) does not load: {_first(e)}"
            ) from error


def check_loaded_weights(pipe, folder: str | os.PathLike) -> None:
    """A pipeline just loaded from ``folder``: refuse weights holding NaN or inf, naming the part's folder."""
    for part in PARTS:
        module = getattr(pipe, part, None)
        if module is None:
            continue
        try:
            finite_modules({part: module}, "")
        except ValueError as e:
            bad = str(e).split(": ")[1].split(" holds")[0]
            raise InputError(f"could not load {folder}: {Path(folder) / part} holds NaN or inf ({bad})") from None


def _check_file(folder: Path, f: Path, error: BaseException) -> None:
    if f.suffix == ".json":
        try:
            json.loads(f.read_text())
        except (OSError, ValueError) as e:
            raise InputError(f"could not load {folder}: {f} is not readable JSON ({_first(e)})") from error
    elif f.suffix == ".safetensors":
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(str(f), framework="pt") as sf:
                list(sf.keys())
        except (OSError, SafetensorError) as e:
            raise InputError(f"could not load {folder}: {f} is not a whole safetensors file ({_first(e)})") from error


def _first(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]
