"""Catalogue ``full disk`` (issue 22): every write fails part-way on a full disk.

The command, training, ``Patch.save``, ``to_lora``, ``save_pretrained``: the old target survives.
"""

from __future__ import annotations

from pathlib import Path

from .harness import (
    PY,
    TRAIN_BASE,
    Broken,
    Weak,
    add,
    clear,
    disk_fails_mid_write,
    one_line_refusal,
    pyrun,
    tiny_erase_args,
)


def register_disk() -> None:
    import rece_lite as rl

    cat = "full disk"

    def cli_full(ctx):
        res = pyrun(ctx, tiny_erase_args("outdir"), timeout=120, fsize=4096)
        if res.returncode == 0:
            raise Weak("erase succeeded although no file over 4 KB could be written")
        one_line_refusal(res, "rece-lite erase on a full disk")

    add(cat, "rece-lite erase, the disk fills (RLIMIT_FSIZE 4 KB): one line, nothing left", cli_full, "outdir",
        limit=150)  # fmt: skip

    def cli_full_force(ctx):
        (ctx.tmp / "outdir").mkdir()
        (ctx.tmp / "outdir" / "mine.txt").write_text("mine")
        ctx.arm()
        res = pyrun(ctx, tiny_erase_args("outdir", "--force"), timeout=120, fsize=4096)
        if (ctx.tmp / "outdir" / "mine.txt").read_text() != "mine":
            raise Broken("the old --out was lost when the disk filled")
        one_line_refusal(res, "rece-lite erase --force on a full disk")

    add(cat, "rece-lite erase --force, the disk fills: the old --out survives", cli_full_force, "outdir", limit=150)

    def train_full(ctx):
        res = pyrun(ctx, [PY, "-m", "rece_lite.tiny.train", "--out", str(ctx.tmp / "outdir"), "--work",
                          str(ctx.tmp / "workdir_x"), *TRAIN_BASE], timeout=120, fsize=4096)  # fmt: skip
        clear(ctx)  # resumable state of a refused run is judged by the message, not as a leftover
        one_line_refusal(res, "training on a full disk")

    add(cat, "training, the disk fills: one line naming the file", train_full, ("workdir_x", "outdir"), limit=150)

    def inject(exc: OSError, target: str):
        """The disk fills while rece-lite writes its temp file (``files.save_tensors`` writes the serialised
        bytes itself): half a file, then ``exc``."""

        def fn(ctx):
            snap = rl.snapshot(ctx.pipe)
            path = ctx.tmp / "pp.safetensors"
            path.write_bytes(b"old")
            ctx.arm()
            try:
                with disk_fails_mid_write(exc):
                    if target == "save":
                        snap.save(path)
                    elif target == "lora":
                        patch = rl.uce_erase(ctx.pipe, "red")
                        snap.apply(ctx.pipe)
                        ctx.arm()
                        patch.to_lora(path, base=snap)
            finally:
                if path.read_bytes() != b"old":
                    raise Broken("the existing file was overwritten by a failed write")

        return fn

    add(cat, "Patch.save, the disk fills mid-write (ENOSPC)", inject(OSError(28, "No space left on device"), "save"),
        "pp.safetensors")  # fmt: skip
    add(cat, "Patch.to_lora, the disk fills (EDQUOT)", inject(OSError(122, "Disk quota exceeded"), "lora"),
        "pp.safetensors")  # fmt: skip

    def pretrained_full(ctx):
        out = ctx.tmp / "saved"
        out.mkdir()
        (out / "mine.txt").write_text("mine")
        real = type(ctx.pipe).save_pretrained

        def failing(self, folder, **kw):
            Path(folder, "half.bin").write_bytes(b"half")
            raise OSError(28, "No space left on device")

        ctx.arm()
        type(ctx.pipe).save_pretrained = failing
        try:
            rl.save_pretrained(ctx.pipe, out, force=True)
        finally:
            type(ctx.pipe).save_pretrained = real
            if (out / "mine.txt").read_text() != "mine" or len(list(out.iterdir())) != 1:
                raise Broken("the old folder was changed by a failed save_pretrained")

    add(cat, "save_pretrained(force=True), the disk fills: the old folder survives", pretrained_full, "saved")
