"""UCE and RECE at the real shapes of Stable Diffusion 1.4, 2.1 and XL (random weights), against
float64 oracles: one parametrised set of tests, then each family's own facts.

One pipeline per family serves its tests (pytest groups them by the module-scoped fixture, so
one is alive at a time); every test starts by restoring its original weights.

* SD 1.4: d = 768, 32 K/V matrices (3.4 GB UNet, a 1-layer text encoder).
* SD 2.1: d = 1024 (OpenCLIP ViT-H), linear projections in and out of each transformer,
  (5, 10, 20, 20) heads, v-prediction (3.5 GB UNet, a 1-layer text encoder).
* SDXL: d = 2048 = 768 + 1280 per token (two text encoders' penultimate states,
  concatenated); its pooled embedding (1280) and time ids enter through ``add_embedding``.
  The pipeline keeps every width and the two-encoder structure, with one transformer layer
  per block (11 ``attn2`` layers, 22 K/V matrices, 2.4 GB) and 8 x 8 latents.  At d = 2048 a
  float64 product or least-squares solve over all 22 matrices costs ~0.2 TFLOP, so its
  oracles look through random probe columns and at the gradient of RECE's objective instead
  (both bound the error: see their docstrings).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import rece_lite as rl
from rece_lite import closed_form as cf
from rece_lite import layers
from rece_lite.pipeline import encode_pooled, sample
from rece_lite.sd_shapes import random_sd14_pipeline, random_sd21_pipeline, random_sdxl_pipeline

ERASE, GUIDE, PRESERVE = "red", "", ["blue", "green", "a yellow star"]
LAMB, ERASE_SCALE, PRESERVE_SCALE, REG_SCALE = 0.1, 1.0, 0.1, 0.1


@dataclass(frozen=True)
class Family:
    """What the shared tests need to know of one SD family."""

    name: str
    build: Callable[[], object]
    d: int
    attn2: int  # cross-attention layers
    widths: tuple[int, ...]  # the K/V matrices' output widths
    exact: bool  # float64 least squares and full products as oracles (False: probes and the gradient bound)


FAMILIES = {
    "sd14": Family("sd14", lambda: random_sd14_pipeline(text_layers=1), 768, 16, (320, 640, 1280), True),
    "sd21": Family("sd21", lambda: random_sd21_pipeline(text_layers=1), 1024, 16, (320, 640, 1280), True),
    "sdxl": Family("sdxl", lambda: random_sdxl_pipeline(sample_size=8), 2048, 11, (640, 1280), False),
}


@dataclass(frozen=True)
class Model:
    family: Family
    pipe: object
    snap: rl.Patch
    original: dict[str, torch.Tensor]


@pytest.fixture(scope="module", params=list(FAMILIES))
def model(request) -> Model:
    family = FAMILIES[request.param]
    pipe = family.build()
    original = {n: m.weight.detach().clone() for n, m in layers.projections(pipe.unet).items()}
    yield Model(family, pipe, rl.snapshot(pipe), original)
    del pipe, original  # free the 2-3.5 GB before the next family's pipeline is built


# ------------------------------------------------------------------------------ oracles
def _emb(pipe, prompt: str) -> torch.Tensor:
    return rl.encode(pipe, prompt)[0].double()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def _current(pipe) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach() for n, m in layers.projections(pipe.unet).items()}


def _pick(names_shapes: dict[str, tuple[int, ...]]) -> list[str]:
    """One to_k and one to_v of every output width, and a mid-block matrix."""
    picked: dict[tuple[int, str], str] = {}
    for name, shape in names_shapes.items():
        picked.setdefault((shape[0], name[-4:]), name)
    mid = [n for n in names_shapes if n.startswith("mid_block")]
    return sorted(set(picked.values()) | set(mid[:1]))


def _map_error(got: torch.Tensor, W0: torch.Tensor, P: torch.Tensor, exact: bool, seed: int = 0) -> float:
    """Relative error of ``got ≈ W0·P``: in full, or (``exact=False``) seen through 16 Gaussian probe
    columns X, ‖got·X − W0·(P·X)‖ / ‖W0·(P·X)‖, an estimate of the Frobenius-norm relative error
    without forming W0·P (22 products of (out, 2048) x (2048, 2048) in float64 would dominate)."""
    if exact:
        return _rel(got, W0.double() @ P)
    X = torch.randn(P.shape[0], 16, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    expected = W0.double() @ (P @ X)
    return ((got.double() @ X - expected).norm() / expected.norm()).item()


def _least_squares(weights: list[torch.Tensor], targets: torch.Tensor, reg: float) -> torch.Tensor:
    """argmin_x Σ_l ‖W_l x − t_l‖² + reg ‖x‖² for every column of the stacked targets, by least squares."""
    d = weights[0].shape[1]
    A = torch.cat([torch.cat(weights), reg**0.5 * torch.eye(d, dtype=torch.float64)])
    B = torch.cat([targets, torch.zeros(d, targets.shape[1], dtype=torch.float64)])
    return torch.linalg.lstsq(A, B).solution.T


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


def _derivation_error(m: Model, got: torch.Tensor, c: torch.Tensor, *, edited=None, M=None) -> float:
    """How far a derived embedding is from RECE's minimiser, by the family's oracle."""
    names = list(m.original)
    if not m.family.exact:
        return _gradient_bound(m.original, got, c, REG_SCALE, edited=edited, M=M)
    W = [edited[n].double() for n in names] if edited is not None else [m.original[n].double() @ M for n in names]
    expected = _least_squares(W, torch.cat([m.original[n].double() @ c.T for n in names]), REG_SCALE)
    assert _rel(expected, c) > 1e-3, "the derived embedding should differ from the erased concept's"
    return _rel(got, expected)


# ------------------------------------------------------------------------------ every family
def test_cross_attention_has_the_familys_shapes(model):
    pipe, fam = model.pipe, model.family
    projs = layers.projections(pipe.unet)
    assert len(layers.cross_attention_layers(pipe.unet)) == fam.attn2
    assert len(projs) == 2 * fam.attn2
    assert {m.in_features for m in projs.values()} == {fam.d}
    assert layers.embedding_width(pipe.unet) == fam.d
    assert tuple(sorted({m.out_features for m in projs.values()})) == fam.widths
    assert rl.encode(pipe, ERASE).shape == (1, 77, fam.d)


def test_uce_edits_every_matrix_by_its_closed_form_and_one_shared_map(model):
    pipe, snap, original = model.pipe, model.snap, model.original
    snap.apply(pipe)
    patch = rl.uce_erase(
        pipe, ERASE, GUIDE, PRESERVE, lamb=LAMB, erase_scale=ERASE_SCALE, preserve_scale=PRESERVE_SCALE
    )
    ce, cg = _emb(pipe, ERASE), _emb(pipe, GUIDE)
    cp = torch.cat([_emb(pipe, p) for p in PRESERVE])
    shapes = {n: tuple(w.shape) for n, w in original.items()}
    checked = _pick(shapes)
    assert tuple(sorted({shapes[n][0] for n in checked})) == model.family.widths
    for name in checked:
        W0 = original[name].double()
        expected = cf.uce_weights(
            W0, ce, cg @ W0.T, cp, lamb=LAMB, erase_scale=ERASE_SCALE, preserve_scale=PRESERVE_SCALE
        )
        assert _rel(patch.weights[name], expected) < 1e-5, name
        assert _rel(expected, W0) > 1e-3, f"{name}: the edit should change the matrix"
    M = cf.uce_map(ce, cg, cp, lamb=LAMB, erase_scale=ERASE_SCALE, preserve_scale=PRESERVE_SCALE)
    errors = {n: _map_error(patch.weights[n], original[n], M, model.family.exact) for n in original}
    assert len(errors) == 2 * model.family.attn2
    assert max(errors.values()) < 1e-5, max(errors.items(), key=lambda kv: kv[1])
    assert _rel(patch.map, M) < 1e-10, "the patch records the shared map"
    current = _current(pipe)
    assert all(torch.equal(current[n], patch.weights[n]) for n in current)


def test_the_derived_embedding_minimises_reces_objective(model):
    pipe, snap = model.pipe, model.snap
    snap.apply(pipe)
    rl.uce_erase(pipe, ERASE, GUIDE, PRESERVE)
    got = rl.derive_embedding(pipe, ERASE, original=snap, reg="zero", reg_scale=REG_SCALE)
    assert got.shape == (77, model.family.d)
    c = _emb(pipe, ERASE)
    assert _derivation_error(model, got, c, edited=_current(pipe)) < 1e-5
    assert _rel(got, c) > 1e-3, "the derived embedding should differ from the erased concept's"


def test_a_rece_run_derives_against_the_original_and_edits_by_the_product_of_its_maps(model):
    pipe, snap, original = model.pipe, model.snap, model.original
    snap.apply(pipe)
    res = rl.rece_erase(pipe, ERASE, GUIDE, PRESERVE, epochs=2, reg_scale=REG_SCALE)
    ce, cg = _emb(pipe, ERASE), _emb(pipe, GUIDE)
    cp = torch.cat([_emb(pipe, p) for p in PRESERVE])
    # epoch 1 derives against the UCE-edited weights W_l^orig · M_0, with targets W_l^orig c
    M0 = cf.uce_map(ce, cg, cp, lamb=LAMB, erase_scale=ERASE_SCALE, preserve_scale=PRESERVE_SCALE)
    assert len(res.derived) == 2
    assert res.derived[0].shape == (77, model.family.d)
    assert _derivation_error(model, res.derived[0], ce, M=M0) < (1e-4 if model.family.exact else 1e-5)
    # the final weights: W_l^orig times the product of every edit's map (UCE, then one per epoch)
    assert len(res.maps) == 3
    P = res.maps[0].double() @ res.maps[1].double() @ res.maps[2].double()
    errors = {n: _map_error(res.patch.weights[n], original[n], P, model.family.exact, seed=1) for n in original}
    assert max(errors.values()) < 1e-4, max(errors.items(), key=lambda kv: kv[1])
    current = _current(pipe)
    assert not any(torch.equal(current[n], original[n]) for n in original)


def test_patch_round_trips_through_safetensors_and_applies(model, tmp_path):
    pipe, snap, original = model.pipe, model.snap, model.original
    snap.apply(pipe)
    patch = rl.uce_erase(pipe, ERASE, GUIDE, PRESERVE)
    path = tmp_path / "red.safetensors"
    patch.save(path)
    loaded = rl.Patch.load(path)
    assert loaded == patch
    snap.apply(pipe)
    assert all(torch.equal(w, original[n]) for n, w in _current(pipe).items())
    loaded.apply(pipe)
    assert all(torch.equal(w, patch.weights[n]) for n, w in _current(pipe).items())


def test_snapshot_restores_bit_exactly(model):
    pipe, snap, original = model.pipe, model.snap, model.original
    snap.apply(pipe)
    rl.rece_erase(pipe, ERASE, GUIDE, PRESERVE, epochs=2)
    assert not any(torch.equal(w, original[n]) for n, w in _current(pipe).items())
    snap.apply(pipe)
    assert all(torch.equal(w, original[n]) for n, w in _current(pipe).items())


# ------------------------------------------------------------------------------ each family's own facts
def _sd14_tokenizes_to_77_known_ids(m: Model) -> None:
    pipe = m.pipe
    assert pipe.tokenizer.model_max_length == 77
    ids = pipe.tokenizer(PRESERVE, padding="max_length", max_length=77, return_tensors="pt").input_ids
    assert ids.shape == (3, 77)
    assert int(ids.max()) < pipe.text_encoder.config.vocab_size
    assert sum(mod.out_features for mod in layers.projections(pipe.unet).values()) == 24_960


def _sd21_has_linear_projections_more_heads_and_predicts_v(m: Model) -> None:
    pipe = m.pipe
    attn = list(layers.cross_attention_layers(pipe.unet).values())
    assert [layer.heads for layer in attn[::2][:3]] == [5, 10, 20]
    assert isinstance(pipe.unet.down_blocks[0].attentions[0].proj_in, torch.nn.Linear)  # use_linear_projection
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert sum(mod.out_features for mod in layers.projections(pipe.unet).values()) == 24_960


def _sd21_v_prediction_sampling_is_deterministic_per_seed(m: Model) -> None:
    pipe = m.pipe
    m.snap.apply(pipe)
    size = pipe.unet.config.sample_size  # 96 x 96 latents would take minutes on a CPU: sample 8 x 8 instead
    pipe.unet.register_to_config(sample_size=8)
    try:
        a = sample(pipe, ERASE, seeds=[4], steps=1)
        b = sample(pipe, ERASE, seeds=[4], steps=1)
    finally:
        pipe.unet.register_to_config(sample_size=size)
    assert a.shape == (1, 64, 64, 3)
    assert np.array_equal(a, b)


def _sdxl_has_two_text_encoders_and_a_pooled_path(m: Model) -> None:
    from diffusers import StableDiffusionXLPipeline

    pipe = m.pipe
    assert isinstance(pipe, StableDiffusionXLPipeline)
    assert pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size == m.family.d
    assert pipe.unet.add_embedding.linear_1.in_features == 1280 + 6 * 256  # pooled + time ids
    assert encode_pooled(pipe, ERASE).shape == (1, 1280)


def _sdxl_an_edit_leaves_the_pooled_path_untouched(m: Model) -> None:
    pipe = m.pipe
    m.snap.apply(pipe)
    before = encode_pooled(pipe, ERASE)
    add = pipe.unet.add_embedding.linear_1.weight.detach().clone()
    rl.uce_erase(pipe, ERASE, GUIDE, PRESERVE)
    assert torch.equal(encode_pooled(pipe, ERASE), before)
    assert torch.equal(pipe.unet.add_embedding.linear_1.weight, add)


def _sdxl_samples_from_embeddings_deterministically_at_its_size(m: Model) -> None:
    pipe = m.pipe
    m.snap.apply(pipe)
    images = sample(pipe, embeds=rl.encode(pipe, [ERASE, "blue"]), seeds=[0], steps=1)
    assert images.shape == (2, 64, 64, 3)
    assert images.dtype == np.uint8
    e = rl.encode(pipe, ERASE)
    assert np.array_equal(sample(pipe, embeds=e, seeds=[7], steps=1), sample(pipe, embeds=e, seeds=[7], steps=1))


def _sdxl_the_default_pooled_embedding_is_the_empty_prompts(m: Model) -> None:
    pipe = m.pipe
    m.snap.apply(pipe)
    e = rl.encode(pipe, ERASE)
    default = sample(pipe, embeds=e, seeds=[7], steps=1)
    assert np.array_equal(default, sample(pipe, embeds=e, pooled=encode_pooled(pipe, ""), seeds=[7], steps=1))
    concept = sample(pipe, embeds=e, pooled=encode_pooled(pipe, ERASE), seeds=[7], steps=1)
    assert not np.array_equal(default, concept), "the pooled embedding should reach the image"


FACTS: dict[str, list[Callable[[Model], None]]] = {
    "sd14": [_sd14_tokenizes_to_77_known_ids],
    "sd21": [
        _sd21_has_linear_projections_more_heads_and_predicts_v,
        _sd21_v_prediction_sampling_is_deterministic_per_seed,
    ],
    "sdxl": [
        _sdxl_has_two_text_encoders_and_a_pooled_path,
        _sdxl_an_edit_leaves_the_pooled_path_untouched,
        _sdxl_samples_from_embeddings_deterministically_at_its_size,
        _sdxl_the_default_pooled_embedding_is_the_empty_prompts,
    ],
}


def test_the_familys_own_facts(model):
    assert FACTS[model.family.name], "every family states its own facts"
    for fact in FACTS[model.family.name]:
        fact(model)
