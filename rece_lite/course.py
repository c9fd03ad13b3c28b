"""Helpers the notebooks share: the environment cell, numbers in prose, claims held to a one-sided 95% confidence bound.

* :func:`environment` — the first cell of every notebook: versions, device, threads, whether the
  embedded model is there, and what to do if something is missing.
* :func:`say` — Markdown whose numbers come from variables (``say("{share:.0%} still red", share=x)``),
  so that prose cannot go stale: rerun the notebook and the sentence changes with the measurement.
* :func:`claim` and :func:`differ` — a notebook's claim about a share of pictures ("UCE leaves
  at most 20% of red prompts red") holds only where the measurement's one-sided 95% confidence
  bound supports it: "at most X" when the Clopper-Pearson upper bound is <= X, "at least X"
  when the lower bound is >= X, "A above B" when Newcombe's lower bound of A - B is above 0.
  A false claim passes less than 5% of the time; a true one needs enough pictures
  (:func:`claim_seeds` gives held-out seeds, 100 on; nothing was tuned on them).
  :func:`noise` is the binomial standard error, for error bars.
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

    from rece_lite.loading import default_device  # the one rule: cuda, else mps, else cpu

    dev = device or default_device()
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
#: Which seeds are for what (notebook 02 says it once). The miniature model's recipe and every threshold
#: were chosen on seeds 0-7 (``rece_lite.recipes.tiny_recipe``); pictures that only illustrate use 0-99;
#: every measured claim uses seeds from ``CLAIM_SEEDS_START`` on, which nothing was ever chosen on.
CLAIM_SEEDS_START = 100
CONFIDENCE = 0.95


def claim_seeds(k: int, *, offset: int = 0) -> range:
    """``k`` held-out seeds for a claim (``100 + offset`` on), disjoint from the tuning seeds 0-7."""
    if k < 1 or offset < 0:
        raise ValueError(f"need k >= 1 and offset >= 0, got k={k}, offset={offset}")
    return range(CLAIM_SEEDS_START + offset, CLAIM_SEEDS_START + offset + k)


def noise(share: float, n: int) -> float:
    """The binomial standard error of a share measured on ``n`` independent pictures (for error bars).

    ``share`` is clipped to ``[1/n, 1 - 1/n]`` so that a measured 0% or 100% still has a
    bar: with 32 pictures a true rate of 3% shows as 0% a third of the time.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    p = min(max(share, 1 / n), 1 - 1 / n) if n > 1 else 0.5
    return math.sqrt(p * (1 - p) / n)


def _count(share: float, n: int) -> float:
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if not share >= 0.0:  # also refuses NaN
        raise ValueError(f"a share must be >= 0, got {share}")
    return min(share * n, float(n))  # a ratio such as preservation may exceed 1: counted as all n


def upper_bound(share: float, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper bound of a share measured on ``n`` pictures.

    With ``k = share * n`` pictures counted, the bound is the ``p`` at which seeing ``k`` or fewer
    has probability ``1 - confidence``: ``Beta(confidence; k + 1, n - k)`` (1 when ``k = n``).
    If the true share were above it, a measurement this low would happen less than 5% of the time.
    """
    from scipy.stats import beta

    k = _count(share, n)
    return 1.0 if k >= n else float(beta.ppf(confidence, k + 1, n - k))


def lower_bound(share: float, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson lower bound: ``Beta(1 - confidence; k, n - k + 1)`` (0 when ``k = 0``)."""
    from scipy.stats import beta

    k = _count(share, n)
    return 0.0 if k <= 0 else float(beta.ppf(1 - confidence, k, n - k + 1))


def _wilson(share: float, n: int, z: float) -> tuple[float, float]:
    p = _count(share, n) / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return centre - half, centre + half


def difference_lower_bound(a: float, b: float, n_a: int, n_b: int, confidence: float = CONFIDENCE) -> float:
    """One-sided lower bound of ``a - b`` for two independent shares (Newcombe's hybrid Wilson score method).

    ``L = (a - b) - sqrt((a - l_a)^2 + (u_b - b)^2)``, with ``l_a`` the Wilson lower bound of ``a`` and
    ``u_b`` the Wilson upper bound of ``b`` at the same one-sided confidence.
    """
    from scipy.stats import norm

    z = float(norm.ppf(confidence))
    l_a, _ = _wilson(a, n_a, z)
    _, u_b = _wilson(b, n_b, z)
    return (a - b) - math.sqrt((a - l_a) ** 2 + (u_b - b) ** 2)


def claim(measured: float, *, n: int, at_most: float | None = None, at_least: float | None = None,
          what: str = "the share", quiet: bool = False) -> float:  # fmt: skip
    """Assert a claim about a share of ``n`` pictures only where its 95% confidence bound supports it.

    "At most X" holds when the one-sided 95% upper bound (Clopper-Pearson) of the measured share is
    ``<= X``; "at least X" when the lower bound is ``>= X``. A false claim (true share above X for
    "at most") therefore passes less than 5% of the time, on any seeds; a true claim passes only
    when enough pictures were drawn. Prints the measurement and the bound.

    Args:
        measured: the share measured (a count divided by ``n``).
        n: how many independent pictures it was measured on.
        at_most / at_least: the claim's bound (give one or both).
        what: the claim in words, for the message.

    Returns:
        The bound checked (the upper bound for ``at_most``, else the lower bound).
    """
    if at_most is None and at_least is None:
        raise ValueError("give at_most= or at_least=")
    seen = f"{what}: measured {measured:.1%} of {n} pictures"
    lines, bound = [], None
    if at_least is not None:
        bound = lo = lower_bound(measured, n)
        if lo < at_least:
            raise AssertionError(f"{seen}; 95% lower bound {lo:.1%} < {at_least:.0%} claimed: not supported")
        lines.append(f"95% lower bound {lo:.1%} >= {at_least:.0%}")
    if at_most is not None:
        bound = hi = upper_bound(measured, n)
        if hi > at_most:
            raise AssertionError(f"{seen}; 95% upper bound {hi:.1%} > {at_most:.0%} claimed: not supported")
        lines.append(f"95% upper bound {hi:.1%} <= {at_most:.0%}")
    if not quiet:
        print(f"✓ {seen}; " + "; ".join(lines))
    return bound


def differ(a: float, b: float, *, n_a: int, n_b: int, what: str = "the difference", quiet: bool = False) -> float:
    """Assert that share ``a`` is larger than share ``b``: the 95% lower bound of ``a - b`` is above zero.

    Uses :func:`difference_lower_bound` (Newcombe). Prints both shares and the bound; returns the bound.
    """
    lo = difference_lower_bound(a, b, n_a, n_b)
    seen = f"{what}: {a:.1%} of {n_a} vs {b:.1%} of {n_b} pictures"
    if lo <= 0:
        raise AssertionError(f"{seen}; 95% lower bound of the difference {lo:+.1%} <= 0: not supported")
    if not quiet:
        print(f"✓ {seen}; 95% lower bound of the difference {lo:+.1%} > 0")
    return lo


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


# ------------------------------------------------------------- predict, then measure
def predict(prediction, measured, *, what: str = "your prediction", tol: float | None = None) -> bool | None:
    """Compare a learner's prediction (written *before* measuring) with the measurement; never raises.

    A prediction may be wrong: that is the point of writing it down first. Numbers match within ``tol``
    (absolute; default 10% of the measurement's size, at least 0.05); words match after
    ``str().strip().lower()``. Returns whether they matched, or None while either is missing.
    """
    if prediction is None:
        print(f"(not answered yet: write your prediction for {what} first, then measure)")
        return None
    if measured is None:
        print(f"(you predicted {prediction!r} for {what}; now measure it)")
        return None
    if isinstance(prediction, str) or isinstance(measured, str):
        ok = str(prediction).strip().lower() == str(measured).strip().lower()
        print(f"{what}: you predicted {prediction!r}, measured {measured!r}: " + ("as predicted." if ok else
              "not as predicted. Which step of your reasoning does the measurement contradict?"))  # fmt: skip
        return ok
    p, m = float(prediction), float(measured)
    t = tol if tol is not None else max(0.05, 0.1 * abs(m))
    ok = abs(p - m) <= t
    print(
        f"{what}: you predicted {p:.3g}, measured {m:.3g} (off by {abs(p - m):.3g}; tolerance {t:.3g}): "
        + ("as predicted." if ok else "not as predicted. Which step of your reasoning does it contradict?")
    )
    return ok


def _colour_most_drawn(labels) -> tuple[str, str]:
    from collections import Counter

    return Counter(labels.colours).most_common(1)[0][0], "the guide tells the edited model what red looks like instead."


# The exercises' expected answers live here, not in the learner's cell: key -> (context -> (answer, why)).
ANSWERS: dict[str, Callable[..., tuple[object, str]]] = {
    "01.4": lambda d: (np.zeros((1, d)), "N c = λc + c*‖c‖² = 0 for this guide, so M c = N A⁻¹ c = 0."),
    "01.4b": lambda: (
        "yes, no",
        "W M x = W c needs c − M x in W's null space: the 3 × 4 toy has one; a full-column-rank stack does not.",
    ),
    "02.1": lambda tokenizer: (
        tokenizer.convert_ids_to_tokens(tokenizer("a dog star").input_ids)[2],
        "the tokenizer knows only its vocabulary's words; anything else is one unknown token.",
    ),
    "02.2": lambda nearest: (nearest["red"], "the encoder learned synonyms from captions alone."),
    "07.1": lambda n: (1 - 0.05 ** (1 / n), "(1 − X)^n = 0.05 at the bound: X = 1 − 0.05^(1/n), about 3/n."),
    "07.2": lambda: (0.0, "the mean of E(neutral_i) + v is the mean of E(named_i), by v's definition."),
    "07.4": lambda: ("concept vector", "it adds a vector to the text encoder's output; the other two feed words."),
    "08.1": lambda report: (report.rows["RECE"].attacks["concept_vector"], "a BenchRow's attacks dict, by name."),
    "08.2": lambda u, r, n: (
        difference_lower_bound(u, r, n, n),
        "Newcombe's bound: (u − r) − sqrt((u − l_u)² + (u_r − r)²).",
    ),
    "08.3": lambda: (42, "a row without an evaluation_seed gets default_seed."),
    "08.4": lambda: ("original", "the original model compared with its own pictures from other seeds."),
    "03.1": lambda labels: _colour_most_drawn(labels),
    "03.4": lambda: ("smaller", "λ pulls the new weights toward the current ones: M → I as λ grows."),
    "04.1": lambda vocabulary, nearest: (vocabulary[int(nearest.indices[0])], "distances, not a 2-D picture, decide."),
    "04.3": lambda: ("grow", "the surrogate trades the original's keys and values for the edited model's own."),
    "05.3": lambda: ("worse", "a larger ridge term never fits better: the fit term is minimised over a smaller ball."),
    "06.1": lambda: (1.0, "a uniform map puts on the object exactly the object's share of the picture."),
    "06.2": lambda probe: (1 / float(probe.mean()), "all the mass on the object: 1 / (its share of the picture)."),
    "06.3": lambda per_token: (int(per_token.mean(0).argmax()), "the position whose average share is the largest."),
    "06.4": lambda: ("false", "a map shows where the pixels look (keys), not what the words say (values)."),
}


def check_answer(key: str, answer, *, rtol: float = 1e-6, atol: float = 1e-8, **context) -> None:
    """Check the answer to exercise ``key`` ("03.4") against the answer key; raises when it is wrong."""
    if key not in ANSWERS:
        raise KeyError(f"no exercise {key!r}; known: {', '.join(sorted(ANSWERS))}")
    if answer is None:
        print(f"(not answered yet: exercise {key})")
        return
    expected, why = ANSWERS[key](**context)
    if isinstance(expected, str):
        check_choice(answer, expected, what=f"exercise {key}", why=why)
    else:
        check_close(answer, expected, rtol=rtol, atol=atol, what=f"exercise {key}")
