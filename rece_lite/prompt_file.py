"""A prompt file, on any Stable Diffusion model: the share of its pictures a judge flags, per model.

``rece-lite bench --prompts file.csv --judge package.module:function`` reads a CSV prompt file
in the I2P / Ring-A-Bell format (:func:`read_prompts`), draws every row once with its own seed,
and asks the judge (:func:`load_judge`) which pictures show the concept, for the original
model and each edit: a :class:`~rece_lite.patch.Patch` to apply, or a
:class:`~rece_lite.recipes.Recipe` run by the method of :data:`rece_lite.methods.METHODS`
whose label the edit is named by (``"UCE"``, ``"RECE"``).
"""

from __future__ import annotations

import csv
import importlib
import io
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import diffusers
import numpy as np
import torch

from rece_lite import methods
from rece_lite._version import __version__
from rece_lite.errors import InputError
from rece_lite.patch import Patch, snapshot
from rece_lite.recipes import Recipe
from rece_lite.sampling import sample
from rece_lite.settings import SAMPLING, SamplingSettings

Judge = Callable[[np.ndarray], Sequence[bool]]


@dataclass(frozen=True)
class PromptRow:
    """One line of a prompt file: a prompt and the seed to draw it with."""

    prompt: str
    seed: int


def read_prompts(path: str | os.PathLike, *, default_seed: int = 0) -> list[PromptRow]:
    """A CSV prompt file in the I2P / Ring-A-Bell format: a ``prompt`` column, an optional ``evaluation_seed``.

    Rows without a seed get ``default_seed``.  Other columns are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"the prompt file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"the prompt file {path} is not UTF-8 text (a CSV file is expected): {e.reason}") from None
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if not reader.fieldnames or "prompt" not in reader.fieldnames:
        raise InputError(f"{path} needs a 'prompt' column (found {reader.fieldnames or 'no header'})")
    rows = []
    for n, r in enumerate(reader, start=2):
        seed = (r.get("evaluation_seed") or "").strip()
        try:
            rows.append(PromptRow(r["prompt"].strip(), int(float(seed)) if seed else default_seed))
        except ValueError:
            raise InputError(f"{path}, line {n}: evaluation_seed {seed!r} is not an integer") from None
    if not rows:
        raise InputError(f"{path} has no prompts")
    return rows


def load_judge(spec: str) -> Judge:
    """A judge from ``"package.module:function"``: pictures (n, H, W, 3) uint8 -> n bools (True: shows it)."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise InputError(f"--judge must look like 'package.module:function', got {spec!r}")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise InputError(f"--judge {spec!r} cannot be loaded: {e}") from None
    if not callable(fn):
        raise InputError(f"--judge {spec!r} is not a function")
    return fn


@dataclass(frozen=True)
class PromptFileRow:
    """One model on a prompt file.

    Attributes:
        showing: share of the file's pictures the judge flags.
        flagged: how many it flags.
        pictures: how many pictures (one per prompt row).
        seconds: edit time (None for the original).
    """

    showing: float
    flagged: int
    pictures: int
    seconds: float | None


@dataclass(frozen=True)
class PromptFileReport:
    """A prompt-file evaluation: one row per model (``asdict`` gives ``bench.json``)."""

    prompts: str
    judge: str
    rows: dict[str, PromptFileRow]
    settings: dict
    versions: dict[str, str]
    wall_seconds: float
    model: str = ""
    command: str = ""


def prompt_file_run(
    pipe,
    rows: Sequence[PromptRow],
    judge: Judge,
    edits: dict[str, Patch | Recipe],
    *,
    steps: int = SAMPLING.steps,
    guidance: float = SAMPLING.guidance,
    prompts_name: str = "",
    judge_name: str = "",
    model: str = "",
    command: str = "",
    progress: bool = True,
) -> PromptFileReport:
    """The paper's kind of evaluation: the share of a prompt file's pictures a judge flags, per model.

    Every row is drawn once, with its own seed (:func:`rece_lite.pipeline.sample` with
    ``paired=True``); under ``accelerate launch`` the pictures are split across processes
    (:mod:`rece_lite.parallel`).  ``pipe`` ends with its original weights.

    Args:
        pipe: any Stable Diffusion pipeline rece-lite can edit, original weights.
        rows: the prompt file (:func:`read_prompts`).
        judge: pictures -> one bool each (e.g. a nudity detector; :func:`load_judge`).
        edits: the models besides the original: a :class:`~rece_lite.patch.Patch` to apply,
            or a :class:`~rece_lite.recipes.Recipe` to run with the method the edit is named
            by (a name or label of :data:`rece_lite.methods.METHODS`: ``"UCE"``, ``"RECE"``;
            another name is refused before anything is drawn).
    """
    t_start = time.perf_counter()
    how = {name: methods.get(name) for name, edit in edits.items() if isinstance(edit, Recipe)}
    sampling = SamplingSettings(steps=steps, guidance=guidance)
    say = (lambda msg: print(msg, flush=True)) if progress else (lambda msg: None)  # noqa: E731
    snap = snapshot(pipe)
    prompts, seeds = [r.prompt for r in rows], [r.seed for r in rows]
    out: dict[str, PromptFileRow] = {}
    try:
        for name, edit in {"original": snap, **edits}.items():
            snap.apply(pipe)
            seconds = None
            if isinstance(edit, Recipe):
                t0 = time.perf_counter()
                how[name].run(pipe, edit, False)
                seconds = time.perf_counter() - t0
            else:
                edit.apply(pipe)
            say(f"{name}: drawing {len(rows)} pictures ...")
            flags = [bool(x) for x in judge(sample(pipe, prompts, seeds=seeds, paired=True, **asdict(sampling)))]
            if len(flags) != len(rows):
                raise InputError(f"the judge answered {len(flags)} times for {len(rows)} pictures")
            out[name] = PromptFileRow(float(np.mean(flags)), int(sum(flags)), len(flags), seconds)
    finally:
        snap.apply(pipe)
    settings = {**asdict(sampling), "edits": {
        k: (asdict(v) if isinstance(v, Recipe) else dict(v.metadata)) for k, v in edits.items()}}  # fmt: skip
    versions = {"rece_lite": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__}
    return PromptFileReport(prompts_name, judge_name, out, settings, versions, time.perf_counter() - t_start,
                            model, command)  # fmt: skip


def prompt_file_markdown(report: PromptFileReport) -> str:
    """The prompt-file table as Markdown."""
    lines = ["| model | flagged ↓ | pictures | edit time (s) |", "|---|---:|---:|---:|"]
    for name, r in report.rows.items():
        s = "—" if r.seconds is None else f"{r.seconds:.3f}"
        lines.append(f"| {name} | {r.showing:.1%} ({r.flagged}) | {r.pictures} | {s} |")
    lines += ["", f"Prompts: `{report.prompts}`, one picture per row with its evaluation seed; judge: "
              f"`{report.judge}`; {report.settings['steps']} sampling steps, guidance {report.settings['guidance']}."]
    return "\n".join(lines) + "\n"


def write_prompt_file(report: PromptFileReport, folder: str | os.PathLike) -> None:
    """``bench.json`` and ``bench.md`` into ``folder``."""
    folder = Path(folder)
    (folder / "bench.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
    (folder / "bench.md").write_text(prompt_file_markdown(report))
