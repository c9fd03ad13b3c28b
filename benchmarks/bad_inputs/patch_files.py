"""Catalogue ``Patch files``: saving and loading a ``Patch``.

Bad paths and arguments, another model's or a NaN patch file, a full disk or Ctrl-C mid-save.
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

from .harness import Broken, add, disk_fails_mid_write, other_pipe


def register_files() -> None:
    import torch
    from safetensors.torch import save_file

    import rece_lite as rl

    cat = "Patch files"

    def saved(ctx) -> Path:
        path = ctx.tmp / "good.safetensors"
        rl.uce_erase(ctx.pipe, "red").save(path)
        return path

    def load(make, label, names=None):
        def fn(ctx):
            path = make(ctx)
            ctx.arm()
            rl.Patch.load(path)

        add(cat, f"Patch.load {label}", fn, names or ("bad.safetensors", "bad"))

    def write(data: bytes):
        def make(ctx):
            p = ctx.tmp / "bad.safetensors"
            p.write_bytes(data)
            return p

        return make

    load(lambda c: c.tmp / "bad.safetensors", "a missing file")
    load(lambda c: (c.tmp / "bad").mkdir() or c.tmp / "bad", "a folder", ("bad",))
    load(write(b""), "an empty file")
    load(write(b"hello, world\n" * 10), "a text file")
    load(write(struct.pack("<Q", 10**15) + b"{}"), "a header claiming 10^15 bytes")
    load(write(struct.pack("<Q", 20) + b'{"a": 1}'), "a header cut short")
    hdr = json.dumps({"w": {"dtype": "F32", "shape": [100, 100], "data_offsets": [0, 40000]}}).encode()
    load(write(struct.pack("<Q", len(hdr)) + hdr + b"\0" * 16), "a header whose tensor runs past the end")

    def truncated(ctx):
        good = saved(ctx)
        p = ctx.tmp / "bad.safetensors"
        data = good.read_bytes()
        p.write_bytes(data[: len(data) // 2])
        good.unlink()
        return p

    load(truncated, "a patch cut in half")

    def pickle(ctx):
        p = ctx.tmp / "bad.safetensors"
        torch.save({"w": torch.zeros(2, 2)}, p)
        return p

    load(pickle, "a torch.save pickle")

    def st(tensors, meta):
        def make(ctx):
            p = ctx.tmp / "bad.safetensors"
            save_file(tensors(ctx), str(p), metadata=meta(ctx) if callable(meta) else meta)
            return p

        return make

    snapw = lambda ctx: {k: v.contiguous() for k, v in rl.snapshot(ctx.pipe).weights.items()}  # noqa: E731
    fp = lambda ctx: rl.snapshot(ctx.pipe).fingerprint  # noqa: E731
    load(st(snapw, None), "a safetensors file without rece-lite metadata")
    load(st(snapw, lambda c: {"rece_lite.fingerprint": fp(c), "rece_lite.metadata": "[1, 2]"}),
         "metadata that is JSON but not an object")  # fmt: skip
    load(st(snapw, lambda c: {"rece_lite.fingerprint": fp(c), "rece_lite.metadata": "{not json"}),
         "metadata that is not JSON")  # fmt: skip
    load(st(lambda c: {k: v.int() for k, v in snapw(c).items()}, lambda c: {"rece_lite.fingerprint": fp(c)}),
         "integer tensors")  # fmt: skip
    load(st(lambda c: {k: v[None].contiguous() for k, v in snapw(c).items()},
            lambda c: {"rece_lite.fingerprint": fp(c)}), "3-d tensors")  # fmt: skip
    load(st(lambda c: {**snapw(c), "rece_lite.map": torch.eye(3)}, lambda c: {"rece_lite.fingerprint": fp(c)}),
         "a map of the wrong shape")  # fmt: skip
    load(st(lambda c: {"x": torch.zeros(2)}, {"rece_lite.fingerprint": "x"}), "a 1-d tensor and a fake fingerprint")

    def dangling(ctx):
        p = ctx.tmp / "bad.safetensors"
        p.symlink_to(ctx.tmp / "nowhere.safetensors")
        return p

    load(dangling, "a dangling symlink")
    add(cat, "Patch.load(None)", lambda ctx: rl.Patch.load(None), "path")
    add(cat, "Patch.load(42)", lambda ctx: rl.Patch.load(42), "path")

    def load_other_model(ctx):
        p = ctx.tmp / "other.safetensors"
        rl.uce_erase(other_pipe(1), "red").save(p)
        ctx.arm()
        rl.Patch.load(p).apply(ctx.pipe)

    add(cat, "a patch file of another model, loaded and applied", load_other_model, "model")

    def nan_file(ctx):
        p = ctx.tmp / "nan.safetensors"
        snap = rl.snapshot(ctx.pipe)
        w = dict(snap.weights)
        k = list(w)[7]
        w[k] = w[k].clone()
        w[k][1, 1] = math.nan
        rl.Patch(w, snap.fingerprint).save(p)
        ctx.shared["nan_key"] = k
        ctx.arm()
        rl.Patch.load(p).apply(ctx.pipe)

    add(cat, "a patch file holding a NaN, loaded and applied", nan_file, ("nan",))

    def save(target, names, label, patch=None):
        def fn(ctx):
            pt = (patch or (lambda c: rl.snapshot(c.pipe)))(ctx)
            path = target(ctx)
            ctx.arm()
            pt.save(path)

        add(cat, f"Patch.save {label}", fn, names)

    save(lambda c: c.tmp / "nofolder" / "p.safetensors", "nofolder", "into a missing folder")
    save(lambda c: c.tmp, "probe-", "to a path that is a folder")
    save(lambda c: (c.tmp / "f.txt").write_text("x") and c.tmp / "f.txt" / "p.safetensors", "f.txt",
         "into a path whose parent is a file")  # fmt: skip
    save(lambda c: Path("/proc/p.safetensors"), "/proc/p.safetensors", "into a read-only folder (/proc)")
    save(lambda c: Path("/sys/p.safetensors"), "/sys/p.safetensors", "into a read-only folder (/sys)")
    save(lambda c: None, "path", "to None")
    save(lambda c: 42, "path", "to 42")
    save(lambda c: c.tmp / "p.safetensors", "metadata", "with metadata that is not JSON-serialisable",
         patch=lambda c: rl.Patch(rl.snapshot(c.pipe).weights, rl.snapshot(c.pipe).fingerprint, {"a": object()}))

    def save_fault(exc):
        """``exc`` raised halfway through writing the temp file (``files.save_tensors`` writes the bytes itself)."""

        def fn(ctx):
            path = ctx.tmp / "p.safetensors"
            path.write_bytes(b"old contents")
            snap = rl.snapshot(ctx.pipe)
            ctx.arm()
            try:
                with disk_fails_mid_write(exc):
                    snap.save(path)
            finally:
                if path.read_bytes() != b"old contents":
                    raise Broken(f"the existing {path.name} was overwritten by a failed save")

        return fn

    add(cat, "Patch.save: the disk fills mid-write (existing file must survive)",
        save_fault(OSError(28, "No space left on device")), "p.safetensors")  # fmt: skip
    interrupt = KeyboardInterrupt()
    interrupt.from_probe = True
    add(cat, "Patch.save: Ctrl-C mid-write (existing file must survive, no temp file)", save_fault(interrupt),
        expect="raise")  # fmt: skip
