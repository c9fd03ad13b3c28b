"""Helpers the notebooks share: the environment cell, numbers in prose, claims checked against seed noise.

* :func:`environment` — the first cell of every notebook: versions, device, threads, whether the
  embedded model is there, and what to do if something is missing.
* :func:`say` — Markdown whose numbers come from variables (``say("{share:.0%} still red", share=x)``),
  so that prose cannot go stale: rerun the notebook and the sentence changes with the measurement.
* :func:`noise` and :func:`claim` — a notebook's claim about a share of pictures ("UCE leaves
  at most 20% of red prompts red") is asserted with a margin derived from seed noise: a share
  ``p`` measured on ``n`` independent pictures has a binomial standard error
  ``sqrt(p (1 - p) / n)``; a claim holds if the measurement clears its bound by less than
  three such errors the wrong way.  The margin says how far another set of seeds could
  plausibly move the number, so a notebook neither overclaims nor fails on a lucky seed.
* ``check_*`` — the exercises' checks: each takes the learner's answer, says what is right or
  wrong in a sentence, and raises ``AssertionError`` when it is wrong (the notebooks' hidden
  solutions call them, so the test suite proves every exercise can be solved).
"""

from __future__ import annotations

import math
import os
import platform
from collections.abc import Callable

import numpy as np
import torch

from rece_lite._version import __version__
from rece_lite.paths import classifier_path, tiny_path


# ------------------------------------------------------------------- environment
def environment(device: str | None = None) -> dict[str, str]:
    """Print (and return) what this notebook runs on, and what to do if something is missing."""
    import diffusers
    import transformers

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    info = {
        "rece-lite": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "device": dev + (f" ({torch.cuda.get_device_name()})" if dev.startswith("cuda") else ""),
        "threads": str(torch.get_num_threads()),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "0"),
    }
    print("  ".join(f"{k} {v}" for k, v in info.items()))
    missing = [p for p in (tiny_path() / "model_index.json", classifier_path()) if not p.exists()]
    if missing:
        print(
            "The embedded model is missing (" + ", ".join(map(str, missing)) + "): reinstall rece-lite "
            "(`pip install -e .` in a checkout), or retrain it with `python -m rece_lite.tiny.train`."
        )
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("1", "true", "yes"):
        print("Tip: set HF_HUB_OFFLINE=1 so that nothing tries to reach the Hugging Face hub.")
    return info


# ------------------------------------------------------------------------- prose
def say(text: str, **values) -> str:
    """Display Markdown with ``values`` formatted in (``str.format``); returns the text."""
    md = text.format(**values)
    try:
        from IPython.display import Markdown, display

        display(Markdown(md))
    except ImportError:  # outside Jupyter
        print(md)
    return md


# ---------------------------------------------------------------- claims + noise
def noise(share: float, n: int) -> float:
    """The binomial standard error of a share measured on ``n`` independent pictures.

    ``share`` is clipped to ``[1/n, 1 - 1/n]`` so that a measured 0% or 100% still has a
    margin: with 32 pictures a true rate of 3% shows as 0% a third of the time.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    p = min(max(share, 1 / n), 1 - 1 / n) if n > 1 else 0.5
    return math.sqrt(p * (1 - p) / n)


def claim(measured: float, *, n: int, at_most: float | None = None, at_least: float | None = None,
          what: str = "the share", z: float = 3.0) -> float:  # fmt: skip
    """Assert a notebook's claim about a share of ``n`` pictures, within ``z`` seed-noise errors.

    Args:
        measured: the share measured.
        n: how many independent pictures it was measured on.
        at_most / at_least: the claim's bound (give one or both).
        what: the claim in words, for the message.
        z: how many standard errors of slack (3: a claim that is true fails less than 0.2% of the time).

    Returns:
        The margin used (``z`` standard errors).
    """
    if at_most is None and at_least is None:
        raise ValueError("give at_most= or at_least=")
    margin = z * noise(measured, n)
    seen = f"{what}: measured {measured:.1%} on {n} pictures"
    if at_most is not None and measured > at_most + margin:
        raise AssertionError(f"{seen}, claimed at most {at_most:.0%} (noise margin {margin:.1%})")
    if at_least is not None and measured < at_least - margin:
        raise AssertionError(f"{seen}, claimed at least {at_least:.0%} (noise margin {margin:.1%})")
    return margin


def differ(a: float, b: float, *, n_a: int, n_b: int, what: str = "the difference", z: float = 3.0) -> float:
    """Assert that share ``a`` is larger than share ``b`` by more than seed noise; returns the margin."""
    margin = z * math.sqrt(noise(a, n_a) ** 2 + noise(b, n_b) ** 2)
    if a - b <= margin:
        raise AssertionError(f"{what}: {a:.1%} vs {b:.1%} is within seed noise (margin {margin:.1%})")
    return margin


# --------------------------------------------------------------------- exercises
def _report(ok: bool, good: str, bad: str) -> None:
    if not ok:
        raise AssertionError(bad)
    print("✓ " + good)


def check_close(answer, expected, *, rtol: float = 1e-6, atol: float = 1e-8, what: str = "your answer") -> None:
    """Check a numeric answer (a number, array or tensor) against the expected value."""
    if answer is None:
        print(f"(not answered yet: compute {what})")
        return
    a = np.asarray(answer.detach().cpu() if isinstance(answer, torch.Tensor) else answer, dtype=np.float64)
    e = np.asarray(expected.detach().cpu() if isinstance(expected, torch.Tensor) else expected, dtype=np.float64)
    if a.shape != e.shape:
        raise AssertionError(f"{what} has shape {a.shape}, expected {e.shape}")
    err = float(np.max(np.abs(a - e) / (atol + rtol * np.abs(e)))) if a.size else 0.0
    _report(err <= 1, f"{what} is right", f"{what} is off: largest error {err:.3g}x the tolerance")


def check_choice(answer, expected, *, what: str = "your answer", why: str = "") -> None:
    """Check a multiple-choice or short answer (compared after ``str().strip().lower()``)."""
    if answer is None:
        print(f"(not answered yet: {what})")
        return
    norm = lambda x: str(x).strip().lower()  # noqa: E731
    _report(norm(answer) == norm(expected), f"{what}: right. {why}".strip(), f"{what}: not quite. {why}".strip())


def check_function(fn: Callable | None, reference: Callable, cases: list[tuple], *, what: str = "your function",
                   rtol: float = 1e-6, atol: float = 1e-8) -> None:  # fmt: skip
    """Check a learner's function against a reference on a few argument tuples."""
    if fn is None:
        print(f"(not answered yet: write {what})")
        return
    for args in cases:
        check_close(fn(*args), reference(*args), rtol=rtol, atol=atol, what=f"{what}{_short(args)}")


def _short(args: tuple) -> str:
    parts = [f"{tuple(a.shape)}" if hasattr(a, "shape") else repr(a) for a in args]
    return "(" + ", ".join(parts) + ")"
