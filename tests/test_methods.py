"""The seams of issue 23: one registry of methods, defaults stated once, input errors as their own class,
one Target per edit."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

import rece_lite as rl
from rece_lite import cli, closed_form, erase, measure, methods, prompt_file, sampling
from rece_lite.errors import InputError
from rece_lite.recipes import Recipe, recipe_for
from rece_lite.settings import EDIT, RECE, SAMPLING


# ------------------------------------------------------------------------------ the registry
def test_the_command_measure_and_the_bench_offer_the_registrys_methods():
    from rece_lite import bench

    assert cli.METHODS == measure.METHODS == tuple(methods.METHODS) == ("uce", "rece", "null_space")
    assert bench.MODELS == ("original", "ESD-x", "UCE", "RECE")  # the null-space edit is no row until it wins
    assert [m.label for m in methods.compared()] == ["UCE", "RECE"]


def test_a_method_is_found_by_name_or_label_in_any_case():
    assert methods.get("rece") is methods.get("RECE") is methods.METHODS["rece"]
    assert methods.get("Uce") is methods.METHODS["uce"]


@pytest.mark.parametrize("name", ["null", "", "uce ", None, 3])
def test_an_unknown_method_is_an_input_error_naming_the_known_ones(name):
    with pytest.raises(InputError, match="uce, rece, null_space"):
        methods.get(name)


def test_erase_and_measure_refuses_an_unknown_method_before_touching_the_model(rand_pipe):
    before = rl.snapshot(rand_pipe)
    with pytest.raises(InputError, match="method must be one of uce, rece, null_space, got 'esd'"):
        measure.erase_and_measure(rand_pipe, "red", recipe_for("tiny", "red"), method="esd", measured=False)
    assert rl.snapshot(rand_pipe) == before


def test_a_prompt_file_run_refuses_a_recipe_under_an_unknown_name_before_drawing(rand_pipe, monkeypatch):
    drawn = []
    monkeypatch.setattr(prompt_file, "sample", lambda *a, **k: drawn.append(1) or np.zeros((1, 8, 8, 3), np.uint8))
    rows = [prompt_file.PromptRow("a red circle", 0)]
    with pytest.raises(InputError, match="got 'RECE-v2'"):
        prompt_file.prompt_file_run(rand_pipe, rows, lambda x: [False] * len(x), {"RECE-v2": Recipe(("red",))},
                                    progress=False)  # fmt: skip
    assert drawn == []


def test_each_registered_method_runs_its_edit(rand_pipe):
    recipe = Recipe(("red",), preserve=("blue",), epochs=1)
    snap = rl.snapshot(rand_pipe)
    uce = methods.get("uce").run(rand_pipe, recipe, False)
    assert uce.patch.metadata["method"] == "uce" and uce.derived == []
    snap.apply(rand_pipe)
    rece = methods.get("rece").run(rand_pipe, recipe, False)
    assert rece.patch.metadata["method"] == "rece" and len(rece.derived) == 1
    snap.apply(rand_pipe)
    direct = rl.rece_erase(rand_pipe, **recipe.rece_kwargs())
    assert direct.patch == rece.patch
    snap.apply(rand_pipe)
    held = methods.get("null_space").run(rand_pipe, recipe, False)
    assert held.patch.metadata["method"] == "null_space" and held.derived == []
    from rece_lite.null_space import null_space_erase

    snap.apply(rand_pipe)
    assert null_space_erase(rand_pipe, **recipe.null_space_kwargs()) == held.patch
    kept = rl.encode(rand_pipe, ["blue"])[0].double()
    for name, w in held.patch.weights.items():  # the preserved prompt's keys and values are held exactly
        before = snap.weights[name].double() @ kept.T
        assert (w.double() @ kept.T - before).norm() <= 1e-4 * before.norm(), name


# ------------------------------------------------------------------------------ defaults, once
def _default(fn, name):
    return inspect.signature(fn).parameters[name].default


@pytest.mark.parametrize("fn", [closed_form.uce_weights, closed_form.uce_map, erase.uce_erase, erase.rece_erase])
def test_the_closed_forms_defaults_are_the_settings(fn):
    assert (_default(fn, "lamb"), _default(fn, "erase_scale"), _default(fn, "preserve_scale")) == (
        EDIT.lamb, EDIT.erase_scale, EDIT.preserve_scale)  # fmt: skip


@pytest.mark.parametrize("fn", [closed_form.derive_embedding, erase.derive_embedding, erase.rece_erase])
def test_the_derivations_defaults_are_the_settings(fn):
    assert (_default(fn, "reg"), _default(fn, "reg_scale")) == (RECE.reg, RECE.reg_scale)


def test_rece_erase_and_a_recipe_keep_their_own_epochs():
    assert _default(erase.rece_erase, "epochs") == RECE.epochs == 3
    assert Recipe(("red",)).epochs == 2
    r = Recipe(("red",))
    assert (r.lamb, r.erase_scale, r.preserve_scale, r.reg, r.reg_scale) == (
        EDIT.lamb, EDIT.erase_scale, EDIT.preserve_scale, RECE.reg, RECE.reg_scale)  # fmt: skip


def test_sampling_defaults_are_the_settings():
    assert (_default(sampling.sample, "steps"), _default(sampling.sample, "guidance")) == (20, 6.0)
    assert (_default(sampling.sample, "steps"), _default(sampling.sample, "guidance")) == (
        SAMPLING.steps, SAMPLING.guidance)  # fmt: skip
    assert _default(measure.measure, "steps") == _default(prompt_file.prompt_file_run, "steps") == SAMPLING.steps
    assert _default(prompt_file.prompt_file_run, "guidance") == SAMPLING.guidance


# ------------------------------------------------------------------------------ errors and the target
def test_input_errors_are_value_errors_raised_by_the_library(rand_pipe):
    assert issubclass(InputError, ValueError)
    with pytest.raises(InputError, match="empty prompt"):
        rl.uce_erase(rand_pipe, "")
    with pytest.raises(InputError, match="unknown"):
        rl.sample(rand_pipe, "a zorblax circle")


def test_check_device_is_public_and_the_old_name_is_the_same_function():
    from rece_lite import pipeline

    assert pipeline._check_device is pipeline.check_device
    assert str(pipeline.check_device("cpu")) == "cpu"
    with pytest.raises(InputError, match="not a device name"):
        pipeline.check_device("gpu-please")


def test_one_edit_reads_the_models_fingerprint_once(rand_pipe, monkeypatch):
    snap = rl.snapshot(rand_pipe)
    calls = []
    real = erase.layers.fingerprint
    monkeypatch.setattr(erase.layers, "fingerprint", lambda unet: calls.append(1) or real(unet))
    rl.rece_erase(rand_pipe, "red", preserve=["blue"], epochs=2, original=snap)
    assert len(calls) == 1
