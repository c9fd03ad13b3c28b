"""Catalogue ``CLI``: ``rece-lite`` commands, refused before any work starts.

Bad options, an ``--out`` inside a file or already there, a binary prompt CSV, SIGTERM mid-run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time

from .harness import PY, REPO, Broken, Ctx, Refused, Weak, add, cli, expect_refusal, last_line, subproc


def register_cli() -> None:
    cat = "CLI"
    E = ["erase", "--concept", "red", "--out", "x"]
    cases = [
        ("no subcommand", [], "erase"),
        ("erase without --concept", ["erase", "--out", "x"], "--concept"),
        ("erase --concept zorblax", ["erase", "--concept", "zorblax", "--out", "x"], "zorblax"),
        ("erase --concept ''", ["erase", "--concept", "", "--out", "x"], "concept"),
        ("erase --seeds 0", [*E, "--seeds", "0"], "--seeds"),
        ("erase --steps 0", [*E, "--steps", "0"], "--steps"),
        ("erase --epochs -1", [*E, "--epochs", "-1"], "--epochs"),
        ("erase --epochs 1.5", [*E, "--epochs", "1.5"], "--epochs"),
        ("erase --method foo", [*E, "--method", "foo"], "--method"),
        ("erase --out .", ["erase", "--concept", "red", "--out", "."], "--out"),
        ("erase --out ''", ["erase", "--concept", "red", "--out", ""], "--out"),
        ("erase --out /proc/x (read-only)", ["erase", "--concept", "red", "--out", "/proc/x"], "/proc"),
        ("erase --model a missing folder", ["erase", "--model", "missing_model", "--concept", "red", "--out", "x"],
         "missing_model"),
        ("demo --seeds 0", ["demo", "--seeds", "0", "--out", "x"], "--seeds"),
        ("demo --concept zorblax", ["demo", "--concept", "zorblax", "--out", "x"], "zorblax"),
        ("bench --seeds 1", ["bench", "--seeds", "1", "--out", "x"], "--seeds"),
        ("bench --repeats 0", ["bench", "--repeats", "0", "--out", "x"], "--repeats"),
        ("bench --esd-steps 0", ["bench", "--esd-steps", "0", "--out", "x"], "--esd-steps"),
        ("bench --judge without --prompts", ["bench", "--judge", "m:f", "--out", "x"], "--prompts"),
        ("bench --prompts a missing CSV", ["bench", "--prompts", "missing.csv", "--out", "x"], "missing.csv"),
    ]
    for label, argv, names in cases:
        add(cat, f"rece-lite {label}", lambda ctx, a=argv: cli(ctx, *a), names)

    def out_in_file(ctx):
        (ctx.tmp / "f.txt").write_text("x")
        ctx.arm()
        cli(ctx, "erase", "--concept", "red", "--out", "f.txt/x")

    add(cat, "rece-lite erase --out inside a file", out_in_file, "f.txt")

    def out_exists(ctx):
        (ctx.tmp / "x").mkdir()
        ctx.arm()
        cli(ctx, "erase", "--concept", "red", "--out", "x")

    add(cat, "rece-lite erase --out an existing folder without --force", out_exists, "--force")

    def bad_csv(ctx):
        (ctx.tmp / "p.csv").write_bytes(b"\xff\xfe\x00garbage,,,\n\x00\x00")
        ctx.arm()
        cli(ctx, "bench", "--prompts", "p.csv", "--out", "x", timeout=60)

    add(cat, "rece-lite bench --prompts a binary CSV", bad_csv, "p.csv", limit=90)

    def unknown_word_by_path(ctx):
        res = subproc(ctx, [PY, "-m", "rece_lite.cli", "erase", "--model", str(REPO / "data" / "tiny"),
                            "--concept", "zorblax", "--out", "x", "--seeds", "1", "--steps", "1"], 90)  # fmt: skip
        if res.returncode in (0, None):
            shutil.rmtree(ctx.tmp / "x", ignore_errors=True)
        expect_refusal(res, "erase of an unknown word with the model given by path")

    add(cat, "rece-lite erase --model <tiny folder> --concept zorblax", unknown_word_by_path, "zorblax", limit=120)

    def sigterm(ctx):
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TMPDIR=str(ctx.systmp), PYTHONPATH=str(REPO))
        proc = subprocess.Popen([PY, "-m", "rece_lite.cli", "erase", "--concept", "red", "--out", "x", "--seeds", "1",
                                 "--steps", "1"], cwd=ctx.tmp, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True)  # fmt: skip
        deadline = time.time() + 30
        while time.time() < deadline and not any(p.name.startswith(".") for p in ctx.tmp.iterdir()):
            time.sleep(0.05)  # until the hidden staging folder exists (work has started)
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise Broken("did not stop within 30 s of SIGTERM") from None
        if proc.returncode == 0:
            shutil.rmtree(ctx.tmp / "x", ignore_errors=True)
            raise Weak("finished before SIGTERM arrived (inconclusive)")
        raise Refused(f"exit {proc.returncode} on SIGTERM")

    add(cat, "rece-lite erase killed with SIGTERM mid-run (nothing left)", sigterm, limit=90)

    def permissions(ctx):
        res = subproc(ctx, [PY, "-m", "rece_lite.cli", "erase", "--concept", "red", "--out", "x", "--seeds", "1",
                            "--steps", "1", "--method", "uce"], 120)  # fmt: skip
        if res.returncode != 0:
            raise Weak(f"a small valid erase failed (exit {res.returncode}): {last_line(res.stderr)}")
        mode = (ctx.tmp / "x").stat().st_mode & 0o777
        shutil.rmtree(ctx.tmp / "x")
        umask = os.umask(0)
        os.umask(umask)
        if mode != 0o777 & ~umask:
            raise Weak(f"--out has mode {oct(mode)}, not {oct(0o777 & ~umask)} (the umask's)")

    add(cat, "rece-lite erase (small, valid): --out gets normal permissions", permissions, expect="ok", limit=180)
    add(cat, "rece-lite --version", lambda ctx: _version(ctx), expect="ok")


def _version(ctx: Ctx) -> None:
    res = subproc(ctx, [PY, "-m", "rece_lite.cli", "--version"], 20)
    if res.returncode != 0 or "rece-lite" not in res.stdout:
        raise Weak(f"--version: exit {res.returncode}: {last_line(res.stdout + res.stderr)}")
