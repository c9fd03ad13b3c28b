"""The Patch as a value and as a file: equality, the map, dtypes, the model's fingerprint, bad files."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
import torch
from safetensors.torch import save_file

import rece_lite as rl
from rece_lite import closed_form as cf
from rece_lite import layers
from rece_lite.tiny.model import build_pipeline


def _weights(pipe) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in layers.projections(pipe.unet).items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def edit(rand_pipe):
    """A pipeline, its snapshot, and the UCE patch that erased "red" from it."""
    snap = rl.snapshot(rand_pipe)
    return rand_pipe, snap, rl.uce_erase(rand_pipe, "red", preserve=["blue"])


# ------------------------------------------------------------------------- files
def test_a_patch_round_trips_through_a_file(edit, tmp_path):
    _, _, patch = edit
    patch.save(tmp_path / "red.safetensors")
    assert rl.Patch.load(tmp_path / "red.safetensors") == patch


def test_the_map_comes_back_as_float64(edit, tmp_path):
    _, _, patch = edit
    patch.save(tmp_path / "red.safetensors")
    assert rl.Patch.load(tmp_path / "red.safetensors").map.dtype == torch.float64


def test_a_snapshot_round_trips_without_a_map(edit, tmp_path):
    _, snap, _ = edit
    snap.save(tmp_path / "snap.safetensors")
    assert rl.Patch.load(tmp_path / "snap.safetensors").map is None


def test_a_loaded_patch_applies_bit_exactly(edit, tmp_path):
    pipe, snap, patch = edit
    patch.save(tmp_path / "red.safetensors")
    snap.apply(pipe)
    rl.Patch.load(tmp_path / "red.safetensors").apply(pipe)
    assert _same(_weights(pipe), patch.weights)


def test_saving_leaves_no_temp_file(edit, tmp_path):
    _, _, patch = edit
    patch.save(tmp_path / "red.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["red.safetensors"]


def _write(path, content: bytes) -> None:
    path.write_bytes(content)


BAD_FILES = {
    "empty": lambda d, good: _write(d / "p.safetensors", b""),
    "truncated": lambda d, good: _write(d / "p.safetensors", good.read_bytes()[: good.stat().st_size // 2]),
    "not safetensors": lambda d, good: _write(d / "p.safetensors", b"PK\x03\x04 a zip file, say"),
    "a folder": lambda d, good: (d / "p.safetensors").mkdir(),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_loading_a_bad_file_names_the_path_and_what_was_expected(edit, tmp_path, case):
    _, _, patch = edit
    good = tmp_path / "good.safetensors"
    patch.save(good)
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    BAD_FILES[case](bad_dir, good)
    with pytest.raises((ValueError, OSError), match=f"{bad_dir / 'p.safetensors'}.*Patch.load expects"):
        rl.Patch.load(bad_dir / "p.safetensors")


def test_loading_a_missing_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.safetensors does not exist"):
        rl.Patch.load(tmp_path / "nothing.safetensors")


def test_a_safetensors_file_without_a_fingerprint_is_not_a_patch(tmp_path):
    save_file({"w": torch.ones(2, 2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not a rece-lite patch"):
        rl.Patch.load(tmp_path / "other.safetensors")


def test_metadata_that_is_json_but_not_an_object_is_refused(tmp_path):
    meta = {"rece_lite.fingerprint": "0" * 16, "rece_lite.metadata": json.dumps(["uce"])}
    save_file({"w": torch.ones(2, 2)}, str(tmp_path / "p.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match="JSON but not an object"):
        rl.Patch.load(tmp_path / "p.safetensors")


def test_a_file_of_integer_weights_is_refused_naming_it(tmp_path):
    meta = {"rece_lite.fingerprint": "0" * 16, "rece_lite.metadata": "{}"}
    save_file({"w": torch.ones(2, 2, dtype=torch.int32)}, str(tmp_path / "p.safetensors"), metadata=meta)
    with pytest.raises(TypeError, match=r"p\.safetensors: .*floating-point"):
        rl.Patch.load(tmp_path / "p.safetensors")


def test_saving_into_a_missing_folder_names_the_real_path(edit, tmp_path):
    _, _, patch = edit
    target = tmp_path / "missing" / "red.safetensors"
    with pytest.raises(FileNotFoundError, match=str(target)):
        patch.save(target)


def test_saving_into_a_missing_folder_leaves_nothing(edit, tmp_path):
    _, _, patch = edit
    with pytest.raises(FileNotFoundError):
        patch.save(tmp_path / "missing" / "red.safetensors")
    assert list(tmp_path.iterdir()) == []


def test_saving_onto_a_folder_is_refused(edit, tmp_path):
    _, _, patch = edit
    with pytest.raises(IsADirectoryError, match="it is a folder"):
        patch.save(tmp_path)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_saving_into_a_read_only_folder_names_the_real_path_and_leaves_nothing(edit, tmp_path):
    _, _, patch = edit
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(OSError, match=str(folder / "red.safetensors")):
            patch.save(folder / "red.safetensors")
        assert list(folder.iterdir()) == []
    finally:
        folder.chmod(0o755)


# ------------------------------------------------------------------------- the value
def test_a_patch_is_frozen(edit):
    _, _, patch = edit
    with pytest.raises(dataclasses.FrozenInstanceError):
        patch.fingerprint = "another"


def test_patches_with_one_weight_changed_differ(edit):
    _, _, patch = edit
    name = next(iter(patch.weights))
    changed = {**patch.weights, name: patch.weights[name] + 1}
    assert rl.Patch(changed, patch.fingerprint, patch.metadata, patch.map) != patch


def test_patches_with_another_map_differ(edit):
    _, _, patch = edit
    assert rl.Patch(patch.weights, patch.fingerprint, patch.metadata, None) != patch


def test_a_patch_is_not_hashable(edit):
    _, _, patch = edit
    with pytest.raises(TypeError):
        hash(patch)


def test_a_snapshots_gram_is_computed_once(edit):
    _, snap, _ = edit
    assert snap.gram is snap.gram


def test_a_snapshots_gram_is_the_gram_of_its_weights(edit):
    _, snap, _ = edit
    torch.testing.assert_close(snap.gram, cf.gram(list(snap.weights.values())), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.complex64, torch.bool])
def test_a_patch_of_non_real_float_weights_is_refused(edit, dtype):
    _, snap, _ = edit
    with pytest.raises(TypeError, match="floating-point"):
        rl.Patch({k: v.to(dtype) for k, v in snap.weights.items()}, snap.fingerprint)


def test_metadata_must_be_a_dict(edit):
    _, snap, _ = edit
    with pytest.raises(TypeError, match="metadata must be a dict"):
        rl.Patch(snap.weights, snap.fingerprint, ["snapshot"])


def test_a_map_of_the_wrong_size_is_refused(edit):
    _, snap, _ = edit
    with pytest.raises(TypeError, match=r"\(64, 64\)"):
        rl.Patch(snap.weights, snap.fingerprint, {}, torch.eye(63, dtype=torch.float64))


# ----------------------------------------------------------------- dtypes and fingerprints
def test_finiteness_is_checked_in_the_models_dtype(rand_pipe):
    snap = rl.snapshot(rand_pipe)
    big = rl.Patch({k: v * 1e6 for k, v in snap.weights.items()}, snap.fingerprint)  # finite in float32
    rand_pipe.to(torch.float16)
    with pytest.raises(ValueError, match="overflows the model's torch.float16"):
        big.apply(rand_pipe)


def test_a_patch_that_overflows_the_models_dtype_changes_nothing(rand_pipe):
    snap = rl.snapshot(rand_pipe)
    big = rl.Patch({k: v * 1e6 for k, v in snap.weights.items()}, snap.fingerprint)
    rand_pipe.to(torch.float16)
    before = _weights(rand_pipe)
    with pytest.raises(ValueError):
        big.apply(rand_pipe)
    assert _same(before, _weights(rand_pipe))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_a_float32_snapshot_applies_to_the_model_in_another_dtype(rand_pipe, dtype):
    snap = rl.snapshot(rand_pipe)
    rand_pipe.to(dtype)
    rl.uce_erase(rand_pipe, "red")
    snap.apply(rand_pipe)
    assert _same(_weights(rand_pipe), {k: v.to(dtype) for k, v in snap.weights.items()})


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_a_float32_snapshot_is_the_original_of_the_model_in_another_dtype(rand_pipe, dtype):
    snap = rl.snapshot(rand_pipe)
    rand_pipe.to(dtype)
    rl.uce_erase(rand_pipe, "red")
    assert rl.derive_embedding(rand_pipe, "red", original=snap).dtype == dtype


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_the_fingerprint_is_the_same_in_every_dtype(rand_pipe, dtype):
    before = layers.fingerprint(rand_pipe.unet)
    assert layers.fingerprint(rand_pipe.unet.to(dtype)) == before


def test_the_fingerprint_ignores_the_edits(rand_pipe):
    before = layers.fingerprint(rand_pipe.unet)
    rl.rece_erase(rand_pipe, "red", epochs=1)
    assert layers.fingerprint(rand_pipe.unet) == before


def _reinit(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * p.std().nan_to_num(0.02))


@pytest.mark.parametrize("part", ["down_blocks", "mid_block", "up_blocks", "conv_in", "conv_out", "time_embedding"])
def test_re_randomising_any_part_changes_the_fingerprint(rand_pipe, part):
    before = layers.fingerprint(rand_pipe.unet)
    _reinit(getattr(rand_pipe.unet, part), seed=1)
    assert layers.fingerprint(rand_pipe.unet) != before


def test_a_fine_tune_changes_the_fingerprint(rand_pipe):
    """Every weight moved by 0.1% of its tensor's spread, as a short fine-tune might: some signs flip."""
    before = layers.fingerprint(rand_pipe.unet)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in rand_pipe.unet.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 1e-3 * p.std().nan_to_num(0.02))
    assert layers.fingerprint(rand_pipe.unet) != before


def test_a_patch_for_the_same_architecture_with_other_weights_is_refused(rand_pipe):
    other = build_pipeline(seed=0)
    _reinit(other.unet.up_blocks, seed=1)
    patch = rl.uce_erase(other, "red")
    with pytest.raises(ValueError, match="made for model"):
        patch.apply(rand_pipe)
