"""The baseline of ``erase_speed.py``: UCE and RECE written the way the official code is organised.

A straightforward per-matrix implementation of the same formulas, the way CharlesGong12/RECE (on
rohitgandikota/unified-concept-editing) loops: for each of the 32 key/value matrices it re-runs
the text encoder on the prompts, builds ``mat1 = λW + Σ v cᵀ`` and ``mat2 = λI + Σ c cᵀ`` and
inverts ``mat2`` explicitly; the RECE derivation sums ``W_lᵀW_l`` and ``W_lᵀW_l^orig`` over the
matrices, with the original matrices kept as a second copy.  Not rece-lite code: it is what
rece-lite's factored closed forms are timed and checked against.  Also the recipe both sides run.
"""

from __future__ import annotations

import torch

import rece_lite as rl

# The recipe, in the miniature world's vocabulary (the SD 1.4-shaped pipeline borrows its tokenizer).
ERASE = "red"
GUIDE = ""
PRESERVE = ["blue", "green", "a yellow star"]
LAMB, ERASE_SCALE, PRESERVE_SCALE = 0.1, 1.0, 0.1
REG_SCALE, EPOCHS = 0.1, 3
BASELINE_BUDGET_S = 600  # most seconds to spend on the slowest baseline row (the brief's 10 minutes)


def baseline_matrices(unet) -> dict[str, torch.nn.Linear]:
    """Every ``attn2.to_k`` / ``attn2.to_v`` of the UNet, by name (SD 1.x: 32 of them)."""
    return {n: m for n, m in unet.named_modules() if n.endswith(("attn2.to_k", "attn2.to_v"))}


def baseline_encode(pipe, items: list) -> list[torch.Tensor]:
    """Prompts through the text encoder (one batch); (T, d) tensors pass through; float32 (half models too)."""
    prompts = [x for x in items if isinstance(x, str)]
    enc = iter(rl.encode(pipe, prompts)) if prompts else iter(())
    return [(next(enc) if isinstance(x, str) else x).float() for x in items]


@torch.no_grad()
def baseline_uce(pipe, erase, guide, preserve, *, lamb=LAMB, erase_scale=ERASE_SCALE, preserve_scale=PRESERVE_SCALE):
    """UCE, one matrix at a time: re-encode, targets from this matrix's pre-edit W, invert, write."""
    for lin in baseline_matrices(pipe.unet).values():
        # the official loop encodes the prompts inside the per-matrix loop
        ce, cg, *cps = baseline_encode(pipe, [erase, guide, *preserve])
        cp = torch.cat(cps) if cps else ce[:0]
        W = lin.weight.float()  # this matrix's weights before the edit: the targets W c* and W c_j use them
        v_guide, v_keep = cg @ W.T, cp @ W.T  # (T, out)
        mat1 = lamb * W + erase_scale * v_guide.T @ ce + preserve_scale * v_keep.T @ cp
        eye = torch.eye(W.shape[1], dtype=W.dtype, device=W.device)
        mat2 = lamb * eye + erase_scale * ce.T @ ce + preserve_scale * cp.T @ cp
        lin.weight.copy_(mat1 @ torch.inverse(mat2))


@torch.no_grad()
def baseline_derive(pipe, concept, original: dict[str, torch.Tensor], *, reg_scale=REG_SCALE):
    """RECE's close_regzero: c' = c (λ'I + Σ W_lᵀW_l)⁻¹ Σ W_lᵀW_l^orig, summed matrix by matrix."""
    (c,) = baseline_encode(pipe, [concept])
    mats = baseline_matrices(pipe.unet)
    W0 = next(iter(mats.values())).weight
    d, like = W0.shape[1], dict(dtype=torch.float32, device=W0.device)
    mat1, mat2 = reg_scale * torch.eye(d, **like), torch.zeros(d, d, **like)
    for name, lin in mats.items():
        W = lin.weight.float()
        mat1 += W.T @ W
        mat2 += W.T @ original[name].float()
    return c @ (torch.inverse(mat1) @ mat2).T


@torch.no_grad()
def baseline_rece(pipe, concept, guide, preserve, *, epochs=EPOCHS):
    """UCE, then per epoch: derive c' against a kept copy of the original matrices, erase c'."""
    original = {n: m.weight.detach().clone() for n, m in baseline_matrices(pipe.unet).items()}
    baseline_uce(pipe, concept, guide, preserve)
    derived = []
    for _ in range(epochs):
        derived.append(baseline_derive(pipe, concept, original))
        baseline_uce(pipe, derived[-1], guide, preserve)
    return derived
