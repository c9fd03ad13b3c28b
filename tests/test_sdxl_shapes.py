"""UCE and RECE at SDXL's widths (random weights, reduced depth), against float64 oracles.

SDXL's cross-attention attends to d = 2048 = 768 + 1280 per token (two text encoders'
penultimate states, concatenated); its pooled embedding (1280) and time ids enter through
``add_embedding``.  The pipeline here keeps every width and the two-encoder structure, with
one transformer layer per block (11 ``attn2`` layers, 22 K/V matrices, 2.4 GB) and 8 x 8
latents, so that sampling is cheap.  At d = 2048 a float64 product or least-squares solve
over all 22 matrices costs ~0.2 TFLOP, so the oracles look through random probe columns and
at the gradient of RECE's objective instead (both bound the error: see their docstrings).
Every test starts by restoring the original weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionXLPipeline

import rece_lite as rl
from rece_lite import closed_form as cf
from rece_lite import layers
from rece_lite.pipeline import encode_pooled, sample
from rece_lite.sd_shapes import random_sdxl_pipeline

ERASE, GUIDE, PRESERVE = "red", "", ["blue", "green", "a yellow star"]
LAMB, ERASE_SCALE, PRESERVE_SCALE, REG_SCALE = 0.1, 1.0, 0.1, 0.1
D = 2048


@pytest.fixture(scope="module")
def sdxl():
    pipe = random_sdxl_pipeline(sample_size=8)
    original = {n: m.weight.detach().clone() for n, m in layers.projections(pipe.unet).items()}
    return pipe, rl.snapshot(pipe), original


def _emb(pipe, prompt: str) -> torch.Tensor:
    return rl.encode(pipe, prompt)[0].double()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _current(pipe) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() for n, m in layers.projections(pipe.unet).items()}


def _probe_error(got: torch.Tensor, W0: torch.Tensor, P: torch.Tensor, X: torch.Tensor) -> float:
    """‖got·X − W0·(P·X)‖ / ‖W0·(P·X)‖: the relative error of ``got ≈ W0·P`` seen through probe columns X.

    For Gaussian X this estimates the Frobenius-norm relative error without forming W0·P
    (22 products of (out, 2048) x (2048, 2048) in float64 would dominate the test's time).
    """
    expected = W0.double() @ (P @ X)
    return ((got.double() @ X - expected).norm() / expected.norm()).item()


def _gradient_bound(original: dict, c_new: torch.Tensor, c: torch.Tensor, reg: float, *, edited=None, M=None) -> float:
    """Relative error bound of a derived embedding, from the gradient of RECE's objective.

    f(x) = Σ_l ‖W_l x − W_l^orig c‖² + reg ‖x‖² is strictly convex with Hessian ⪰ 2·reg·I, so
    for its minimiser x*: ‖x − x*‖ ≤ ‖∇f(x)‖ / (2·reg).  W_l is ``edited[l]``, or W_l^orig · M.
    Returns the bound over ‖x‖, for all T rows at once.
    """
    x, c = c_new.double().T, c.double().T  # (d, T)
    grad = 2 * reg * x
    for name, W0 in original.items():
        W0 = W0.double()
        if M is not None:
            grad += 2 * M.T @ (W0.T @ (W0 @ (M @ x) - W0 @ c))
        else:
            W = edited[name].double()
            grad += 2 * W.T @ (W @ x - W0 @ c)
    return (grad.norm() / (2 * reg) / x.norm()).item()


def test_sdxl_has_two_text_encoders_and_cross_attention_of_width_2048(sdxl):
    pipe, _, _ = sdxl
    projs = layers.projections(pipe.unet)
    assert isinstance(pipe, StableDiffusionXLPipeline)
    assert len(layers.cross_attention_layers(pipe.unet)) == 11
    assert len(projs) == 22
    assert {m.in_features for m in projs.values()} == {D}
    assert sorted({m.out_features for m in projs.values()}) == [640, 1280]
    assert pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size == D
    assert pipe.unet.add_embedding.linear_1.in_features == 1280 + 6 * 256  # pooled + time ids
    assert rl.encode(pipe, ERASE).shape == (1, 77, D)
    assert encode_pooled(pipe, ERASE).shape == (1, 1280)


def test_uce_edits_every_matrix_by_its_closed_form_and_one_shared_map(sdxl):
    pipe, snap, original = sdxl
    snap.apply(pipe)
    patch = rl.uce_erase(
        pipe, ERASE, GUIDE, PRESERVE, lamb=LAMB, erase_scale=ERASE_SCALE, preserve_scale=PRESERVE_SCALE
    )
    ce, cg = _emb(pipe, ERASE), _emb(pipe, GUIDE)
    cp = torch.cat([_emb(pipe, p) for p in PRESERVE])
    for name in ["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k",
                 "mid_block.attentions.0.transformer_blocks.0.attn2.to_v",
                 "up_blocks.1.attentions.2.transformer_blocks.0.attn2.to_v"]:  # fmt: skip
        W0 = original[name].double()
        expected = cf.uce_weights(
            W0, ce, cg @ W0.T, cp, lamb=LAMB, erase_scale=ERASE_SCALE, preserve_scale=PRESERVE_SCALE
        )
        assert _rel(patch.weights[name], expected) < 1e-5, name
        assert _rel(expected, W0) > 1e-3, f"{name}: the edit should change the matrix"
    M = cf.uce_map(ce, cg, cp, lamb=LAMB, erase_scale=ERASE_SCALE, preserve_scale=PRESERVE_SCALE)
    X = torch.randn(D, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    errors = {n: _probe_error(patch.weights[n], original[n], M, X) for n in original}
    assert len(errors) == 22
    assert max(errors.values()) < 1e-5, max(errors.items(), key=lambda kv: kv[1])
    current = _current(pipe)
    assert all(torch.equal(current[n], patch.weights[n]) for n in current)


def test_derived_embedding_minimises_reces_objective(sdxl):
    pipe, snap, original = sdxl
    snap.apply(pipe)
    rl.uce_erase(pipe, ERASE, GUIDE, PRESERVE)
    got = rl.derive_embedding(pipe, ERASE, original=snap, reg="zero", reg_scale=REG_SCALE)
    assert got.shape == (77, D)
    c = _emb(pipe, ERASE)
    assert _gradient_bound(original, got, c, REG_SCALE, edited=_current(pipe)) < 1e-5
    assert _rel(got, c) > 1e-3, "the derived embedding should differ from the erased concept's"


def test_a_rece_run_derives_against_the_original_and_edits_by_the_product_of_its_maps(sdxl):
    pipe, snap, original = sdxl
    snap.apply(pipe)
    res = rl.rece_erase(pipe, ERASE, GUIDE, PRESERVE, epochs=2, reg_scale=REG_SCALE)
    ce, cg = _emb(pipe, ERASE), _emb(pipe, GUIDE)
    cp = torch.cat([_emb(pipe, p) for p in PRESERVE])
    # epoch 1 derives against the UCE-edited weights W_l^orig · M_0, with targets W_l^orig c
    M0 = cf.uce_map(ce, cg, cp, lamb=LAMB, erase_scale=ERASE_SCALE, preserve_scale=PRESERVE_SCALE)
    assert res.derived[0].shape == (77, D)
    assert _gradient_bound(original, res.derived[0], ce, REG_SCALE, M=M0) < 1e-5
    # the final weights: W_l^orig times the product of every edit's map (UCE, then one per epoch)
    P = res.maps[0].double() @ res.maps[1].double() @ res.maps[2].double()
    X = torch.randn(D, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    errors = {n: _probe_error(res.patch.weights[n], original[n], P, X) for n in original}
    assert max(errors.values()) < 1e-4, max(errors.items(), key=lambda kv: kv[1])


def test_patch_round_trips_through_safetensors_and_applies(sdxl, tmp_path):
    pipe, snap, original = sdxl
    snap.apply(pipe)
    patch = rl.uce_erase(pipe, ERASE, GUIDE, PRESERVE)
    path = tmp_path / "red.safetensors"
    patch.save(path)
    loaded = rl.Patch.load(path)
    assert loaded.fingerprint == patch.fingerprint
    assert set(loaded.weights) == set(patch.weights)
    assert all(torch.equal(loaded.weights[n], patch.weights[n]) for n in patch.weights)
    snap.apply(pipe)
    assert all(torch.equal(w, original[n]) for n, w in _current(pipe).items())
    loaded.apply(pipe)
    assert all(torch.equal(w, patch.weights[n]) for n, w in _current(pipe).items())


def test_an_edit_leaves_the_pooled_path_untouched(sdxl):
    pipe, snap, _ = sdxl
    snap.apply(pipe)
    before = encode_pooled(pipe, ERASE)
    add = pipe.unet.add_embedding.linear_1.weight.detach().clone()
    rl.uce_erase(pipe, ERASE, GUIDE, PRESERVE)
    assert torch.equal(encode_pooled(pipe, ERASE), before)
    assert torch.equal(pipe.unet.add_embedding.linear_1.weight, add)


# ------------------------------------------------------------------------------ sampling from embeddings
def test_sampling_from_an_embedding_gives_images_of_the_pipelines_size(sdxl):
    pipe, snap, _ = sdxl
    snap.apply(pipe)
    images = sample(pipe, embeds=rl.encode(pipe, [ERASE, "blue"]), seeds=[0], steps=1)
    assert images.shape == (2, 64, 64, 3)
    assert images.dtype == np.uint8


def test_sampling_from_an_embedding_is_deterministic_per_seed(sdxl):
    pipe, snap, _ = sdxl
    snap.apply(pipe)
    e = rl.encode(pipe, ERASE)
    assert np.array_equal(sample(pipe, embeds=e, seeds=[7], steps=1), sample(pipe, embeds=e, seeds=[7], steps=1))


def test_the_default_pooled_embedding_is_the_empty_prompts(sdxl):
    pipe, snap, _ = sdxl
    snap.apply(pipe)
    e = rl.encode(pipe, ERASE)
    default = sample(pipe, embeds=e, seeds=[7], steps=1)
    assert np.array_equal(default, sample(pipe, embeds=e, pooled=encode_pooled(pipe, ""), seeds=[7], steps=1))
    concept = sample(pipe, embeds=e, pooled=encode_pooled(pipe, ERASE), seeds=[7], steps=1)
    assert not np.array_equal(default, concept), "the pooled embedding should reach the image"
