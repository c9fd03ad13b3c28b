"""Bad inputs found by benchmarks/bad_inputs.py: each is refused with an error naming what was wrong."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import rece_lite as rl
from rece_lite.tiny import train


@pytest.fixture(scope="module")
def pipe():
    return rl.load_pipeline("tiny", device="cpu")


def _draw(pipe, prompts="a red circle", **kw):
    return rl.sample(pipe, prompts, **{"steps": 2, **kw})


# ------------------------------------------------------------------------ sample
@pytest.mark.parametrize("steps", [0, -1, 1.5, True])
def test_sample_refuses_steps_that_are_not_a_whole_number_from_one(pipe, steps):
    with pytest.raises((TypeError, ValueError), match="steps"):
        _draw(pipe, steps=steps)


@pytest.mark.parametrize("seeds", ["12", [1.5], 5, [], None])
def test_sample_refuses_seeds_that_are_not_a_list_of_whole_numbers(pipe, seeds):
    with pytest.raises((TypeError, ValueError), match="seeds"):
        _draw(pipe, seeds=seeds)


@pytest.mark.parametrize("batch_size", [0, -1, 2.0])
def test_sample_refuses_a_batch_size_below_one(pipe, batch_size):
    with pytest.raises((TypeError, ValueError), match="batch_size"):
        _draw(pipe, batch_size=batch_size)


@pytest.mark.parametrize("guidance", [math.nan, math.inf, "6"])
def test_sample_refuses_a_guidance_that_is_not_a_finite_number(pipe, guidance):
    with pytest.raises((TypeError, ValueError), match="guidance"):
        _draw(pipe, guidance=guidance)


@pytest.mark.parametrize("prompts", [[], [3], ["a red circle", None]])
def test_sample_refuses_prompts_that_are_not_a_non_empty_list_of_strings(pipe, prompts):
    with pytest.raises((TypeError, ValueError), match="prompts"):
        _draw(pipe, prompts)


def test_sample_refuses_a_word_the_tokenizer_does_not_know(pipe):
    with pytest.raises(ValueError, match="zorblax"):
        _draw(pipe, "a zorblax circle")


@pytest.mark.parametrize("value", [None, object(), "tiny"])
def test_sample_and_encode_refuse_what_is_not_a_pipeline(value):
    with pytest.raises(TypeError, match="pipe.*not a diffusers pipeline"):
        rl.sample(value, "a red circle", steps=2)
    with pytest.raises(TypeError, match="pipe.*not a diffusers pipeline"):
        rl.encode(value, "red")


def test_sample_takes_a_list_of_embeddings_as_their_stack(pipe):
    e = rl.encode(pipe, ["a red circle", "a blue square"])
    as_list = rl.sample(pipe, embeds=list(e), steps=2)
    stacked = rl.sample(pipe, embeds=e, steps=2)
    assert np.array_equal(as_list, stacked)


def test_sample_refuses_embeddings_of_the_wrong_width(pipe):
    e = rl.encode(pipe, "a red circle")
    with pytest.raises(ValueError, match="embeds has width 65"):
        rl.sample(pipe, embeds=torch.cat([e, e[..., :1]], -1), steps=2)


def test_sample_refuses_embeddings_with_nan(pipe):
    e = rl.encode(pipe, "a red circle").clone()
    e[0, 1, 2] = math.nan
    with pytest.raises(ValueError, match="embeds"):
        rl.sample(pipe, embeds=e, steps=2)


@pytest.mark.parametrize("embeds", ["x", [1.0, 2.0], torch.zeros(3, dtype=torch.long)])
def test_sample_refuses_embeds_that_are_not_float_tensors(pipe, embeds):
    with pytest.raises(TypeError, match="embeds must be"):
        rl.sample(pipe, embeds=embeds, steps=2)


def test_valid_sampling_is_unchanged_by_the_checks(pipe):
    # the same seeds given as a range, a tuple and numpy integers draw the same pictures
    a = _draw(pipe, ["a red circle", "a blue square"], seeds=range(2))
    b = _draw(pipe, ("a red circle", "a blue square"), seeds=(np.int64(0), np.int64(1)))
    assert np.array_equal(a, b)


# ------------------------------------------------------------------------ encode
@pytest.mark.parametrize("prompts", [None, 3, [], [None], ["red", 3]])
def test_encode_refuses_prompts_that_are_not_a_non_empty_list_of_strings(pipe, prompts):
    with pytest.raises((TypeError, ValueError), match="prompts"):
        rl.encode(pipe, prompts)


# ------------------------------------------------------------------------ Patch
def test_patch_apply_names_the_missing_matrix(pipe):
    snap = rl.snapshot(pipe)
    w = dict(snap.weights)
    gone = list(w)[3]
    del w[gone]
    with pytest.raises(ValueError, match="missing") as err:
        rl.Patch(w, snap.fingerprint).apply(pipe)
    assert gone in str(err.value)


def test_patch_apply_names_the_extra_matrix(pipe):
    snap = rl.snapshot(pipe)
    w = dict(snap.weights)
    w["down_blocks.9.attn2.to_k"] = next(iter(w.values())).clone()
    with pytest.raises(ValueError, match="down_blocks.9.attn2.to_k"):
        rl.Patch(w, snap.fingerprint).apply(pipe)


def test_patch_apply_refuses_weights_on_the_meta_device(pipe):
    snap = rl.snapshot(pipe)
    meta = rl.Patch({n: w.to("meta") for n, w in snap.weights.items()}, snap.fingerprint)
    with pytest.raises(ValueError, match="meta"):
        meta.apply(pipe)
    assert rl.snapshot(pipe) == snap


def test_patch_apply_to_a_text_encoder_does_not_call_it_a_unet(pipe):
    snap = rl.snapshot(pipe)
    with pytest.raises((TypeError, ValueError)) as err:
        snap.apply(pipe.text_encoder)
    assert "UNet has no" not in str(err.value)


def test_patch_apply_to_a_text_encoder_names_the_pipeline(pipe):
    snap = rl.snapshot(pipe)
    with pytest.raises((TypeError, ValueError), match="pipeline"):
        snap.apply(pipe.text_encoder)


@pytest.mark.parametrize("path", [None, 42])
def test_patch_load_and_save_name_a_path_that_is_no_path(pipe, path):
    with pytest.raises(TypeError, match="path"):
        rl.Patch.load(path)
    with pytest.raises(TypeError, match="path"):
        rl.snapshot(pipe).save(path)


def test_patch_save_names_metadata_that_is_not_json(pipe, tmp_path):
    snap = rl.snapshot(pipe)
    with pytest.raises(TypeError, match="metadata"):
        rl.Patch(snap.weights, snap.fingerprint, {"a": object()}).save(tmp_path / "p.safetensors")
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ load_pipeline
def test_load_pipeline_names_a_model_index_that_is_a_json_list(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps([1, 2]))
    with pytest.raises(ValueError, match="model_index.json"):
        rl.load_pipeline(tmp_path, device="cpu")


@pytest.mark.parametrize("model", [None, 42])
def test_load_pipeline_names_a_model_that_is_no_name(model):
    with pytest.raises(TypeError, match="model"):
        rl.load_pipeline(model, device="cpu")


# ------------------------------------------------------------------------ training options
@pytest.mark.parametrize(
    "argv, option",
    [
        (["--unet-heads", "0"], "--unet-heads"),
        (["--unet-heads", "3"], "--unet-heads"),  # 32 channels do not split into 3 heads
        (["--text-heads", "0"], "--text-heads"),
        (["--text-width", "30", "--text-heads", "4"], "--text-width"),
        (["--lr", "-1"], "--lr"),
        (["--lr", "nan"], "--lr"),
        (["--size", "0"], "--size"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_training_refuses_bad_settings_up_front(tmp_path, capsys, argv, option):
    with pytest.raises(SystemExit):
        train.parse(["--out", str(tmp_path / "o"), "--work", str(tmp_path / "w"), *argv])
    assert option in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # refused before any folder was made


def test_training_checks_out_before_it_makes_work(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(SystemExit):
        train.parse(["--out", str(tmp_path / "f.txt" / "o"), "--work", str(tmp_path / "w")])
    assert not (tmp_path / "w").exists()


# ---------------------------------------------------------------- the last two the probe found weak
def test_an_sdxl_pipeline_without_its_second_text_encoder_is_refused():
    from diffusers import StableDiffusionXLPipeline

    from rece_lite.pipeline import check_supported
    from rece_lite.tiny.model import build_pipeline

    tiny = build_pipeline(seed=0)
    xl = StableDiffusionXLPipeline(vae=tiny.vae, text_encoder=tiny.text_encoder, text_encoder_2=None,
                                   tokenizer=tiny.tokenizer, tokenizer_2=None, unet=tiny.unet,
                                   scheduler=tiny.scheduler)  # fmt: skip
    with pytest.raises(ValueError, match="text_encoder_2"):
        check_supported(xl)


def test_a_prompt_file_that_is_not_text_is_refused_naming_it(tmp_path):
    from rece_lite.bench import read_prompts

    path = tmp_path / "p.csv"
    path.write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(ValueError, match="p.csv"):
        read_prompts(path)
