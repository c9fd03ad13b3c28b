"""The paper's comparison on the miniature model: ``rece-lite bench --model tiny --concept red``.

One row per model — the original, an ESD-x-style fine-tune (:mod:`rece_lite.esd`), UCE and
RECE (settings: :func:`rece_lite.recipes.tiny_recipe`) — and one column per question RECE
(Gong et al., ECCV 2024, arXiv 2407.12383, Tables 1-3) asks:

* *still showing*: share of pictures from prompts naming the concept that still show it (↓);
* *attack success*: the same share for each attack of :mod:`rece_lite.attacks` (↓);
* *preservation*: joint shape-and-colour accuracy on prompts of the other concepts, as a
  share of the original model's (↑);
* *KID*: a kernel distance (polynomial-kernel MMD², unbiased, as KID) between the
  evaluator CNN's features of the model's pictures of those unrelated prompts and the
  original model's pictures of them drawn with other seeds (↓; the original's own row is
  the noise floor).  Features are standardised by the reference pictures' mean and
  standard deviation, so the kernel sees values of order one, as KID's Inception features;
* *edit time*: wall time of the erasure itself, median of repeated runs for UCE and RECE,
  one run for ESD (which includes drawing its training pictures: ESD samples from the
  model as part of its training).

:func:`write` puts ``bench.json``, ``bench.md`` and ``bench.png`` in a folder (the command
fills it through :func:`rece_lite.files.staged_dir`, so it appears whole or not at all).
Measurements use the miniature world's classifiers, so the
model must draw that world: ``tiny`` or a checkpoint of it.  The closed-form rows are the
methods of :data:`rece_lite.methods.METHODS`; the kernel distance and the features it compares
are :func:`rece_lite.evaluate.kernel_distance` and :func:`rece_lite.evaluate.features`.  A
prompt file on any model is :mod:`rece_lite.prompt_file` (its names are re-exported here).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import diffusers
import numpy as np
import torch

from rece_lite import attacks as atk
from rece_lite import evaluate as ev
from rece_lite import methods
from rece_lite._version import __version__
from rece_lite.errors import InputError
from rece_lite.esd import esd_erase
from rece_lite.evaluate import features, kernel_distance  # noqa: F401  (re-exported: bench.kernel_distance)
from rece_lite.patch import Patch, snapshot
from rece_lite.prompt_file import (  # noqa: F401  (re-exported: the prompt-file run's old home)
    Judge,
    PromptFileReport,
    PromptFileRow,
    PromptRow,
    load_judge,
    prompt_file_markdown,
    prompt_file_run,
    read_prompts,
    write_prompt_file,
)
from rece_lite.recipes import Recipe, tiny_recipe
from rece_lite.sampling import sample
from rece_lite.settings import SAMPLING, SamplingSettings
from rece_lite.tiny.world import Concept

#: The table's rows: the original, ESD-x, then every compared method (:func:`rece_lite.methods.compared`).
MODELS: tuple[str, ...] = ("original", "ESD-x", *(m.label for m in methods.compared()))
COLUMNS: dict[str, str] = {
    "showing": "still showing ↓",
    "paraphrase": "paraphrase ↓",
    "soft_prompt": "soft prompt ↓",
    "concept_vector": "concept vector ↓",
    "preservation": "preservation ↑",
    "kid": "KID ↓",
    "seconds": "edit time (s)",
}


# ---------------------------------------------------------------------------- run
@dataclass(frozen=True)
class Edit:
    """One erased model of the benchmark.

    Attributes:
        patch: its cross-attention weights (the original model's: a snapshot).
        seconds: edit time: the median of ``runs`` (None for the original).
        runs: the wall time of every timed run.
    """

    patch: Patch
    seconds: float | None
    runs: tuple[float, ...]


def erase_all(
    pipe, concept: str, recipe, *, esd_kw: dict | None = None, repeats: int = 5, progress: bool = True
) -> dict[str, Edit]:
    """The four models of the table, as patches of ``pipe`` (left with its original weights).

    ESD-x runs once (:func:`rece_lite.esd.esd_erase` with ``esd_kw``); UCE and RECE run
    ``repeats`` times each from the original weights, and their median time is reported.
    Works on any SD 1.x pipeline (e.g. SD 1.4 on a GPU, with ``rece_lite.recipes.sd_recipe``).

    Args:
        recipe: a :class:`rece_lite.recipes.Recipe` for UCE and RECE.
    """
    snap = snapshot(pipe)
    out = {"original": Edit(snap, None, ())}
    try:
        esd = esd_erase(pipe, concept, progress=progress, **(esd_kw or {}))
        out["ESD-x"] = Edit(esd.patch, esd.seconds, (esd.seconds,))
        for method in methods.compared():
            runs = []
            for _ in range(max(1, repeats)):
                snap.apply(pipe)
                t0 = time.perf_counter()
                patch = method.run(pipe, recipe, False).patch
                runs.append(time.perf_counter() - t0)
            out[method.label] = Edit(patch, statistics.median(runs), tuple(runs))
    finally:
        snap.apply(pipe)
    return out


@dataclass(frozen=True)
class BenchRow:
    """One model of the table (shares of pictures, 0 to 1).

    Attributes:
        showing: pictures from prompts naming the concept that still show it.
        attacks: per attack, the share of its pictures showing the concept (its success rate).
        soft_prompt_found: the prompts the soft-prompt attack found.
        others_accuracy: joint shape-and-colour accuracy on the other concepts' prompts.
        preservation: ``others_accuracy`` as a share of the original model's (NaN if that is 0).
        kid: the kernel distance to the original model's pictures of those prompts.
        seconds: edit time (None for the original).
        seconds_runs: every timed run.
    """

    showing: float
    attacks: dict[str, float]
    soft_prompt_found: list[str]
    others_accuracy: float
    preservation: float
    kid: float
    seconds: float | None
    seconds_runs: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class BenchReport:
    """The whole table and how it was made (``asdict`` gives ``bench.json``)."""

    concept: str
    rows: dict[str, BenchRow]
    settings: dict
    versions: dict[str, str]
    threads: int
    wall_seconds: float
    model: str = "tiny"
    command: str = ""


def run(
    pipe,
    concept: str,
    *,
    seeds: Sequence[int] = range(8),
    steps: int = SAMPLING.steps,
    repeats: int = 5,
    recipe: Recipe | None = None,
    esd_kw: dict | None = None,
    soft_prompt_kw: dict | None = None,
    concept_vector_kw: dict | None = None,
    edits: dict[str, Edit] | None = None,
    progress: bool = True,
    model: str = "tiny",
    command: str = "",
) -> BenchReport:
    """Erase ``concept`` four ways and measure each model; ``pipe`` ends with its original weights.

    Args:
        pipe: the miniature model (or a checkpoint of it), original weights.
        concept: a colour or shape of the miniature world.
        seeds: sampling seeds per prompt for every measurement.
        steps: sampling steps.
        repeats: timed runs of UCE and RECE (median reported); ESD runs once.
        recipe: UCE's and RECE's settings (default: :func:`rece_lite.recipes.tiny_recipe`).
        esd_kw, soft_prompt_kw, concept_vector_kw: extra settings for
            :func:`rece_lite.esd.esd_erase` and the attacks.
        edits: the four models from :func:`erase_all` if already made (then ``esd_kw``
            and ``repeats`` are not used).
        model, command: recorded in the report.
    """
    t_start = time.perf_counter()
    seeds = [int(s) for s in seeds]
    c = Concept.parse(concept)
    recipe = recipe or tiny_recipe(c)
    snap = snapshot(pipe)
    named = c.prompts()
    others, o_shapes, o_colours = c.other_prompts()
    kw = dict(steps=steps)
    say = (lambda msg: print(msg, flush=True)) if progress else (lambda msg: None)  # noqa: E731

    # 1. the original model's reference pictures for KID, and the soft prompt's targets
    say("original model: reference pictures ...")
    ref = features(sample(pipe, others, seeds=[500 + s for s in seeds], **kw))
    # KID's kernel expects features of order one: standardise by the reference pictures' statistics
    mu, sd = ref.mean(0), ref.std(0).clamp_min(1e-6)
    ref = (ref - mu) / sd
    sp_kw = dict(soft_prompt_kw or {})
    if "target_images" not in sp_kw:
        per = sp_kw.pop("targets_per_prompt", 4)
        sp_kw["target_images"] = sample(pipe, named, seeds=[1000 + i for i in range(per)], **kw)

    # 2. the four models
    if edits is None:
        say("erasing: ESD-x (fine-tuning), UCE and RECE (closed forms) ...")
        edits = erase_all(pipe, c.name, recipe, esd_kw=esd_kw, repeats=repeats, progress=progress)
    elif set(edits) != set(MODELS):
        raise InputError(f"edits must hold the models {', '.join(MODELS)} (from erase_all)")

    # 3. each model: the concept's prompts, the attacks, the other prompts
    measured: dict[str, dict] = {}
    try:
        for name in MODELS:
            say(f"{name}: measuring ...")
            edits[name].patch.apply(pipe)
            erased = sample(pipe, named, seeds=seeds, **kw)
            found = atk.run_attacks(
                pipe, c.name, original=snap, seeds=seeds, steps=steps, soft_prompt_kw=sp_kw,
                concept_vector_kw=concept_vector_kw, progress=progress,
            )  # fmt: skip
            imgs = sample(pipe, others, seeds=seeds, **kw)
            k = len(seeds)
            acc = ev.accuracy(ev.classify(imgs), [s for s in o_shapes for _ in range(k)],
                              [col for col in o_colours for _ in range(k)])  # fmt: skip
            measured[name] = dict(
                showing=atk.judge_images(erased, c.name)[1],
                attacks={a: r.success_rate for a, r in found.items()},
                soft_prompt_found=list(found["soft_prompt"].prompts) if "soft_prompt" in found else [],
                others_accuracy=acc["both"],
                kid=kernel_distance((features(imgs) - mu) / sd, ref),
                seconds=edits[name].seconds,
                seconds_runs=list(edits[name].runs),
            )
    finally:
        snap.apply(pipe)

    # 4. preservation relative to the original
    base = measured["original"]["others_accuracy"]
    rows = {
        name: BenchRow(**m, preservation=m["others_accuracy"] / base if base > 0 else math.nan)
        for name, m in measured.items()
    }
    settings = {
        "recipe": asdict(recipe),
        "seeds": seeds,
        "sampling": asdict(SamplingSettings(steps=steps)),
        "repeats": len(edits["UCE"].runs),
        "esd": dict(edits["ESD-x"].patch.metadata),
        "soft_prompt": {k: v for k, v in sp_kw.items() if k != "target_images"},
        "concept_vector": dict(concept_vector_kw or {}),
        "named_prompts": named,
        "other_prompts": others,
    }
    versions = {"rece_lite": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__}
    return BenchReport(c.name, rows, settings, versions, torch.get_num_threads(), time.perf_counter() - t_start,
                       model, command)  # fmt: skip


# -------------------------------------------------------------------------- output
def _percent(v: float | None) -> str:
    return "—" if v is None or math.isnan(v) else f"{v:.0%}"


def _cell(row: BenchRow, col: str) -> str:
    if col == "seconds":
        s = row.seconds
        return "—" if s is None else (f"{s:.3f}" if s < 10 else f"{s:.1f}")
    if col == "kid":
        return f"{row.kid:.3f}"
    return _percent(row.attacks.get(col) if col in atk.ATTACKS else getattr(row, col))


def markdown(report: BenchReport) -> str:
    """The table as Markdown, with a line saying how it was measured."""
    rows = report.rows
    cols = [c for c in COLUMNS if c not in atk.ATTACKS or any(c in r.attacks for r in rows.values())]
    lines = [
        "| model | " + " | ".join(COLUMNS[c] for c in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for model, row in rows.items():
        lines.append(f"| {model} | " + " | ".join(_cell(row, c) for c in cols) + " |")
    s = report.settings
    ratio = ""
    esd, rece = rows.get("ESD-x"), rows.get("RECE")
    if esd and rece and esd.seconds and rece.seconds:
        ratio = f" ESD-x took {esd.seconds / rece.seconds:,.0f}x RECE's time."
    lines += [
        "",
        f"Concept erased: **{report.concept}**. {len(s['seeds'])} seeds per prompt, {s['sampling']['steps']} "
        f"sampling steps; rates are shares of pictures the evaluator labels {report.concept!r}. Preservation: "
        "joint accuracy on the other concepts' prompts relative to the original model. Edit time: median of "
        f"{s['repeats']} runs (ESD-x: one run, its training pictures included).{ratio}",
    ]
    return "\n".join(lines) + "\n"


def plot(report: BenchReport):
    """Bars per model: the rates (left) and the edit time, log scale (right)."""
    from matplotlib.figure import Figure  # no pyplot: works headless and leaves a notebook's backend alone

    rows = report.rows
    models = list(rows)
    metrics = ["showing", *rows[models[0]].attacks, "preservation"]
    fig = Figure(figsize=(10, 3.4))
    ax, axt = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 1]})
    w = 0.8 / len(models)
    for i, m in enumerate(models):
        vals = [rows[m].attacks[k] if k in rows[m].attacks else getattr(rows[m], k) for k in metrics]
        ax.bar(np.arange(len(metrics)) + (i - (len(models) - 1) / 2) * w, vals, w, label=m)
    ax.set_xticks(range(len(metrics)), [COLUMNS[k] for k in metrics], fontsize=8)
    ax.set_ylim(0, 1.22)
    ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
    ax.set_ylabel("share of pictures")
    ax.set_title(f"erasing {report.concept!r}: lower is better, except preservation", fontsize=9)
    ax.legend(fontsize=7, frameon=False, ncols=len(models), loc="upper center")
    timed = [m for m in models if rows[m].seconds]
    axt.bar(timed, [rows[m].seconds for m in timed], color=[f"C{models.index(m)}" for m in timed])
    axt.set_yscale("log")
    axt.set_ylabel("edit time (s)")
    axt.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    return fig


def write(report: BenchReport, folder: str | os.PathLike) -> None:
    """``bench.json``, ``bench.md`` and ``bench.png`` into ``folder`` (an existing folder: the command's
    staged one, which appears whole or not at all)."""
    folder = Path(folder)
    (folder / "bench.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    (folder / "bench.md").write_text(markdown(report))
    plot(report).savefig(folder / "bench.png", dpi=110, format="png")
