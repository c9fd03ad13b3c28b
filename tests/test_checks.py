"""Files and weights checked before they are trusted (issue 22): each case failed or passed silently before."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

import rece_lite as rl
from rece_lite import layers
from rece_lite.tiny.model import build_pipeline


@pytest.fixture(scope="module")
def pipe():
    return rl.load_pipeline("tiny", device="cpu")


@pytest.fixture
def fresh(pipe):
    snap = rl.snapshot(pipe)
    yield pipe
    snap.apply(pipe)


def _two_edits(pipe):
    snap = rl.snapshot(pipe)
    red = rl.uce_erase(pipe, "red")
    snap.apply(pipe)
    blue = rl.uce_erase(pipe, "blue")
    snap.apply(pipe)
    return snap, red, blue


# ------------------------------------------------------------------ maps against weights
def test_a_patch_file_with_another_edit_s_map_is_refused_on_load(fresh, tmp_path):
    _, red, blue = _two_edits(fresh)
    path = tmp_path / "mixed.safetensors"
    rl.Patch(red.weights, red.fingerprint, red.metadata, blue.map, red.witness).save(path)
    with pytest.raises(ValueError, match="mixed.safetensors: its stored map does not belong to its weights"):
        rl.Patch.load(path)


def test_to_lora_without_base_checks_the_map(fresh, tmp_path):
    _, red, blue = _two_edits(fresh)
    red.save(tmp_path / "red.safetensors")
    out = rl.Patch.load(tmp_path / "red.safetensors").to_lora(tmp_path / "lora.safetensors")
    assert out.error < 1e-4  # a genuine patch still exports without base
    by_hand = rl.Patch(red.weights, red.fingerprint, red.metadata, blue.map)  # no witness: cannot be checked
    with pytest.raises(ValueError, match="give base="):
        by_hand.to_lora(tmp_path / "x.safetensors")
    mixed = rl.Patch(red.weights, red.fingerprint, red.metadata, blue.map, red.witness)
    with pytest.raises(ValueError, match="does not belong"):
        mixed.to_lora(tmp_path / "x.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lora.safetensors", "red.safetensors"]


def test_to_lora_refuses_a_base_holding_inf(fresh, tmp_path):
    snap, red, _ = _two_edits(fresh)
    bad = {n: w.clone() for n, w in snap.weights.items()}
    name = sorted(bad)[3]
    bad[name][0, 0] = math.inf
    with pytest.raises(ValueError, match=f"base: {name} holds NaN or inf"):
        red.to_lora(tmp_path / "lora.safetensors", base=rl.Patch(bad, snap.fingerprint))
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ regular files
def test_patch_load_of_a_fifo_is_refused_at_once(tmp_path):
    """Before, Patch.load blocked forever (a FIFO waits for a writer): run it in a subprocess with a timeout."""
    fifo = tmp_path / "p.safetensors"
    os.mkfifo(fifo)
    code = f"import rece_lite as rl; rl.Patch.load({str(fifo)!r})"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    try:
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    except subprocess.TimeoutExpired:
        pytest.fail("Patch.load blocked on a FIFO")
    assert "p.safetensors is not a regular file" in res.stderr.splitlines()[-1]


# ------------------------------------------------------------------------ names, words
@pytest.mark.parametrize("folder", ["", "   "])
def test_save_pretrained_refuses_an_empty_folder_name(pipe, folder, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="folder is (empty|blank)"):
        rl.save_pretrained(pipe, folder)
    assert list(tmp_path.iterdir()) == []


def test_save_pretrained_refuses_weights_holding_nan(fresh, tmp_path):
    with torch.no_grad():
        fresh.vae.decoder.conv_out.bias[0] = math.nan
    with pytest.raises(ValueError, match=r"pipe: vae\.decoder\.conv_out\.bias holds NaN"):
        rl.save_pretrained(fresh, tmp_path / "out")
    with torch.no_grad():
        fresh.vae.decoder.conv_out.bias[0] = 0.0
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("concept", ["", "   "])
def test_derive_embedding_refuses_a_blank_concept(fresh, concept):
    original = rl.snapshot(fresh)
    rl.uce_erase(fresh, "red")
    with pytest.raises(ValueError, match="concept is (empty|blank)"):
        rl.derive_embedding(fresh, concept, original=original)


def test_encode_refuses_words_the_tokenizer_does_not_know(pipe):
    with pytest.raises(ValueError, match="zorblax"):
        rl.encode(pipe, "a zorblax circle")
    assert rl.encode(pipe, "a red circle").shape[0] == 1


def test_encode_refuses_a_prompt_longer_than_the_text_encoder_reads(pipe):
    with pytest.raises(ValueError, match="tokens long"):
        rl.encode(pipe, " ".join(["a red circle next to a blue square"] * 4))


# ------------------------------------------------------------------------ model folders
def _corrupt(tmp_path, how):
    folder = tmp_path / "m"
    shutil.copytree(rl.paths.tiny_path(), folder)
    if how == "tokenizer":
        f = folder / "tokenizer" / "tokenizer.json"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        return folder, "tokenizer.json"
    if how == "text encoder":
        f = folder / "text_encoder" / "model.safetensors"
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        return folder, "model.safetensors"
    f = folder / "text_encoder" / "config.json"
    cfg = json.loads(f.read_text())
    cfg["hidden_size"] *= 2
    f.write_text(json.dumps(cfg))
    return folder, "text_encoder"


@pytest.mark.parametrize("how", ["tokenizer", "text encoder", "hidden_size"])
def test_a_corrupt_model_folder_names_the_file(tmp_path, how):
    folder, name = _corrupt(tmp_path, how)
    with pytest.raises(ValueError, match=rf"could not load {folder}: .*{name}"):
        rl.load_pipeline(folder, device="cpu")


# ---------------------------------------------------------------------- the fingerprint
def test_a_patch_does_not_apply_to_a_pipeline_with_another_text_encoder(fresh):
    patch = rl.uce_erase(fresh, "red")
    other = build_pipeline(seed=0)
    other.unet.load_state_dict(fresh.unet.state_dict())  # the same UNet, another text encoder of the same shape
    before = {k: v.clone() for k, v in other.unet.state_dict().items()}
    with pytest.raises(ValueError, match="made for model"):
        patch.apply(other)
    assert all(torch.equal(v, before[k]) for k, v in other.unet.state_dict().items())


def test_a_patch_written_before_the_text_part_still_applies(fresh, tmp_path):
    patch = rl.uce_erase(fresh, "red")
    unet_only = patch.fingerprint.split("-")[0]
    assert unet_only == layers.fingerprint(fresh.unet) and len(unet_only) == 16
    old = rl.Patch(patch.weights, unet_only, patch.metadata, patch.map)
    rl.snapshot(fresh)
    old.apply(fresh)  # no error: an id without a text part matches on the UNet
    assert layers.same_model(old.fingerprint, layers.fingerprint(fresh))


# ------------------------------------------------------------------------- LoRA adapters
def test_uce_erase_refuses_a_pipeline_with_an_unfused_lora(fresh, tmp_path):
    pytest.importorskip("peft")
    snap = rl.snapshot(fresh)
    rl.uce_erase(fresh, "blue").to_lora(tmp_path / "blue.safetensors", base=snap)
    snap.apply(fresh)
    fresh.load_lora_weights(str(tmp_path / "blue.safetensors"))
    try:
        before = {k: v.clone() for k, v in fresh.unet.state_dict().items()}
        with pytest.raises(ValueError, match="LoRA adapter that is not fused"):
            rl.uce_erase(fresh, "red")
        assert all(torch.equal(v, before[k]) for k, v in fresh.unet.state_dict().items())
    finally:
        fresh.unload_lora_weights()
