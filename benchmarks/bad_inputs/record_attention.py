"""Catalogue ``record_attention``: bad arguments to the attention recorder.

And an error inside its block, or two nested (the processors must come back).
"""

from __future__ import annotations

from .harness import Weak, add


def register_record() -> None:
    import torch

    import rece_lite as rl

    cat = "record_attention"

    own = object()

    def rec(pipe=own, steps_run=2, **kw):
        def fn(ctx):
            target = ctx.pipe if pipe is own else pipe
            with rl.record_attention(target, **kw):
                ctx.pipe("a red circle", num_inference_steps=steps_run)

        return fn

    for arg, values in {
        "layers": [[], 99, "nope", 1.5, [0, "nope"]],
        "steps": [5, [], [10], "0", [0.5], True],
        "heads": ["max", None, 2],
        "max_resolution": [0, -4, 1.5, "32", True],
        "images": [0, -1, 2.5, None],
        "dtype": [torch.int8, "float16", torch.bool],
        "device": ["tpu", 3],
    }.items():
        for v in values:
            add(cat, f"record_attention {arg}={v!r}", rec(**{arg: v}), arg)
    add(cat, "record_attention(None)", rec(pipe=None), ("pipe", "pipeline"))
    add(cat, "record_attention(object())", rec(pipe=object()), ("pipe", "pipeline"))

    def fault(ctx):
        with rl.record_attention(ctx.pipe):
            ctx.pipe("a red circle", num_inference_steps=2)
            raise ValueError("boom inside the block")

    add(cat, "record_attention: an error inside the block (processors must come back)", fault, "boom")

    def nested(ctx):
        with rl.record_attention(ctx.pipe) as a, rl.record_attention(ctx.pipe) as b:
            ctx.pipe("a red circle", num_inference_steps=2)
        if not a.num_steps or not b.num_steps:
            raise Weak(f"nested recorders: outer recorded {a.num_steps} steps, inner {b.num_steps}")

    add(cat, "record_attention nested twice (valid; processors must come back)", nested, expect="ok")
