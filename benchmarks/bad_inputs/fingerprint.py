"""Catalogue ``fingerprint``: a snapshot applied to a model it was not taken on.

Changed, rescaled or untrained weights must be refused; another dtype or an edited model match.
"""

from __future__ import annotations

from .harness import Broken, add, other_pipe, tiny_copy


def register_fingerprint() -> None:
    import torch

    import rece_lite as rl

    cat = "fingerprint"

    def modified(change, label):
        def fn(ctx):
            snap = rl.snapshot(ctx.pipe)
            other = tiny_copy(ctx)
            torch.manual_seed(123)
            with torch.no_grad():
                change(other.unet)
            ctx.watch(other.unet)
            ctx.arm()
            snap.apply(other)

        add(cat, f"tiny's snapshot applied to a copy with {label}", fn, "model")

    def kv_names(unet):
        from rece_lite import layers

        return {id(m.weight) for m in layers.projections(unet).values()}

    def rerandomise(prefix):
        def change(unet):
            kv = kv_names(unet)
            for n, p in unet.named_parameters():
                if n.startswith(prefix) and id(p) not in kv:
                    p.copy_(torch.randn_like(p) * p.std().clamp_min(1e-3) if p.numel() > 1 else torch.randn_like(p))

        return change

    def everywhere(op):
        def change(unet):
            kv = kv_names(unet)
            for _, p in unet.named_parameters():
                if id(p) not in kv:
                    p.copy_(op(p))

        return change

    modified(rerandomise("up_blocks"), "every up-block re-randomised")
    modified(rerandomise("up_blocks.1"), "one up-block re-randomised")
    modified(rerandomise("mid_block"), "the mid-block re-randomised")
    modified(rerandomise("conv_out"), "conv_out re-randomised")
    modified(rerandomise("time_embedding"), "the time embedding re-randomised")
    modified(everywhere(lambda p: p + torch.randn_like(p) * 1e-3 * p.std().nan_to_num(0)),
             "a fine-tune's worth of noise (1e-3 of each tensor's spread)")  # fmt: skip
    modified(everywhere(lambda p: p * 1.5), "every weight scaled by 1.5")
    modified(everywhere(lambda p: p + 0.01), "0.01 added to every weight")

    def untrained(ctx):
        snap = rl.snapshot(ctx.pipe)
        other = other_pipe(0)
        ctx.watch(other.unet)
        ctx.arm()
        snap.apply(other)

    add(cat, "tiny's snapshot applied to the untrained build_pipeline(seed=0)", untrained, "model")

    def same_in(dtype):
        def fn(ctx):
            snap = rl.snapshot(ctx.pipe)
            other = tiny_copy(ctx).to(dtype)
            snap.apply(other)
            if rl.snapshot(other).fingerprint != snap.fingerprint:
                raise Broken(f"the fingerprint changes in {dtype}")

        add(cat, f"the same model in {str(dtype).split('.')[-1]} matches (valid)", fn, expect="ok")

    for dt in (torch.float16, torch.bfloat16, torch.float64):
        same_in(dt)

    def after_edit(ctx):
        snap = rl.snapshot(ctx.pipe)
        rl.uce_erase(ctx.pipe, "red")
        rl.rece_erase(ctx.pipe, "blue", epochs=1)
        snap.apply(ctx.pipe)

    add(cat, "a snapshot still applies after UCE and RECE edits (valid)", after_edit, expect="ok", mutates=True)
