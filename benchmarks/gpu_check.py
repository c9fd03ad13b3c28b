"""One short check, run once on a GPU machine: the library is correct there, and what it costs.

    python benchmarks/gpu_check.py --out gpu_check.json               # on a GPU machine (H100: about 4 min)
    python benchmarks/gpu_check.py --device cpu --out gpu_dry.json    # a dry run anywhere (2 cores: about 3 min)

The dry run checks the same things on the miniature model's shapes (``--shapes tiny``, the
default on the CPU) at its own picture size with 2 sampling steps; ``--shapes sd14`` on the
CPU takes about 15 minutes on 2 cores.

It needs the project's dependencies (``pip install -e .``: diffusers, transformers, ...) and
no network: every model is built in code or shipped in ``data/``.  The steps, each reported
whether or not the others pass:

1. ``pytest -m cuda``: the tests marked for a CUDA device (on the CPU they are skipped).
2. ``uce_erase``, ``derive_embedding`` and ``rece_erase`` (3 epochs) on SD 1.4's shapes, in
   float32 and float16 on the device, against a float64 reference computed on the CPU from
   the weights the device holds (per-matrix UCE closed forms and per-matrix Gram sums: no
   rece-lite code but :func:`rece_lite.closed_form.uce_weights`).  float32: the largest
   relative difference of the patch must be <= 1e-3.  float16: the error must be float16's
   rounding of the weights alone: the relative error no larger than that of the float64
   answer rounded to float16 (both printed, with the largest distance in units in the last
   place from that rounded answer: 1 where a float32 product lands beside a rounding midpoint).
3. The miniature model's ``rece-lite erase`` on the device and on the CPU (subprocesses),
   their reports side by side.
4. ``rece_lite.record_attention`` on SD 1.4's shapes at 512 px, 50 steps (float16): the
   pictures with and without recording must be bit-identical; time and memory of both.
5. ``benchmarks/erase_speed.py --device cuda`` (on a GPU; ``--speed`` forces it on the CPU,
   ``--no-speed`` skips it).

A compact summary is printed at the end; ``--out`` gets everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers.utils import logging as diffusers_logging  # noqa: E402

import rece_lite as rl  # noqa: E402
from rece_lite import closed_form as cf  # noqa: E402
from rece_lite import layers  # noqa: E402
from rece_lite.sd14 import random_sd14_pipeline  # noqa: E402
from rece_lite.tiny.model import build_pipeline  # noqa: E402

diffusers_logging.set_verbosity_error()  # casting a random model to float16 is meant: no notes about it

ERASE, GUIDE, PRESERVE = "red", "", ["blue", "green", "a yellow star"]
LAMB, ERASE_SCALE, PRESERVE_SCALE, REG_SCALE, EPOCHS = 0.1, 1.0, 0.1, 0.1, 3
FLOAT32_LIMIT = 1e-3


# ------------------------------------------------------------------------------ helpers
def _move(pipe, device: torch.device, dtype: torch.dtype) -> None:
    """The pipeline's modules to ``device`` and ``dtype`` (module by module: no pipeline-level dtype warning)."""
    for part in (pipe.unet, pipe.text_encoder, pipe.vae):
        part.to(device, dtype)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    return ((a - b).norm() / b.norm()).item()


def _ulps(got: torch.Tensor, exact: torch.Tensor, dtype: torch.dtype) -> float:
    """Largest distance of ``got`` from ``exact`` rounded to ``dtype``, in units of ``dtype``'s last place."""
    fi = torch.finfo(dtype)
    exact = exact.detach().cpu().double()
    diff = (got.detach().cpu().double() - exact.to(dtype).double()).abs()
    return (diff / (fi.eps * exact.abs().clamp_min(fi.tiny))).max().item()


def _subprocess(cmd: list[str], env: dict | None = None, timeout: int = 600) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    run = subprocess.run(
        cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})},
        capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    return run.returncode, run.stdout + run.stderr, time.perf_counter() - t0


# --------------------------------------------------------------- 1. the cuda-marked tests
def check_tests(device: torch.device) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", "tests"]  # fmt: skip
    code, out, secs = _subprocess(cmd)
    last = [line for line in out.strip().splitlines() if line.strip()][-1:]
    summary = last[0] if last else ""
    # exit 5: nothing selected; on a CPU machine every cuda test is skipped, which is not a failure
    ok = code == 0 or (device.type != "cuda" and code == 5)
    return {"ok": ok, "exit": code, "summary": summary, "seconds": secs, "tail": out[-3000:]}


# ------------------------------------------------- 2. the public calls vs a float64 reference
def _uce_ref(W: dict, ce, cg, cp) -> dict:
    """UCE matrix by matrix, float64 on the CPU (the per-matrix closed form, not the shared map)."""
    return {
        n: cf.uce_weights(w, ce, cg @ w.T, cp, lamb=LAMB, erase_scale=ERASE_SCALE, preserve_scale=PRESERVE_SCALE)
        for n, w in W.items()
    }


def _derive_ref(W: dict, W0: dict, c: torch.Tensor) -> torch.Tensor:
    """close_regzero by explicit sums over the matrices: (λ'I + Σ W_lᵀW_l) x = Σ W_lᵀ W_l^orig c."""
    d = c.shape[-1]
    A = REG_SCALE * torch.eye(d, dtype=torch.float64)
    rhs = torch.zeros(d, c.shape[0], dtype=torch.float64)
    for n, w in W.items():
        A += w.T @ w
        rhs += w.T @ (W0[n] @ c.T)
    return torch.linalg.solve(A, rhs).T


def _held(pipe) -> dict[str, torch.Tensor]:
    return {n: m.weight.detach().cpu().double() for n, m in layers.projections(pipe.unet).items()}


def check_public_calls(pipe, device: torch.device, emb: torch.Tensor) -> dict:
    """The three calls on the device in float32 and float16, each against the CPU float64 reference."""
    ce, cg, cp = emb[0], emb[1], emb[2:].reshape(-1, emb.shape[-1])
    e_erase, e_guide, e_keep = emb[0].float(), emb[1].float(), list(emb[2:].float())
    results = {}
    start = rl.snapshot(pipe)  # float32, wherever the pipe is
    for dtype in (torch.float32, torch.float16):
        start.apply(pipe)
        _move(pipe, device, dtype)
        snap = rl.snapshot(pipe)
        W0 = _held(pipe)  # the weights as this dtype holds them: the reference starts from these
        row: dict = {}
        # uce_erase
        t0 = time.perf_counter()
        patch = rl.uce_erase(pipe, e_erase, e_guide, e_keep)
        _sync(device)
        row["uce_seconds"] = time.perf_counter() - t0
        ref = _uce_ref(W0, ce, cg, cp)
        row["uce"] = _compare(patch.weights, ref, dtype)
        # derive_embedding, after that edit
        derived = rl.derive_embedding(pipe, e_erase, original=snap)
        c_ref = _derive_ref(_held(pipe), W0, ce)
        row["derive"] = _compare({"c": derived}, {"c": c_ref}, derived.dtype)
        # rece_erase, 3 epochs, from the original weights
        snap.apply(pipe)
        t0 = time.perf_counter()
        res = rl.rece_erase(pipe, e_erase, e_guide, e_keep, epochs=EPOCHS)
        _sync(device)
        row["rece_seconds"] = time.perf_counter() - t0
        W, derived_ref = _uce_ref(W0, ce, cg, cp), []
        for _ in range(EPOCHS):
            derived_ref.append(_derive_ref(W, W0, ce))
            W = _uce_ref(W, derived_ref[-1], cg, cp)
        row["rece"] = _compare(res.patch.weights, W, dtype)
        row["rece_derived"] = _compare(
            {f"epoch {i}": x for i, x in enumerate(res.derived)},
            {f"epoch {i}": x for i, x in enumerate(derived_ref)},
            res.derived[0].dtype,
        )
        row["patch_device"] = str(next(iter(res.patch.weights.values())).device)
        row["map_device"] = str(res.patch.map.device)
        snap.apply(pipe)
        results[str(dtype).replace("torch.", "")] = row
    start.apply(pipe)  # the original K/V weights, in the pipeline's last dtype
    for row in results.values():
        parts = [row[k] for k in ("uce", "derive", "rece", "rece_derived")]
        row["ok"] = all(p["ok"] for p in parts)
    return {"ok": all(r["ok"] for r in results.values()), **results}


def _compare(got: dict, exact: dict, dtype: torch.dtype) -> dict:
    """Relative error of ``got`` against the float64 ``exact``; for half precision, the rounding test too."""
    rel = max(_rel(got[n], exact[n]) for n in exact)
    out = {"rel": rel}
    if dtype in (torch.float16, torch.bfloat16):
        out["rounding_rel"] = max(_rel(exact[n].to(dtype), exact[n]) for n in exact)
        out["ulps"] = max(_ulps(got[n], exact[n], dtype) for n in exact)
        # explained by rounding: no larger than the float64 answer's own rounding error (beyond a hair)
        out["ok"] = rel <= 1.05 * out["rounding_rel"] + 1e-6
    else:
        out["ok"] = rel <= FLOAT32_LIMIT
    return out


# ------------------------------------------------------------ 3. the command on the tiny model
def check_cli(device: torch.device, work: Path) -> dict:
    cmd = [sys.executable, "-m", "rece_lite.cli", "erase", "--model", "tiny", "--concept", "red", "--method", "rece",
           "--seeds", "2", "--steps", "8"]  # fmt: skip
    runs = {}
    where = {"cpu": {"CUDA_VISIBLE_DEVICES": ""}}
    if device.type == "cuda":
        where["device"] = {"CUDA_VISIBLE_DEVICES": str(device.index or 0)}
    for name, env in where.items():
        out = work / f"erase_{name}"
        code, log, secs = _subprocess([*cmd, "--out", str(out)], env=env)
        report = json.loads((out / "report.json").read_text()) if code == 0 else None
        runs[name] = {"exit": code, "seconds": secs, "report": report, "tail": None if code == 0 else log[-3000:]}
    return {"ok": all(r["exit"] == 0 for r in runs.values()), **runs}


def _flat(d, prefix: str = "") -> dict:
    out = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        elif isinstance(v, (int, float, str)) and not isinstance(v, bool):
            out[key] = v
    return out


# ------------------------------------------------------------ 4. attention maps at full size
def check_attention(pipe, device: torch.device, size: int, steps: int) -> dict:
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    _move(pipe, device, dtype)
    kw = dict(height=size, width=size, num_inference_steps=steps, guidance_scale=7.5, output_type="np")
    out = {"size": size, "steps": steps, "dtype": str(dtype).replace("torch.", "")}

    def run(record: bool):
        gen = torch.Generator("cpu").manual_seed(0)
        latent = size // pipe.vae_scale_factor
        latents = torch.randn(1, pipe.unet.config.in_channels, latent, latent, generator=gen).to(device, dtype)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
        t0 = time.perf_counter()
        if record:
            with rl.record_attention(pipe) as store:
                images = pipe(ERASE, latents=latents, **kw).images
        else:
            store, images = None, pipe(ERASE, latents=latents, **kw).images
        _sync(device)
        info = {"seconds": time.perf_counter() - t0}
        if device.type == "cuda":
            info["peak_gpu_mb"] = (torch.cuda.max_memory_allocated(device) - base) / 1e6
        if store is not None:
            info["store_mb"] = store.nbytes / 1e6
        return np.asarray(images), info

    plain, out["plain"] = run(False)
    recorded, out["recorded"] = run(True)
    out["identical"] = bool(np.array_equal(plain, recorded, equal_nan=True))
    out["non_finite_pixels"] = int((~np.isfinite(plain)).sum())
    out["ok"] = out["identical"]
    return out


# ------------------------------------------------------------------------- 5. the speed
def check_speed(device: torch.device, work: Path, quick: bool) -> dict:
    path = work / "speed.json"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "erase_speed.py"), "--device", str(device), "--out", str(path)]
    code, log, secs = _subprocess(cmd + (["--quick"] if quick else []), timeout=900)
    res = json.loads(path.read_text()) if code == 0 else None
    tail = "\n".join(log.strip().splitlines()[-8:])
    return {"ok": code == 0, "exit": code, "seconds": secs, "result": res, "tail": tail}


# --------------------------------------------------------------------------------- main
def _step(name: str, fn: Callable[[], dict], results: dict) -> None:
    print(f"[{name}] ...", flush=True)
    t0 = time.perf_counter()
    try:
        results[name] = fn()
    except Exception as e:  # a failing step is reported; the others still run
        results[name] = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    results[name]["step_seconds"] = time.perf_counter() - t0
    print(f"[{name}] {'ok' if results[name]['ok'] else 'FAILED'} in {results[name]['step_seconds']:.0f} s", flush=True)


def summary(results: dict, device: torch.device) -> str:
    lines = [
        f"rece-lite GPU check on {results['device']} ({results['card']}), torch {results['torch']}, "
        f"{results.get('shapes')} shapes"
    ]
    t = results.get("tests", {})
    lines.append(f"  tests -m cuda: {'ok' if t.get('ok') else 'FAILED'}  {t.get('summary', t.get('error', ''))}")
    calls = results.get("public_calls", {})
    for dtype in ("float32", "float16"):
        row = calls.get(dtype)
        if not row:
            continue
        parts = []
        for k in ("uce", "derive", "rece", "rece_derived"):
            c = row[k]
            more = f", {c['ulps']:.2f} ulp (rounding alone {c['rounding_rel']:.1e})" if "ulps" in c else ""
            parts.append(f"{k} {c['rel']:.1e}{more}")
        lines.append(
            f"  {dtype} vs float64 ({'ok' if row['ok'] else 'FAILED'}): " + "; ".join(parts)
            + f"; UCE {row['uce_seconds'] * 1e3:.1f} ms, RECE {row['rece_seconds'] * 1e3:.1f} ms"
        )
    if "error" in calls:
        lines.append(f"  public calls: FAILED {calls['error']}")
    cli = results.get("cli", {})
    if "cpu" in cli:
        a = _flat(cli["cpu"].get("report") or {})
        b = _flat(cli.get("device", {}).get("report") or {})
        keys = [k for k in a if k.startswith(("original.", "erased.")) or k in ("edit_seconds", "device", "dtype")]
        lines.append(f"  rece-lite erase (tiny): {'ok' if cli['ok'] else 'FAILED'}   {'cpu':>12} {'device':>12}")
        for k in keys:
            fmt = (lambda v: f"{v:12.4g}" if isinstance(v, float) else f"{v!s:>12}")
            lines.append(f"    {k:<34} {fmt(a.get(k, '-'))} {fmt(b.get(k, '-')) if b else '-':>12}")
    elif "error" in cli:
        lines.append(f"  rece-lite erase: FAILED {cli['error']}")
    att = results.get("attention", {})
    if "plain" in att:
        mem = ""
        if "peak_gpu_mb" in att["plain"]:
            plain, recorded = att["plain"]["peak_gpu_mb"], att["recorded"]["peak_gpu_mb"]
            mem = f"; peak GPU {plain:.0f} MB plain, {recorded:.0f} MB recording"
        lines.append(
            f"  record_attention {att['size']} px, {att['steps']} steps, {att['dtype']}: "
            f"{'bit-identical' if att['identical'] else 'IMAGES DIFFER'}; "
            f"{att['plain']['seconds']:.1f} s plain, {att['recorded']['seconds']:.1f} s recording; "
            f"store {att['recorded']['store_mb']:.0f} MB{mem}"
        )
    elif "error" in att:
        lines.append(f"  record_attention: FAILED {att['error']}")
    speed = results.get("speed")
    if speed:
        lines.append(f"  erase_speed: {'ok' if speed['ok'] else 'FAILED'}")
        lines.extend("    " + line for line in speed["tail"].splitlines())
    lines.append(f"  total {results['seconds']:.0f} s; all ok: {results['ok']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda", help="the device to check (default cuda; cpu for a dry run)")
    ap.add_argument("--out", default=None, help="write all results as JSON to this file")
    ap.add_argument("--speed", action=argparse.BooleanOptionalAction, default=None,
                    help="run benchmarks/erase_speed.py (default: on CUDA only)")  # fmt: skip
    ap.add_argument("--shapes", choices=["sd14", "tiny"], default=None,
                    help="SD 1.4's shapes (default on CUDA) or the miniature model's (default on the CPU)")  # fmt: skip
    ap.add_argument("--skip", default="", help="comma-separated steps to skip: tests,public_calls,cli,attention")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("no CUDA device here: use --device cpu for a dry run")
    gpu = device.type == "cuda"
    skip = set(filter(None, args.skip.split(",")))
    t0 = time.perf_counter()
    results: dict = {
        "device": str(device),
        "card": torch.cuda.get_device_name(device) if gpu else platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    with tempfile.TemporaryDirectory(prefix="rece-lite-gpu-check-") as tmp:
        work = Path(tmp)
        if "tests" not in skip:
            _step("tests", lambda: check_tests(device), results)
        pipe = None
        shapes = args.shapes or ("sd14" if gpu else "tiny")
        results["shapes"] = shapes
        if not {"public_calls", "attention"} <= skip:
            pipe = random_sd14_pipeline(text_layers=1) if shapes == "sd14" else build_pipeline(seed=0)
            emb = rl.encode(pipe, [ERASE, GUIDE, *PRESERVE]).detach().double()  # float32 CPU encoder, as float64
        if "public_calls" not in skip:
            _step("public_calls", lambda: check_public_calls(pipe, device, emb), results)
        if "cli" not in skip:
            _step("cli", lambda: check_cli(device, work), results)
        if "attention" not in skip:
            native = pipe.unet.config.sample_size * pipe.vae_scale_factor
            size, steps = (512, 50) if shapes == "sd14" else (native, 50 if gpu else 2)
            _step("attention", lambda: check_attention(pipe, device, size, steps), results)
        pipe = None  # the SD 1.4-shaped pipeline (3.4 GB) is not needed by the speed benchmark's own process
        if args.speed if args.speed is not None else gpu:
            _step("speed", lambda: check_speed(device, work, quick=not gpu), results)
    results["seconds"] = time.perf_counter() - t0
    results["ok"] = all(v["ok"] for v in results.values() if isinstance(v, dict) and "ok" in v)
    text = summary(results, device)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(json.dumps({**results, "summary": text}, indent=1, default=str))
    return 0 if results["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
