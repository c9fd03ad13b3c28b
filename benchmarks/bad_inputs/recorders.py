"""Catalogue ``recorders`` (issue 22): attention recorders misused.

Exited out of order, re-entered, reused, nested with an error: processors and hooks must go.
"""

from __future__ import annotations

from .harness import add


def register_recorders() -> None:
    import contextlib as cl

    import rece_lite as rl

    cat = "recorders"

    def out_of_order(ctx):
        a, b = rl.record_attention(ctx.pipe), rl.record_attention(ctx.pipe)
        a.__enter__()
        b.__enter__()
        ctx.pipe("a red circle", num_inference_steps=2)
        a.__exit__(None, None, None)
        b.__exit__(None, None, None)

    add(cat, "two recorders exited out of order (processors and hooks must go)", out_of_order, expect="ok")

    def exit_stacks(ctx):
        stacks = [cl.ExitStack() for _ in range(3)]
        for s in stacks:
            s.enter_context(rl.record_attention(ctx.pipe))
        for i in (1, 0, 2):
            stacks[i].close()

    add(cat, "three recorders in ExitStacks closed 1, 0, 2", exit_stacks, expect="ok")

    def reenter(ctx):
        r = rl.record_attention(ctx.pipe)
        with r, r:
            pass

    add(cat, "one recorder re-entered (with r: with r:)", reenter, ("recorder", "record_attention"))

    def reuse(ctx):
        r = rl.record_attention(ctx.pipe)
        with r:
            ctx.pipe("a red circle", num_inference_steps=2)
        with r:
            pass

    add(cat, "one recorder used for a second block", reuse, ("recorder", "record_attention"))

    def other_prompt(ctx):
        with rl.record_attention(ctx.pipe) as store:
            ctx.pipe("a red circle", num_inference_steps=2)
        store.word_map("blue", prompt="a blue square")

    add(cat, "store.word_map with a prompt that was not recorded", other_prompt, "prompt")

    def inner_fails(ctx):
        with rl.record_attention(ctx.pipe):
            with rl.record_attention(ctx.pipe):
                ctx.pipe("a red circle", num_inference_steps=2)
                raise ValueError("boom in the inner block")

    add(cat, "an error inside nested recorders (all processors back)", inner_fails, "boom")

    def generator_left_open(ctx):
        r = rl.record_attention(ctx.pipe)
        r.__enter__()
        ctx.pipe("a red circle", num_inference_steps=1)
        r.__exit__(ValueError, ValueError("x"), None)

    add(cat, "a recorder exited with an exception passed by hand", generator_left_open, expect="ok")
