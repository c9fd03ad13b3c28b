"""Catalogue ``collisions`` (issue 22): two processes writing one output at once.

One wins and the other is refused clearly, or one whole result; a folder of the user's is kept.
"""

from __future__ import annotations

import shutil
import subprocess
import time

from .harness import PY, Broken, Weak, add, clear, expect_refusal, last_line, only, pyrun, tiny_erase_args, train

_WRITER_ONCE = """
import sys, time
from rece_lite.files import staged_dir
with staged_dir(sys.argv[1], force=sys.argv[2] == "1") as tmp:
    time.sleep(1.0)
    (tmp / "who").write_text(sys.argv[3])
"""


def register_collisions() -> None:
    cat = "collisions"

    def two_writers(force: bool):
        def fn(ctx):
            out = ctx.tmp / "shared"
            procs = [pyrun(ctx, [PY, "-c", _WRITER_ONCE, str(out), "1" if force else "0", str(i)], wait=False)
                     for i in range(2)]  # fmt: skip
            codes = [p.wait(timeout=60) for p in procs]
            errs = [p.stderr.read() for p in procs]
            if not (out / "who").exists():
                raise Broken(f"neither writer's folder is there (exits {codes})")
            if not force and sorted(codes) != [0, 1]:
                raise Broken(f"two writers without force: exits {codes}, want one success and one refusal")
            if not force and not any("appeared" in e or "already exists" in e for e in errs):
                raise Weak(f"the refused writer's message is unclear: {[last_line(e) for e in errs]}")
            only(ctx, "shared")
            clear(ctx)

        return fn

    add(cat, "two writers into one new folder, without force: one wins, one refused", two_writers(False),
        expect="ok", limit=90)  # fmt: skip
    add(cat, "two forced writers into one folder: one whole result, nothing else", two_writers(True), expect="ok",
        limit=90)  # fmt: skip

    def appears_during_cli(ctx):
        proc = pyrun(ctx, tiny_erase_args("x"), wait=False)
        deadline = time.time() + 60
        while time.time() < deadline and not any(p.name.startswith(".x") for p in ctx.tmp.iterdir()):
            time.sleep(0.05)
        (ctx.tmp / "x").mkdir()
        (ctx.tmp / "x" / "mine.txt").write_text("mine")
        out, err = proc.communicate(timeout=120)
        if (ctx.tmp / "x" / "mine.txt").read_text() != "mine" or len(list((ctx.tmp / "x").iterdir())) != 1:
            raise Broken("a folder made at --out during the run was replaced without --force")
        only(ctx, "x")
        clear(ctx)
        expect_refusal(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), "erase")

    add(cat, "a folder made at --out during rece-lite erase (no --force) is kept", appears_during_cli,
        ("--force", "x"), limit=150)  # fmt: skip

    def two_cli(ctx):
        procs = [pyrun(ctx, tiny_erase_args("x"), wait=False) for _ in range(2)]
        res = [p.communicate(timeout=150) for p in procs]
        codes = sorted(p.returncode for p in procs)
        if codes[0] != 0 or codes[1] == 0:
            raise Broken(f"two rece-lite erase --out x at once: exits {codes}")
        line = last_line(next(e for (o, e), p in zip(res, procs) if p.returncode))
        if "Traceback" in "".join(e for _, e in res):
            raise Weak(f"traceback: {line}")
        only(ctx, "x")
        clear(ctx)
        if "--force" not in line:
            raise Weak(f"the refusal does not say what to do: {line}")

    add(cat, "two rece-lite erase --out x at once: one result, one clear refusal", two_cli, expect="ok", limit=200)

    def train_existing(ctx):
        (ctx.tmp / "runs").mkdir()
        (ctx.tmp / "runs" / "mine.txt").write_text("mine")
        ctx.arm()
        res = train(ctx, timeout=120, out="runs", work="workdir_x")
        mine = (ctx.tmp / "runs" / "mine.txt").exists()
        shutil.rmtree(ctx.tmp / "workdir_x", ignore_errors=True)
        if not mine:
            shutil.rmtree(ctx.tmp / "runs", ignore_errors=True)
            raise Broken("train --out an existing folder without --force deleted the user's files")
        expect_refusal(res, "train --out an existing folder")

    add(cat, "train --out an existing folder of the user's without --force", train_existing, ("--force", "runs"),
        limit=150)  # fmt: skip
