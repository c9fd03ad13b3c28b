"""UCE and RECE at Stable Diffusion 2.1's real shapes (random weights), against float64 oracles.

SD 2.1 differs from 1.4 where an edit could notice: d = 1024 (OpenCLIP ViT-H), linear
projections in and out of each transformer, (5, 10, 20, 20) heads, v-prediction.  One
SD 2.1-shaped pipeline (3.5 GB UNet, a 1-layer text encoder) serves the module; every
test starts by restoring its original weights.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import rece_lite as rl
from rece_lite import closed_form as cf
from rece_lite import layers
from rece_lite.pipeline import sample
from rece_lite.sd_shapes import random_sd21_pipeline

ERASE, GUIDE, PRESERVE = "red", "", ["blue", "green", "a yellow star"]
LAMB, ERASE_SCALE, PRESERVE_SCALE, REG_SCALE = 0.1, 1.0, 0.1, 0.1
D = 1024


@pytest.fixture(scope="module")
def sd21():
    pipe = random_sd21_pipeline(text_layers=1)
    original = {n: m.weight.detach().clone() for n, m in layers.projections(pipe.unet).items()}
    return pipe, rl.snapshot(pipe), original


def _emb(pipe, prompt: str) -> torch.Tensor:
    return rl.encode(pipe, prompt)[0].double()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _pick(names_shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """One to_k and one to_v of every output width, and a mid-block matrix."""
    picked: dict[tuple[int, str], str] = {}
    for name, shape in names_shapes.items():
        picked.setdefault((shape[0], name[-4:]), name)
    mid = [n for n in names_shapes if n.startswith("mid_block")]
    return sorted(set(picked.values()) | set(mid[:1]))


def _current(pipe) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() for n, m in layers.projections(pipe.unet).items()}


def _derivation_oracle(weights: list[torch.Tensor], targets: torch.Tensor, reg: float) -> torch.Tensor:
    """argmin_x Σ_l ‖W_l x − t_l‖² + reg ‖x‖² for every column of the stacked targets, by least squares."""
    A = torch.cat([torch.cat(weights), reg**0.5 * torch.eye(D, dtype=torch.float64)])
    B = torch.cat([targets, torch.zeros(D, targets.shape[1], dtype=torch.float64)])
    return torch.linalg.lstsq(A, B).solution.T


def test_sd21_has_32_projections_of_width_1024_and_predicts_v(sd21):
    pipe, _, _ = sd21
    projs = layers.projections(pipe.unet)
    assert len(layers.cross_attention_layers(pipe.unet)) == 16
    assert len(projs) == 32
    assert {m.in_features for m in projs.values()} == {D}
    assert sorted({m.out_features for m in projs.values()}) == [320, 640, 1280]
    assert sum(m.out_features for m in projs.values()) == 24_960
    assert [layer.heads for layer in list(layers.cross_attention_layers(pipe.unet).values())[::2][:3]] == [5, 10, 20]
    assert isinstance(pipe.unet.down_blocks[0].attentions[0].proj_in, torch.nn.Linear)  # use_linear_projection
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert rl.encode(pipe, ERASE).shape == (1, 77, D)


def test_uce_edits_every_matrix_by_its_closed_form_and_one_shared_map(sd21):
    pipe, snap, original = sd21
    snap.apply(pipe)
    patch = rl.uce_erase(
        pipe, ERASE, GUIDE, PRESERVE, lamb=LAMB, erase_scale=ERASE_SCALE, preserve_scale=PRESERVE_SCALE
    )
    ce, cg = _emb(pipe, ERASE), _emb(pipe, GUIDE)
    cp = torch.cat([_emb(pipe, p) for p in PRESERVE])
    shapes = {n: tuple(w.shape) for n, w in original.items()}
    checked = _pick(shapes)
    assert {shapes[n][0] for n in checked} == {320, 640, 1280}
    for name in checked:
        W0 = original[name].double()
        expected = cf.uce_weights(
            W0, ce, cg @ W0.T, cp, lamb=LAMB, erase_scale=ERASE_SCALE, preserve_scale=PRESERVE_SCALE
        )
        assert _rel(patch.weights[name], expected) < 1e-5, name
        assert _rel(expected, W0) > 1e-3, f"{name}: the edit should change the matrix"
    M = cf.uce_map(ce, cg, cp, lamb=LAMB, erase_scale=ERASE_SCALE, preserve_scale=PRESERVE_SCALE)
    errors = {n: _rel(patch.weights[n], original[n].double() @ M) for n in original}
    assert len(errors) == 32
    assert max(errors.values()) < 1e-5, max(errors.items(), key=lambda kv: kv[1])
    current = _current(pipe)
    assert all(torch.equal(current[n], patch.weights[n]) for n in current)


def test_derived_embedding_is_the_stacked_least_squares_solution(sd21):
    pipe, snap, original = sd21
    snap.apply(pipe)
    rl.uce_erase(pipe, ERASE, GUIDE, PRESERVE)
    got = rl.derive_embedding(pipe, ERASE, original=snap, reg="zero", reg_scale=REG_SCALE)
    assert got.shape == (77, D)
    c = _emb(pipe, ERASE)
    names = list(original)
    current = _current(pipe)
    expected = _derivation_oracle(
        [current[n].double() for n in names], torch.cat([original[n].double() @ c.T for n in names]), REG_SCALE
    )
    assert _rel(got, expected) < 1e-5
    assert _rel(expected, c) > 1e-3, "the derived embedding should differ from the erased concept's"


def test_a_rece_run_derives_against_the_original_and_edits_by_the_product_of_its_maps(sd21):
    pipe, snap, original = sd21
    snap.apply(pipe)
    res = rl.rece_erase(pipe, ERASE, GUIDE, PRESERVE, epochs=2, reg_scale=REG_SCALE)
    ce, cg = _emb(pipe, ERASE), _emb(pipe, GUIDE)
    cp = torch.cat([_emb(pipe, p) for p in PRESERVE])
    names = list(original)
    # epoch 1 derives against the UCE-edited weights W_l^orig · M_0, with targets W_l^orig c
    M0 = cf.uce_map(ce, cg, cp, lamb=LAMB, erase_scale=ERASE_SCALE, preserve_scale=PRESERVE_SCALE)
    expected = _derivation_oracle(
        [original[n].double() @ M0 for n in names], torch.cat([original[n].double() @ ce.T for n in names]), REG_SCALE
    )
    assert len(res.derived) == 2
    assert _rel(res.derived[0], expected) < 1e-4
    # the final weights: W_l^orig times the product of every edit's map (UCE, then one per epoch)
    assert len(res.maps) == 3
    P = res.maps[0].double() @ res.maps[1].double() @ res.maps[2].double()
    errors = {n: _rel(res.patch.weights[n], original[n].double() @ P) for n in names}
    assert max(errors.values()) < 1e-4, max(errors.items(), key=lambda kv: kv[1])
    current = _current(pipe)
    assert not any(torch.equal(current[n], original[n]) for n in names)


def test_patch_round_trips_through_safetensors_and_applies(sd21, tmp_path):
    pipe, snap, original = sd21
    snap.apply(pipe)
    patch = rl.uce_erase(pipe, ERASE, GUIDE, PRESERVE)
    path = tmp_path / "red.safetensors"
    patch.save(path)
    loaded = rl.Patch.load(path)
    assert loaded.fingerprint == patch.fingerprint
    assert loaded.metadata == patch.metadata
    assert set(loaded.weights) == set(patch.weights)
    assert all(torch.equal(loaded.weights[n], patch.weights[n]) for n in patch.weights)
    snap.apply(pipe)
    assert all(torch.equal(w, original[n]) for n, w in _current(pipe).items())
    loaded.apply(pipe)
    assert all(torch.equal(w, patch.weights[n]) for n, w in _current(pipe).items())


def test_v_prediction_sampling_is_deterministic_per_seed(sd21):
    pipe, snap, _ = sd21
    snap.apply(pipe)
    size = pipe.unet.config.sample_size  # 96 x 96 latents would take minutes on a CPU: sample 8 x 8 instead
    pipe.unet.register_to_config(sample_size=8)
    try:
        a = sample(pipe, ERASE, seeds=[4], steps=1)
        b = sample(pipe, ERASE, seeds=[4], steps=1)
    finally:
        pipe.unet.register_to_config(sample_size=size)
    assert a.shape == (1, 64, 64, 3)
    assert np.array_equal(a, b)
