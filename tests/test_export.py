"""Edits as diffusers-native files: a LoRA that ``load_lora_weights`` loads, a folder ``from_pretrained`` loads.

The oracle for the LoRA is diffusers itself: a pipeline holding the weights before the edit
loads the file, fuses it (``fuse_lora``) and must hold the patched weights; unfused, it must
draw the patched pipeline's pictures.  The rank and the truncation error are checked against
a full float64 SVD (``matrix_rank`` of ``M − I``, the singular values of the measured ``ΔW``).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors import safe_open

import rece_lite as rl
from rece_lite import export, layers
from rece_lite.tiny.model import build_pipeline

FULL_RANK_TOL = 1e-5  # ‖fused − patched‖ / ‖ΔW‖ at full rank with a base: measured ≤ 1e-6 (float32 rounding)


@pytest.fixture(autouse=True)
def _no_text_encoder_notes():
    """diffusers logs that the file has no text-encoder keys: true, and not the user's to fix."""
    log = logging.getLogger("diffusers.loaders.lora_base")
    level = log.level
    log.setLevel(logging.ERROR)
    yield
    log.setLevel(level)


MODELS = {
    "random": lambda: build_pipeline(seed=0),
    "embedded": lambda: rl.load_pipeline("tiny", device="cpu"),
}


def _kv(pipe) -> dict[str, torch.Tensor]:
    """The K/V weights the UNet computes with (through peft's wrappers: their base layers' weights)."""
    return {n: m.weight.detach().clone() for n, m in layers.projections(pipe.unet).items()}


def _rel(a: dict, b: dict, ref: dict) -> dict[str, float]:
    """Per matrix ‖a − b‖_F / ‖ref‖_F in float64."""
    return {n: ((a[n].double() - b[n].double()).norm() / ref[n].double().norm()).item() for n in a}


def _delta(patch, snap) -> dict[str, torch.Tensor]:
    return {n: patch.weights[n].double() - snap.weights[n].double() for n in patch.weights}


def _erase(pipe, method: str):
    if method == "uce":
        return rl.uce_erase(pipe, "red")
    return rl.rece_erase(pipe, "red", epochs=2).patch


def _fused(make, path) -> dict[str, torch.Tensor]:
    """The K/V weights of a fresh pipeline (the weights before the edit) with the LoRA loaded and fused."""
    pipe = make()
    pipe.load_lora_weights(str(path))
    pipe.fuse_lora()
    return _kv(pipe)


@pytest.fixture(params=[(m, e) for m in MODELS for e in ("uce", "rece")], ids=lambda p: f"{p[0]}-{p[1]}")
def edited(request):
    """(make, snapshot before the edit, the patch) for a UCE or RECE edit of "red" on either model."""
    model, method = request.param
    make = MODELS[model]
    pipe = make()
    snap = rl.snapshot(pipe)
    return make, snap, _erase(pipe, method)


def _to_lora(path, patch, **kw) -> export.LoraExport:
    """What ``Patch.to_lora(path, rank, base=)`` does."""
    return export.to_lora(path, patch.weights, patch.map, fingerprint=patch.fingerprint, metadata=patch.metadata, **kw)


# ------------------------------------------------------------------------- the rank
def test_low_rank_finds_the_rank_of_a_low_rank_matrix():
    g = torch.Generator().manual_seed(0)
    E = torch.randn(300, 37, generator=g, dtype=torch.float64) @ torch.randn(37, 300, generator=g, dtype=torch.float64)
    U, S, Vt = export.low_rank(E)
    assert len(S) == 37
    assert ((U * S) @ Vt - E).norm() / E.norm() < 1e-12


def test_low_rank_of_zero_is_empty():
    _, S, _ = export.low_rank(torch.zeros(50, 50, dtype=torch.float64))
    assert len(S) == 0


def test_low_rank_of_a_full_rank_matrix_keeps_every_direction():
    E = torch.randn(40, 40, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    _, S, _ = export.low_rank(E)
    assert len(S) == 40


def test_the_exact_rank_is_the_rank_of_the_map_minus_identity(edited, tmp_path):
    _, _, patch = edited
    d = patch.map.shape[0]
    oracle = torch.linalg.matrix_rank(
        patch.map.double() - torch.eye(d, dtype=torch.float64), rtol=export.RANK_TOLERANCE
    )
    assert _to_lora(tmp_path / "lora.safetensors", patch).exact_rank == int(oracle)


def test_a_uce_edit_of_one_prompt_has_at_most_one_rank_per_token(tmp_path):
    pipe = build_pipeline(seed=0)
    patch = rl.uce_erase(pipe, "red")
    tokens = rl.encode(pipe, "red").shape[1]
    assert _to_lora(tmp_path / "lora.safetensors", patch).exact_rank <= tokens


# ------------------------------------------------------------------------- full rank: exact
def test_a_full_rank_lora_fused_gives_the_patched_weights(edited, tmp_path):
    make, snap, patch = edited
    out = _to_lora(tmp_path / "lora.safetensors", patch, base=snap)
    err = _rel(_fused(make, out.path), patch.weights, _delta(patch, snap))
    assert max(err.values()) < FULL_RANK_TOL


def test_a_full_rank_lora_reports_no_error(edited, tmp_path):
    _, snap, patch = edited
    out = _to_lora(tmp_path / "lora.safetensors", patch, base=snap)
    assert out.error == 0.0


@pytest.mark.parametrize("model", list(MODELS))
def test_a_uce_lora_from_the_patch_alone_is_exact_to_rounding(model, tmp_path):
    make = MODELS[model]
    pipe = make()
    snap = rl.snapshot(pipe)
    patch = rl.uce_erase(pipe, "red")
    out = _to_lora(tmp_path / "lora.safetensors", patch)
    err = _rel(_fused(make, out.path), patch.weights, _delta(patch, snap))
    assert max(err.values()) < 1e-4  # measured 1e-6 (random), 7e-6 (embedded): rounding times ‖M⁻¹‖


def test_a_rece_lora_from_the_patch_alone_is_close(tmp_path):
    """RECE's map nearly flattens the erased directions (cond(M) ≈ 3e5 on the embedded model), so
    recovering W = W_new·M⁻¹ multiplies W_new's rounding: measured 5e-4 of ‖ΔW‖; a base makes it exact."""
    make = MODELS["embedded"]
    pipe = make()
    snap = rl.snapshot(pipe)
    patch = _erase(pipe, "rece")
    out = _to_lora(tmp_path / "lora.safetensors", patch)
    err = _rel(_fused(make, out.path), patch.weights, _delta(patch, snap))
    assert max(err.values()) < 5e-3


def test_a_pipeline_holding_the_original_weights_serves_as_base(tmp_path):
    pipe = build_pipeline(seed=0)
    patch = rl.uce_erase(pipe, "red")
    original = build_pipeline(seed=0)
    out = _to_lora(tmp_path / "lora.safetensors", patch, base=original)
    err = _rel(_fused(MODELS["random"], out.path), patch.weights, _delta(patch, rl.snapshot(original)))
    assert max(err.values()) < FULL_RANK_TOL


def test_images_from_the_unfused_lora_equal_the_patched_pipelines(tmp_path):
    make = MODELS["embedded"]
    pipe = make()
    snap = rl.snapshot(pipe)
    patch = _erase(pipe, "rece")
    prompts, seeds = ["a red circle", "a blue square"], [0, 1]
    patched = rl.sample(pipe, prompts, seeds=seeds, steps=10)
    lora = make()
    lora.load_lora_weights(str(_to_lora(tmp_path / "lora.safetensors", patch, base=snap).path))
    images = rl.sample(lora, prompts, seeds=seeds, steps=10)
    assert np.abs(images.astype(int) - patched.astype(int)).max() <= 1  # measured: 0, bit-identical


def test_the_file_has_diffusers_keys_and_a_scale_of_one(tmp_path):
    pipe = build_pipeline(seed=0)
    patch = rl.uce_erase(pipe, "red")
    out = _to_lora(tmp_path / "lora.safetensors", patch)
    with safe_open(str(out.path), framework="pt") as f:
        keys, config = set(f.keys()), json.loads(f.metadata()["lora_adapter_metadata"])
    expected = {f"unet.{n}.lora_{x}.weight" for n in patch.weights for x in "AB"}
    assert keys == expected
    assert config["unet.lora_alpha"] == config["unet.r"] == out.rank


# ------------------------------------------------------------------------- truncated: error measured
def test_a_truncated_lora_reports_the_error_diffusers_shows(edited, tmp_path):
    make, snap, patch = edited
    out = _to_lora(tmp_path / "lora.safetensors", patch, rank=8, base=snap)
    measured = _rel(_fused(make, out.path), patch.weights, _delta(patch, snap))
    assert max(abs(measured[n] - out.errors[n]) for n in measured) < 1e-5


def test_a_truncated_lora_is_the_best_of_its_rank(edited, tmp_path):
    """Eckart–Young: the error is the tail of the measured ΔW's singular values, matrix by matrix."""
    _, snap, patch = edited
    out = _to_lora(tmp_path / "lora.safetensors", patch, rank=8, base=snap)
    oracle = {}
    for n, dw in _delta(patch, snap).items():
        s = torch.linalg.svdvals(dw)
        oracle[n] = (s[8:].norm() / s.norm()).item()
    assert max(abs(oracle[n] - out.errors[n]) for n in oracle) < 1e-5


def test_the_error_is_stored_in_the_file(tmp_path):
    pipe = build_pipeline(seed=0)
    patch = rl.uce_erase(pipe, "red")
    out = _to_lora(tmp_path / "lora.safetensors", patch, rank=4)
    info = export.read_lora_info(out.path)
    assert (info["rank"], info["error"]) == (4, out.error)


def test_a_rank_above_the_exact_one_writes_the_exact_one(tmp_path):
    pipe = build_pipeline(seed=0)
    patch = rl.uce_erase(pipe, "red")
    out = _to_lora(tmp_path / "lora.safetensors", patch, rank=60)
    assert out.rank == out.exact_rank


# ------------------------------------------------------------------------- patches without a map
def test_a_patch_without_a_map_is_factored_against_its_base(tmp_path):
    make = MODELS["random"]
    pipe = make()
    snap = rl.snapshot(pipe)
    patch = rl.uce_erase(pipe, "red")
    mapless = rl.Patch(patch.weights, patch.fingerprint, patch.metadata)
    out = _to_lora(tmp_path / "lora.safetensors", mapless, base=snap)
    err = _rel(_fused(make, out.path), patch.weights, _delta(patch, snap))
    assert max(err.values()) < FULL_RANK_TOL


def test_a_patch_without_a_map_or_base_is_refused(tmp_path):
    pipe = build_pipeline(seed=0)
    with pytest.raises(ValueError, match="base="):
        _to_lora(tmp_path / "lora.safetensors", rl.snapshot(pipe))


# ------------------------------------------------------------------------- bad input
@pytest.fixture
def uce(tmp_path):
    pipe = build_pipeline(seed=0)
    snap = rl.snapshot(pipe)
    return pipe, snap, rl.uce_erase(pipe, "red")


@pytest.mark.parametrize("rank", [0, -1, 65])
def test_a_rank_outside_one_to_d_is_refused(uce, tmp_path, rank):
    with pytest.raises(ValueError, match="rank must be between 1 and d = 64"):
        _to_lora(tmp_path / "lora.safetensors", uce[2], rank=rank)


@pytest.mark.parametrize("rank", [2.5, True, "8"])
def test_a_rank_that_is_not_a_whole_number_is_refused(uce, tmp_path, rank):
    with pytest.raises(TypeError, match="rank must be a whole number"):
        _to_lora(tmp_path / "lora.safetensors", uce[2], rank=rank)


def test_a_base_of_another_model_is_refused(uce, tmp_path):
    with pytest.raises(ValueError, match="made for model"):
        _to_lora(tmp_path / "lora.safetensors", uce[2], base=build_pipeline(seed=1))


def test_the_edited_pipeline_as_base_is_refused(uce, tmp_path):
    pipe, _, patch = uce
    with pytest.raises(ValueError, match="edited weights themselves"):
        _to_lora(tmp_path / "lora.safetensors", patch, base=pipe)


def test_a_base_that_is_not_the_weights_before_the_edit_is_refused(uce, tmp_path):
    pipe, _, patch = uce
    rl.uce_erase(pipe, "blue")  # pipe now holds neither the weights "red" was erased from nor the patch's
    with pytest.raises(ValueError, match="not the matrix this edit was applied to"):
        _to_lora(tmp_path / "lora.safetensors", patch, base=pipe)


def test_an_identity_map_is_refused(uce, tmp_path):
    _, snap, _ = uce
    with pytest.raises(ValueError, match="changes nothing"):
        export.to_lora(tmp_path / "lora.safetensors", snap.weights, torch.eye(64, dtype=torch.float64))


def test_a_missing_folder_is_refused(uce, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        _to_lora(tmp_path / "no" / "lora.safetensors", uce[2])


def test_a_folder_as_path_is_refused(uce, tmp_path):
    with pytest.raises(IsADirectoryError, match="pytorch_lora_weights.safetensors"):
        _to_lora(tmp_path, uce[2])


def test_refusals_write_nothing(uce, tmp_path):
    with pytest.raises(ValueError):
        _to_lora(tmp_path / "lora.safetensors", uce[2], rank=0)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------- dtypes and devices
def test_a_float64_model_gets_an_exact_float64_lora(tmp_path):
    make = lambda: build_pipeline(seed=0).to(torch.float64)  # noqa: E731
    pipe = make()
    snap = rl.snapshot(pipe)
    patch = rl.uce_erase(pipe, "red")
    out = _to_lora(tmp_path / "lora.safetensors", patch, base=snap)
    err = _rel(_fused(make, out.path), patch.weights, _delta(patch, snap))
    assert max(err.values()) < 1e-10


def _products(path) -> dict[str, torch.Tensor]:
    """Per module B·A in float64: what the LoRA adds, whatever the signs of its singular vectors."""
    with safe_open(str(path), framework="pt") as f:
        t = {k: f.get_tensor(k).double() for k in f.keys()}
    return {k[: -len(".lora_A.weight")]: t[k.replace("lora_A", "lora_B")] @ t[k] for k in t if "lora_A" in k}


EXPORTS = {
    "base": lambda snap: {"base": snap},
    "patch alone": lambda snap: {},
    "truncated": lambda snap: {"base": snap, "rank": 5},
}


@pytest.mark.parametrize("how", list(EXPORTS))
def test_every_tensor_the_export_makes_names_its_device(uce, tmp_path, how):
    """Under ``torch.device("meta")`` a tensor made without ``device=`` holds no values: the file would differ."""
    _, snap, patch = uce
    _to_lora(tmp_path / "cpu.safetensors", patch, **EXPORTS[how](snap))
    with torch.device("meta"):
        _to_lora(tmp_path / "meta.safetensors", patch, **EXPORTS[how](snap))
    a, b = _products(tmp_path / "cpu.safetensors"), _products(tmp_path / "meta.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_patch_without_a_map_names_its_devices(uce, tmp_path):
    _, snap, patch = uce
    mapless = rl.Patch(patch.weights, patch.fingerprint, patch.metadata)
    _to_lora(tmp_path / "cpu.safetensors", mapless, base=snap)
    with torch.device("meta"):
        _to_lora(tmp_path / "meta.safetensors", mapless, base=snap)
    a, b = _products(tmp_path / "cpu.safetensors"), _products(tmp_path / "meta.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.cuda
def test_a_lora_of_cuda_weights_equals_the_cpu_one(tmp_path):
    pipe = build_pipeline(seed=0)
    snap = rl.snapshot(pipe)
    patch = rl.uce_erase(pipe, "red")
    on_gpu = rl.Patch({n: w.to("cuda") for n, w in patch.weights.items()}, patch.fingerprint, patch.metadata, patch.map)
    gpu_snap = rl.Patch({n: w.to("cuda") for n, w in snap.weights.items()}, snap.fingerprint, snap.metadata)
    _to_lora(tmp_path / "cpu.safetensors", patch, base=snap)
    _to_lora(tmp_path / "gpu.safetensors", on_gpu, base=gpu_snap)
    a, b = _products(tmp_path / "cpu.safetensors"), _products(tmp_path / "gpu.safetensors")
    assert max(((a[k] - b[k]).norm() / a[k].norm()).item() for k in a) < 1e-6


# ------------------------------------------------------------------------- the whole pipeline
@pytest.fixture
def saved(tmp_path):
    """An erased embedded model, saved; and its images."""
    pipe = rl.load_pipeline("tiny", device="cpu")
    patch = rl.uce_erase(pipe, "red")
    folder = export.save_pretrained(pipe, tmp_path / "erased", edit=patch)
    return pipe, patch, folder


def test_a_saved_pipeline_reloads_with_the_same_weights(saved):
    pipe, _, folder = saved
    again = StableDiffusionPipeline.from_pretrained(folder)
    assert all(torch.equal(w, _kv(pipe)[n]) for n, w in _kv(again).items())


def test_a_saved_pipeline_reloads_through_load_pipeline_with_the_same_images(saved):
    pipe, _, folder = saved
    again = rl.load_pipeline(folder, device="cpu")
    prompts = ["a red circle", "a blue square"]
    assert np.array_equal(rl.sample(again, prompts, seeds=[0, 1]), rl.sample(pipe, prompts, seeds=[0, 1]))


def test_a_saved_pipeline_carries_a_note_of_its_edit(saved):
    _, patch, folder = saved
    note = json.loads((folder / export.NOTE_NAME).read_text())
    assert (note["fingerprint"], note["edit"]) == (patch.fingerprint, patch.metadata)


def test_a_saved_pipeline_holds_no_pickles(saved):
    _, _, folder = saved
    assert [p.name for p in folder.rglob("*") if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl")] == []


def test_saving_over_a_folder_needs_force(saved):
    pipe, _, folder = saved
    with pytest.raises(FileExistsError, match="force=True"):
        export.save_pretrained(pipe, folder)


def test_saving_with_force_replaces_the_folder(saved):
    pipe, _, folder = saved
    export.save_pretrained(pipe, folder, force=True)
    assert not (folder / export.NOTE_NAME).exists()


def test_saving_a_patch_the_pipeline_does_not_hold_is_refused(tmp_path):
    pipe = build_pipeline(seed=0)
    snap = rl.snapshot(pipe)
    rl.uce_erase(pipe, "red")
    with pytest.raises(ValueError, match="does not hold"):
        export.save_pretrained(pipe, tmp_path / "out", edit=snap)
    assert not (tmp_path / "out").exists()


def test_saving_a_pipeline_with_a_lora_loaded_is_refused(uce, tmp_path):
    _, _, patch = uce
    lora = _to_lora(tmp_path / "lora.safetensors", patch)
    pipe = build_pipeline(seed=0)
    pipe.load_lora_weights(str(lora.path))
    with pytest.raises(ValueError, match="unload_lora_weights"):
        export.save_pretrained(pipe, tmp_path / "out")


# ------------------------------------------------------------------------- SDXL (2.4 GB; one test)
def test_an_sdxl_lora_loads_and_fuses_to_the_patched_weights(tmp_path):
    from rece_lite.sd_shapes import random_sdxl_pipeline

    pipe = random_sdxl_pipeline(sample_size=8)
    snap = rl.snapshot(pipe)
    patch = rl.uce_erase(pipe, "red")
    out = _to_lora(tmp_path / "lora.safetensors", patch, base=snap)
    snap.apply(pipe)
    assert isinstance(pipe, StableDiffusionXLPipeline)
    pipe.load_lora_weights(str(out.path))
    pipe.fuse_lora()
    err = _rel(_kv(pipe), patch.weights, _delta(patch, snap))
    assert max(err.values()) < 1e-4  # measured 6e-6: float32 products at d = 2048
