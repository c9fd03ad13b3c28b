"""Catalogue ``signals`` (issue 22): SIGKILL, SIGINT and SIGTERM at seeded random instants.

Of forced folder replaces, safetensors writes and ``rece-lite erase --force`` (~3 min).
"""

from __future__ import annotations

import signal
import time

from .harness import PY, Broken, add, clear, last_line, only, pyrun, tiny_erase_args

_LOOP_DIR = """
import sys
from rece_lite.files import staged_dir
out, version = sys.argv[1], sys.argv[2]
print("start", flush=True)
while True:
    with staged_dir(out, force=True) as tmp:
        for i in range(20):
            (tmp / f"f{i}").write_text(version * 200)
"""
_LOOP_FILE = """
import sys, torch
from rece_lite.files import save_tensors
out, version = sys.argv[1], int(sys.argv[2])
print("start", flush=True)
while True:
    save_tensors({"w": torch.full((20000,), float(version))}, out)
"""


def register_signals() -> None:
    import random

    cat = "signals"

    def killed_loop(kind: str, sig: int, rounds: int = 10):
        def fn(ctx):
            import torch
            from safetensors.torch import load_file

            rng = random.Random(f"{kind}{sig}")
            out = ctx.tmp / ("run" if kind == "dir" else "w.safetensors")
            for k in range(rounds):
                proc = pyrun(ctx, [PY, "-c", _LOOP_DIR if kind == "dir" else _LOOP_FILE, str(out), str(k % 9 + 1)],
                             wait=False)  # fmt: skip
                proc.stdout.readline()
                time.sleep(rng.uniform(0.0, 0.2))
                proc.send_signal(sig)
                proc.communicate(timeout=30)
                if kind == "dir":
                    if out.exists():
                        texts = {p.read_text() for p in out.iterdir()}
                        if len(texts) != 1 or len(list(out.iterdir())) != 20:
                            raise Broken(f"kill {k}: --out is a partial folder")
                    elif k > 0:
                        raise Broken(f"kill {k}: the folder is gone (killed mid-replace)")
                elif out.exists():
                    w = load_file(out)["w"]
                    if w.shape != (20000,) or not torch.all(w == w[0]):
                        raise Broken(f"kill {k}: the file is partial")
            # the next run into the same place cleans up what the killed ones left
            res = pyrun(ctx, [PY, "-c", (_LOOP_DIR if kind == "dir" else _LOOP_FILE).replace("while True", "if 1"),
                              str(out), "0"])  # fmt: skip
            if res.returncode != 0:
                raise Broken(f"the run after the kills failed: {last_line(res.stderr)}")
            only(ctx, out.name)
            clear(ctx)

        return fn

    for sig, label in ((signal.SIGKILL, "SIGKILL"), (signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")):
        add(cat, f"{label} at random points of forced folder replaces (10x; whole, then cleaned)",
            killed_loop("dir", sig), expect="ok", limit=120)  # fmt: skip
        add(cat, f"{label} at random points of safetensors writes (10x; whole, then cleaned)",
            killed_loop("file", sig), expect="ok", limit=120)  # fmt: skip

    def cli_killed(sig: int, label: str):
        def fn(ctx):
            rng = random.Random(label)
            old = ctx.tmp / "x"
            old.mkdir()
            (old / "mine.txt").write_text("mine")
            for k in range(3):
                proc = pyrun(ctx, tiny_erase_args("x", "--force"), wait=False)
                time.sleep(rng.uniform(1.0, 10.0))
                proc.send_signal(sig)
                proc.communicate(timeout=60)
                if not old.exists():
                    raise Broken(f"kill {k}: --out is gone")
                names = {p.name for p in old.iterdir()}
                if names != {"mine.txt"} and "patch.safetensors" not in names:
                    raise Broken(f"kill {k}: --out is partial: {sorted(names)[:4]}")
            res = pyrun(ctx, tiny_erase_args("x", "--force"), timeout=120)
            if res.returncode != 0:
                raise Broken(f"the run after the kills failed: {last_line(res.stderr)}")
            only(ctx, "x")
            clear(ctx)

        return fn

    add(cat, "rece-lite erase --force killed (SIGKILL) 3x at random: --out whole, next run cleans",
        cli_killed(signal.SIGKILL, "kill"), expect="ok", limit=200)  # fmt: skip
    add(cat, "rece-lite erase --force interrupted (SIGINT) 3x at random: --out whole, next run cleans",
        cli_killed(signal.SIGINT, "int"), expect="ok", limit=200)  # fmt: skip
