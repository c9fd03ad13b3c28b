"""The probe harness: what a probe is, how it runs, and how it is judged.

A probe (:class:`Probe`, registered with :func:`add`) makes one bad call or one fault in a fresh temp
folder; :func:`run_probe` runs it under a 60 s alarm and :func:`judge` calls it held, weak or broken
(see :mod:`bad_inputs.run`'s docstring for the three verdicts).  Also the helpers every catalogue
shares: tensors, subprocesses of this checkout, the CLI and training commands, and (issue 22) the
fault helpers that run code in a fresh Python with a full disk or without waiting.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]  # the checkout: benchmarks/bad_inputs/harness.py
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


# ============================================================================== faults (issue 22)
# Full disks, signals at random points of every write, two processes on one output, corrupt copies of
# the model folder, files from other models, recorders misused.  Subprocesses get the fault; a probe
# passes (held) when the old target is whole or the new one is, the error is one line naming the path
# and its cause, and nothing is left behind (the next run into the same place cleans a killed one's).

@contextlib.contextmanager
def disk_fails_mid_write(exc: BaseException):
    """Inside the block, every file :func:`rece_lite.files.save_tensors` writes gets half its bytes, then ``exc``
    (the library writes the serialised bytes itself, through ``os.fdopen``)."""
    from rece_lite import files

    real = files.os.fdopen

    class Failing:
        def __init__(self, fd, mode):
            self.f = real(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise exc

    files.os.fdopen = Failing
    try:
        yield
    finally:
        files.os.fdopen = real


def pyrun(ctx: Ctx, code: str, timeout: float = 60, fsize: int | None = None, wait: bool = True):
    """Run ``code`` in a fresh Python (this checkout's rece_lite); ``fsize``: RLIMIT_FSIZE, a disk that fills."""
    import resource

    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TMPDIR=str(ctx.systmp),
               TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(REPO))  # fmt: skip

    def limit():
        # SIGINT as a terminal delivers it: a probe started in the background (`cmd &`) ignores SIGINT, and its
        # children would inherit that (Python then installs no KeyboardInterrupt handler)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
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
