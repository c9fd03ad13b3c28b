"""Recorders misused (issue 22): out-of-order exits, re-entry, a word_map prompt that was not recorded."""

from __future__ import annotations

import contextlib

import pytest
import torch

import rece_lite as rl


@pytest.fixture(scope="module")
def pipe():
    return rl.load_pipeline("tiny", device="cpu")


def _state(pipe):
    return dict(pipe.unet.attn_processors), len(pipe.unet._forward_pre_hooks)


def test_two_recorders_exited_out_of_order_leave_nothing_behind(pipe):
    before = _state(pipe)
    a, b = rl.record_attention(pipe), rl.record_attention(pipe)
    sa, sb = a.__enter__(), b.__enter__()
    pipe("a red circle", num_inference_steps=2)
    a.__exit__(None, None, None)  # the outer one first
    pipe("a red circle", num_inference_steps=2)  # b still records, a no longer does
    b.__exit__(None, None, None)
    assert _state(pipe) == before
    assert sa.num_steps == 2 and sb.num_steps == 2 and sb.counts[sb.layers[0]][0] == 2


def test_an_exit_stack_unwinding_in_the_wrong_order_leaves_nothing_behind(pipe):
    before = _state(pipe)
    recorders = [rl.record_attention(pipe) for _ in range(3)]
    stacks = [contextlib.ExitStack() for _ in recorders]
    for s, r in zip(stacks, recorders):
        s.enter_context(r)
    for s in (stacks[1], stacks[0], stacks[2]):
        s.close()
    assert _state(pipe) == before


def test_reentering_one_recorder_is_a_clear_error_and_leaves_nothing(pipe):
    before = _state(pipe)
    r = rl.record_attention(pipe)
    with r:
        with pytest.raises(RuntimeError, match="recorder is in use.*record_attention"), r:
            pass
    assert _state(pipe) == before
    with pytest.raises(RuntimeError, match="used up"), r:
        pass
    assert _state(pipe) == before


def test_word_map_of_a_prompt_that_was_not_recorded_is_refused(pipe):
    with rl.record_attention(pipe) as store:
        pipe("a red circle", num_inference_steps=2)
    assert store.word_map("red", "a red circle").shape == (32, 32)
    with pytest.raises(ValueError, match="'a blue square' is not the prompt this store recorded"):
        store.word_map("blue", prompt="a blue square")


def test_word_map_checks_each_image_of_a_batch_against_its_own_prompt(pipe):
    prompts = ["a red circle", "a blue square"]
    with rl.record_attention(pipe, images=2) as store:
        pipe(prompts, num_inference_steps=2)
    assert torch.isfinite(store.word_map("blue", prompts[1], image=1)).all()
    with pytest.raises(ValueError, match="image 0"):
        store.word_map("blue", prompts[1], image=0)


def test_generate_with_attention_still_reads_its_own_prompt(pipe):
    rec = rl.generate_with_attention(pipe, "a red circle", num_inference_steps=2)
    assert rec.word_map("circle").shape == (32, 32)
