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
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import hashlib
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
HANG_S = 60
CRASH_TYPES = (ZeroDivisionError, IndexError, KeyError, AttributeError, NameError, RecursionError, MemoryError)
CRASH_NAMES = ("ZeroDivisionError", "IndexError", "KeyError", "AttributeError", "NameError", "RecursionError",
               "UnboundLocalError", "MemoryError", "Segmentation", "core dumped")  # fmt: skip


class Weak(Exception):
    """Raised by a probe: the call succeeded where it should have refused, or refused unclearly."""


class Broken(Exception):
    """Raised by a probe: a wrong answer without an error, a crash, a lost file."""


class Hang(BaseException):
    """The alarm fired."""


class Refused(Exception):
    """A subprocess refused cleanly: its message is the last line of stderr."""


@dataclass
class Probe:
    category: str
    name: str
    fn: Callable
    names: tuple[str, ...] = ()
    expect: str = "raise"  # "raise": a clear refusal; "ok": a valid call that must work
    mutates: bool = False  # a valid call that changes the model on purpose (no weight check)
    limit: int = HANG_S  # seconds before the alarm calls it a hang


@dataclass
class Result:
    probe: Probe
    verdict: str
    why: str
    seconds: float


@dataclass
class Ctx:
    pipe: object
    pristine: dict
    d: int
    root: Path
    systmp: Path
    tmp: Path = None
    watched: list = field(default_factory=list)
    before: tuple = None
    files: set = None
    shared: dict = field(default_factory=dict)

    def watch(self, *modules) -> None:
        self.watched.extend(modules)

    def arm(self) -> None:
        """Take the baseline: weights, processors and files, as they are now."""
        self.before = model_state(self.watched)
        self.files = listing(self.tmp) | listing(self.systmp)


PROBES: list[Probe] = []
ROOT: list[Path] = []  # the session's temp folder, filled in by main()


def p_root() -> Path:
    return ROOT[0] if ROOT else Path("/nonexistent")

TINY_KEYS: list[str] = []  # the embedded model's K/V module names, filled in by main()


def add(category: str, name: str, fn: Callable, names: str | tuple[str, ...] = (), expect: str = "raise",
        mutates: bool = False, limit: int = HANG_S) -> None:  # fmt: skip
    names = (names,) if isinstance(names, str) else tuple(names)
    PROBES.append(Probe(category, name, fn, names, expect, mutates, limit))


# ------------------------------------------------------------------------------ state
def model_state(modules) -> tuple:
    import torch

    h = hashlib.sha256()
    procs = []
    for m in modules:
        for k, v in m.state_dict().items():
            t = v.detach().to("cpu").contiguous().reshape(-1)
            h.update(f"{k}:{t.dtype}:{tuple(v.shape)};".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        if hasattr(m, "attn_processors"):
            procs.append(tuple((n, id(p)) for n, p in sorted(m.attn_processors.items())))
            procs.append(len(m._forward_pre_hooks))
    return h.hexdigest(), tuple(procs)


def listing(folder: Path) -> set[str]:
    if not folder.exists():
        return set()
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def restore(ctx: Ctx) -> None:
    import torch

    pipe = ctx.pipe
    if any(getattr(pipe, part).dtype != torch.float32 for part in ctx.pristine):
        pipe.to(torch.float32)
    for part, sd in ctx.pristine.items():
        getattr(pipe, part).load_state_dict(sd)
    if pipe.unet.attn_processors != ctx.shared["processors"]:
        pipe.unet.set_attn_processor(dict(ctx.shared["processors"]))
    pipe.unet._forward_pre_hooks.clear()


# ------------------------------------------------------------------------------ judging
def _raised_where(tb) -> str:
    frames = traceback.extract_tb(tb)
    if not frames:
        return ""
    last = frames[-1].filename
    return "" if "rece_lite" in last or "bad_inputs" in last else f" (raised inside {Path(last).parent.name})"


def judge(p: Probe, exc: BaseException | None, changed: bool, left: set[str], only_dirs: bool) -> tuple[str, str]:
    msg = "" if exc is None else f"{type(exc).__name__}: {str(exc).strip()}"
    msg = " ".join(msg.split())[:300]
    if exc is not None:
        msg += _raised_where(exc.__traceback__)
    if isinstance(exc, Hang):
        return "broken", "hung (no answer before the alarm)"
    if changed and not p.mutates:
        return "broken", f"model changed ({msg or 'no error'})"
    short = sorted(q.replace(str(p_root()), "") for q in left)[:4]
    if left and not only_dirs:
        return "broken", f"left behind: {short} ({msg or 'no error'})"
    if left:
        return "weak", f"left empty folders behind: {short} ({msg or 'no error'})"
    if isinstance(exc, Broken):
        return "broken", str(exc)
    if isinstance(exc, Weak):
        return "weak", str(exc)
    if getattr(exc, "from_probe", False):  # the probe's own Ctrl-C came through, as it should
        return "held", msg
    if exc is not None and not isinstance(exc, Exception):
        return "broken", f"not an Exception: {msg}"
    named = exc is not None and (not p.names or any(names_it(str(exc), n) for n in p.names))
    if isinstance(exc, CRASH_TYPES) and not named:
        return "broken", f"crash: {msg}"
    if p.expect == "ok":
        return ("held", "") if exc is None else ("weak", f"refused a valid call: {msg}")
    if exc is None:
        return "weak", "accepted silently (no error)"
    if not named:
        return "weak", f"message does not name {' / '.join(p.names)}: {msg}"
    return "held", msg


def names_it(message: str, name: str) -> bool:
    """Whether ``message`` names ``name`` as a word of its own (``path`` is not found in ``os.PathLike``)."""
    return re.search(r"(?<![\w.])" + re.escape(name.lower()), message.lower()) is not None


def _alarm(signum, frame):
    raise Hang()


def run_probe(ctx: Ctx, p: Probe) -> Result:
    ctx.tmp = Path(tempfile.mkdtemp(prefix="probe-", dir=ctx.root))
    ctx.watched = [ctx.pipe.unet, ctx.pipe.text_encoder]
    ctx.arm()
    exc = None
    t0 = time.perf_counter()
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(p.limit)
    try:
        p.fn(ctx)
    except BaseException as e:  # noqa: BLE001 - judging every outcome is the point
        if isinstance(e, KeyboardInterrupt) and not getattr(e, "from_probe", False):
            raise
        exc = e
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    seconds = time.perf_counter() - t0
    changed = model_state(ctx.watched) != ctx.before
    left = {str(ctx.tmp / q) for q in listing(ctx.tmp) - ctx.files}
    left |= {str(ctx.systmp / q) for q in listing(ctx.systmp) - ctx.files}
    only_dirs = all(Path(q).is_dir() and not any(Path(q).iterdir()) for q in left)
    verdict, why = judge(p, exc, changed, left, only_dirs)
    restore(ctx)
    shutil.rmtree(ctx.tmp, ignore_errors=True)
    for q in ctx.systmp.iterdir():  # leftovers were counted; clear them for the next probe
        shutil.rmtree(q, ignore_errors=True) if q.is_dir() else q.unlink(missing_ok=True)
    return Result(p, verdict, why, seconds)


# ------------------------------------------------------------------------------ helpers
def T(*shape, dtype=None, fill=None):
    import torch

    t = torch.randn(*shape, dtype=dtype or torch.float32)
    return t.fill_(fill) if fill is not None else t


def long_prompt() -> str:
    return " ".join(["a red circle next to a blue square"] * 4)


def other_pipe(seed: int = 1):
    from rece_lite.tiny.model import build_pipeline

    return build_pipeline(seed=seed)


def tiny_copy(ctx: Ctx):
    """A second pipeline holding the embedded model's weights (to be modified by a probe)."""
    other = other_pipe(0)
    for part, sd in ctx.pristine.items():
        getattr(other, part).load_state_dict(sd)
    return other


def subproc(ctx: Ctx, args: list[str], timeout: float = 45, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TMPDIR=str(ctx.systmp),
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))  # fmt: skip
    proc = subprocess.Popen(args, cwd=cwd or ctx.tmp, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)  # fmt: skip
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        return subprocess.CompletedProcess(args, None, out, err)
    return subprocess.CompletedProcess(args, proc.returncode, out, err)


def last_line(text: str) -> str:
    lines = [x for x in text.replace("\r", "\n").splitlines() if x.strip()]
    return lines[-1].strip() if lines else ""


def expect_refusal(res: subprocess.CompletedProcess, what: str) -> None:
    """A subprocess must exit non-zero, quickly, with a one-line error and no traceback."""
    err = res.stderr or ""
    if res.returncode is None:
        raise Weak(f"not refused up front: {what} was still working after the timeout")
    if res.returncode == 0:
        raise Weak(f"exit 0: {what} accepted ({last_line(res.stdout + err)[:200]})")
    line = last_line(err)
    if any(c in err for c in CRASH_NAMES):
        raise Broken(f"crash (exit {res.returncode}): {line[:250]}")
    if "Traceback" in err:
        raise Weak(f"traceback shown (exit {res.returncode}): {line[:250]}")
    raise Refused(line[:300])


def cli(ctx: Ctx, *argv: str, timeout: float = 45) -> None:
    expect_refusal(subproc(ctx, [PY, "-m", "rece_lite.cli", *argv], timeout), "rece-lite " + " ".join(argv))


TRAIN_BASE = ["--images", "64", "--vae-steps", "20", "--classifier-steps", "10", "--steps", "4", "--batch", "8",
              "--checkpoint-every", "2", "--threads", "1"]  # fmt: skip


def train(ctx: Ctx, *argv: str, timeout: float = 45, out: str = "o", work: str = "w") -> subprocess.CompletedProcess:
    args = [PY, "-m", "rece_lite.tiny.train", "--out", str(ctx.tmp / out), "--work", str(ctx.tmp / work),
            *TRAIN_BASE, *argv]  # fmt: skip
    return subproc(ctx, args, timeout)


def train_refused(ctx: Ctx, *argv: str) -> None:
    res = train(ctx, *argv, timeout=40)
    if res.returncode is None or res.returncode == 0 or "Traceback" in (res.stderr or ""):
        # it started work instead of refusing: what that work wrote (resumable stage state) is
        # judged as "not refused up front", not as a leftover of a refusal
        for q in list(ctx.tmp.iterdir()):
            shutil.rmtree(q, ignore_errors=True)
    expect_refusal(res, "training with " + " ".join(argv))


def resolved(args: dict, ctx) -> dict:
    """``args`` with every callable argument computed from the probe's context (tensors are passed as they are)."""
    import torch

    return {k: v(ctx) if callable(v) and not isinstance(v, torch.Tensor) else v for k, v in args.items()}


def edit_call(edit, **kw):
    """A probe calling ``edit(pipe, erase="red", **kw)``; ``pipe=`` replaces the context's pipeline."""

    def fn(ctx):
        args = resolved({"erase": "red", **kw}, ctx)
        edit(args.pop("pipe", ctx.pipe), **args)

    return fn


# ============================================================================== API: uce_erase
def register_api() -> None:
    import torch

    import rece_lite as rl

    def uce(**kw):
        return edit_call(rl.uce_erase, **kw)

    cat = "API"
    bad_items = {
        "empty prompt": ("", "erase"),
        "blank prompt": ("   ", "erase"),
        "empty list": ([], "erase"),
        "None": (None, "erase"),
        "an int": (42, "erase"),
        "a list with an int": (["red", 3], "erase"),
        "a set": ({"red"}, "erase"),
        "bytes": (b"red", "erase"),
        "an unknown word": ("zorblax", "zorblax"),
        "a prompt longer than the tokenizer": (long_prompt(), "erase"),
        "an empty tensor": (lambda c: T(0, c.d), "erase"),
        "a tensor of the wrong width": (lambda c: T(4, c.d + 1), "erase"),
        "a complex tensor": (lambda c: T(4, c.d, dtype=torch.complex64), "erase"),
        "an integer tensor": (lambda c: torch.ones(4, c.d, dtype=torch.int64), "erase"),
        "a NaN tensor": (lambda c: T(4, c.d, fill=math.nan), "erase"),
        "an inf tensor": (lambda c: T(4, c.d, fill=math.inf), "erase"),
        "a 0-d tensor": (lambda c: torch.tensor(1.0), "erase"),
        "a bool tensor": (lambda c: torch.ones(4, c.d, dtype=torch.bool), "erase"),
        "a list of an empty tensor": (lambda c: [T(0, c.d)], "erase"),
    }
    for label, (value, names) in bad_items.items():
        add(cat, f"uce_erase erase={label}", uce(erase=value), names)
    bad_guides = {
        "the erased concept itself": ("red", "guide"),
        "an empty list": ([], "guide"),
        "None": (None, "guide"),
        "two guides for one concept": (["", "blue"], "guide"),
        "an int": (42, "guide"),
        "an unknown word": ("zorblax", "zorblax"),
        "a NaN tensor": (lambda c: T(16, c.d, fill=math.nan), "guide"),
        "a tensor of the wrong width": (lambda c: T(16, c.d + 2), "guide"),
        "a tensor with another token count": (lambda c: T(3, c.d), "guide"),
        "a longer-than-tokenizer prompt": (long_prompt(), "guide"),
    }
    for label, (value, names) in bad_guides.items():
        add(cat, f"uce_erase guide={label}", uce(guide=value), names)
    bad_preserve = {
        "the erased concept": (["red"], "preserve"),
        "an unknown word": (["zorblax"], "zorblax"),
        "[None]": ([None], "preserve"),
        "[3]": ([3], "preserve"),
        "a tensor of the wrong width": (lambda c: [T(4, c.d - 1)], "preserve"),
        "a NaN tensor": (lambda c: [T(4, c.d, fill=math.nan)], "preserve"),
    }
    for label, (value, names) in bad_preserve.items():
        add(cat, f"uce_erase preserve={label}", uce(preserve=value), names)
    for arg, values in {
        "lamb": [0, -1, math.nan, math.inf, "0.1", None, [0.1]],
        "erase_scale": [-1, math.nan, math.inf, "1"],
        "preserve_scale": [-1, math.nan, math.inf, "x"],
        "tokens": ["first", None, 3],
    }.items():
        for v in values:
            add(cat, f"uce_erase {arg}={v!r}", uce(**{arg: v}), arg)
    add(cat, "uce_erase tokens='last_subject' with a tensor", uce(erase=lambda c: T(16, c.d), tokens="last_subject"),
        ("tokens", "erase"))  # fmt: skip
    add(cat, "uce_erase pipe=None", uce(pipe=None), ("pipe", "pipeline"))
    add(cat, "uce_erase pipe=object()", uce(pipe=object()), ("pipe", "pipeline"))
    add(cat, "uce_erase pipe=a string", uce(pipe="tiny"), ("pipe", "pipeline"))
    add(cat, "uce_erase pipe=the UNet alone", uce(pipe=lambda c: c.pipe.unet), ("pipe", "pipeline"))
    def extreme(dtype=None, **kw):
        """Legal but extreme settings: a clear refusal, or finite weights afterwards."""

        def fn(ctx):
            from rece_lite import layers

            if dtype is not None:
                ctx.pipe.to(dtype)
            before = model_state([ctx.pipe.unet])
            try:
                rl.uce_erase(ctx.pipe, "red", **kw)
            except Exception as e:
                if not any(k in str(e) for k in (*kw, "overflow")):
                    raise Weak(f"refused without naming {', '.join(kw)}: {type(e).__name__}: {e}") from None
                if model_state([ctx.pipe.unet]) != before:
                    raise Broken("refused, but the model changed") from None
                return
            bad = [n for n, m in layers.projections(ctx.pipe.unet).items() if not m.weight.isfinite().all()]
            if bad:
                raise Broken(f"accepted, and wrote NaN/inf into {len(bad)} matrices (first: {bad[0]})")

        return fn

    add(cat, "uce_erase erase_scale=1e30 (refuse, or finite weights)", extreme(erase_scale=1e30), expect="ok",
        mutates=True)  # fmt: skip
    add(cat, "uce_erase lamb=1e-300 (refuse, or finite weights)", extreme(lamb=1e-300), expect="ok", mutates=True)
    add(cat, "uce_erase on float16, erase_scale=1e6, lamb=1e-6 (refuse, or finite weights)",
        extreme(torch.float16, erase_scale=1e6, lamb=1e-6), expect="ok", mutates=True)  # fmt: skip

    # ---------------------------------------------------------------- derive_embedding
    def derive(**kw):
        def fn(ctx):
            snap = rl.snapshot(ctx.pipe)
            rl.uce_erase(ctx.pipe, "red")
            ctx.arm()
            args = resolved({"concept": "red", "original": snap, **kw}, ctx)
            pipe = args.pop("pipe", ctx.pipe)
            rl.derive_embedding(pipe, args.pop("concept"), **args)

        return fn

    for label, value in {"None": None, "a string": "snap", "a dict of weights": lambda c: dict(c.pristine["unet"]),
                         "another model's snapshot": lambda c: rl.snapshot(other_pipe(1))}.items():  # fmt: skip
        add(cat, f"derive_embedding original={label}", derive(original=value), "original")
    for label, value in {"an unknown word": "zorblax", "None": None, "an int": 7, "a long prompt": long_prompt(),
                         "a tensor of the wrong width": lambda c: T(16, c.d + 1),
                         "a complex tensor": lambda c: T(16, c.d, dtype=torch.complex64),
                         "a NaN tensor": lambda c: T(16, c.d, fill=math.nan), "a list": ["red", "blue"],
                         "an empty tensor": lambda c: T(0, c.d)}.items():  # fmt: skip
        add(cat, f"derive_embedding concept={label}", derive(concept=value), ("concept", "zorblax"))
    for arg, values in {"reg": ["l2", None, 3], "reg_scale": [-1, math.nan, math.inf, "0.1", None],
                        "tokens": ["bad"]}.items():  # fmt: skip
        for v in values:
            add(cat, f"derive_embedding {arg}={v!r}", derive(**{arg: v}), arg)
    add(cat, "derive_embedding reg='standard' without old_target", derive(reg="standard"), "old_target")
    add(cat, "derive_embedding old_target=an unknown word", derive(reg="standard", old_target="zorblax"),
        ("old_target", "zorblax"))  # fmt: skip
    add(cat, "derive_embedding pipe=None", derive(pipe=None), ("pipe", "pipeline"))

    def derive_bf16(ctx):
        snap = rl.snapshot(ctx.pipe)
        rl.uce_erase(ctx.pipe, "red")
        ctx.pipe.to(torch.bfloat16)
        rl.derive_embedding(ctx.pipe, "red", original=snap)

    add(cat, "derive_embedding on bfloat16 with a float32 snapshot (valid)", derive_bf16, expect="ok", mutates=True)

    # ---------------------------------------------------------------- rece_erase
    def rece(**kw):
        return edit_call(rl.rece_erase, **kw)

    for v in [-1, 1.5, "2", None, True, math.inf]:
        add(cat, f"rece_erase epochs={v!r}", rece(epochs=v), "epochs")
    add(cat, "rece_erase already_edited=True without original", rece(already_edited=True), "original")
    add(cat, "rece_erase original=another model's snapshot", rece(original=lambda c: rl.snapshot(other_pipe(1))),
        "original")  # fmt: skip
    add(cat, "rece_erase original='snap'", rece(original="snap"), "original")
    add(cat, "rece_erase erase=''", rece(erase=""), "erase")
    add(cat, "rece_erase erase=None", rece(erase=None), "erase")
    add(cat, "rece_erase erase= and concepts= both", rece(concepts="blue"), ("erase", "concepts"))
    add(cat, "rece_erase erase=an unknown word", rece(erase="zorblax"), "zorblax")
    add(cat, "rece_erase preserve=the erased concept", rece(preserve=["red"]), "preserve")
    add(cat, "rece_erase reg='l1'", rece(reg="l1"), "reg")
    add(cat, "rece_erase reg_scale=nan", rece(reg_scale=math.nan), "reg_scale")
    add(cat, "rece_erase lamb=0", rece(lamb=0), "lamb")
    add(cat, "rece_erase tokens='every'", rece(tokens="every"), "tokens")
    add(cat, "rece_erase reg='standard' without old_target", rece(reg="standard"), "old_target")
    add(cat, "rece_erase pipe=None", rece(pipe=None), ("pipe", "pipeline"))

    def rece_stale_original(ctx):
        snap = rl.snapshot(ctx.pipe)
        rl.uce_erase(ctx.pipe, "red")
        r = rl.rece_erase(ctx.pipe, "blue", original=snap, epochs=1)
        snap.apply(ctx.pipe)
        rl.uce_erase(ctx.pipe, "red")
        rl.uce_erase(ctx.pipe, "blue")
        want = rl.derive_embedding(ctx.pipe, "blue", original=snap)
        gap = float((r.derived[0].double() - want.double()).abs().max())
        scale = float(want.abs().max())
        if not gap <= 1e-3 * (1 + scale):
            raise Broken(
                f"derived[0] differs from derive_embedding after the same UCE steps by {gap:.3g} "
                f"(max entry {scale:.3g}): original= is not what the pipe holds, and nothing said so"
            )

    add(cat, "rece_erase after another edit, original= the earlier snapshot (derived must match)",
        rece_stale_original, expect="ok", mutates=True)  # fmt: skip

    # ---------------------------------------------------------------- snapshot / Patch / apply
    for label, value in {"None": None, "object()": object(), "a string": "tiny", "a dict": {}}.items():
        add(cat, f"snapshot({label})", lambda ctx, v=value: rl.snapshot(v), ("pipe", "pipeline", "snapshot"))

    def apply_to(target):
        def fn(ctx):
            snap = rl.snapshot(ctx.pipe)
            snap.apply(target(ctx) if callable(target) else target)

        return fn

    for label, value in {"None": None, "object()": object(), "a string": "tiny",
                         "the text encoder": lambda c: c.pipe.text_encoder}.items():  # fmt: skip
        add(cat, f"Patch.apply({label})", apply_to(value), ("pipe", "pipeline"))

    def apply_other(seed):
        def fn(ctx):
            snap = rl.snapshot(ctx.pipe)
            other = other_pipe(seed)
            ctx.watch(other.unet)
            ctx.arm()
            snap.apply(other)

        return fn

    add(cat, "snapshot of tiny applied to another model", apply_other(1), "model")
    add(cat, "snapshot of tiny applied to build_pipeline(seed=0)", apply_other(0), "model")

    def patched(change, names, label, dtype=None):
        def fn(ctx):
            snap = rl.snapshot(ctx.pipe)
            keys = list(snap.weights)
            w = change(dict(snap.weights), keys, ctx)
            if dtype is not None:
                ctx.pipe.to(dtype)
                ctx.arm()
            rl.Patch(w, snap.fingerprint, dict(snap.metadata)).apply(ctx.pipe)

        add(cat, f"Patch {label}", fn, names)

    def drop(w, keys, ctx):
        del w[keys[3]]
        return w

    def extra(w, keys, ctx):
        w["down_blocks.9.attn2.to_k"] = w[keys[0]].clone()
        return w

    def reshape(w, keys, ctx):
        w[keys[2]] = w[keys[2]][:, :-1].clone()
        return w

    def setval(value, at=5):
        def ch(w, keys, ctx):
            w[keys[at]] = w[keys[at]].clone()
            w[keys[at]][0, 0] = value
            return w

        return ch

    patched(drop, (TINY_KEYS[3],), "missing one matrix, applied")
    patched(extra, ("down_blocks.9",), "with an extra matrix, applied")
    patched(reshape, ("shape",), "with one matrix of the wrong shape, applied")
    patched(setval(math.nan), ("nan",), "with one NaN, applied")
    patched(setval(math.inf), ("inf",), "with one inf, applied")
    patched(lambda w, k, c: {n: v * 1e6 for n, v in w.items()}, ("overflow", "float16"),
            "x1e6 applied to a float16 model", dtype=torch.float16)  # fmt: skip
    patched(lambda w, k, c: {n: v * 1e40 for n, v in w.items()}, ("overflow", "inf", "float32"),
            "x1e40 in float32 (inf everywhere), applied")  # fmt: skip
    patched(lambda w, k, c: {n: v.double() * 1e40 for n, v in w.items()}, ("overflow", "inf", "float32"),
            "float64 x1e40 applied to a float32 model")  # fmt: skip
    patched(lambda w, k, c: {n: v.to("meta") for n, v in w.items()}, ("patch",), "on the meta device, applied")

    def construct(kwargs_of, names, label):
        def fn(ctx):
            snap = rl.snapshot(ctx.pipe)
            rl.Patch(**kwargs_of(snap))

        add(cat, f"Patch({label})", fn, names)

    construct(lambda s: dict(weights={}, fingerprint=s.fingerprint), "weights", "weights={}")
    construct(lambda s: dict(weights=list(s.weights.values()), fingerprint=s.fingerprint), "weights", "weights=a list")
    construct(lambda s: dict(weights={k: v.int() for k, v in s.weights.items()}, fingerprint=s.fingerprint),
              "weight", "integer weights")  # fmt: skip
    construct(lambda s: dict(weights={k: v[None] for k, v in s.weights.items()}, fingerprint=s.fingerprint),
              "weight", "3-d weights")  # fmt: skip
    construct(lambda s: dict(weights={k: v.to(torch.complex64) for k, v in s.weights.items()},
                             fingerprint=s.fingerprint), "weight", "complex weights")  # fmt: skip
    construct(lambda s: dict(weights={1: next(iter(s.weights.values()))}, fingerprint=s.fingerprint), "weights",
              "an int key")  # fmt: skip
    construct(lambda s: dict(weights=s.weights, fingerprint=None), "fingerprint", "fingerprint=None")
    construct(lambda s: dict(weights=s.weights, fingerprint=s.fingerprint, metadata=["x"]), "metadata",
              "metadata=a list")  # fmt: skip
    construct(lambda s: dict(weights=s.weights, fingerprint=s.fingerprint, map=torch.eye(3)), "map",
              "map of the wrong shape")  # fmt: skip
    construct(lambda s: dict(weights=s.weights, fingerprint=s.fingerprint, map="eye"), "map", "map='eye'")

    def wrong_fp(ctx):
        snap = rl.snapshot(ctx.pipe)
        rl.Patch(snap.weights, "0123456789abcdef").apply(ctx.pipe)

    add(cat, "Patch with a made-up fingerprint, applied", wrong_fp, "model")

    def applied_fault(ctx):
        snap = rl.snapshot(ctx.pipe)
        edit = rl.uce_erase(ctx.pipe, "red")
        snap.apply(ctx.pipe)
        ctx.arm()
        with edit.applied(ctx.pipe):
            raise ValueError("boom inside the block")

    add(cat, "Patch.applied: an error inside the block (weights must come back)", applied_fault, "boom")

    def apply_float16(ctx):
        snap = rl.snapshot(ctx.pipe)
        rl.uce_erase(ctx.pipe, "red")
        ctx.pipe.to(torch.float16)
        snap.apply(ctx.pipe)

    def apply_bfloat16(ctx):
        snap = rl.snapshot(ctx.pipe)
        rl.uce_erase(ctx.pipe, "red")
        ctx.pipe.to(torch.bfloat16)
        snap.apply(ctx.pipe)

    add(cat, "float32 snapshot applied after pipe.to(float16) (valid)", apply_float16, expect="ok", mutates=True)
    add(cat, "float32 snapshot applied after pipe.to(bfloat16) (valid)", apply_bfloat16, expect="ok", mutates=True)

    # ---------------------------------------------------------------- sample / encode
    def smp(**kw):
        def fn(ctx):
            args = resolved({"prompts": "a red circle", "steps": 2, **kw}, ctx)
            pipe = args.pop("pipe", ctx.pipe)
            rl.sample(pipe, args.pop("prompts"), **args)

        return fn

    add(cat, "sample with neither prompts nor embeds", smp(prompts=None), ("prompts", "embeds"))
    add(cat, "sample with prompts and embeds", smp(embeds=lambda c: T(1, 16, c.d)), ("prompts", "embeds"))
    for label, kw, names in [
        ("prompts=[]", dict(prompts=[]), "prompts"),
        ("prompts=[3]", dict(prompts=[3]), "prompt"),
        ("prompts=an unknown word", dict(prompts="a zorblax circle"), "zorblax"),
        ("prompts=a long prompt", dict(prompts=long_prompt()), "prompt"),
        ("seeds=[]", dict(seeds=[]), "seeds"),
        ("seeds=5", dict(seeds=5), "seeds"),
        ("seeds='12'", dict(seeds="12"), "seeds"),
        ("seeds=[1.5]", dict(seeds=[1.5]), "seeds"),
        ("steps=0", dict(steps=0), "steps"),
        ("steps=-1", dict(steps=-1), "steps"),
        ("steps=1.5", dict(steps=1.5), "steps"),
        ("guidance=nan", dict(guidance=math.nan), "guidance"),
        ("batch_size=0", dict(batch_size=0), "batch_size"),
        ("batch_size=-1", dict(batch_size=-1), "batch_size"),
        ("paired=True with 2 seeds for 1 prompt", dict(paired=True, seeds=[0, 1]), "seed"),
        ("embeds of the wrong width", dict(prompts=None, embeds=lambda c: T(1, 16, c.d + 1)), "embeds"),
        ("embeds with NaN", dict(prompts=None, embeds=lambda c: T(1, 16, c.d, fill=math.nan)), "embeds"),
        ("pooled= on an SD 1.x model", dict(prompts=None, embeds=lambda c: T(1, 16, c.d), pooled=lambda c: T(1, 8)),
         "pooled"),
        ("pipe=None", dict(pipe=None), ("pipe", "pipeline")),
    ]:
        add(cat, f"sample {label}", smp(**kw), names)
    # a list of (T, d) embeddings is their stack (tests/test_bad_inputs.py): valid
    add(cat, "sample embeds=a list (valid)", smp(prompts=None, embeds=lambda c: [T(16, c.d)]), expect="ok")

    for label, value, names in [("None", None, "prompts"), ("3", 3, "prompt"), ("[]", [], "prompts"),
                                ("an unknown word", "zorblax", "zorblax"), ("a long prompt", long_prompt(), "prompt"),
                                ("[None]", [None], "prompt")]:  # fmt: skip
        add(cat, f"encode prompts={label}", lambda ctx, v=value: rl.encode(ctx.pipe, v), names)
    add(cat, "encode pipe=None", lambda ctx: rl.encode(None, "red"), ("pipe", "pipeline"))
    add(cat, "encode_pooled on an SD 1.x model", lambda ctx: rl.encode_pooled(ctx.pipe, "red"), "pooled")


# ============================================================================== Patch files
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
        def fn(ctx):
            import safetensors.torch as stt

            path = ctx.tmp / "p.safetensors"
            path.write_bytes(b"old contents")
            snap = rl.snapshot(ctx.pipe)
            real = stt.save_file

            def failing(tensors, filename, metadata=None):
                Path(filename).write_bytes(b"half a file")
                raise exc

            ctx.arm()
            stt.save_file = failing
            try:
                snap.save(path)
            finally:
                stt.save_file = real
                if path.read_bytes() != b"old contents":
                    raise Broken(f"the existing {path.name} was overwritten by a failed save")

        return fn

    add(cat, "Patch.save: the disk fills mid-write (existing file must survive)",
        save_fault(OSError(28, "No space left on device")), "p.safetensors")  # fmt: skip
    interrupt = KeyboardInterrupt()
    interrupt.from_probe = True
    add(cat, "Patch.save: Ctrl-C mid-write (existing file must survive, no temp file)", save_fault(interrupt),
        expect="raise")  # fmt: skip


# ============================================================================== CLI
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


# ============================================================================== load_pipeline
def register_load() -> None:
    import torch

    import rece_lite as rl

    cat = "load_pipeline"

    def folder(make, label, names, **kw):
        def fn(ctx):
            path = make(ctx)
            ctx.arm()
            pipe = rl.load_pipeline(path, device="cpu", **kw)
            raise Weak(f"loaded as {type(pipe).__name__}")

        add(cat, f"load_pipeline({label})", fn, names)

    def index(content):
        def make(ctx):
            p = ctx.tmp / "mdl_dir"
            p.mkdir()
            (p / "model_index.json").write_text(content if isinstance(content, str) else json.dumps(content))
            return p

        return make

    folder(lambda c: c.tmp / "mdl_dir", "a missing folder", "mdl_dir")
    folder(lambda c: (c.tmp / "mdl_dir").mkdir() or c.tmp / "mdl_dir", "an empty folder", "mdl_dir")
    folder(index("{not json"), "a folder whose model_index.json is not JSON", ("mdl_dir", "model_index"))
    folder(index([1, 2]), "a folder whose model_index.json is a list", ("mdl_dir", "model_index"))
    folder(index({"_class_name": "StableDiffusionPipeline"}), "a model_index.json and nothing else", "mdl_dir")
    sdxl_index = {"_class_name": "StableDiffusionXLPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                  "text_encoder": ["transformers", "CLIPTextModel"],
                  "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"]}  # fmt: skip
    folder(index(sdxl_index), "an SDXL model_index.json without weights", "mdl_dir")
    flux = {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
            "text_encoder": ["transformers", "CLIPTextModel"]}  # fmt: skip
    folder(index(flux), "an MMDiT (FLUX) model_index.json", ("flux", "mmdit"))
    sd3 = {"_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"]}
    folder(index(sd3), "an MMDiT (SD3) model_index.json", ("StableDiffusion3", "mmdit"))
    folder(index({"_class_name": "StableDiffusionImg2ImgPipeline", "unet": ["diffusers", "UNet2DConditionModel"]}),
           "an img2img model_index.json", ("img2img", "mdl_dir"))  # fmt: skip
    folder(index({"_class_name": "NotAPipeline"}), "an unknown class", "NotAPipeline")

    def tiny_copy_folder(change):
        def make(ctx):
            p = ctx.tmp / "mdl_dir"
            shutil.copytree(REPO / "data" / "tiny", p)
            change(p)
            return p

        return make

    def truncate_unet(p):
        f = next((p / "unet").glob("*.safetensors"))
        f.write_bytes(f.read_bytes()[:1000])

    def garble_unet(p):
        f = next((p / "unet").glob("*.safetensors"))
        f.write_bytes(b"\0" * 5000)

    def lie_sdxl(p):
        idx = json.loads((p / "model_index.json").read_text())
        idx["_class_name"] = "StableDiffusionXLPipeline"
        (p / "model_index.json").write_text(json.dumps(idx))

    def bad_unet_config(p):
        (p / "unet" / "config.json").write_text("{oops")

    folder(tiny_copy_folder(truncate_unet), "the tiny model with its UNet weights truncated", ("mdl_dir", "unet"))
    folder(tiny_copy_folder(garble_unet), "the tiny model with zeroed UNet weights", ("mdl_dir", "unet"))
    folder(tiny_copy_folder(lambda p: shutil.rmtree(p / "unet")), "the tiny model without unet/", ("mdl_dir", "unet"))
    folder(tiny_copy_folder(lambda p: shutil.rmtree(p / "tokenizer")), "the tiny model without tokenizer/",
           ("mdl_dir", "tokenizer"))  # fmt: skip
    folder(tiny_copy_folder(bad_unet_config), "the tiny model with a corrupt unet/config.json", ("mdl_dir", "unet"))
    folder(tiny_copy_folder(lie_sdxl), "SD weights under an SDXL model_index.json", ("mdl_dir", "text_encoder_2", "XL"))

    def a_file(ctx):
        p = ctx.tmp / "model.safetensors"
        p.write_bytes(b"x" * 100)
        return p

    folder(a_file, "a single file", "model.safetensors")
    folder(lambda c: "", "''", "model")
    folder(lambda c: None, "None", "model")
    folder(lambda c: 42, "42", "model")
    folder(lambda c: "CompVis/no-such-model", "an uncached hub id (offline)", "CompVis/no-such-model")
    for label, dev in [("'tpu'", "tpu"), ("'cuda' (none here)", "cuda"), ("'cuda:7'", "cuda:7"), ("3", 3),
                       ("'gpu'", "gpu")]:  # fmt: skip
        add(cat, f"load_pipeline('tiny', device={label})",
            lambda ctx, v=dev: rl.load_pipeline("tiny", device=v), "device")  # fmt: skip
    for label, dt in [("torch.int8", torch.int8), ("'float16'", "float16"), ("torch.complex64", torch.complex64),
                      ("torch.bool", torch.bool)]:  # fmt: skip
        add(cat, f"load_pipeline('tiny', dtype={label})",
            lambda ctx, v=dt: rl.load_pipeline("tiny", device="cpu", dtype=v), "dtype")  # fmt: skip

    def sdxl_folder(ctx):
        from diffusers import StableDiffusionXLPipeline

        from rece_lite.tiny.model import build_sdxl_pipeline

        p = ctx.tmp / "sdxl"
        build_sdxl_pipeline(seed=0).save_pretrained(p)
        ctx.arm()
        pipe = rl.load_pipeline(p, device="cpu")
        if type(pipe) is not StableDiffusionXLPipeline or getattr(pipe, "text_encoder_2", None) is None:
            raise Broken(f"an SDXL folder loaded as {type(pipe).__name__}, text_encoder_2 "
                         f"{'dropped' if getattr(pipe, 'text_encoder_2', None) is None else 'kept'}")  # fmt: skip
        shutil.rmtree(p)

    add(cat, "load_pipeline(a folder saved from a small SDXL pipeline) (valid)", sdxl_folder, expect="ok")


# ============================================================================== record_attention
def register_record() -> None:
    import torch

    import rece_lite as rl

    cat = "record_attention"

    own = object()

    def rec(pipe=own, steps_run=2, **kw):
        def fn(ctx):
            target = ctx.pipe if pipe is own else pipe
            with rl.record_attention(target, **kw):
                ctx.pipe("a red circle", num_inference_steps=steps_run)

        return fn

    for arg, values in {
        "layers": [[], 99, "nope", 1.5, [0, "nope"]],
        "steps": [5, [], [10], "0", [0.5], True],
        "heads": ["max", None, 2],
        "max_resolution": [0, -4, 1.5, "32", True],
        "images": [0, -1, 2.5, None],
        "dtype": [torch.int8, "float16", torch.bool],
        "device": ["tpu", 3],
    }.items():
        for v in values:
            add(cat, f"record_attention {arg}={v!r}", rec(**{arg: v}), arg)
    add(cat, "record_attention(None)", rec(pipe=None), ("pipe", "pipeline"))
    add(cat, "record_attention(object())", rec(pipe=object()), ("pipe", "pipeline"))

    def fault(ctx):
        with rl.record_attention(ctx.pipe):
            ctx.pipe("a red circle", num_inference_steps=2)
            raise ValueError("boom inside the block")

    add(cat, "record_attention: an error inside the block (processors must come back)", fault, "boom")

    def nested(ctx):
        with rl.record_attention(ctx.pipe) as a, rl.record_attention(ctx.pipe) as b:
            ctx.pipe("a red circle", num_inference_steps=2)
        if not a.num_steps or not b.num_steps:
            raise Weak(f"nested recorders: outer recorded {a.num_steps} steps, inner {b.num_steps}")

    add(cat, "record_attention nested twice (valid; processors must come back)", nested, expect="ok")


# ============================================================================== training
def register_training() -> None:
    cat = "training"
    for label, argv, names in [
        ("--steps 0", ["--steps", "0"], "--steps"),
        ("--images 0", ["--images", "0"], "--images"),
        ("--batch -8", ["--batch", "-8"], "--batch"),
        ("--checkpoint-every 0", ["--checkpoint-every", "0"], "--checkpoint-every"),
        ("--vae-steps 0", ["--vae-steps", "0"], "--vae-steps"),
        ("--classifier-steps 0", ["--classifier-steps", "0"], "--classifier-steps"),
        ("--threads 0", ["--threads", "0"], "--threads"),
        ("--lr -1", ["--lr", "-1"], "--lr"),
        ("--lr nan", ["--lr", "nan"], "--lr"),
        ("--two-object-rate 1.5", ["--two-object-rate", "1.5"], "--two-object-rate"),
        ("--size 0", ["--size", "0"], "--size"),
        ("--size 30 (not a multiple of the VAE's factor)", ["--size", "30"], "--size"),
        ("--unet-heads 0", ["--unet-heads", "0"], "--unet-heads"),
        ("--text-width 30 --text-heads 4 (not divisible)", ["--text-width", "30", "--text-heads", "4"],
         ("--text-width", "--text-heads")),
        ("--device tpu", ["--device", "tpu"], "--device"),
        ("--steps abc", ["--steps", "abc"], "--steps"),
    ]:
        add(cat, f"train {label}", lambda ctx, a=argv: train_refused(ctx, *a), names)

    def ro_work(ctx):
        res = subproc(ctx, [PY, "-m", "rece_lite.tiny.train", "--out", str(ctx.tmp / "o"), "--work", "/proc/w",
                            *TRAIN_BASE], 40)  # fmt: skip
        expect_refusal(res, "training with a read-only --work")

    add(cat, "train --work /proc/w (read-only)", ro_work, ("--work", "/proc/w"))

    def out_in_file(ctx):
        (ctx.tmp / "f.txt").write_text("x")
        ctx.arm()
        train_refused(ctx, "--out", str(ctx.tmp / "f.txt" / "o"))

    add(cat, "train --out inside a file", out_in_file, ("--out", "f.txt"))

    def corrupt_state(ctx):
        (ctx.tmp / "w").mkdir()
        (ctx.tmp / "w" / "diffusion_state.safetensors").write_bytes(b"garbage" * 10)
        ctx.arm()
        res = train(ctx, timeout=90)
        if res.returncode == 0:
            raise Weak("a corrupt diffusion_state.safetensors was silently replaced")
        with contextlib.suppress(FileNotFoundError):
            for q in list((ctx.tmp / "w").iterdir()):  # stages before the state file are legitimate work
                if q.name != "diffusion_state.safetensors":
                    shutil.rmtree(q) if q.is_dir() else q.unlink()
        expect_refusal(res, "training with a corrupt state file")

    add(cat, "train with a corrupt diffusion_state.safetensors in --work", corrupt_state, "diffusion_state", limit=120)

    def small_run(ctx):
        res = train(ctx, timeout=120, out="o", work="w")
        if res.returncode != 0:
            raise Broken(f"a small valid run failed (exit {res.returncode}): {last_line(res.stderr)[:250]}")
        if not (ctx.tmp / "o" / "model_index.json").exists():
            raise Broken("exit 0 but --out has no model_index.json")
        keep = ctx.root / "run1"
        shutil.copytree(ctx.tmp / "o", keep)
        ctx.shared["run1"] = keep
        shutil.rmtree(ctx.tmp / "o")
        # finish, delete --out, rerun: --out must be written again
        res = train(ctx, timeout=120, out="o", work="w")
        if res.returncode != 0 or not (ctx.tmp / "o" / "model_index.json").exists():
            raise Broken(f"rerun after deleting --out: exit {res.returncode}, --out "
                         f"{'written' if (ctx.tmp / 'o').exists() else 'never written'}: {last_line(res.stdout)}")
        for q in list(ctx.tmp.iterdir()):
            shutil.rmtree(q)

    add(cat, "train a small valid run; then delete --out and rerun (valid)", small_run, expect="ok", limit=300)

    def reproducible(ctx):
        first = ctx.shared.get("run1")
        if first is None:
            raise Weak("inconclusive: the first small run failed")
        res = train(ctx, timeout=120, out="o", work="w")
        if res.returncode != 0:
            raise Broken(f"second run failed (exit {res.returncode}): {last_line(res.stderr)}")
        from safetensors.torch import load_file

        differ = []
        for part in ("unet", "text_encoder", "vae"):
            a = load_file(str(next((first / part).glob("*.safetensors"))))
            b = load_file(str(next((ctx.tmp / "o" / part).glob("*.safetensors"))))
            if a.keys() != b.keys() or any(not a[k].equal(b[k]) for k in a):
                differ.append(part)
        for q in list(ctx.tmp.iterdir()):
            shutil.rmtree(q)
        if differ:
            raise Broken(f"the same command twice with --threads 1 gives different {', '.join(differ)}")

    add(cat, "train the same small run twice with --threads 1 (must be identical)", reproducible, expect="ok",
        limit=180)

    def resume_other_seed(ctx):
        args = [PY, "-m", "rece_lite.tiny.train", "--out", str(ctx.tmp / "o"), "--work", str(ctx.tmp / "w"),
                *TRAIN_BASE, "--steps", "40", "--checkpoint-every", "1"]  # fmt: skip
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TMPDIR=str(ctx.systmp), PYTHONPATH=str(REPO))
        proc = subprocess.Popen(args, env=env, cwd=ctx.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        state = ctx.tmp / "w" / "diffusion_state.safetensors"
        deadline = time.time() + 90
        while time.time() < deadline and not state.exists() and proc.poll() is None:
            time.sleep(0.1)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if not state.exists():
            raise Weak("inconclusive: no diffusion state was written before the kill")
        ctx.arm()
        res = train(ctx, "--steps", "40", "--checkpoint-every", "1", "--seed", "1", timeout=120)
        for q in list(ctx.tmp.iterdir()):
            shutil.rmtree(q)
        ctx.arm()
        if res.returncode == 0 and "resum" in res.stdout.lower():
            raise Broken("killed mid-run, resumed with another --seed: finished silently with mixed settings "
                         f"({last_line(res.stdout)[:120]})")
        if res.returncode == 0:
            return  # it started over with the new seed: a documented choice, not a mix
        expect_refusal(res, "resume with another --seed")

    add(cat, "train killed mid-run, resumed with another --seed", resume_other_seed, ("--seed", "seed"), limit=300)


# ============================================================================== fingerprint
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


# ============================================================================== main
# ============================================================================== faults (issue 22)
# Full disks, signals at random points of every write, two processes on one output, corrupt copies of
# the model folder, files from other models, recorders misused.  Subprocesses get the fault; a probe
# passes (held) when the old target is whole or the new one is, the error is one line naming the path
# and its cause, and nothing is left behind (the next run into the same place cleans a killed one's).

def pyrun(ctx: Ctx, code: str, timeout: float = 60, fsize: int | None = None, wait: bool = True):
    """Run ``code`` in a fresh Python (this checkout's rece_lite); ``fsize``: RLIMIT_FSIZE, a disk that fills."""
    import resource

    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TMPDIR=str(ctx.systmp),
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))  # fmt: skip

    def limit():
        if fsize is not None:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))

    proc = subprocess.Popen([PY, "-c", code] if isinstance(code, str) else code, cwd=ctx.tmp, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limit)  # fmt: skip
    if not wait:
        return proc
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        return subprocess.CompletedProcess(proc.args, None, out, err)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def api_call(call: str) -> str:
    """Code for pyrun: ``call`` with ``rl`` imported; an exception is printed as one line (type: message)."""
    catch = "except Exception as e:\n    sys.exit(f'{type(e).__name__}: {e}')"
    return f"import sys, rece_lite as rl\ntry:\n    {call}\n" + catch


def one_line_refusal(res, what: str) -> None:
    """Like expect_refusal, but an I/O failure must be one line (no traceback) naming its cause."""
    expect_refusal(res, what)


def only(ctx: Ctx, *names: str) -> None:
    """Nothing but ``names`` may be in the probe's folder (hidden temp files and folders included)."""
    extra = sorted(p.name for p in ctx.tmp.iterdir() if p.name not in names)
    if extra:
        raise Broken(f"left behind: {extra[:4]}")


def clear(ctx: Ctx) -> None:
    for q in list(ctx.tmp.iterdir()):
        shutil.rmtree(q, ignore_errors=True) if q.is_dir() else q.unlink()


def tiny_erase_args(out: str = "x", *extra: str) -> list[str]:
    return [PY, "-m", "rece_lite.cli", "erase", "--concept", "red", "--out", out, "--seeds", "1", "--steps", "1",
            "--method", "uce", *extra]  # fmt: skip


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

    def inject(exc_text: str, target: str):
        def fn(ctx):
            import safetensors.torch as stt
            from safetensors import SafetensorError

            real = stt.save_file

            def failing(tensors, filename, metadata=None):
                Path(filename).write_bytes(b"half a file")
                raise SafetensorError(exc_text) if "Os {" in exc_text else OSError(28, exc_text)

            snap = rl.snapshot(ctx.pipe)
            path = ctx.tmp / "pp.safetensors"
            path.write_bytes(b"old")
            ctx.arm()
            stt.save_file = failing
            try:
                if target == "save":
                    snap.save(path)
                elif target == "lora":
                    patch = rl.uce_erase(ctx.pipe, "red")
                    snap.apply(ctx.pipe)
                    ctx.arm()
                    patch.to_lora(path, base=snap)
            finally:
                stt.save_file = real
                if path.read_bytes() != b"old":
                    raise Broken("the existing file was overwritten by a failed write")

        return fn

    rust = 'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
    add(cat, "Patch.save, safetensors reports a full disk", inject(rust, "save"), "pp.safetensors")
    add(cat, "Patch.to_lora, the disk fills", inject("No space left on device", "lora"), "pp.safetensors")

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


def register_folders() -> None:
    import torch
    from safetensors.torch import load_file, save_file

    import rece_lite as rl

    cat = "model folders"

    def truncate(rel):
        def f(folder):
            p = folder / rel
            p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])

        return f

    def empty(rel):
        return lambda folder: (folder / rel).write_bytes(b"")

    def config(rel, key, value):
        def f(folder):
            p = folder / rel
            c = json.loads(p.read_text())
            c[key] = value(c[key]) if callable(value) else value
            p.write_text(json.dumps(c))

        return f

    def nan_weights(rel):
        def f(folder):
            p = folder / rel
            t = load_file(p)
            k = sorted(t)[0]
            t[k] = t[k].clone()
            t[k].view(-1)[0] = math.nan
            save_file(t, str(p), metadata={"format": "pt"})

        return f

    cases = {
        "a truncated tokenizer.json": (truncate("tokenizer/tokenizer.json"), "tokenizer.json"),
        "a truncated text_encoder/model.safetensors": (truncate("text_encoder/model.safetensors"), "model.safetensors"),
        "a truncated unet weights file": (truncate("unet/diffusion_pytorch_model.safetensors"),
                                          "diffusion_pytorch_model.safetensors"),
        "an empty vae weights file": (empty("vae/diffusion_pytorch_model.safetensors"),
                                      "diffusion_pytorch_model.safetensors"),
        "a text_encoder config with another hidden_size": (config("text_encoder/config.json", "hidden_size",
                                                                  lambda v: 2 * v), "text_encoder"),
        "a unet config with another cross_attention_dim": (config("unet/config.json", "cross_attention_dim",
                                                                  lambda v: v + 8), "unet"),
        "a unet config that is not JSON": (lambda f: (f / "unet/config.json").write_text("{nope"), "config.json"),
        "no text_encoder folder": (lambda f: shutil.rmtree(f / "text_encoder"), "text_encoder"),
        "a truncated model_index.json": (truncate("model_index.json"), "model_index.json"),
        "NaN in the unet weights": (nan_weights("unet/diffusion_pytorch_model.safetensors"), ("unet", "nan")),
    }
    for label, (corrupt, names) in cases.items():
        def fn(ctx, corrupt=corrupt):
            folder = ctx.tmp / "model"
            shutil.copytree(rl.paths.tiny_path(), folder)
            corrupt(folder)
            ctx.arm()
            rl.load_pipeline(folder, device="cpu")

        add(cat, f"load_pipeline of a copy with {label}", fn, names)

    def cli_corrupt(ctx):
        folder = ctx.tmp / "model"
        shutil.copytree(rl.paths.tiny_path(), folder)
        truncate("text_encoder/model.safetensors")(folder)
        ctx.arm()
        cli(ctx, "erase", "--model", str(folder), "--concept", "red", "--out", "x", "--seeds", "1", "--steps", "1",
            timeout=90)  # fmt: skip

    add(cat, "rece-lite erase --model a copy with a truncated text encoder", cli_corrupt, "model.safetensors",
        limit=120)  # fmt: skip
    del torch


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


def register_recorders() -> None:
    import contextlib as cl

    import rece_lite as rl

    cat = "recorders"

    def out_of_order(ctx):
        a, b = rl.record_attention(ctx.pipe), rl.record_attention(ctx.pipe)
        a.__enter__()
        b.__enter__()
        ctx.pipe("a red circle", num_inference_steps=2)
        a.__exit__(None, None, None)
        b.__exit__(None, None, None)

    add(cat, "two recorders exited out of order (processors and hooks must go)", out_of_order, expect="ok")

    def exit_stacks(ctx):
        stacks = [cl.ExitStack() for _ in range(3)]
        for s in stacks:
            s.enter_context(rl.record_attention(ctx.pipe))
        for i in (1, 0, 2):
            stacks[i].close()

    add(cat, "three recorders in ExitStacks closed 1, 0, 2", exit_stacks, expect="ok")

    def reenter(ctx):
        r = rl.record_attention(ctx.pipe)
        with r, r:
            pass

    add(cat, "one recorder re-entered (with r: with r:)", reenter, ("recorder", "record_attention"))

    def reuse(ctx):
        r = rl.record_attention(ctx.pipe)
        with r:
            ctx.pipe("a red circle", num_inference_steps=2)
        with r:
            pass

    add(cat, "one recorder used for a second block", reuse, ("recorder", "record_attention"))

    def other_prompt(ctx):
        with rl.record_attention(ctx.pipe) as store:
            ctx.pipe("a red circle", num_inference_steps=2)
        store.word_map("blue", prompt="a blue square")

    add(cat, "store.word_map with a prompt that was not recorded", other_prompt, "prompt")

    def inner_fails(ctx):
        with rl.record_attention(ctx.pipe):
            with rl.record_attention(ctx.pipe):
                ctx.pipe("a red circle", num_inference_steps=2)
                raise ValueError("boom in the inner block")

    add(cat, "an error inside nested recorders (all processors back)", inner_fails, "boom")

    def generator_left_open(ctx):
        r = rl.record_attention(ctx.pipe)
        r.__enter__()
        ctx.pipe("a red circle", num_inference_steps=1)
        r.__exit__(ValueError, ValueError("x"), None)

    add(cat, "a recorder exited with an exception passed by hand", generator_left_open, expect="ok")


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


if __name__ == "__main__":
    sys.exit(main())
