"""Catalogue ``foreign files`` (issue 22): files and values from other models or tools.

Another text encoder's patch, a LoRA as a patch, a FIFO, ``/dev/zero``, NaN pipelines.
"""

from __future__ import annotations

import math
import os

from .harness import Broken, Weak, add, api_call, expect_refusal, other_pipe, pyrun, tiny_copy


def register_foreign() -> None:
    import torch

    import rece_lite as rl

    cat = "foreign files"

    def other_text_encoder(ctx):
        """The embedded UNet with another (random) text encoder of the same shape."""
        other = other_pipe(1)
        other.unet.load_state_dict(ctx.pristine["unet"])
        return other

    def patch_other_te(ctx):
        p = ctx.tmp / "te.safetensors"
        rl.uce_erase(other_text_encoder(ctx), "red").save(p)
        ctx.arm()
        rl.Patch.load(p).apply(ctx.pipe)

    add(cat, "a patch made with another text encoder, applied", patch_other_te, "model")

    def original_other_te(ctx):
        snap = rl.snapshot(other_text_encoder(ctx))
        ctx.arm()
        rl.rece_erase(ctx.pipe, "red", epochs=1, original=snap, already_edited=True)

    add(cat, "rece_erase original= a snapshot with another text encoder", original_other_te, ("original", "model"))

    def edits(ctx):
        snap = rl.snapshot(ctx.pipe)
        red = rl.uce_erase(ctx.pipe, "red")
        snap.apply(ctx.pipe)
        blue = rl.uce_erase(ctx.pipe, "blue")
        snap.apply(ctx.pipe)
        return snap, red, blue

    def mixed_file(ctx):
        _, red, blue = edits(ctx)
        p = ctx.tmp / "mixed.safetensors"
        rl.Patch(red.weights, red.fingerprint, red.metadata, blue.map, getattr(red, "witness", None)).save(p) \
            if "witness" in rl.Patch.__dataclass_fields__ else rl.Patch(red.weights, red.fingerprint, red.metadata,
                                                                        blue.map).save(p)  # fmt: skip
        ctx.arm()
        out = rl.Patch.load(p).to_lora(ctx.tmp / "lora.safetensors")
        (ctx.tmp / "lora.safetensors").unlink()
        raise Broken(f"a LoRA from another edit's map was written, reporting error {out.error:.2g}")

    add(cat, "a patch file whose stored map is another edit's, to_lora without base", mixed_file,
        ("mixed.safetensors", "map", "base"))  # fmt: skip

    def by_hand(ctx):
        _, red, blue = edits(ctx)
        ctx.arm()
        out = rl.Patch(red.weights, red.fingerprint, red.metadata, blue.map).to_lora(ctx.tmp / "lora.safetensors")
        (ctx.tmp / "lora.safetensors").unlink()
        raise Broken(f"a LoRA from another edit's map was written, reporting error {out.error:.2g}")

    add(cat, "a hand-made patch with another edit's map, to_lora without base", by_hand, ("map", "base"))

    def base_inf(ctx):
        snap, red, _ = edits(ctx)
        w = {n: t.clone() for n, t in snap.weights.items()}
        w[sorted(w)[0]][0, 0] = math.inf
        ctx.arm()
        red.to_lora(ctx.tmp / "lora.safetensors", base=rl.Patch(w, snap.fingerprint))
        lora = ctx.tmp / "lora.safetensors"
        from safetensors.torch import load_file

        bad = any(not torch.isfinite(t).all() for t in load_file(lora).values())
        lora.unlink()
        raise Broken("to_lora wrote a LoRA holding inf") if bad else Weak("accepted a base holding inf")

    add(cat, "to_lora(base=) a base holding inf", base_inf, "base")

    def fifo(ctx):
        p = ctx.tmp / "fifo.safetensors"
        os.mkfifo(p)
        res = pyrun(ctx, api_call(f"rl.Patch.load({str(p)!r})"), timeout=40)
        p.unlink()
        if res.returncode is None:
            raise Broken("Patch.load blocked on a FIFO (killed after 40 s)")
        expect_refusal(res, "Patch.load of a FIFO")

    add(cat, "Patch.load of a FIFO (subprocess)", fifo, "fifo.safetensors", limit=60)

    def dev_zero(ctx):
        p = ctx.tmp / "zero.safetensors"
        p.symlink_to("/dev/zero")
        ctx.arm()
        res = pyrun(ctx, api_call(f"rl.Patch.load({str(p)!r})"), timeout=40)
        if res.returncode is None:
            raise Broken("Patch.load of /dev/zero did not return in 40 s")
        expect_refusal(res, "Patch.load of /dev/zero")

    add(cat, "Patch.load of a symlink to /dev/zero (subprocess)", dev_zero, "zero.safetensors", limit=60)

    def lora_as_patch(ctx):
        snap, red, _ = edits(ctx)
        p = ctx.tmp / "lora.safetensors"
        red.to_lora(p, base=snap)
        ctx.arm()
        rl.Patch.load(p)

    add(cat, "a LoRA file given to Patch.load", lora_as_patch, ("lora.safetensors", "patch"))

    def nan_pipeline(ctx):
        with torch.no_grad():
            ctx.pipe.unet.conv_in.weight[0, 0, 0, 0] = math.nan
        ctx.arm()
        rl.save_pretrained(ctx.pipe, ctx.tmp / "saved")

    add(cat, "save_pretrained of a pipeline holding NaN", nan_pipeline, ("nan", "conv_in"))
    add(cat, "save_pretrained(pipe, '')", lambda ctx: rl.save_pretrained(ctx.pipe, ""), "folder")

    def blank_concept(ctx):
        snap = rl.snapshot(ctx.pipe)
        rl.uce_erase(ctx.pipe, "red")
        ctx.arm()
        rl.derive_embedding(ctx.pipe, "   ", original=snap)

    add(cat, "derive_embedding(pipe, '   ')", blank_concept, "concept")
    add(cat, "encode of a word the tokenizer does not know", lambda ctx: rl.encode(ctx.pipe, "a zorblax"), "zorblax")

    def unfused_lora(ctx):
        snap, red, _ = edits(ctx)
        p = ctx.tmp / "lora.safetensors"
        red.to_lora(p, base=snap)
        pipe = tiny_copy(ctx)
        pipe.load_lora_weights(str(p))
        ctx.watch(pipe.unet)
        ctx.arm()
        rl.uce_erase(pipe, "blue")

    add(cat, "uce_erase on a pipeline with an unfused LoRA", unfused_lora, "lora")
