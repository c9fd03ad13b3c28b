"""UCE and RECE on a pipeline (the miniature architecture, random weights)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import random_tiny_pipeline

import rece_lite as rl
from rece_lite import closed_form as cf
from rece_lite import layers


def _weights(pipe) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in layers.projections(pipe.unet).items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_uce_edit_equals_per_matrix_closed_form(rand_pipe):
    before = _weights(rand_pipe)
    ce = rl.encode(rand_pipe, "red")[0].double()
    cg = rl.encode(rand_pipe, "")[0].double()
    cp = rl.encode(rand_pipe, ["blue", "a green square"]).reshape(-1, 64).double()
    ptrs = {n: m.weight.data_ptr() for n, m in layers.projections(rand_pipe.unet).items()}
    rl.uce_erase(rand_pipe, erase=["red"], guide="", preserve=["blue", "a green square"], lamb=0.1, preserve_scale=0.1)
    after = _weights(rand_pipe)
    assert len(after) == 14
    for name, W in before.items():
        W64 = W.double()
        ref = cf.uce_weights(W64, ce, cg @ W64.T, cp, lamb=0.1, erase_scale=1.0, preserve_scale=0.1)
        torch.testing.assert_close(after[name].double(), ref, rtol=1e-4, atol=1e-5)
    # edited in place: the same parameter storage, so outside references stay valid
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


def test_snapshot_restores_bit_exactly_and_patch_round_trips(rand_pipe, tmp_path):
    before = _weights(rand_pipe)
    snap = rl.snapshot(rand_pipe)
    patch = rl.uce_erase(rand_pipe, "red")
    edited = _weights(rand_pipe)
    assert not _same(before, edited)
    snap.apply(rand_pipe)
    assert _same(before, _weights(rand_pipe))
    patch.save(tmp_path / "red.safetensors")
    loaded = rl.Patch.load(tmp_path / "red.safetensors")
    assert loaded.fingerprint == patch.fingerprint and loaded.metadata["method"] == "uce"
    loaded.apply(rand_pipe)
    assert _same(edited, _weights(rand_pipe))
    assert not list(tmp_path.glob("*.tmp"))


def test_derived_embedding_regenerates_erased_keys_and_values(rand_pipe):
    snap = rl.snapshot(rand_pipe)
    rl.uce_erase(rand_pipe, "red", preserve=["blue"])
    c = rl.encode(rand_pipe, "red")[0]
    c_new = rl.derive_embedding(rand_pipe, "red", original=snap, reg_scale=0.1)

    def res(x):
        mods = layers.projections(rand_pipe.unet)
        return sum(((x @ m.weight.T - c @ snap.weights[n].T) ** 2).sum() for n, m in mods.items()).item()

    assert res(c_new) < 0.5 * res(c)


def test_rece_equals_a_plain_loop_of_uce_and_derivation():
    fast, slow = random_tiny_pipeline(1), random_tiny_pipeline(1)
    kw = dict(lamb=0.1, erase_scale=1.0, preserve_scale=0.1)
    res = rl.rece_erase(fast, "red", guide="", preserve=["blue"], epochs=3, reg="zero", reg_scale=0.1, **kw)
    snap = rl.snapshot(slow)
    rl.uce_erase(slow, "red", "", ["blue"], **kw)
    for epoch in range(3):
        c_new = rl.derive_embedding(slow, "red", original=snap, reg="zero", reg_scale=0.1)
        torch.testing.assert_close(c_new, res.derived[epoch], rtol=1e-4, atol=1e-4)
        rl.uce_erase(slow, [c_new], guide=rl.encode(slow, "")[0], preserve=["blue"], **kw)
    for name, w in _weights(slow).items():
        torch.testing.assert_close(res.patch.weights[name], w, rtol=1e-4, atol=1e-5)
    assert len(res.derived) == 3 and res.derived[0].shape == (16, 64) and res.seconds > 0
    assert len(res.maps) == 4


def test_rece_on_an_already_edited_model_and_several_concepts(rand_pipe):
    snap = rl.snapshot(rand_pipe)
    rl.uce_erase(rand_pipe, ["red", "blue"])
    with pytest.raises(ValueError, match="original="):
        rl.rece_erase(rand_pipe, ["red", "blue"], already_edited=True)
    res = rl.rece_erase(rand_pipe, ["red", "blue"], already_edited=True, original=snap, epochs=2)
    assert res.derived[0].shape == (2, 16, 64)
    assert len(res.maps) == 2


def test_last_subject_token_mode_uses_one_row_per_prompt(rand_pipe):
    before = _weights(rand_pipe)
    rl.uce_erase(rand_pipe, "a red circle", guide="a circle", tokens="last_subject")
    e = rl.encode(rand_pipe, ["a red circle", "a circle"]).double()
    ce, cg = e[0, 3:4], e[1, 2:3]  # "circle" is the last word of both prompts
    name, W = next(iter(before.items()))
    ref = cf.uce_weights(W.double(), ce, cg @ W.double().T, None)
    torch.testing.assert_close(_weights(rand_pipe)[name].double(), ref, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="last_subject"):
        rl.uce_erase(rand_pipe, e[0], tokens="last_subject")


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda p: rl.uce_erase(p, "red", lamb=0), "lamb"),
        (lambda p: rl.uce_erase(p, "red", lamb=-1), "lamb"),
        (lambda p: rl.uce_erase(p, "red", erase_scale=-0.5), ">= 0"),
        (lambda p: rl.uce_erase(p, "red", preserve_scale=-0.5), ">= 0"),
        (lambda p: rl.uce_erase(p, ["red", "blue", "green"], guide=["", "a"]), "one guide"),
        (lambda p: rl.uce_erase(p, torch.randn(16, 32)), r"expects \(T, 64\)"),
        (lambda p: rl.uce_erase(p, "red", preserve=[torch.randn(16, 65)]), r"expects \(T, 64\)"),
        (lambda p: rl.uce_erase(p, torch.full((16, 64), float("nan"))), "NaN"),
        (lambda p: rl.uce_erase(p, []), "nothing to erase"),
        (lambda p: rl.uce_erase(p, "red", tokens="first"), "tokens must be"),
        (lambda p: rl.rece_erase(p, "red", reg="ridge"), "reg must be"),
        (lambda p: rl.rece_erase(p, "red", reg="standard"), "old_target"),
        (lambda p: rl.rece_erase(p, "red", epochs=-1), "epochs"),
        (lambda p: rl.uce_erase(p, 3.0), "prompts"),
    ],
)
def test_bad_input_is_refused_and_leaves_the_model_untouched(rand_pipe, call, match):
    before = _weights(rand_pipe)
    with pytest.raises((ValueError, TypeError), match=match):
        call(rand_pipe)
    assert _same(before, _weights(rand_pipe))


def test_a_patch_for_another_model_is_refused(rand_pipe):
    other = random_tiny_pipeline(seed=7)
    patch = rl.uce_erase(other, "red")
    before = _weights(rand_pipe)
    with pytest.raises(ValueError, match="made for model"):
        patch.apply(rand_pipe)
    assert _same(before, _weights(rand_pipe))


def test_overflow_in_half_precision_changes_nothing(rand_pipe):
    rand_pipe.unet.half()
    with torch.no_grad():
        next(iter(layers.projections(rand_pipe.unet).values())).weight.mul_(3e4)
    before = _weights(rand_pipe)
    with pytest.raises(cf.SolveError, match="overflow"):
        rl.uce_erase(rand_pipe, [torch.randn(16, 64) * 1e-3], guide=torch.randn(16, 64) * 1e3, lamb=1e-3)
    assert _same(before, _weights(rand_pipe))


def test_unsupported_models_get_a_clear_error():
    from diffusers import UNet2DConditionModel

    pipe = random_tiny_pipeline()
    sdxl = SimpleNamespace(
        unet=pipe.unet, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer, text_encoder_2=pipe.text_encoder
    )
    with pytest.raises(NotImplementedError, match="two text encoders"):
        rl.uce_erase(sdxl, "red")
    plain = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), down_block_types=("DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D"), mid_block_type=None, layers_per_block=1, norm_num_groups=8,
        cross_attention_dim=64,
    )  # fmt: skip
    no_xattn = SimpleNamespace(unet=plain, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer)
    with pytest.raises(ValueError, match="no cross-attention"):
        rl.uce_erase(no_xattn, "red")


def test_unknown_model_offline_says_what_to_do(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match="'tiny' for the embedded model"):
        rl.load_pipeline("nobody/no-such-model")
