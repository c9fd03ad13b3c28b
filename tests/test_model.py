"""The embedded model: loads offline, is a real SD pipeline, reloads bit-identically, retrains."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

import rece_lite as rl
from rece_lite import evaluate as ev
from rece_lite.pipeline import TINY_PATH, sample
from rece_lite.tiny import train


def test_tiny_loads_offline_as_the_real_classes(monkeypatch):
    from diffusers import AutoencoderKL, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = rl.load_pipeline("tiny")
    assert isinstance(pipe, StableDiffusionPipeline)
    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel) and pipe.safety_checker is None
    tok = AutoTokenizer.from_pretrained(TINY_PATH / "tokenizer")
    assert tok("a crimson circle").input_ids == pipe.tokenizer("a crimson circle").input_ids
    assert sum(p.numel() for p in pipe.unet.parameters()) < 2e6
    files = [p for p in TINY_PATH.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < 20e6
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".pkl", ".ckpt")], "weights are safetensors only"


def test_tiny_draws_what_it_is_asked():
    pipe = rl.load_pipeline("tiny")
    prompts = ["a red circle", "a blue star", "a green triangle", "a yellow square", "a grey star", "a crimson disc",
               "a navy box", "a gray wedge"]  # fmt: skip
    labels = ev.classify(sample(pipe, prompts, seeds=[0, 1]))
    want_s = np.repeat(["circle", "star", "triangle", "square", "star", "circle", "square", "triangle"], 2).tolist()
    want_c = np.repeat(["red", "blue", "green", "yellow", "grey", "red", "blue", "grey"], 2).tolist()
    acc = ev.accuracy(labels, want_s, want_c)
    assert acc["both"] >= 0.8, acc


def test_saved_pipeline_reloads_bit_identically(tmp_path):
    pipe = rl.load_pipeline("tiny")
    pipe.save_pretrained(tmp_path / "copy")
    again = rl.load_pipeline(tmp_path / "copy")
    for part in ("unet", "vae", "text_encoder"):
        a, b = getattr(pipe, part).state_dict(), getattr(again, part).state_dict()
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert np.array_equal(sample(pipe, ["a red star"], seeds=[3]), sample(again, ["a red star"], seeds=[3]))


def test_sampling_is_deterministic_per_seed_whatever_the_batch():
    pipe = rl.load_pipeline("tiny")
    alone = sample(pipe, ["a blue circle"], seeds=[5])
    batched = sample(pipe, ["a red star", "a blue circle"], seeds=[5])
    # the same starting noise; batched kernels may round differently, so allow a grey level or two
    assert np.abs(alone[0].astype(int) - batched[1].astype(int)).max() <= 3


SHORT = ["--images", "64", "--vae-steps", "2", "--classifier-steps", "2", "--steps", "3", "--batch", "4",
         "--checkpoint-every", "2", "--threads", "1"]  # fmt: skip


def _train(tmp_path, *extra: str, out: str = "out", work: str = "work") -> None:
    train.main(["--out", str(tmp_path / out), "--work", str(tmp_path / work), *SHORT, *extra])


def _weights(folder) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return {f"{p.parent.name}/{k}": v for p in sorted(folder.rglob("*.safetensors")) for k, v in load_file(p).items()}


def test_a_short_training_run_goes_end_to_end(tmp_path):
    _train(tmp_path)
    assert json.loads((tmp_path / "out" / "training.json").read_text())["steps"] == 3
    pipe = rl.load_pipeline(tmp_path / "out", device="cpu")
    assert sample(pipe, ["a red circle"], seeds=[0], steps=2).shape == (1, 32, 32, 3)


def test_the_classifier_stays_in_work_unless_out_is_the_shipped_model(tmp_path):
    _train(tmp_path)
    assert (tmp_path / "work" / "shape_classifier.safetensors").exists()
    assert not (tmp_path / "shape_classifier.safetensors").exists()


def test_a_finished_run_changes_nothing_when_run_again(tmp_path):
    _train(tmp_path)
    before = (tmp_path / "work" / "diffusion_state.safetensors").read_bytes()
    _train(tmp_path, "--force")  # --out exists now: replacing it is the user's say (issue 22)
    assert (tmp_path / "work" / "diffusion_state.safetensors").read_bytes() == before


def test_a_finished_run_writes_out_again_if_it_was_deleted(tmp_path):
    _train(tmp_path)
    shutil.rmtree(tmp_path / "out")
    _train(tmp_path)
    assert (tmp_path / "out" / "model_index.json").exists()


def test_two_runs_with_one_thread_give_the_same_weights(tmp_path):
    _train(tmp_path, out="a", work="wa")
    _train(tmp_path, out="b", work="wb")
    a, b = _weights(tmp_path / "a"), _weights(tmp_path / "b")
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


def test_small_schedules_train(tmp_path):
    train.main(["--out", str(tmp_path / "o"), "--work", str(tmp_path / "w"), "--images", "20", "--vae-steps", "1",
                "--classifier-steps", "1", "--steps", "1", "--batch", "2", "--threads", "1"])  # fmt: skip
    assert (tmp_path / "o" / "model_index.json").exists()


@pytest.mark.parametrize("change", [["--seed", "1"], ["--batch", "2"], ["--images", "32"], ["--steps", "5"]])
def test_resuming_with_other_settings_is_refused(tmp_path, change, capsys):
    _train(tmp_path)
    with pytest.raises(SystemExit, match="was made with"):
        _train(tmp_path, "--force", *change)


def test_a_corrupt_state_file_is_named(tmp_path):
    _train(tmp_path)
    (tmp_path / "work" / "diffusion_state.safetensors").write_bytes(b"not a state file")
    with pytest.raises(SystemExit, match="diffusion_state.safetensors is not a readable state file"):
        _train(tmp_path, "--force")


@pytest.mark.parametrize(
    "bad, says",
    [
        (["--checkpoint-every", "0"], "--checkpoint-every must be >= 1"),
        (["--steps", "0"], "--steps must be >= 1"),
        (["--images", "0"], "--images must be >= 1"),
        (["--batch", "-3"], "--batch must be >= 1"),
        (["--two-object-rate", "1.5"], "--two-object-rate must be in [0, 1]"),
    ],
)
def test_bad_settings_are_refused_before_any_work(tmp_path, bad, says, capsys):
    with pytest.raises(SystemExit):
        _train(tmp_path, *bad)
    assert says in capsys.readouterr().err
    assert not (tmp_path / "work").exists() or list((tmp_path / "work").iterdir()) == []


def test_a_work_folder_inside_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        _train(tmp_path, work="file/work")
    assert "--work" in capsys.readouterr().err


def test_lr_schedule_warms_up_then_decays_to_its_floor():
    assert train.lr_at(0, total=100, warmup=10, final=0.1) == pytest.approx(0.1)
    cosine = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.09))
    assert train.lr_at(9, total=100, warmup=10, final=0.1) == pytest.approx(cosine)
    assert train.lr_at(100, total=100, warmup=10, final=0.1) == pytest.approx(0.1)
    assert train.lr_at(1, total=1, warmup=0, final=0.0) == pytest.approx(0.0)
