"""UCE and RECE on a pipeline (the miniature architecture, random weights)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import rece_lite as rl
from rece_lite import closed_form as cf
from rece_lite import layers
from rece_lite.tiny.model import build_pipeline


def _weights(pipe) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in layers.projections(pipe.unet).items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


# ------------------------------------------------------------------------------ UCE
def test_uce_edit_equals_per_matrix_closed_form(rand_pipe):
    before = _weights(rand_pipe)
    ce = rl.encode(rand_pipe, "red")[0].double()
    cg = rl.encode(rand_pipe, "")[0].double()
    cp = rl.encode(rand_pipe, ["blue", "a green square"]).reshape(-1, 64).double()
    rl.uce_erase(rand_pipe, erase=["red"], guide="", preserve=["blue", "a green square"], lamb=0.1, preserve_scale=0.1)
    after = _weights(rand_pipe)
    for name, W in before.items():
        W64 = W.double()
        ref = cf.uce_weights(W64, ce, cg @ W64.T, cp, lamb=0.1, erase_scale=1.0, preserve_scale=0.1)
        torch.testing.assert_close(after[name].double(), ref, rtol=1e-4, atol=1e-5)


def test_uce_edits_all_14_matrices_of_the_miniature_model(rand_pipe):
    before = _weights(rand_pipe)
    patch = rl.uce_erase(rand_pipe, "red")
    assert sum(not torch.equal(w, before[n]) for n, w in patch.weights.items()) == 14


def test_edits_are_made_in_place_so_outside_references_stay_valid(rand_pipe):
    ptrs = {n: m.weight.data_ptr() for n, m in layers.projections(rand_pipe.unet).items()}
    rl.rece_erase(rand_pipe, "red", epochs=1)
    assert ptrs == {n: m.weight.data_ptr() for n, m in layers.projections(rand_pipe.unet).items()}


def test_tensors_only_never_call_the_text_encoder(rand_pipe, monkeypatch):
    ce, cg = rl.encode(rand_pipe, "red")[0], rl.encode(rand_pipe, "")[0]

    def boom(*a, **k):
        raise AssertionError("the text encoder was called")

    monkeypatch.setattr(rand_pipe.text_encoder, "forward", boom)
    snap = rl.snapshot(rand_pipe)
    rl.uce_erase(rand_pipe, erase=[ce], guide=cg)
    rl.derive_embedding(rand_pipe, ce, original=snap)
    snap.apply(rand_pipe)
    rl.rece_erase(rand_pipe, ce, guide=cg, preserve=[cg], epochs=2)


def test_a_snapshot_restores_the_weights_bit_exactly(rand_pipe):
    before = _weights(rand_pipe)
    snap = rl.snapshot(rand_pipe)
    rl.uce_erase(rand_pipe, "red")
    snap.apply(rand_pipe)
    assert _same(before, _weights(rand_pipe))


def test_last_subject_token_mode_uses_one_row_per_prompt(rand_pipe):
    before = _weights(rand_pipe)
    rl.uce_erase(rand_pipe, "a red circle", guide="a circle", tokens="last_subject")
    e = rl.encode(rand_pipe, ["a red circle", "a circle"]).double()
    ce, cg = e[0, 3:4], e[1, 2:3]  # "circle" is the last word of both prompts
    name, W = next(iter(before.items()))
    ref = cf.uce_weights(W.double(), ce, cg @ W.double().T, None)
    torch.testing.assert_close(_weights(rand_pipe)[name].double(), ref, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------ the edit's map
def test_a_uce_patch_records_its_map_relative_to_the_weights_before(rand_pipe):
    before = _weights(rand_pipe)
    patch = rl.uce_erase(rand_pipe, "red", preserve=["blue"])
    assert max(_rel(w, before[n].double() @ patch.map) for n, w in patch.weights.items()) < 1e-6


def test_a_rece_patch_records_the_product_of_its_edits(rand_pipe):
    res = rl.rece_erase(rand_pipe, "red", preserve=["blue"], epochs=2)
    product = res.maps[0].double() @ res.maps[1].double() @ res.maps[2].double()
    assert _rel(res.patch.map, product) < 1e-5


def test_the_map_of_a_second_edit_is_relative_to_the_first(rand_pipe):
    rl.uce_erase(rand_pipe, "red")
    between = _weights(rand_pipe)
    patch = rl.uce_erase(rand_pipe, "blue")
    assert max(_rel(w, between[n].double() @ patch.map) for n, w in patch.weights.items()) < 1e-6


def test_a_snapshot_has_no_map(rand_pipe):
    assert rl.snapshot(rand_pipe).map is None


# ----------------------------------------------------------------------------- RECE
def test_derived_embedding_regenerates_erased_keys_and_values(rand_pipe):
    snap = rl.snapshot(rand_pipe)
    rl.uce_erase(rand_pipe, "red", preserve=["blue"])
    c = rl.encode(rand_pipe, "red")[0]
    c_new = rl.derive_embedding(rand_pipe, "red", original=snap, reg_scale=0.1)

    def res(x):
        mods = layers.projections(rand_pipe.unet)
        return sum(((x @ m.weight.T - c @ snap.weights[n].T) ** 2).sum() for n, m in mods.items()).item()

    assert res(c_new) < 0.5 * res(c)


@pytest.fixture(scope="module")
def rece_and_loop():
    """RECE on one pipeline, and the same steps spelled out with uce_erase / derive_embedding on another."""
    fast, slow = build_pipeline(seed=1), build_pipeline(seed=1)
    kw = dict(lamb=0.1, erase_scale=1.0, preserve_scale=0.1)
    res = rl.rece_erase(fast, "red", guide="", preserve=["blue"], epochs=3, reg="zero", reg_scale=0.1, **kw)
    snap = rl.snapshot(slow)
    rl.uce_erase(slow, "red", "", ["blue"], **kw)
    derived = []
    for _ in range(3):
        derived.append(rl.derive_embedding(slow, "red", original=snap, reg="zero", reg_scale=0.1))
        rl.uce_erase(slow, [derived[-1]], guide=rl.encode(slow, "")[0], preserve=["blue"], **kw)
    return res, derived, _weights(slow)


@pytest.mark.parametrize("epoch", [0, 1, 2])
def test_rece_derives_what_derive_embedding_derives_after_the_same_edits(rece_and_loop, epoch):
    res, derived, _ = rece_and_loop
    torch.testing.assert_close(res.derived[epoch], derived[epoch], rtol=1e-4, atol=1e-4)


def test_rece_ends_where_the_loop_of_uce_edits_ends(rece_and_loop):
    res, _, loop_weights = rece_and_loop
    for name, w in loop_weights.items():
        torch.testing.assert_close(res.patch.weights[name], w, rtol=1e-4, atol=1e-5)


def test_rece_derives_one_embedding_per_epoch(rece_and_loop):
    res, _, _ = rece_and_loop
    assert [tuple(x.shape) for x in res.derived] == [(16, 64)] * 3


def test_rece_records_one_map_per_edit(rece_and_loop):
    res, _, _ = rece_and_loop
    assert len(res.maps) == 4


def test_rece_is_timed(rece_and_loop):
    res, _, _ = rece_and_loop
    assert res.seconds > 0


def test_rece_on_an_already_edited_model_stacks_several_concepts(rand_pipe):
    snap = rl.snapshot(rand_pipe)
    rl.uce_erase(rand_pipe, ["red", "blue"])
    res = rl.rece_erase(rand_pipe, ["red", "blue"], already_edited=True, original=snap, epochs=2)
    assert res.derived[0].shape == (2, 16, 64)


def test_rece_on_an_already_edited_model_skips_the_first_uce(rand_pipe):
    snap = rl.snapshot(rand_pipe)
    rl.uce_erase(rand_pipe, ["red", "blue"])
    res = rl.rece_erase(rand_pipe, ["red", "blue"], already_edited=True, original=snap, epochs=2)
    assert len(res.maps) == 2


def test_rece_against_a_snapshot_the_pipe_no_longer_holds_aims_at_the_snapshot():
    """The pipe was edited after the snapshot: RECE's derivations still aim at the snapshot's weights."""
    pipe, loop = build_pipeline(seed=2), build_pipeline(seed=2)
    snap = rl.snapshot(pipe)
    rl.uce_erase(pipe, "red")
    res = rl.rece_erase(pipe, "blue", original=snap, epochs=1)
    loop_snap = rl.snapshot(loop)
    rl.uce_erase(loop, "red")
    rl.uce_erase(loop, "blue")
    expected = rl.derive_embedding(loop, "blue", original=loop_snap)
    torch.testing.assert_close(res.derived[0], expected, rtol=1e-4, atol=1e-4)


def test_erase_is_the_name_of_what_rece_erases_too():
    a, b = build_pipeline(seed=3), build_pipeline(seed=3)
    by_position = rl.rece_erase(a, "red", epochs=1).patch
    by_name = rl.rece_erase(b, erase="red", epochs=1).patch
    assert by_name == by_position


def test_the_old_name_concepts_still_works_with_a_deprecation_warning():
    a, b = build_pipeline(seed=3), build_pipeline(seed=3)
    with pytest.warns(DeprecationWarning, match="erase="):
        old = rl.rece_erase(a, concepts="red", epochs=1).patch
    assert old == rl.rece_erase(b, erase="red", epochs=1).patch


# ------------------------------------------------------------------------ bad input
NAN, INF = float("nan"), float("inf")
BAD_INPUT = {
    "lamb = 0": (lambda p: rl.uce_erase(p, "red", lamb=0), ValueError, "lamb"),
    "lamb < 0": (lambda p: rl.uce_erase(p, "red", lamb=-1), ValueError, "lamb"),
    "lamb NaN": (lambda p: rl.uce_erase(p, "red", lamb=NAN), ValueError, "lamb must be finite"),
    "lamb inf": (lambda p: rl.rece_erase(p, "red", lamb=INF), ValueError, "lamb must be finite"),
    "lamb a string": (lambda p: rl.uce_erase(p, "red", lamb="0.1"), TypeError, "lamb must be a number"),
    "erase_scale < 0": (lambda p: rl.uce_erase(p, "red", erase_scale=-0.5), ValueError, "erase_scale must be >= 0"),
    "erase_scale inf": (lambda p: rl.uce_erase(p, "red", erase_scale=INF), ValueError, "erase_scale must be finite"),
    "preserve_scale < 0": (lambda p: rl.uce_erase(p, "red", preserve_scale=-0.5), ValueError, "preserve_scale"),
    "preserve_scale NaN": (lambda p: rl.rece_erase(p, "red", preserve_scale=NAN), ValueError, "preserve_scale"),
    "reg_scale NaN": (lambda p: rl.rece_erase(p, "red", reg_scale=NAN), ValueError, "reg_scale must be finite"),
    "reg_scale inf": (lambda p: rl.rece_erase(p, "red", reg_scale=INF, epochs=0), ValueError, "reg_scale"),
    "reg_scale a string": (lambda p: rl.rece_erase(p, "red", reg_scale="0.1"), TypeError, "reg_scale must be a number"),
    "reg unknown": (lambda p: rl.rece_erase(p, "red", reg="ridge"), ValueError, "reg must be"),
    "standard without old_target": (lambda p: rl.rece_erase(p, "red", reg="standard"), ValueError, "old_target"),
    "epochs < 0": (lambda p: rl.rece_erase(p, "red", epochs=-1), ValueError, "epochs"),
    "epochs 1.5": (lambda p: rl.rece_erase(p, "red", epochs=1.5), TypeError, "epochs must be a whole number"),
    "epochs '2'": (lambda p: rl.rece_erase(p, "red", epochs="2"), TypeError, "epochs must be a whole number"),
    "one guide too few": (lambda p: rl.uce_erase(p, ["red", "blue", "red"], guide=["", "a"]), ValueError, "one guide"),
    "wrong width": (lambda p: rl.uce_erase(p, torch.randn(16, 32)), ValueError, r"expects \(T, 64\)"),
    "wrong preserve width": (lambda p: rl.uce_erase(p, "red", preserve=[torch.randn(16, 65)]), ValueError, "expects"),
    "NaN embedding": (lambda p: rl.uce_erase(p, torch.full((16, 64), NAN)), ValueError, "NaN"),
    "complex embedding": (lambda p: rl.uce_erase(p, torch.randn(16, 64, dtype=torch.cfloat)), TypeError, "real"),
    "integer embedding": (lambda p: rl.uce_erase(p, torch.ones(16, 64, dtype=torch.long)), TypeError, "erase"),
    "nothing to erase": (lambda p: rl.uce_erase(p, []), ValueError, "nothing to erase"),
    "empty erase tensor": (lambda p: rl.uce_erase(p, torch.zeros(0, 64)), ValueError, "erase: the embedding is empty"),
    "empty guide tensor": (lambda p: rl.uce_erase(p, "red", torch.zeros(0, 64)), ValueError, "guide: the embedding"),
    "erase the empty prompt": (lambda p: rl.uce_erase(p, ""), ValueError, "erase: the empty prompt"),
    "rece the empty prompt": (lambda p: rl.rece_erase(p, " ", guide="red"), ValueError, "erase: the empty prompt"),
    "toward itself": (lambda p: rl.uce_erase(p, "red", guide="red"), ValueError, "its own guide"),
    "toward itself, as tensors": (
        lambda p: rl.uce_erase(p, rl.encode(p, "red")[0], guide=rl.encode(p, "red")[0]), ValueError, "its own guide"
    ),
    "preserve what is erased": (lambda p: rl.uce_erase(p, "red", preserve=["blue", "red"]), ValueError, "preserve:"),
    "preserve it as a tensor": (
        lambda p: rl.rece_erase(p, "red", preserve=[rl.encode(p, "red")[0]]), ValueError, "is also erased"
    ),
    "unknown word": (lambda p: rl.uce_erase(p, "zebra"), ValueError, "erase prompt 'zebra' has words"),
    "unknown word in guide": (lambda p: rl.uce_erase(p, "red", guide="zebra"), ValueError, "guide prompt"),
    "unknown word in preserve": (lambda p: rl.rece_erase(p, "red", preserve=["zebra"]), ValueError, "preserve prompt"),
    "prompt too long": (lambda p: rl.uce_erase(p, "red " * 20), ValueError, "tokens long"),
    "tokens unknown": (lambda p: rl.uce_erase(p, "red", tokens="first"), ValueError, "tokens must be"),
    "last_subject of a tensor": (
        lambda p: rl.uce_erase(p, torch.randn(16, 64), tokens="last_subject"), ValueError, "last_subject"
    ),
    "not a prompt": (lambda p: rl.uce_erase(p, 3.0), TypeError, "prompts"),
    "already edited, no original": (
        lambda p: rl.rece_erase(p, "red", already_edited=True), ValueError, "already_edited=True needs original="
    ),
    "derive without original": (lambda p: rl.derive_embedding(p, "red", original=None), ValueError, "original="),
    "original not a patch": (lambda p: rl.rece_erase(p, "red", original={"a": 1}), TypeError, "original= must be"),
    "erase and concepts": (lambda p: rl.rece_erase(p, "red", concepts="blue"), TypeError, "erase= only"),
    "snapshot of a non-pipeline": (lambda p: rl.snapshot("pipe"), TypeError, "snapshot needs a Stable Diffusion"),
    "apply to a non-pipeline": (lambda p: rl.snapshot(p).apply(42), TypeError, "Patch.apply needs a Stable"),
}


@pytest.fixture(scope="module")
def shared_pipe():
    """One pipeline for the bad-input cases: each leaves it untouched, or fails."""
    return build_pipeline(seed=0)


@pytest.mark.parametrize("case", BAD_INPUT)
def test_bad_input_is_refused_with_a_reason_and_leaves_the_model_untouched(shared_pipe, case):
    call, error, match = BAD_INPUT[case]
    before = _weights(shared_pipe)
    with pytest.raises(error, match=match):
        call(shared_pipe)
    assert _same(before, _weights(shared_pipe))


def test_a_patch_for_another_model_is_refused(rand_pipe):
    patch = rl.uce_erase(build_pipeline(seed=7), "red")
    with pytest.raises(ValueError, match="made for model"):
        patch.apply(rand_pipe)


def test_overflow_in_half_precision_changes_nothing(rand_pipe):
    rand_pipe.unet.half()
    with torch.no_grad():
        next(iter(layers.projections(rand_pipe.unet).values())).weight.mul_(3e4)
    before = _weights(rand_pipe)
    with pytest.raises(cf.SolveError, match="overflow"):
        rl.uce_erase(rand_pipe, [torch.randn(16, 64) * 1e-3], guide=torch.randn(16, 64) * 1e3, lamb=1e-3)
    assert _same(before, _weights(rand_pipe))


def test_sdxl_style_pipelines_without_sdxl_parts_get_a_clear_error(rand_pipe):
    p = rand_pipe
    two_encoders = SimpleNamespace(
        unet=p.unet, text_encoder=p.text_encoder, tokenizer=p.tokenizer, text_encoder_2=p.text_encoder
    )
    with pytest.raises(NotImplementedError, match="two text encoders"):
        rl.uce_erase(two_encoders, "red")


def test_a_unet_without_cross_attention_gets_a_clear_error(rand_pipe):
    from diffusers import UNet2DConditionModel

    plain = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), mid_block_type=None, layers_per_block=1, norm_num_groups=8,
        cross_attention_dim=64,
    )  # fmt: skip
    no_xattn = SimpleNamespace(unet=plain, text_encoder=rand_pipe.text_encoder, tokenizer=rand_pipe.tokenizer)
    with pytest.raises(ValueError, match="no cross-attention"):
        rl.uce_erase(no_xattn, "red")


def test_unknown_model_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="'tiny' for the embedded model"):
        rl.load_pipeline("nobody/no-such-model")


# ----------------------------------------------------------------------- hold_erased
def test_hold_erased_is_the_loop_whose_epochs_also_preserve_the_erased_rows():
    fast, slow = build_pipeline(seed=1), build_pipeline(seed=1)
    kw = dict(lamb=0.1, erase_scale=1.0, preserve_scale=0.1)
    res = rl.rece_erase(fast, "red", guide="", preserve=["blue"], epochs=2, reg_scale=0.1, hold_erased=True, **kw)
    assert res.patch.metadata.get("hold_erased") == "True"
    snap = rl.snapshot(slow)
    rl.uce_erase(slow, "red", "", ["blue"], **kw)
    red, empty = rl.encode(slow, "red")[0], rl.encode(slow, "")[0]
    for _ in range(2):
        derived = rl.derive_embedding(slow, "red", original=snap, reg="zero", reg_scale=0.1)
        rl.uce_erase(slow, [derived], guide=empty, preserve=["blue", red], **kw)
    for name, w in _weights(slow).items():
        torch.testing.assert_close(res.patch.weights[name], w, rtol=1e-4, atol=1e-5)


def test_hold_erased_keeps_the_erased_rows_nearer_where_uce_put_them():
    moved = {}
    for hold in (False, True):
        pipe = build_pipeline(seed=2)
        before = _weights(pipe)
        red = rl.encode(pipe, "red")[0].double()
        res = rl.rece_erase(pipe, ["red", "something red"], guide=["grey", "something grey"], preserve=["blue"],
                            epochs=2, reg_scale=0.01, hold_erased=hold)  # fmt: skip
        uce = {n: w.double() @ res.maps[0].double() for n, w in before.items()}
        moved[hold] = sum(((res.patch.weights[n].double() - uce[n]) @ red.T).norm() ** 2 for n in uce) ** 0.5
    assert moved[True] < 0.5 * moved[False], moved
