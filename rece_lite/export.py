"""Edits as files diffusers loads: a LoRA for ``load_lora_weights``, a folder for ``from_pretrained``.

Every UCE and RECE edit is ``W ← W·M`` for all cross-attention K/V matrices at once, with
``M − I`` of low rank: at most the number of erased token rows, for RECE the sum over its
edits (DESIGN.md §6).  So each matrix changes by a product of two thin matrices, a LoRA:

    ΔW = W·M − W = (W U Σ) Vᵀ    for    M − I = U Σ Vᵀ,
    lora_B = W U Σ  (out, r),      lora_A = Vᵀ  (r, d),

exact at ``r = rank(M − I)``; below it, each ``ΔW`` is replaced by its best rank-``r``
approximation and the error is measured.  ``W`` is the matrix *before* the edit: given a
``base`` (a snapshot taken before the edit, or a pipeline holding those weights) the LoRA is
exact; from the patch alone, ``W = W_new·M⁻¹`` is recovered, which multiplies the rounding
of ``W_new`` by ``‖M⁻¹‖`` (large after RECE, whose maps nearly flatten the erased directions).

The file is what diffusers' own ``save_lora_weights`` writes for a UNet LoRA (read in diffusers
0.42: ``loaders/lora_pipeline.py`` ``lora_state_dict`` → ``loaders/peft.py`` ``load_lora_adapter``,
which strips the ``unet.`` prefix and, given ``lora_A`` keys, takes the state dict as peft's;
``utils/peft_utils.py`` ``_create_lora_config``): keys ``unet.<module>.lora_A.weight`` (r, d) and
``unet.<module>.lora_B.weight`` (out, r), and in the safetensors header ``lora_adapter_metadata``,
a JSON ``LoraConfig`` with ``unet.lora_alpha == unet.r`` so that peft's scale ``α / r`` is 1.

References:
    Hu et al., *LoRA: Low-Rank Adaptation of Large Language Models*, ICLR 2022 (arXiv 2106.09685).
    Halko, Martinsson, Tropp, *Finding Structure with Randomness*, SIAM Review 53(2), 2011, §4
    (the range finder that finds ``M − I``'s rank without a full ``d x d`` SVD).
"""

from __future__ import annotations

import json
import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from rece_lite import checks, layers
from rece_lite import closed_form as cf
from rece_lite._version import __version__
from rece_lite.errors import InputError
from rece_lite.files import save_tensors, staged_dir
from rece_lite.loading import Pipeline
from rece_lite.patch import Patch, _check_names, file_to_write

#: Singular values of ``M − I`` below ``RANK_TOLERANCE · σ₁`` are dropped: float32's resolution (2⁻²³).
RANK_TOLERANCE = 2.0**-23
#: The component of a diffusers pipeline that the LoRA's keys are prefixed with.
LORA_PREFIX = "unet"
#: The file name diffusers looks for when ``load_lora_weights`` is given a folder.
LORA_WEIGHT_NAME = "pytorch_lora_weights.safetensors"
#: The safetensors header key of rece-lite's record of the export (JSON).
LORA_INFO_KEY = "rece_lite.lora"
#: The JSON note :func:`save_pretrained` writes beside the pipeline's own files.
NOTE_NAME = "rece_lite.json"


class Snapshot(Protocol):
    """What ``base=`` and ``edit=`` read from a :class:`rece_lite.Patch`."""

    weights: dict[str, torch.Tensor]
    fingerprint: str


@dataclass(frozen=True)
class LoraExport:
    """What :func:`to_lora` wrote.

    Attributes:
        path: the safetensors file.
        rank: r, the rank of every matrix's LoRA.
        exact_rank: the rank at which the LoRA is exact (``rank(M − I)`` at :data:`RANK_TOLERANCE`).
        error: max over matrices of ``‖ΔW − BA‖_F / ‖ΔW‖_F`` in float64 (0 when ``rank == exact_rank``).
        errors: that relative error per matrix, by module name.
        exact_base: whether ``ΔW`` was computed from the weights before the edit (``base`` given)
            rather than recovered from the patch's weights.
    """

    path: Path
    rank: int
    exact_rank: int
    error: float
    errors: dict[str, float]
    exact_base: bool


# ---------------------------------------------------------------------------- the math
def low_rank(
    E: torch.Tensor, rtol: float = RANK_TOLERANCE, atol: float = 0.0, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``E ≈ U diag(S) Vᵀ`` keeping the singular values above ``tol = max(rtol · σ₁, atol)``, in float64.

    A randomised range finder (Halko et al. 2011, alg. 4.1): ``Q`` = an orthonormal basis of
    ``E Ω`` for ℓ Gaussian columns, doubled until ``‖E − Q Qᵀ E‖_F ≤ tol``; then the SVD
    of the small ``Qᵀ E``.  For an ``E`` of rank k ≪ d this costs O(d² k), not a d x d SVD
    (SDXL's d = 2048: 0.5 s instead of 40 s on one CPU core); near full rank it is that SVD.

    Args:
        E: (n, d) real matrix.
        rtol: threshold on singular values relative to the largest.
        atol: absolute threshold on singular values.
        seed: seeds Ω (the result is deterministic; its rank does not depend on Ω).

    Returns:
        U (n, k), S (k,), Vt (k, d), float64 on ``E``'s solve device; k = 0 for ``E = 0``.
    """
    dev = cf.solve_device(E.device)
    E = E.detach().to(dev).to(torch.float64)
    n, d = E.shape
    gen = torch.Generator(device=dev).manual_seed(seed)
    ell = 16
    while 2 * ell < min(n, d):
        Q, _ = torch.linalg.qr(E @ torch.randn(d, ell, generator=gen, dtype=torch.float64, device=dev))
        Y = Q.T @ E
        Uy, S, Vt = torch.linalg.svd(Y, full_matrices=False)
        if (E - Q @ Y).norm() <= max(rtol * S[0].item(), atol):
            U = Q @ Uy
            break
        ell *= 2
    else:
        U, S, Vt = torch.linalg.svd(E, full_matrices=False)
    tol = max(rtol * S[0].item(), atol) if S.numel() else 0.0
    k = int((S > tol).sum()) if S.numel() and S[0] > 0 else 0
    return U[:, :k], S[:k], Vt[:k]


def lora_pair(B: torch.Tensor, A: torch.Tensor, rank: int | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """The best rank-``rank`` approximation of ``B A`` (Eckart–Young), as a new pair, and its relative error.

    Args:
        B: (out, k) float64.
        A: (k, d) float64 with orthonormal rows, so that ``‖B A‖ = ‖B‖`` in every unitarily
            invariant norm and the SVD of ``B`` gives that of ``B A``.
        rank: r ≥ 1, or None to keep all k.

    Returns:
        B' (out, r'), A' (r', d) with r' = min(r, k), and ``‖BA − B'A'‖_F / ‖BA‖_F``.
    """
    if rank is None or rank >= A.shape[0]:
        return B, A, 0.0
    Q, S, Rt = torch.linalg.svd(B, full_matrices=False)
    total = S.norm().item()
    error = S[rank:].norm().item() / total if total > 0 else 0.0
    return Q[:, :rank] * S[:rank], Rt[:rank] @ A, error


# ---------------------------------------------------------------------------- checks
def _check_rank(rank: object, d: int) -> int | None:
    if rank is None:
        return None
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise TypeError(f"rank must be a whole number (or None for the exact rank), got {type(rank).__name__}")
    if not 1 <= rank <= d:
        raise InputError(f"rank must be between 1 and d = {d} (or None for the exact rank), got {rank}")
    return int(rank)


def _base_weights(base: Snapshot | Pipeline, fingerprint: str | None) -> dict[str, torch.Tensor]:
    """The weights of ``base`` (a snapshot, a pipeline or a UNet), after checking it is ``fingerprint``'s model."""
    if isinstance(getattr(base, "weights", None), dict):
        weights, fp, what = base.weights, getattr(base, "fingerprint", None), "snapshot"
    else:
        unet = getattr(base, "unet", base)
        if not isinstance(unet, torch.nn.Module):
            raise TypeError(
                f"base must be a snapshot (rl.snapshot(pipe) before the edit) or a pipeline holding the weights "
                f"the edit was applied to, got {type(base).__name__}"
            )
        weights = {n: m.weight.detach() for n, m in layers.projections(unet).items()}
        fp, what = layers.fingerprint(base), "pipeline"
    if fingerprint and fp and not layers.same_model(fp, fingerprint):
        raise InputError(
            f"base: this patch was made for model {fingerprint}, not for the base {what}'s model ({fp}): "
            "give the snapshot or pipeline of the model the patch was made on"
        )
    return weights


def _check_base(base: dict[str, torch.Tensor], weights: dict[str, torch.Tensor], M: torch.Tensor | None) -> None:
    """Refuse a ``base`` that is not the weights the edit was applied to (``base · M ≈ weights``)."""
    _check_names(set(base), set(weights), "base")
    for n, w in weights.items():
        if tuple(base[n].shape) != tuple(w.shape):
            raise InputError(f"base: {n} has shape {tuple(base[n].shape)}, the patch {tuple(w.shape)}")
    if all(torch.equal(base[n].to(w.device, w.dtype), w) for n, w in weights.items()):
        raise InputError(
            "base holds the edited weights themselves, not the weights before the edit: give the snapshot taken "
            "before it (rl.snapshot(pipe) before erasing), or leave base out"
        )
    if M is None:
        return
    # through 4 random probe columns: ‖base·M·X − W·X‖ vs ‖(W − base)·X‖, without forming base·M
    dev = M.device
    X = torch.randn(M.shape[0], 4, generator=torch.Generator(device=dev).manual_seed(0), dtype=M.dtype, device=dev)
    MX = M @ X
    for n, w in weights.items():
        b, w = base[n].to(dev).double(), w.to(dev).double()
        if (b @ MX - w @ X).norm() > 0.1 * ((w - b) @ X).norm():
            raise InputError(
                f"base: {n} is not the matrix this edit was applied to (base · M differs from the patch): give "
                "the snapshot taken right before the edit"
            )


# ---------------------------------------------------------------------------- the LoRA
def to_lora(
    path: str | os.PathLike,
    weights: dict[str, torch.Tensor],
    edit_map: torch.Tensor | None,
    *,
    rank: int | None = None,
    base: Snapshot | Pipeline | None = None,
    fingerprint: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> LoraExport:
    """Write an edit as a LoRA that ``pipe.load_lora_weights(path)`` loads (diffusers with peft).

    ``Patch.to_lora(path, rank, base=)`` calls this with the patch's weights, map, fingerprint
    and metadata.  Loaded into the model the edit was made on, then fused
    (``pipe.fuse_lora()``) or not, it gives the patched model's K/V weights.

    Args:
        path: the .safetensors file to write (atomically); its folder must exist.
        weights: module name -> (out, d) K/V weight *after* the edit (``Patch.weights``).
        edit_map: (d, d) ``M`` with ``weights == W_before · M`` (``Patch.map``), or None for an
            edit that is no such map (ESD): then ``base`` is required and each
            ``ΔW = weights − base`` gets its own SVD (exact rank: the largest over matrices,
            dropping singular values below the base's rounding, ``eps · ‖W‖_F``; near full for ESD).
        rank: r, 1 ≤ r ≤ d; default (None) the exact rank.  A rank above the exact one
            writes the exact one.
        base: the weights the edit was applied to: ``rl.snapshot(pipe)`` taken before it, or a
            pipeline that holds them.  Without it ``W_before = weights · M⁻¹`` is recovered,
            exact up to the weights' rounding times ``‖M⁻¹‖``: 7e-6 of ``‖ΔW‖`` after UCE,
            5e-4 after RECE (2 epochs) on the embedded model; with a base, 5e-7 and 3e-7.
        fingerprint: the model's :func:`rece_lite.layers.fingerprint`; checked against ``base``.
        metadata: the edit's settings, stored in the file.

    Returns:
        A :class:`LoraExport` with the rank written and the measured relative error.
    """
    # 1. Check everything before any work: the weights and map as a Patch checks them
    try:
        edit = Patch(weights, fingerprint or "", dict(metadata or {}), edit_map)
    except TypeError as e:
        raise TypeError(f"to_lora: {e} (give a Patch's weights and map)") from None
    d = next(iter(weights.values())).shape[-1]
    rank = _check_rank(rank, d)
    hint = f", e.g. {Path(path) / LORA_WEIGHT_NAME} (the name load_lora_weights looks for in a folder)"
    path = file_to_write(path, "to_lora", "write the LoRA", hint if isinstance(path, (str, os.PathLike)) else "")
    dev = cf.solve_device(next(iter(weights.values())).device)
    M = None
    if edit.map is not None:
        M = edit.map.detach().to(dev).to(torch.float64)
        if not torch.isfinite(M).all():
            raise InputError("edit_map holds NaN or inf")
    before = _base_weights(base, fingerprint) if base is not None else None
    if before is None and M is None:
        raise InputError(
            "this patch has no map (a snapshot, or an edit such as ESD that is no W·M): give base=, the snapshot "
            "taken before the edit, so that each ΔW = W − W_before can be factored"
        )
    checks.finite(weights, "weights")
    if before is not None:
        checks.finite(before, "base")
        _check_base(before, weights, M)

    # 2. Per matrix B (out, k) and A (k, d) with ΔW = B A in float64, then truncated to the rank asked for
    names = list(weights)
    new = {n: weights[n].detach().to(dev).double() for n in names}
    if M is not None:
        U, S, Vt = low_rank(M - torch.eye(d, dtype=torch.float64, device=dev))
        if not len(S):
            raise InputError("edit_map is the identity: the edit changes nothing, so there is no LoRA to write")
        P = U * S  # M − I = P Vᵀ
        if before is None:
            P = torch.linalg.solve(M, P)  # I − M⁻¹ = M⁻¹ (M − I) = (M⁻¹ P) Vᵀ, applied to W_new
        old = new if before is None else {n: before[n].to(dev).double() for n in names}
        pairs = {n: (old[n] @ P, Vt) for n in names}
        exact = len(S)
    else:
        pairs = {}
        for n in names:
            b = before[n].to(dev).double()
            U, S, Vt = low_rank(new[n] - b, rtol=0.0, atol=torch.finfo(before[n].dtype).eps * b.norm().item())
            pairs[n] = (U * S, Vt)
        exact = max(A.shape[0] for _, A in pairs.values())
        if exact == 0:
            raise InputError("the patch's weights equal base's: the edit changes nothing, so there is no LoRA to write")
        pairs = {n: _pad(B, A, exact) for n, (B, A) in pairs.items()}
    r = exact if rank is None else min(rank, exact)
    lora, errors = {}, {}
    dtype = torch.promote_types(next(iter(weights.values())).dtype, torch.float32)
    for n, (B, A) in pairs.items():
        B, A, errors[n] = lora_pair(B, A, r)
        # copies: every module gets its own A (safetensors refuses tensors that share memory)
        lora[f"{LORA_PREFIX}.{n}.lora_A.weight"] = A.to(dtype, copy=True).contiguous()
        lora[f"{LORA_PREFIX}.{n}.lora_B.weight"] = B.to(dtype, copy=True).contiguous()

    # 3. The file: diffusers' keys and LoraConfig, rece-lite's record beside them
    result = LoraExport(path, r, exact, max(errors.values()), errors, before is not None)
    config = {"r": r, "lora_alpha": r, "target_modules": names}
    info = {
        "fingerprint": fingerprint,
        "edit": dict(metadata or {}),
        "rank": r,
        "exact_rank": exact,
        "rank_rule": f"M - I: s > {RANK_TOLERANCE:.3g} s_1" if M is not None else "per matrix: s > eps |W_before|_F",
        "error": result.error,
        "errors": errors,
        "exact_base": result.exact_base,
    }
    header = {
        "lora_adapter_metadata": json.dumps({f"{LORA_PREFIX}.{k}": v for k, v in config.items()}),
        LORA_INFO_KEY: json.dumps(info),
    }
    save_tensors(lora, path, header)
    return result


def _pad(B: torch.Tensor, A: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``B`` (out, k), ``A`` (k, d) with zero columns / rows added up to rank ``r`` (BA unchanged)."""
    k = A.shape[0]
    if k >= r:
        return B, A
    return torch.nn.functional.pad(B, (0, r - k)), torch.nn.functional.pad(A, (0, 0, 0, r - k))


def read_lora_info(path: str | os.PathLike) -> dict[str, Any]:
    """rece-lite's record in a file written by :func:`to_lora`: rank, exact rank, errors, edit, fingerprint."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist or is not a file; give a LoRA written by to_lora")
    with safe_open(str(path), framework="pt") as f:
        header = f.metadata() or {}
    if LORA_INFO_KEY not in header:
        raise InputError(f"{path} is not a LoRA written by rece-lite (no {LORA_INFO_KEY} in its header)")
    return json.loads(header[LORA_INFO_KEY])


# ---------------------------------------------------------------------------- the pipeline
def save_pretrained(
    pipe: Pipeline, folder: str | os.PathLike, *, edit: Snapshot | None = None, force: bool = False
) -> Path:
    """Write the whole (erased) pipeline so that ``from_pretrained`` and :func:`rece_lite.load_pipeline` load it.

    The pipeline's own ``save_pretrained`` (safetensors, never pickles), filled in a hidden
    folder beside ``folder`` and renamed into place when complete
    (:func:`rece_lite.files.staged_dir`).  With ``edit``, a short JSON note
    (:data:`NOTE_NAME`: the edit's metadata, the model's fingerprint) goes beside it.

    Args:
        pipe: a StableDiffusionPipeline or StableDiffusionXLPipeline without LoRA adapters
            loaded (fuse and ``unload_lora_weights()`` first, or save the LoRA on its own).
        folder: the folder to create.
        edit: the patch ``pipe`` now holds (checked), recorded in the note.
        force: replace an existing ``folder``.

    Returns:
        ``folder`` as an absolute path.
    """
    checks.non_blank(folder, "folder")
    folder = Path(folder)
    if folder.exists() and not force:
        raise FileExistsError(f"folder {folder} already exists; pass force=True to replace it")
    parts = [getattr(pipe, p, None) for p in ("unet", "text_encoder", "text_encoder_2")]
    if not callable(getattr(pipe, "save_pretrained", None)) or not isinstance(parts[0], torch.nn.Module):
        raise TypeError(f"pipe must be a diffusers Stable Diffusion pipeline, got {type(pipe).__name__}")
    if any(getattr(p, "peft_config", None) for p in parts if p is not None):
        raise InputError(
            "pipe has LoRA adapters loaded; from_pretrained would not read them back: call pipe.fuse_lora() and "
            "pipe.unload_lora_weights() first (or save the LoRA itself with to_lora)"
        )
    checks.finite_modules({p: getattr(pipe, p, None) for p in checks.PARTS}, "pipe")
    note = None
    if edit is not None:
        note = _edit_note(pipe, edit)
    with staged_dir(folder, force=force, option="folder") as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
        if note is not None:
            (tmp / NOTE_NAME).write_text(json.dumps(note, indent=2) + "\n")
    return Path(os.path.abspath(folder))


def _edit_note(pipe: Pipeline, edit: Snapshot) -> dict[str, Any]:
    if not isinstance(getattr(edit, "weights", None), dict) or not isinstance(getattr(edit, "fingerprint", None), str):
        raise TypeError(f"edit must be the Patch the pipeline holds, got {type(edit).__name__}")
    fp = layers.fingerprint(pipe)
    if not layers.same_model(edit.fingerprint, fp):
        raise InputError(f"edit: this patch was made for model {edit.fingerprint}, not this pipeline's ({fp})")
    mods = layers.projections(pipe.unet)
    held = set(mods) == set(edit.weights) and all(
        torch.equal(m.weight.detach(), edit.weights[n].to(m.weight.device, m.weight.dtype)) for n, m in mods.items()
    )
    if not held:
        raise InputError("edit: the pipeline does not hold this patch's weights; apply it first (patch.apply(pipe))")
    meta = getattr(edit, "metadata", {}) or {}
    return {"rece_lite": __version__, "fingerprint": fp, "matrices": len(mods), "edit": dict(meta)}
