"""Bad inputs and faults, tried as a tester would: does rece-lite refuse them cleanly?

Each probe makes one bad call (or one fault) against the embedded miniature model, in a
fresh temp folder, and is judged on three things:

* **held**: it raised an error whose message names the thing that was wrong (the
  argument, option, path or module: the probe's ``names``, any one of them, found as a
  word of its own, so ``os.PathLike`` in a bare Python error does not name ``path``), the model's
  weights (UNet + text encoder, full ``state_dict``, bit for bit) and its attention
  processors are as before, and nothing was left in the temp folders;
* **weak**: it raised but the message does not name what was wrong (a bare error from
  inside torch included), or it silently did what it should have refused;
* **broken**: the model changed, files were left behind, it hung (60 s alarm), it crashed
  with an error type that is no refusal (``ZeroDivisionError``, ``IndexError``, ...), or it
  returned a wrong answer.

A few probes are valid calls that the issue saw fail (``expect="ok"``): held when they
succeed and give the right answer.  CLI and training probes run a subprocess and are
refused before any work starts, except the few training runs marked as such (~20 s each).

The fault categories (issue 22: ``full disk``, ``signals``, ``collisions``, ``model folders``,
``foreign files``, ``recorders``) inject the fault into a subprocess where it must be real (a
file-size limit for a full disk, SIGKILL/SIGINT/SIGTERM at seeded random instants, two processes
at once) and check the target afterwards: the old one or the new one, whole, and nothing else
once the next run into the same place has cleaned up.  ``signals`` and ``collisions`` take ~6 min.

    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/bad_inputs.py            # all (~15 min on 2 cores)
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 python benchmarks/bad_inputs.py --only CLI  # one category

(``python benchmarks/bad_inputs`` and ``python -m benchmarks.bad_inputs`` run the same.)  The package:
``harness.py`` (probes, running and judging them, the shared helpers), one catalogue module per
category (``api.py``, ``patch_files.py``, ``cli.py``, ... each a ``register_*`` that adds its probes),
and this module (:data:`REGISTER`, :func:`main`, the table).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

from .api import register_api
from .cli import register_cli
from .collisions import register_collisions
from .fingerprint import register_fingerprint
from .foreign_files import register_foreign
from .full_disk import register_disk
from .harness import PROBES, ROOT, TINY_KEYS, Ctx, Result, run_probe
from .load_pipeline import register_load
from .model_folders import register_folders
from .patch_files import register_files
from .record_attention import register_record
from .recorders import register_recorders
from .signals import register_signals
from .training import register_training

REGISTER = {"API": register_api, "Patch files": register_files, "CLI": register_cli, "load_pipeline": register_load,
            "record_attention": register_record, "training": register_training,
            "fingerprint": register_fingerprint, "full disk": register_disk, "signals": register_signals,
            "collisions": register_collisions, "model folders": register_folders, "foreign files": register_foreign,
            "recorders": register_recorders}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", choices=list(REGISTER), help="run only these categories")
    ap.add_argument("--match", default=None, help="run only probes whose name contains this")
    ap.add_argument("--json", default=None, help="also write every result to this file")
    a = ap.parse_args(argv)

    import torch

    import rece_lite as rl
    from rece_lite import layers

    torch.set_num_threads(1)
    from diffusers.utils import logging as dlog

    dlog.set_verbosity_error()
    root = Path(tempfile.mkdtemp(prefix="rece-lite-probes-"))
    ROOT.append(root)
    systmp = root / "TMPDIR"
    systmp.mkdir()
    os.environ["TMPDIR"] = str(systmp)
    tempfile.tempdir = str(systmp)
    try:
        print("loading the embedded model ...", flush=True)
        pipe = rl.load_pipeline("tiny", device="cpu")
        pristine = {part: copy.deepcopy(getattr(pipe, part).state_dict()) for part in ("unet", "text_encoder", "vae")}
        ctx = Ctx(pipe, pristine, layers.embedding_width(pipe.unet), root, systmp)
        ctx.shared["processors"] = dict(pipe.unet.attn_processors)
        TINY_KEYS.extend(layers.projections(pipe.unet))
        for cat in a.only or list(REGISTER):
            REGISTER[cat]()
        probes = [p for p in PROBES if a.match is None or a.match in p.name]
        results: list[Result] = []
        t0 = time.perf_counter()
        for i, p in enumerate(probes, 1):
            r = run_probe(ctx, p)
            results.append(r)
            mark = {"held": ".", "weak": "w", "broken": "B"}[r.verdict]
            print(f"[{i:3d}/{len(probes)}] {mark} {r.seconds:5.1f}s {p.category}: {p.name}", flush=True)
        report(results, time.perf_counter() - t0)
        if a.json:
            Path(a.json).write_text(json.dumps([dict(category=r.probe.category, probe=r.probe.name,
                                                     verdict=r.verdict, why=r.why) for r in results], indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


def report(results: list[Result], seconds: float) -> None:
    cats = list(dict.fromkeys(r.probe.category for r in results))
    print(f"\n{'category':<18} {'tried':>5} {'held':>5} {'weak':>5} {'broken':>6}")
    totals = [0, 0, 0, 0]
    for c in cats:
        rs = [r for r in results if r.probe.category == c]
        row = [len(rs), *(sum(r.verdict == v for r in rs) for v in ("held", "weak", "broken"))]
        totals = [t + x for t, x in zip(totals, row)]
        print(f"{c:<18} {row[0]:>5} {row[1]:>5} {row[2]:>5} {row[3]:>6}")
    print(f"{'total':<18} {totals[0]:>5} {totals[1]:>5} {totals[2]:>5} {totals[3]:>6}   ({seconds:.0f} s)")
    for verdict in ("broken", "weak"):
        rs = [r for r in results if r.verdict == verdict]
        if rs:
            print(f"\n{verdict.upper()} ({len(rs)}):")
            for r in rs:
                print(f"- [{r.probe.category}] {r.probe.name}\n    {r.why}")
