"""Edit time and memory: rece-lite's factored closed forms vs a straightforward per-matrix loop.

Runs on Stable Diffusion 1.4's shapes with random weights (:mod:`rece_lite.sd14`): 16
cross-attention layers, 32 key/value matrices of width 768, 77-token prompts, a 12-layer
CLIP text encoder; float32 on the CPU unless told otherwise.  Both sides are timed in the
same run, so the ratios hold even on a busy machine whose absolute times are noisy.

    python benchmarks/erase_speed.py                  # >= 5 runs per row (about 15-20 min on 2 cores)
    python benchmarks/erase_speed.py --quick          # smoke test: 2 runs, 1-layer text encoder
    python benchmarks/erase_speed.py --device cuda    # the same on a GPU (about a minute on an H100)
    python benchmarks/erase_speed.py --device cuda --dtype float16 --out speed.json

The baseline (``baseline_*`` in ``erase_speed_reference.py``) implements the same formulas the way the official
code (CharlesGong12/RECE, on rohitgandikota/unified-concept-editing) is organised: a loop
over the 32 matrices that, for each matrix, re-runs the text encoder on the prompts,
builds ``mat1 = λW + Σ v cᵀ`` and ``mat2 = λI + Σ c cᵀ`` and inverts ``mat2`` explicitly;
the RECE derivation sums ``W_lᵀW_l`` and ``W_lᵀW_l^orig`` over the matrices, with the
original matrices kept as a second copy.  It is leaner than the official code (no second
pipeline, no deep copies, only its own matrix's targets per iteration), so the speed-ups
printed here are smaller than against the official scripts.

Memory on the CPU is the growth of the process's peak resident set size during one call
(returned objects included), read from ``/proc/self/status`` (VmHWM) after resetting the
peak with ``/proc/self/clear_refs`` and returning freed heap memory to the OS
(``malloc_trim``); where that is not possible, a thread samples the resident size every
millisecond.  On CUDA it is the growth of the peak of PyTorch's allocated GPU memory
(``torch.cuda.max_memory_allocated``) over what was allocated at the start of the call;
CUDA times are taken with ``torch.cuda.synchronize()`` before starting and stopping the clock.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402
from erase_speed_reference import (  # noqa: E402  (the baseline and the recipe, beside this file)
    BASELINE_BUDGET_S,
    EPOCHS,
    ERASE,
    ERASE_SCALE,
    GUIDE,
    LAMB,
    PRESERVE,
    PRESERVE_SCALE,
    REG_SCALE,
    baseline_derive,
    baseline_matrices,
    baseline_rece,
    baseline_uce,
)

import rece_lite as rl  # noqa: E402
from rece_lite.sd14 import random_sd14_pipeline  # noqa: E402

diffusers_logging.set_verbosity_error()  # casting a random model to float16 is meant: no notes about it

# =============================================================================================
# measurement
# =============================================================================================
_libc = None
try:
    _libc = ctypes.CDLL("libc.so.6")
except OSError:
    pass


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def _can_reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        _status_kb("VmHWM")
        return True
    except OSError:
        return False


class PeakRSS:
    """Growth of the resident set size's peak over its value at entry, in bytes."""

    reset_ok: bool | None = None

    def __enter__(self):
        gc.collect()
        if _libc is not None:
            _libc.malloc_trim(0)
        if PeakRSS.reset_ok is None:
            PeakRSS.reset_ok = _can_reset_peak()
        self.start = self._rss()
        if PeakRSS.reset_ok:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        else:
            self.peak, self.stop = self.start, threading.Event()
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if PeakRSS.reset_ok:
            self.grown = _status_kb("VmHWM") * 1024 - self.start
        else:
            self.stop.set()
            self.thread.join()
            self.grown = self.peak - self.start
        return False

    @staticmethod
    def _rss() -> int:
        return _status_kb("VmRSS") * 1024

    def _sample(self):
        while not self.stop.wait(0.001):
            self.peak = max(self.peak, self._rss())


class PeakCuda:
    """Growth of PyTorch's peak allocated GPU memory over what was allocated at entry, in bytes."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self):
        gc.collect()
        torch.cuda.synchronize(self.device)
        self.start = torch.cuda.memory_allocated(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize(self.device)
        self.grown = torch.cuda.max_memory_allocated(self.device) - self.start
        return False


DEVICE = torch.device("cpu")  # set by main(); the meter and the clock follow it


def _meter():
    return PeakCuda(DEVICE) if DEVICE.type == "cuda" else PeakRSS()


def _sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


@dataclass
class Row:
    times: list[float] = field(default_factory=list)
    extra: list[int] = field(default_factory=list)
    result: object = None

    @property
    def median(self) -> float:
        return statistics.median(self.times) if self.times else float("nan")

    def cells(self) -> str:
        if not self.times:
            return f"{'-':>9} {'-':>9} {'-':>4} {'-':>8}"
        mb = max(self.extra) / 1e6
        return f"{min(self.times):9.4f} {self.median:9.4f} {len(self.times):4d} {mb:8.1f}"

    def as_dict(self) -> dict:
        return {"seconds": self.times, "median_s": self.median, "extra_bytes": self.extra}


def _run_once(row: Row, fn: Callable[[], object], setup: Callable[[], None], label: str, keep: bool) -> None:
    setup()
    with _meter() as mem:
        _sync()
        t0 = time.perf_counter()
        out = fn()
        _sync()
        row.times.append(time.perf_counter() - t0)
    row.extra.append(mem.grown)
    if keep:
        row.result = out
    print(f"  {label:<30} run {len(row.times)}: {row.times[-1]:8.4f} s  +{mem.grown / 1e6:6.1f} MB", flush=True)


def measure_pair(
    label: str,
    lib_fn: Callable[[], object],
    base_fn: Callable[[], object],
    setup: Callable[[], None],
    runs: int,
    base_runs: int,
    keep: bool = False,
) -> tuple[Row, Row]:
    """Alternate library and baseline runs, so that both see the same background load."""
    lib, base = Row(), Row()
    for i in range(max(runs, base_runs)):
        if i < runs:
            _run_once(lib, lib_fn, setup, f"rece-lite {label}", keep)
        if i < base_runs:
            _run_once(base, base_fn, setup, f"baseline  {label}", keep)
    return lib, base


def rel_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest ‖a − b‖ / ‖b‖ over matrices."""
    return max(((a[n].double() - b[n].double()).norm() / b[n].double().norm()).item() for n in b)


def current(pipe) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().clone() for n, m in baseline_matrices(pipe.unet).items()}


# =============================================================================================
def main(argv: list[str] | None = None) -> dict:
    global DEVICE
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=None, help="runs per row (default: CPU 5, CUDA 20; --quick: 2)")
    ap.add_argument("--quick", action="store_true", help="smoke test: 2 runs, a 1-layer text encoder, 1 baseline run")
    ap.add_argument("--text-layers", type=int, default=None, help="text-encoder layers (default 12; --quick: 1)")
    ap.add_argument(
        "--baseline-rece-runs",
        type=int,
        default=None,
        help="runs of the baseline's RECE with prompts (default: --runs, fewer if they would take over 10 min)",
    )
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    ap.add_argument("--device", default="cpu", help="where the pipeline runs: cpu (default), cuda, cuda:1, ...")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="the model's dtype")
    ap.add_argument("--out", default=None, help="also write the numbers as JSON to this file")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    DEVICE = torch.device(args.device)
    if DEVICE.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda: no CUDA device is available here")
    dtype = getattr(torch, args.dtype)
    cuda = DEVICE.type == "cuda"
    runs = args.runs or (2 if args.quick else 20 if cuda else 5)
    text_layers = args.text_layers or (1 if args.quick else 12)
    slow_runs = 1 if args.quick else runs  # the baseline rows that re-run the text encoder per matrix

    card = torch.cuda.get_device_name(DEVICE) if cuda else platform.processor() or platform.machine()
    print(f"rece-lite edit-time benchmark: SD 1.4 shapes, random weights, {DEVICE} ({card}) {args.dtype}")
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.machine()}; load average {os.getloadavg()[0]:.1f}"
    )
    t0 = time.perf_counter()
    pipe = random_sd14_pipeline(text_layers=text_layers)
    for part in (pipe.unet, pipe.text_encoder, pipe.vae):  # module by module: no pipeline-level dtype warning
        part.to(DEVICE, dtype)
    build_s = time.perf_counter() - t0
    mats = baseline_matrices(pipe.unet)
    n_rows = sum(m.weight.shape[0] for m in mats.values())
    kv_bytes = sum(m.weight.numel() * m.weight.element_size() for m in mats.values())
    d = next(iter(mats.values())).weight.shape[1]
    print(
        f"model: {len(mats)} K/V matrices (out dims {sorted({m.weight.shape[0] for m in mats.values()})}), d = {d}, "
        f"{n_rows:,} rows, {kv_bytes / 1e6:.1f} MB; text encoder {text_layers} layers, "
        f"{pipe.tokenizer.model_max_length} tokens; built in {build_s:.0f} s"
    )
    print(
        f"recipe: erase {ERASE!r} -> guide {GUIDE!r}, preserve {PRESERVE}; λ = {LAMB}, s_e = {ERASE_SCALE}, "
        f"s_p = {PRESERVE_SCALE}; RECE: reg 'zero', λ' = {REG_SCALE}, {EPOCHS} epochs (all 77 token rows)"
    )

    snap = rl.snapshot(pipe)
    restore = lambda: snap.apply(pipe)
    emb = rl.encode(pipe, [ERASE, GUIDE, *PRESERVE]).detach()
    e_erase, e_guide, e_keep = emb[0], emb[1], list(emb[2:])
    rl.encode(pipe, [ERASE, GUIDE, *PRESERVE])
    _sync()
    t0 = time.perf_counter()
    for _ in range(3):
        rl.encode(pipe, [ERASE, GUIDE, *PRESERVE])
    _sync()
    te_s = (time.perf_counter() - t0) / 3
    print(f"one text-encoder forward of the recipe's {len(emb)} prompts: {te_s:.4f} s")
    uce_patch = rl.uce_erase(pipe, ERASE, GUIDE, PRESERVE)
    after_uce = lambda: (snap.apply(pipe), uce_patch.apply(pipe))
    # warm-up (first calls initialise LAPACK / cuBLAS / cuSOLVER and thread pools)
    rl.derive_embedding(pipe, e_erase, original=snap)
    restore()
    rl.rece_erase(pipe, e_erase, e_guide, e_keep, epochs=1)
    restore()
    baseline_uce(pipe, e_erase, e_guide, e_keep)
    restore()
    baseline_derive(pipe, e_erase, snap.weights)

    lib, base = {}, {}

    def time_rows(suffix: str, er, gu, pr) -> None:
        """suffix "_e": embeddings precomputed, the text encoder is out of the timed call; "": prompts."""
        what = "(emb)" if suffix else "(prompts)"
        n_slow = runs if suffix else slow_runs  # the baseline's UCE with prompts runs the text encoder 32 times
        lib["uce" + suffix], base["uce" + suffix] = measure_pair(
            f"UCE {what}", lambda: rl.uce_erase(pipe, er, gu, pr), lambda: baseline_uce(pipe, er, gu, pr),
            restore, runs, n_slow,
        )  # fmt: skip
        lib["der" + suffix], base["der" + suffix] = measure_pair(
            f"derive {what}", lambda: rl.derive_embedding(pipe, er, original=snap),
            lambda: baseline_derive(pipe, er, snap.weights), after_uce, runs, runs, keep=True,
        )  # fmt: skip
        n = runs
        if not suffix:  # 4 edits that each run the text encoder 32 times: cap the time spent
            est = (EPOCHS + 1) * base["uce"].median + EPOCHS * base["der"].median
            n = args.baseline_rece_runs or max(1, min(slow_runs, int(BASELINE_BUDGET_S // est)))
            print(f"  (baseline RECE with prompts: about {est:.1f} s per run, so {n} run(s))")
        lib["rece" + suffix], base["rece" + suffix] = measure_pair(
            f"RECE {what}", lambda: rl.rece_erase(pipe, er, gu, pr, epochs=EPOCHS),
            lambda: baseline_rece(pipe, er, gu, pr), restore, runs, n,
        )  # fmt: skip

    print("\ntiming (each run starts from the same weights; library and baseline runs alternate):")
    time_rows("_e", e_erase, e_guide, e_keep)
    time_rows("", ERASE, GUIDE, PRESERVE)

    # -- do both compute the same thing?
    restore()
    baseline_uce(pipe, e_erase, e_guide, e_keep)
    d_uce = rel_diff(current(pipe), uce_patch.weights)
    restore()
    baseline_rece(pipe, e_erase, e_guide, e_keep, epochs=1)
    b_rece1 = current(pipe)
    restore()
    l_rece1 = rl.rece_erase(pipe, e_erase, e_guide, e_keep, epochs=1).patch.weights
    d_rece = rel_diff(b_rece1, l_rece1)
    b_der, l_der = base["der_e"].result, lib["der_e"].result
    d_der = ((b_der.double() - l_der.double()).norm() / l_der.double().norm()).item()
    restore()

    # -- the table
    head = f"{'':34} {'min s':>9} {'median s':>9} {'runs':>4} {'extra MB':>8}"
    print("\n" + "=" * 110)
    print(f"{'':34} {'baseline: per-matrix loop':^33} | {'rece-lite':^33} | speed-up")
    print(head + " | " + head[35:] + " | (median)")
    for title, suffix in (
        ("prompts (text encoder in the call)", ""),
        ("embeddings precomputed (no text encoder)", "_e"),
    ):
        print(title)
        for name, key in (("  UCE edit", "uce"), ("  RECE derivation", "der"), (f"  RECE, {EPOCHS} epochs", "rece")):
            b, lrow = base[key + suffix], lib[key + suffix]
            print(f"{name:34} {b.cells()} | {lrow.cells()} | {b.median / lrow.median:8.0f}x")
    print("=" * 110)
    if cuda:
        method = "growth of torch.cuda.max_memory_allocated over the allocation at the start of the call"
    else:
        how = "VmHWM after clear_refs" if PeakRSS.reset_ok else "RSS sampled every 1 ms"
        method = f"growth of peak RSS during one call, method: {how} + malloc_trim"
    print(f"extra MB: {method} (max over runs), returned objects included")
    lib_rece, base_rece, lib_rece_p = lib["rece_e"], base["rece"], lib["rece"]
    patch_mb = kv_bytes / 1e6
    rece_mb, rece_mb_median = max(lib_rece.extra) / 1e6, statistics.median(lib_rece.extra) / 1e6
    print(
        f"accounting: the K/V matrices are {patch_mb:.1f} MB; rece-lite's RECE holds one copy of them "
        f"(the new weights, returned as its Patch: the only copy it keeps) plus a few {d}x{d} float64 matrices "
        f"({d * d * 8 / 1e6:.1f} MB each); the baseline's RECE holds the original matrices ({patch_mb:.1f} MB)."
    )
    print(
        f"text-encoder cost: one forward of the {len(emb)} prompts takes {te_s:.4f} s; "
        f"the baseline's UCE runs it {len(mats)} times per edit."
    )
    print(
        "agreement (largest relative Frobenius difference, baseline vs rece-lite; the baseline inverts in float32, "
        f"rece-lite solves in float64): UCE weights {d_uce:.1e}, derived embedding {d_der:.1e}, "
        f"RECE (1 epoch) weights {d_rece:.1e}"
    )
    print(f"load average at the end: {os.getloadavg()[0]:.1f} (other work on this machine slows both sides)")
    speedup = base_rece.median / lib_rece_p.median
    print(f"\ntargets ({DEVICE}, {card}, {args.dtype}):")
    if cuda:
        ms = lib_rece_p.median * 1e3
        print(f"  rece-lite {EPOCHS}-epoch RECE with prompts, median {ms:.1f} ms  (target <= 50 ms on an H100)")
        print(f"  speed-up vs the baseline loop, both with prompts: {speedup:.0f}x  (target >= 20x)")
        print(
            f"  rece-lite RECE peak extra GPU memory: {rece_mb:.0f} MB = {rece_mb / patch_mb:.2f}x the K/V weights "
            f"({rece_mb - patch_mb:.0f} MB besides the returned patch)  (target <= 2x)"
        )
    else:
        print(f"  rece-lite {EPOCHS}-epoch RECE, no text encoder, median {lib_rece.median:.2f} s  (target <= 2 s)")
        print(
            f"  speed-up vs the baseline loop as the official code runs it (text encoder per matrix): "
            f"{speedup:.0f}x  (target >= 100x; baseline {len(base_rece.times)} run(s))"
        )
        print(
            f"  speed-up like for like (both without the text encoder): "
            f"{base['rece_e'].median / lib_rece.median:.1f}x"
        )
        print(
            f"  rece-lite RECE extra memory: {rece_mb:.0f} MB in all (median over runs {rece_mb_median:.0f} MB), "
            f"{rece_mb - patch_mb:.0f} MB besides the returned patch ({patch_mb:.1f} MB, the only copy of the "
            f"new weights)  (target <= 100 MB)"
        )
    result = {
        "device": str(DEVICE),
        "card": card,
        "dtype": args.dtype,
        "torch": torch.__version__,
        "text_layers": text_layers,
        "kv_bytes": kv_bytes,
        "text_encoder_s": te_s,
        "rows": {k: {"rece_lite": lib[k].as_dict(), "baseline": base[k].as_dict()} for k in lib},
        "agreement": {"uce": d_uce, "derive": d_der, "rece_1_epoch": d_rece},
        "rece_prompts_median_s": lib_rece_p.median,
        "rece_speedup_prompts": speedup,
        "rece_extra_bytes": max(lib_rece.extra),
        "rece_extra_bytes_median": statistics.median(lib_rece.extra),
    }
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
