"""UCE and RECE at Stable Diffusion 1.4's real shapes (random weights), against float64 oracles.

One SD 1.4-shaped pipeline (3.4 GB UNet, a 1-layer text encoder) serves the module;
every test starts by restoring its original weights.
"""

from __future__ import annotations

import pytest
import torch

import rece_lite as rl
from rece_lite import closed_form as cf
from rece_lite import layers
from rece_lite.sd14 import random_sd14_pipeline

ERASE, GUIDE, PRESERVE = "red", "", ["blue", "green", "a yellow star"]
LAMB, ERASE_SCALE, PRESERVE_SCALE, REG_SCALE = 0.1, 1.0, 0.1, 0.1


@pytest.fixture(scope="module")
def sd14():
    pipe = random_sd14_pipeline(text_layers=1)
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


def test_sd14_has_32_projections_of_width_768(sd14):
    pipe, _, _ = sd14
    projs = layers.projections(pipe.unet)
    assert len(layers.cross_attention_layers(pipe.unet)) == 16
    assert len(projs) == 32
    assert {m.in_features for m in projs.values()} == {768}
    assert layers.embedding_width(pipe.unet) == 768
    assert sorted({m.out_features for m in projs.values()}) == [320, 640, 1280]
    assert sum(m.out_features for m in projs.values()) == 24_960
    assert pipe.tokenizer.model_max_length == 77
    ids = pipe.tokenizer(PRESERVE, padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids.shape == (3, 77)
    assert int(ids.max()) < pipe.text_encoder.config.vocab_size
    assert rl.encode(pipe, ERASE).shape == (1, 77, 768)


def test_uce_edits_every_matrix_by_its_closed_form_and_one_shared_map(sd14):
    pipe, snap, original = sd14
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
    assert _rel(patch.map, M) < 1e-10, "the patch records the shared map"
    current = {n: m.weight.detach() for n, m in layers.projections(pipe.unet).items()}
    assert all(torch.equal(current[n], patch.weights[n]) for n in current)


def test_derived_embedding_is_the_stacked_least_squares_solution(sd14):
    pipe, snap, original = sd14
    snap.apply(pipe)
    rl.uce_erase(pipe, ERASE, GUIDE, PRESERVE)
    got = rl.derive_embedding(pipe, ERASE, original=snap, reg="zero", reg_scale=REG_SCALE)
    assert got.shape == (77, 768)
    # argmin_x Σ_l ‖W_l x − W_l^orig c‖² + λ'‖x‖², for each row c: one tall least-squares system
    c = _emb(pipe, ERASE)
    names = list(layers.projections(pipe.unet))
    edited = torch.cat([layers.projections(pipe.unet)[n].weight.detach().double() for n in names])
    targets = torch.cat([original[n].double() @ c.T for n in names])  # (24960, 77)
    A = torch.cat([edited, REG_SCALE**0.5 * torch.eye(768, dtype=torch.float64)])
    B = torch.cat([targets, torch.zeros(768, c.shape[0], dtype=torch.float64)])
    expected = torch.linalg.lstsq(A, B).solution.T  # (77, 768)
    assert _rel(got, expected) < 1e-5
    assert _rel(expected, c) > 1e-3, "the derived embedding should differ from the erased concept's"


def test_patch_round_trips_through_safetensors_and_applies(sd14, tmp_path):
    pipe, snap, _ = sd14
    snap.apply(pipe)
    patch = rl.uce_erase(pipe, ERASE, GUIDE, PRESERVE)
    path = tmp_path / "red.safetensors"
    patch.save(path)
    loaded = rl.Patch.load(path)
    assert loaded == patch
    snap.apply(pipe)
    loaded.apply(pipe)
    current = {n: m.weight.detach() for n, m in layers.projections(pipe.unet).items()}
    assert all(torch.equal(current[n], patch.weights[n]) for n in current)


def test_snapshot_restores_bit_exactly(sd14):
    pipe, snap, original = sd14
    snap.apply(pipe)
    rl.rece_erase(pipe, ERASE, GUIDE, PRESERVE, epochs=2)
    current = {n: m.weight.detach() for n, m in layers.projections(pipe.unet).items()}
    assert not any(torch.equal(current[n], original[n]) for n in original)
    snap.apply(pipe)
    current = {n: m.weight.detach() for n, m in layers.projections(pipe.unet).items()}
    assert all(torch.equal(current[n], original[n]) for n in original)
