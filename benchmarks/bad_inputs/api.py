"""Catalogue ``API``: bad arguments to the library's calls.

``uce_erase``, ``rece_erase``, ``derive_embedding``, ``sample``, ``encode``, ``snapshot`` and ``Patch``.
"""

from __future__ import annotations

import math

from .harness import TINY_KEYS, Broken, T, Weak, add, edit_call, long_prompt, model_state, other_pipe, resolved


def register_api() -> None:
    import torch

    import rece_lite as rl

    def uce(**kw):
        return edit_call(rl.uce_erase, **kw)

    cat = "API"
    bad_items = {
        "empty prompt": ("", "erase"),
        "blank prompt": ("   ", "erase"),
        "empty list": ([], "erase"),
        "None": (None, "erase"),
        "an int": (42, "erase"),
        "a list with an int": (["red", 3], "erase"),
        "a set": ({"red"}, "erase"),
        "bytes": (b"red", "erase"),
        "an unknown word": ("zorblax", "zorblax"),
        "a prompt longer than the tokenizer": (long_prompt(), "erase"),
        "an empty tensor": (lambda c: T(0, c.d), "erase"),
        "a tensor of the wrong width": (lambda c: T(4, c.d + 1), "erase"),
        "a complex tensor": (lambda c: T(4, c.d, dtype=torch.complex64), "erase"),
        "an integer tensor": (lambda c: torch.ones(4, c.d, dtype=torch.int64), "erase"),
        "a NaN tensor": (lambda c: T(4, c.d, fill=math.nan), "erase"),
        "an inf tensor": (lambda c: T(4, c.d, fill=math.inf), "erase"),
        "a 0-d tensor": (lambda c: torch.tensor(1.0), "erase"),
        "a bool tensor": (lambda c: torch.ones(4, c.d, dtype=torch.bool), "erase"),
        "a list of an empty tensor": (lambda c: [T(0, c.d)], "erase"),
    }
    for label, (value, names) in bad_items.items():
        add(cat, f"uce_erase erase={label}", uce(erase=value), names)
    bad_guides = {
        "the erased concept itself": ("red", "guide"),
        "an empty list": ([], "guide"),
        "None": (None, "guide"),
        "two guides for one concept": (["", "blue"], "guide"),
        "an int": (42, "guide"),
        "an unknown word": ("zorblax", "zorblax"),
        "a NaN tensor": (lambda c: T(16, c.d, fill=math.nan), "guide"),
        "a tensor of the wrong width": (lambda c: T(16, c.d + 2), "guide"),
        "a tensor with another token count": (lambda c: T(3, c.d), "guide"),
        "a longer-than-tokenizer prompt": (long_prompt(), "guide"),
    }
    for label, (value, names) in bad_guides.items():
        add(cat, f"uce_erase guide={label}", uce(guide=value), names)
    bad_preserve = {
        "the erased concept": (["red"], "preserve"),
        "an unknown word": (["zorblax"], "zorblax"),
        "[None]": ([None], "preserve"),
        "[3]": ([3], "preserve"),
        "a tensor of the wrong width": (lambda c: [T(4, c.d - 1)], "preserve"),
        "a NaN tensor": (lambda c: [T(4, c.d, fill=math.nan)], "preserve"),
    }
    for label, (value, names) in bad_preserve.items():
        add(cat, f"uce_erase preserve={label}", uce(preserve=value), names)
    for arg, values in {
        "lamb": [0, -1, math.nan, math.inf, "0.1", None, [0.1]],
        "erase_scale": [-1, math.nan, math.inf, "1"],
        "preserve_scale": [-1, math.nan, math.inf, "x"],
        "tokens": ["first", None, 3],
    }.items():
        for v in values:
            add(cat, f"uce_erase {arg}={v!r}", uce(**{arg: v}), arg)
    add(cat, "uce_erase tokens='last_subject' with a tensor", uce(erase=lambda c: T(16, c.d), tokens="last_subject"),
        ("tokens", "erase"))  # fmt: skip
    add(cat, "uce_erase pipe=None", uce(pipe=None), ("pipe", "pipeline"))
    add(cat, "uce_erase pipe=object()", uce(pipe=object()), ("pipe", "pipeline"))
    add(cat, "uce_erase pipe=a string", uce(pipe="tiny"), ("pipe", "pipeline"))
    add(cat, "uce_erase pipe=the UNet alone", uce(pipe=lambda c: c.pipe.unet), ("pipe", "pipeline"))
    def extreme(dtype=None, **kw):
        """Legal but extreme settings: a clear refusal, or finite weights afterwards."""

        def fn(ctx):
            from rece_lite import layers

            if dtype is not None:
                ctx.pipe.to(dtype)
            before = model_state([ctx.pipe.unet])
            try:
                rl.uce_erase(ctx.pipe, "red", **kw)
            except Exception as e:
                if not any(k in str(e) for k in (*kw, "overflow")):
                    raise Weak(f"refused without naming {', '.join(kw)}: {type(e).__name__}: {e}") from None
                if model_state([ctx.pipe.unet]) != before:
                    raise Broken("refused, but the model changed") from None
                return
            bad = [n for n, m in layers.projections(ctx.pipe.unet).items() if not m.weight.isfinite().all()]
            if bad:
                raise Broken(f"accepted, and wrote NaN/inf into {len(bad)} matrices (first: {bad[0]})")

        return fn

    add(cat, "uce_erase erase_scale=1e30 (refuse, or finite weights)", extreme(erase_scale=1e30), expect="ok",
        mutates=True)  # fmt: skip
    add(cat, "uce_erase lamb=1e-300 (refuse, or finite weights)", extreme(lamb=1e-300), expect="ok", mutates=True)
    add(cat, "uce_erase on float16, erase_scale=1e6, lamb=1e-6 (refuse, or finite weights)",
        extreme(torch.float16, erase_scale=1e6, lamb=1e-6), expect="ok", mutates=True)  # fmt: skip

    # ---------------------------------------------------------------- derive_embedding
    def derive(**kw):
        def fn(ctx):
            snap = rl.snapshot(ctx.pipe)
            rl.uce_erase(ctx.pipe, "red")
            ctx.arm()
            args = resolved({"concept": "red", "original": snap, **kw}, ctx)
            pipe = args.pop("pipe", ctx.pipe)
            rl.derive_embedding(pipe, args.pop("concept"), **args)

        return fn

    for label, value in {"None": None, "a string": "snap", "a dict of weights": lambda c: dict(c.pristine["unet"]),
                         "another model's snapshot": lambda c: rl.snapshot(other_pipe(1))}.items():  # fmt: skip
        add(cat, f"derive_embedding original={label}", derive(original=value), "original")
    for label, value in {"an unknown word": "zorblax", "None": None, "an int": 7, "a long prompt": long_prompt(),
                         "a tensor of the wrong width": lambda c: T(16, c.d + 1),
                         "a complex tensor": lambda c: T(16, c.d, dtype=torch.complex64),
                         "a NaN tensor": lambda c: T(16, c.d, fill=math.nan), "a list": ["red", "blue"],
                         "an empty tensor": lambda c: T(0, c.d)}.items():  # fmt: skip
        add(cat, f"derive_embedding concept={label}", derive(concept=value), ("concept", "zorblax"))
    for arg, values in {"reg": ["l2", None, 3], "reg_scale": [-1, math.nan, math.inf, "0.1", None],
                        "tokens": ["bad"]}.items():  # fmt: skip
        for v in values:
            add(cat, f"derive_embedding {arg}={v!r}", derive(**{arg: v}), arg)
    add(cat, "derive_embedding reg='standard' without old_target", derive(reg="standard"), "old_target")
    add(cat, "derive_embedding old_target=an unknown word", derive(reg="standard", old_target="zorblax"),
        ("old_target", "zorblax"))  # fmt: skip
    add(cat, "derive_embedding pipe=None", derive(pipe=None), ("pipe", "pipeline"))

    def derive_bf16(ctx):
        snap = rl.snapshot(ctx.pipe)
        rl.uce_erase(ctx.pipe, "red")
        ctx.pipe.to(torch.bfloat16)
        rl.derive_embedding(ctx.pipe, "red", original=snap)

    add(cat, "derive_embedding on bfloat16 with a float32 snapshot (valid)", derive_bf16, expect="ok", mutates=True)

    # ---------------------------------------------------------------- rece_erase
    def rece(**kw):
        return edit_call(rl.rece_erase, **kw)

    for v in [-1, 1.5, "2", None, True, math.inf]:
        add(cat, f"rece_erase epochs={v!r}", rece(epochs=v), "epochs")
    add(cat, "rece_erase already_edited=True without original", rece(already_edited=True), "original")
    add(cat, "rece_erase original=another model's snapshot", rece(original=lambda c: rl.snapshot(other_pipe(1))),
        "original")  # fmt: skip
    add(cat, "rece_erase original='snap'", rece(original="snap"), "original")
    add(cat, "rece_erase erase=''", rece(erase=""), "erase")
    add(cat, "rece_erase erase=None", rece(erase=None), "erase")
    add(cat, "rece_erase erase= and concepts= both", rece(concepts="blue"), ("erase", "concepts"))
    add(cat, "rece_erase erase=an unknown word", rece(erase="zorblax"), "zorblax")
    add(cat, "rece_erase preserve=the erased concept", rece(preserve=["red"]), "preserve")
    add(cat, "rece_erase reg='l1'", rece(reg="l1"), "reg")
    add(cat, "rece_erase reg_scale=nan", rece(reg_scale=math.nan), "reg_scale")
    add(cat, "rece_erase lamb=0", rece(lamb=0), "lamb")
    add(cat, "rece_erase tokens='every'", rece(tokens="every"), "tokens")
    add(cat, "rece_erase reg='standard' without old_target", rece(reg="standard"), "old_target")
    add(cat, "rece_erase pipe=None", rece(pipe=None), ("pipe", "pipeline"))

    def rece_stale_original(ctx):
        snap = rl.snapshot(ctx.pipe)
        rl.uce_erase(ctx.pipe, "red")
        r = rl.rece_erase(ctx.pipe, "blue", original=snap, epochs=1)
        snap.apply(ctx.pipe)
        rl.uce_erase(ctx.pipe, "red")
        rl.uce_erase(ctx.pipe, "blue")
        want = rl.derive_embedding(ctx.pipe, "blue", original=snap)
        gap = float((r.derived[0].double() - want.double()).abs().max())
        scale = float(want.abs().max())
        if not gap <= 1e-3 * (1 + scale):
            raise Broken(
                f"derived[0] differs from derive_embedding after the same UCE steps by {gap:.3g} "
                f"(max entry {scale:.3g}): original= is not what the pipe holds, and nothing said so"
            )

    add(cat, "rece_erase after another edit, original= the earlier snapshot (derived must match)",
        rece_stale_original, expect="ok", mutates=True)  # fmt: skip

    # ---------------------------------------------------------------- snapshot / Patch / apply
    for label, value in {"None": None, "object()": object(), "a string": "tiny", "a dict": {}}.items():
        add(cat, f"snapshot({label})", lambda ctx, v=value: rl.snapshot(v), ("pipe", "pipeline", "snapshot"))

    def apply_to(target):
        def fn(ctx):
            snap = rl.snapshot(ctx.pipe)
            snap.apply(target(ctx) if callable(target) else target)

        return fn

    for label, value in {"None": None, "object()": object(), "a string": "tiny",
                         "the text encoder": lambda c: c.pipe.text_encoder}.items():  # fmt: skip
        add(cat, f"Patch.apply({label})", apply_to(value), ("pipe", "pipeline"))

    def apply_other(seed):
        def fn(ctx):
            snap = rl.snapshot(ctx.pipe)
            other = other_pipe(seed)
            ctx.watch(other.unet)
            ctx.arm()
            snap.apply(other)

        return fn

    add(cat, "snapshot of tiny applied to another model", apply_other(1), "model")
    add(cat, "snapshot of tiny applied to build_pipeline(seed=0)", apply_other(0), "model")

    def patched(change, names, label, dtype=None):
        def fn(ctx):
            snap = rl.snapshot(ctx.pipe)
            keys = list(snap.weights)
            w = change(dict(snap.weights), keys, ctx)
            if dtype is not None:
                ctx.pipe.to(dtype)
                ctx.arm()
            rl.Patch(w, snap.fingerprint, dict(snap.metadata)).apply(ctx.pipe)

        add(cat, f"Patch {label}", fn, names)

    def drop(w, keys, ctx):
        del w[keys[3]]
        return w

    def extra(w, keys, ctx):
        w["down_blocks.9.attn2.to_k"] = w[keys[0]].clone()
        return w

    def reshape(w, keys, ctx):
        w[keys[2]] = w[keys[2]][:, :-1].clone()
        return w

    def setval(value, at=5):
        def ch(w, keys, ctx):
            w[keys[at]] = w[keys[at]].clone()
            w[keys[at]][0, 0] = value
            return w

        return ch

    patched(drop, (TINY_KEYS[3],), "missing one matrix, applied")
    patched(extra, ("down_blocks.9",), "with an extra matrix, applied")
    patched(reshape, ("shape",), "with one matrix of the wrong shape, applied")
    patched(setval(math.nan), ("nan",), "with one NaN, applied")
    patched(setval(math.inf), ("inf",), "with one inf, applied")
    patched(lambda w, k, c: {n: v * 1e6 for n, v in w.items()}, ("overflow", "float16"),
            "x1e6 applied to a float16 model", dtype=torch.float16)  # fmt: skip
    patched(lambda w, k, c: {n: v * 1e40 for n, v in w.items()}, ("overflow", "inf", "float32"),
            "x1e40 in float32 (inf everywhere), applied")  # fmt: skip
    patched(lambda w, k, c: {n: v.double() * 1e40 for n, v in w.items()}, ("overflow", "inf", "float32"),
            "float64 x1e40 applied to a float32 model")  # fmt: skip
    patched(lambda w, k, c: {n: v.to("meta") for n, v in w.items()}, ("patch",), "on the meta device, applied")

    def construct(kwargs_of, names, label):
        def fn(ctx):
            snap = rl.snapshot(ctx.pipe)
            rl.Patch(**kwargs_of(snap))

        add(cat, f"Patch({label})", fn, names)

    construct(lambda s: dict(weights={}, fingerprint=s.fingerprint), "weights", "weights={}")
    construct(lambda s: dict(weights=list(s.weights.values()), fingerprint=s.fingerprint), "weights", "weights=a list")
    construct(lambda s: dict(weights={k: v.int() for k, v in s.weights.items()}, fingerprint=s.fingerprint),
              "weight", "integer weights")  # fmt: skip
    construct(lambda s: dict(weights={k: v[None] for k, v in s.weights.items()}, fingerprint=s.fingerprint),
              "weight", "3-d weights")  # fmt: skip
    construct(lambda s: dict(weights={k: v.to(torch.complex64) for k, v in s.weights.items()},
                             fingerprint=s.fingerprint), "weight", "complex weights")  # fmt: skip
    construct(lambda s: dict(weights={1: next(iter(s.weights.values()))}, fingerprint=s.fingerprint), "weights",
              "an int key")  # fmt: skip
    construct(lambda s: dict(weights=s.weights, fingerprint=None), "fingerprint", "fingerprint=None")
    construct(lambda s: dict(weights=s.weights, fingerprint=s.fingerprint, metadata=["x"]), "metadata",
              "metadata=a list")  # fmt: skip
    construct(lambda s: dict(weights=s.weights, fingerprint=s.fingerprint, map=torch.eye(3)), "map",
              "map of the wrong shape")  # fmt: skip
    construct(lambda s: dict(weights=s.weights, fingerprint=s.fingerprint, map="eye"), "map", "map='eye'")

    def wrong_fp(ctx):
        snap = rl.snapshot(ctx.pipe)
        rl.Patch(snap.weights, "0123456789abcdef").apply(ctx.pipe)

    add(cat, "Patch with a made-up fingerprint, applied", wrong_fp, "model")

    def applied_fault(ctx):
        snap = rl.snapshot(ctx.pipe)
        edit = rl.uce_erase(ctx.pipe, "red")
        snap.apply(ctx.pipe)
        ctx.arm()
        with edit.applied(ctx.pipe):
            raise ValueError("boom inside the block")

    add(cat, "Patch.applied: an error inside the block (weights must come back)", applied_fault, "boom")

    def apply_float16(ctx):
        snap = rl.snapshot(ctx.pipe)
        rl.uce_erase(ctx.pipe, "red")
        ctx.pipe.to(torch.float16)
        snap.apply(ctx.pipe)

    def apply_bfloat16(ctx):
        snap = rl.snapshot(ctx.pipe)
        rl.uce_erase(ctx.pipe, "red")
        ctx.pipe.to(torch.bfloat16)
        snap.apply(ctx.pipe)

    add(cat, "float32 snapshot applied after pipe.to(float16) (valid)", apply_float16, expect="ok", mutates=True)
    add(cat, "float32 snapshot applied after pipe.to(bfloat16) (valid)", apply_bfloat16, expect="ok", mutates=True)

    # ---------------------------------------------------------------- sample / encode
    def smp(**kw):
        def fn(ctx):
            args = resolved({"prompts": "a red circle", "steps": 2, **kw}, ctx)
            pipe = args.pop("pipe", ctx.pipe)
            rl.sample(pipe, args.pop("prompts"), **args)

        return fn

    add(cat, "sample with neither prompts nor embeds", smp(prompts=None), ("prompts", "embeds"))
    add(cat, "sample with prompts and embeds", smp(embeds=lambda c: T(1, 16, c.d)), ("prompts", "embeds"))
    for label, kw, names in [
        ("prompts=[]", dict(prompts=[]), "prompts"),
        ("prompts=[3]", dict(prompts=[3]), "prompt"),
        ("prompts=an unknown word", dict(prompts="a zorblax circle"), "zorblax"),
        ("prompts=a long prompt", dict(prompts=long_prompt()), "prompt"),
        ("seeds=[]", dict(seeds=[]), "seeds"),
        ("seeds=5", dict(seeds=5), "seeds"),
        ("seeds='12'", dict(seeds="12"), "seeds"),
        ("seeds=[1.5]", dict(seeds=[1.5]), "seeds"),
        ("steps=0", dict(steps=0), "steps"),
        ("steps=-1", dict(steps=-1), "steps"),
        ("steps=1.5", dict(steps=1.5), "steps"),
        ("guidance=nan", dict(guidance=math.nan), "guidance"),
        ("batch_size=0", dict(batch_size=0), "batch_size"),
        ("batch_size=-1", dict(batch_size=-1), "batch_size"),
        ("paired=True with 2 seeds for 1 prompt", dict(paired=True, seeds=[0, 1]), "seed"),
        ("embeds of the wrong width", dict(prompts=None, embeds=lambda c: T(1, 16, c.d + 1)), "embeds"),
        ("embeds with NaN", dict(prompts=None, embeds=lambda c: T(1, 16, c.d, fill=math.nan)), "embeds"),
        ("pooled= on an SD 1.x model", dict(prompts=None, embeds=lambda c: T(1, 16, c.d), pooled=lambda c: T(1, 8)),
         "pooled"),
        ("pipe=None", dict(pipe=None), ("pipe", "pipeline")),
    ]:
        add(cat, f"sample {label}", smp(**kw), names)
    # a list of (T, d) embeddings is their stack (tests/test_bad_inputs.py): valid
    add(cat, "sample embeds=a list (valid)", smp(prompts=None, embeds=lambda c: [T(16, c.d)]), expect="ok")

    for label, value, names in [("None", None, "prompts"), ("3", 3, "prompt"), ("[]", [], "prompts"),
                                ("an unknown word", "zorblax", "zorblax"), ("a long prompt", long_prompt(), "prompt"),
                                ("[None]", [None], "prompt")]:  # fmt: skip
        add(cat, f"encode prompts={label}", lambda ctx, v=value: rl.encode(ctx.pipe, v), names)
    add(cat, "encode pipe=None", lambda ctx: rl.encode(None, "red"), ("pipe", "pipeline"))
    add(cat, "encode_pooled on an SD 1.x model", lambda ctx: rl.encode_pooled(ctx.pipe, "red"), "pooled")
