"""Every tensor the library makes names its device: checked without a GPU, and on one where present.

Without a GPU: under ``with torch.device("meta"):`` every tensor made without naming a device
lands on the meta device, which holds no values and cannot meet the pipeline's CPU tensors;
a forgotten ``device=`` therefore fails the call (or leaves a result without values). So the
edits run under it, with embeddings passed as tensors (the text encoder is a diffusers module,
not ours), must give exactly what they give outside it.

With a GPU (tests parametrised with ``cuda`` are marked and skipped elsewhere): the same calls
on a CUDA pipeline agree with the CPU, keep their results on the pipeline's device, and patches
move between devices.
"""

from __future__ import annotations

import pytest
import torch

import rece_lite as rl
from rece_lite import closed_form as cf
from rece_lite import layers
from rece_lite.tiny.model import build_pipeline

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]
D = 8


# ------------------------------------------------------------------ meta device: no GPU needed
def _embeddings(pipe) -> dict[str, torch.Tensor]:
    e = rl.encode(pipe, ["red", "", "blue"])
    return {"red": e[0], "empty": e[1], "blue": e[2]}


def _uce(pipe, e):
    return rl.uce_erase(pipe, e["red"], e["empty"]).weights  # no preserve: its empty rows are made here


def _uce_preserving(pipe, e):
    return rl.uce_erase(pipe, [e["red"]], e["empty"], [e["blue"]]).weights


def _derive(pipe, e):
    snap = rl.snapshot(pipe)
    rl.uce_erase(pipe, e["red"], e["empty"], [e["blue"]])
    return {"derived": rl.derive_embedding(pipe, e["red"], original=snap)}


def _rece(pipe, e):
    res = rl.rece_erase(pipe, e["red"], e["empty"], epochs=2)
    return {**res.patch.weights, **{f"derived {i}": x for i, x in enumerate(res.derived)}}


def _rece_from_a_snapshot(pipe, e):
    snap = rl.snapshot(pipe)
    return rl.rece_erase(pipe, e["red"], e["empty"], [e["blue"]], epochs=1, original=snap).patch.weights


def _rece_after_an_edit(pipe, e):
    snap = rl.snapshot(pipe)
    rl.uce_erase(pipe, e["blue"], e["empty"])
    return rl.rece_erase(pipe, e["red"], e["empty"], epochs=1, original=snap).patch.weights


def _rece_already_edited(pipe, e):
    snap = rl.snapshot(pipe)
    rl.uce_erase(pipe, e["red"], e["empty"])
    return rl.rece_erase(pipe, e["red"], e["empty"], epochs=1, original=snap, already_edited=True).patch.weights


CALLS = {
    "uce_erase": _uce,
    "uce_erase with preserve": _uce_preserving,
    "derive_embedding": _derive,
    "rece_erase": _rece,
    "rece_erase from a snapshot": _rece_from_a_snapshot,
    "rece_erase after an edit": _rece_after_an_edit,
    "rece_erase already edited": _rece_already_edited,
}


def _identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(
        a[k].device == b[k].device and a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a
    )


@pytest.mark.parametrize("call", CALLS)
def test_edits_make_every_tensor_on_a_named_device(call):
    plain_pipe, tracked_pipe = build_pipeline(seed=0), build_pipeline(seed=0)
    e = _embeddings(plain_pipe)
    plain = CALLS[call](plain_pipe, e)
    with torch.device("meta"):  # a tensor made without device= lands here and cannot meet the CPU's
        tracked = CALLS[call](tracked_pipe, e)
    assert _identical(tracked, plain)


def _toy(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, D, generator=g, dtype=torch.float64) for n in (5, 3, 3, 4)]


def _grams_after(W, ce, cg, cp):
    return cf.Grams.start(cf.gram([W])).after(cf.uce_map(ce, cg, cp))


CLOSED_FORMS = {
    "uce_weights": lambda W, ce, cg, cp: cf.uce_weights(W, ce, cg @ W.T),
    "uce_map": lambda W, ce, cg, cp: cf.uce_map(ce, cg),
    "gram": lambda W, ce, cg, cp: cf.gram([W, W[:2]], [W, W[:2]]),
    "derive_embedding zero": lambda W, ce, cg, cp: cf.derive_embedding(cf.gram([W]), cf.gram([W]), ce),
    "derive_embedding standard": lambda W, ce, cg, cp: cf.derive_embedding(
        cf.gram([W]), cf.gram([W]), ce, reg="standard", old_target=cg
    ),
    "derive_embedding surrogate": lambda W, ce, cg, cp: cf.derive_embedding(
        cf.gram([W]), cf.gram([W]), ce, reg="surrogate"
    ),
    "Grams.start": lambda W, ce, cg, cp: cf.Grams.start(cf.gram([W])).Q,
    "Grams.after": lambda W, ce, cg, cp: _grams_after(W, ce, cg, cp).H,
    "residual": lambda W, ce, cg, cp: cf.residual(*[cf.gram([W])] * 3, ce, cg),
}


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_closed_forms_make_every_tensor_on_a_named_device(name):
    args = _toy()
    plain = CLOSED_FORMS[name](*args)
    with torch.device("meta"):
        tracked = CLOSED_FORMS[name](*args)
    assert _identical({name: tracked}, {name: plain})


# ------------------------------------------------------------------ on a device (CUDA where present)
def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return ((a - b).norm() / b.norm()).item()


def _run(pipe) -> dict[str, torch.Tensor | rl.Patch]:
    """The three public calls with prompts, as a learner makes them."""
    snap = rl.snapshot(pipe)
    uce = rl.uce_erase(pipe, "red", "", ["blue"])
    derived = rl.derive_embedding(pipe, "red", original=snap)
    snap.apply(pipe)
    rece = rl.rece_erase(pipe, "red", "", ["blue"], epochs=2)
    snap.apply(pipe)
    return {"uce": uce, "derived": derived, "rece": rece.patch, "rece derived": rece.derived[-1], "snapshot": snap}


@pytest.fixture(scope="module")
def on_cpu():
    return _run(build_pipeline(seed=0))


@pytest.fixture(scope="module", params=DEVICES)
def on_device(request):
    pipe = build_pipeline(seed=0).to(request.param)
    return request.param, pipe, _run(pipe)


def test_the_uce_patch_agrees_with_the_cpu(on_device, on_cpu):
    _, _, got = on_device
    assert max(_rel(w, on_cpu["uce"].weights[n]) for n, w in got["uce"].weights.items()) < 1e-5


def test_the_derived_embedding_agrees_with_the_cpu(on_device, on_cpu):
    _, _, got = on_device
    assert _rel(got["derived"], on_cpu["derived"]) < 1e-4


def test_the_rece_patch_agrees_with_the_cpu(on_device, on_cpu):
    _, _, got = on_device
    assert max(_rel(w, on_cpu["rece"].weights[n]) for n, w in got["rece"].weights.items()) < 1e-4


def test_patch_weights_stay_on_the_pipelines_device(on_device):
    device, _, got = on_device
    assert {w.device.type for w in got["uce"].weights.values()} == {device}


def test_the_edit_map_is_float64_on_the_cpu(on_device):
    _, _, got = on_device
    assert (got["rece"].map.device.type, got["rece"].map.dtype) == ("cpu", torch.float64)


def test_derived_embeddings_come_back_on_the_text_encoders_device(on_device):
    device, _, got = on_device
    assert {got["derived"].device.type, got["rece derived"].device.type} == {device}


def test_a_patch_saved_on_the_device_applies_there_from_the_cpu(on_device, tmp_path):
    device, pipe, got = on_device
    got["uce"].save(tmp_path / "red.safetensors")
    loaded = rl.Patch.load(tmp_path / "red.safetensors")
    loaded.apply(pipe)
    weights = {n: m.weight.detach().clone() for n, m in layers.projections(pipe.unet).items()}
    got["snapshot"].apply(pipe)
    assert all(torch.equal(w, got["uce"].weights[n]) for n, w in weights.items())


def test_a_patch_from_the_cpu_applies_on_the_device(on_device, on_cpu):
    device, pipe, got = on_device
    on_cpu["uce"].apply(pipe)
    weights = {n: m.weight.detach().clone() for n, m in layers.projections(pipe.unet).items()}
    got["snapshot"].apply(pipe)
    assert all(torch.equal(w.cpu(), on_cpu["uce"].weights[n]) for n, w in weights.items())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("device", DEVICES)
def test_half_precision_edits_err_by_the_weights_rounding_alone(device, dtype):
    pipe = build_pipeline(seed=0)
    e = _embeddings(pipe)
    pipe.to(device, dtype)
    exact = build_pipeline(seed=0).to(dtype).to(torch.float64)  # the same rounded weights, in float64
    got = rl.rece_erase(pipe, e["red"], e["empty"], [e["blue"]], epochs=1).patch.weights
    ref = rl.rece_erase(exact, e["red"], e["empty"], [e["blue"]], epochs=1).patch.weights  # float64 throughout
    # how many units in the last place the stored weights are from the float64 answer rounded as stored
    tiny, eps = torch.finfo(dtype).tiny, torch.finfo(dtype).eps
    ulps = max(
        ((got[n].cpu().double() - ref[n].to(dtype).double()).abs() / (eps * ref[n].abs().clamp_min(tiny))).max()
        for n in ref
    )
    assert ulps <= 1.0
