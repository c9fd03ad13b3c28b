"""What the ESD-x baseline (rece_lite.esd) promises, checked on random-weight pipelines built in code (fast)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import rece_lite
import rece_lite as rl
from rece_lite import layers
from rece_lite.esd import esd_erase
from rece_lite.tiny.model import build_pipeline

LIBRARY = Path(rece_lite.__file__).resolve().parent

QUICK = dict(steps=5, batch=4, images_per_prompt=1, sample_steps=2, progress=False)


def state_of(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(a: dict, b: dict) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


@pytest.fixture(scope="module")
def tuned():
    """ESD-x on a random pipeline: (the pipeline, its weights before and after, the snapshot, the result)."""
    pipe = build_pipeline(seed=0)
    snap = rl.snapshot(pipe)
    before = {part: state_of(getattr(pipe, part)) for part in ("unet", "text_encoder", "vae")}
    result = esd_erase(pipe, "red", **QUICK)
    after = {part: state_of(getattr(pipe, part)) for part in ("unet", "text_encoder", "vae")}
    return pipe, before, after, snap, result


# ------------------------------------------------------------------------ what it trains
def test_esd_trains_exactly_the_cross_attention_keys_and_values(tuned):
    pipe, before, after, _, _ = tuned
    assert changed(before["unet"], after["unet"]) == {f"{n}.weight" for n in layers.projections(pipe.unet)}


@pytest.mark.parametrize("part", ["text_encoder", "vae"])
def test_esd_leaves_the_other_parts_alone(tuned, part):
    _, before, after, _, _ = tuned
    assert not changed(before[part], after[part])


def test_esd_leaves_no_gradients_behind(tuned):
    pipe = tuned[0]
    assert not [p for p in pipe.unet.parameters() if p.grad is not None]


def test_esd_puts_back_what_needed_gradients(tuned):
    pipe = tuned[0]
    assert all(p.requires_grad for p in pipe.unet.parameters())  # as build_pipeline made them


def test_esd_records_a_loss_per_step(tuned):
    assert len(tuned[4].losses) == 5


def test_esd_times_itself(tuned):
    assert tuned[4].seconds > 0


def test_esd_patch_says_what_made_it(tuned):
    assert tuned[4].patch.metadata["method"] == "esd-x"


# ------------------------------------------------------------------------ its patch
def test_esd_can_be_undone_by_the_snapshot(tuned):
    pipe, before, after, snap, _ = tuned
    try:
        snap.apply(pipe)
        assert not changed(before["unet"], state_of(pipe.unet))
    finally:
        tuned[4].patch.apply(pipe)


def test_esd_patch_reapplies_the_fine_tune(tuned):
    pipe, _, after, snap, result = tuned
    snap.apply(pipe)
    result.patch.apply(pipe)
    assert not changed(after["unet"], state_of(pipe.unet))


def test_esd_is_seeded(tuned):
    again = build_pipeline(seed=0)
    esd_erase(again, "red", **QUICK)
    assert not changed(tuned[2]["unet"], state_of(again.unet))


# ------------------------------------------------------------------------ bad input
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_esd_refuses_half_precision_naming_the_pipeline(rand_pipe, dtype):
    rand_pipe.unet.to(dtype)
    with pytest.raises(TypeError, match="pipe: ESD fine-tunes in float32"):
        esd_erase(rand_pipe, "red", steps=1, progress=False)


NAN = float("nan")
BAD = [
    (dict(steps=0), "steps"),
    (dict(steps=-5), "steps"),
    (dict(steps=2.5), "steps"),
    (dict(batch=0), "batch"),
    (dict(images_per_prompt=0), "images_per_prompt"),
    (dict(sample_steps=0), "sample_steps"),
    (dict(seed=-1), "seed"),
    (dict(lr=0.0), "lr"),
    (dict(lr=-1e-4), "lr"),
    (dict(lr=NAN), "lr"),
    (dict(eta=NAN), "eta"),
    (dict(guidance=float("inf")), "guidance"),
    (dict(prompts=[]), "prompts"),
    (dict(prompts=[""]), "prompts"),
    (dict(prompts=["a vermilion circle"]), "prompts"),  # a word the model does not know
]


@pytest.mark.parametrize(("kw", "argument"), BAD, ids=[f"{i}-{a}" for i, (_, a) in enumerate(BAD)])
def test_bad_arguments_are_refused_naming_the_argument(rand_pipe, kw, argument):
    with pytest.raises(ValueError, match=argument):
        esd_erase(rand_pipe, "red", **{**QUICK, **kw})


@pytest.mark.parametrize("concept", ["", "dog"])
def test_a_concept_it_cannot_make_prompts_for_is_refused(rand_pipe, concept):
    with pytest.raises(ValueError, match="concept"):
        esd_erase(rand_pipe, concept, **QUICK)


def test_a_refused_esd_leaves_the_model_untouched(rand_pipe):
    unet = state_of(rand_pipe.unet)
    with pytest.raises(ValueError):
        esd_erase(rand_pipe, "red", **{**QUICK, "lr": NAN})
    assert not changed(unet, state_of(rand_pipe.unet))


def test_an_interrupted_esd_leaves_the_model_untouched(rand_pipe, monkeypatch):
    unet = state_of(rand_pipe.unet)
    steps = []

    def stop_after_two(self, *args, **kwargs):
        steps.append(1)
        if len(steps) > 2:
            raise KeyboardInterrupt
        return original_step(self, *args, **kwargs)

    original_step = torch.optim.Adam.step
    monkeypatch.setattr(torch.optim.Adam, "step", stop_after_two)
    with pytest.raises(KeyboardInterrupt):
        esd_erase(rand_pipe, "red", **QUICK)
    assert not changed(unet, state_of(rand_pipe.unet))


# --------------------------------------------------------------------------- devices
def test_every_tensor_esd_creates_names_its_device(rand_pipe, unnamed_devices):
    with unnamed_devices(under=LIBRARY / "esd.py") as watch:
        esd_erase(rand_pipe, "red", **{**QUICK, "steps": 1})
    assert watch.calls == []


@pytest.mark.cuda
def test_esd_on_cuda_matches_the_cpu(rand_pipe):
    gpu = build_pipeline(seed=0).to("cuda")
    on_gpu = esd_erase(gpu, "red", **QUICK)
    on_cpu = esd_erase(rand_pipe, "red", **QUICK)
    assert on_gpu.losses[0] == pytest.approx(on_cpu.losses[0], rel=2e-2)


@pytest.mark.cuda
def test_esd_on_cuda_trains_the_weights_on_cuda():
    gpu = build_pipeline(seed=0).to("cuda")
    result = esd_erase(gpu, "red", **QUICK)
    assert {w.device.type for w in result.patch.weights.values()} == {"cuda"}
