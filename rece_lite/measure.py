"""What an edit did to the miniature model, as numbers: the one path the command, the demo and the bench share.

* :class:`Measurement` — one model state: the share of pictures that still show the
  concept (prompts naming it, prompts naming it by a synonym, optionally a derived
  embedding), and how well the model still draws everything else.
* :func:`measure` — sample and judge one model state.
* :func:`erase_and_measure` — measure the original, erase with UCE or RECE, derive RECE's
  embedding, measure the erased model: an :class:`ErasureRun`.

Every share is of pictures (prompts x seeds, seeded per picture, see
:func:`rece_lite.pipeline.sample`) judged by :mod:`rece_lite.evaluate`: a share *showing* the
concept is what is left of it (lower is better once it is erased).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm

from rece_lite import evaluate as ev
from rece_lite import methods
from rece_lite.erase import Patch, derive_embedding, snapshot
from rece_lite.recipes import Recipe
from rece_lite.sampling import sample
from rece_lite.settings import SAMPLING
from rece_lite.tiny.world import Concept

Method = Literal["uce", "rece"]
#: The names :func:`erase_and_measure` takes: :data:`rece_lite.methods.METHODS`'.
METHODS: tuple[str, ...] = methods.names()


@dataclass(frozen=True)
class Measurement:
    """One model state, measured on the miniature world (shares of pictures, 0 to 1).

    Attributes:
        showing: pictures from prompts naming the concept ("a red circle", ...) that show it.
        showing_synonyms: the same for prompts naming it by a synonym ("a crimson circle", ...).
        others_accuracy: pictures from prompts of the *other* concepts with both shape and
            colour right.
        showing_derived: pictures from a derived embedding that show the concept (None: not fed).
        preservation: ``others_accuracy`` as a share of the original model's (None: no reference).
    """

    showing: float
    showing_synonyms: float
    others_accuracy: float
    showing_derived: float | None = None
    preservation: float | None = None


def _share(pipe, concept: Concept, bar, **kw) -> float:
    imgs = sample(pipe, **kw)
    bar.update(len(imgs))
    return ev.share_showing(ev.classify(imgs), concept.name)


def measure(
    pipe,
    concept: str | Concept,
    *,
    seeds: Sequence[int] = range(8),
    steps: int = SAMPLING.steps,
    derived: torch.Tensor | None = None,
    reference: Measurement | None = None,
    progress: bool = False,
    desc: str = "measuring",
) -> Measurement:
    """Sample and judge one model state.

    Args:
        pipe: the miniature model (any weights).
        concept: a colour or shape of the world (or a synonym).
        seeds: sampling seeds per prompt.
        steps: sampling steps.
        derived: (T, d) or (n, T, d) embeddings to feed as prompts too (e.g. RECE's derived c′).
        reference: the original model's measurement, for ``preservation``.
        progress: a progress bar over the pictures.
    """
    c = Concept.parse(concept)  # a Concept parses to itself
    seeds = [int(s) for s in seeds]
    others, o_shapes, o_colours = c.other_prompts()
    named, synonyms = c.prompts(), c.prompts(synonyms=True)
    fed = 0 if derived is None else (1 if derived.ndim == 2 else len(derived))
    total = len(seeds) * (len(named) + len(synonyms) + len(others) + fed)
    with tqdm(total=total, desc=desc, disable=not progress, leave=False, unit="picture") as bar:
        kw = dict(seeds=seeds, steps=steps)
        showing = _share(pipe, c, bar, prompts=named, **kw)
        showing_synonyms = _share(pipe, c, bar, prompts=synonyms, **kw)
        imgs = sample(pipe, others, **kw)
        bar.update(len(imgs))
        k = len(seeds)
        accuracy = ev.accuracy(ev.classify(imgs), np.repeat(o_shapes, k).tolist(), np.repeat(o_colours, k).tolist())
        showing_derived = _share(pipe, c, bar, embeds=derived, **kw) if derived is not None else None
    preservation = None
    if reference is not None:
        preservation = accuracy["both"] / max(reference.others_accuracy, 1e-9)
    return Measurement(showing, showing_synonyms, accuracy["both"], showing_derived, preservation)


@dataclass(frozen=True)
class ErasureRun:
    """One erasure and what it did.

    Attributes:
        concept: what was erased (a string for models outside the miniature world).
        method: ``"uce"`` or ``"rece"``.
        recipe: the settings used.
        patch: the edited matrices (already in the pipeline).
        derived: (n, T, d) RECE's embeddings derived in closed form right after the UCE edit,
            one per erase prompt of the recipe: what brings the concept back in the UCE-erased
            model (RECE's first epoch erases them next).
        edit_seconds: wall time of the erasure call (text encoding included).
        original: the model before the erasure (None: not measured).
        erased: the model after it (None: not measured).
    """

    concept: Concept | str
    method: Method
    recipe: Recipe
    patch: Patch
    derived: torch.Tensor
    edit_seconds: float
    original: Measurement | None
    erased: Measurement | None


def erase_and_measure(
    pipe,
    concept: str | Concept,
    recipe: Recipe,
    *,
    method: Method = "rece",
    seeds: Sequence[int] = range(8),
    steps: int = SAMPLING.steps,
    measured: bool = True,
    original: Measurement | None = None,
    feed: torch.Tensor | None = None,
    progress: bool = True,
) -> ErasureRun:
    """Measure the original model, erase ``concept`` in place, measure the erased model.

    Args:
        pipe: a Stable Diffusion pipeline with the weights to erase from (left erased).
        concept: what to erase (prompts come from ``recipe``; the measurement needs the
            miniature world's concept).
        recipe: the erasure's settings (:func:`rece_lite.recipes.recipe_for`).
        method: a name in :data:`rece_lite.methods.METHODS` (``"uce"``, ``"rece"``).
        seeds, steps: sampling of every measurement.
        measured: measure at all (False for models outside the miniature world).
        original: the original model's measurement if already known (not measured again).
        feed: embeddings to feed the erased model for ``showing_derived`` (default: this run's
            ``derived[:1]``, the derived embedding of the recipe's first erase prompt, the bare word).
        progress: progress bars.
    """
    how = methods.get(method)
    c = Concept.parse(concept) if measured else concept
    kw = dict(seeds=seeds, steps=steps, progress=progress)
    if measured and original is None:
        original = measure(pipe, c, desc="original model", **kw)
    snap = snapshot(pipe)
    t0 = time.perf_counter()
    done = how.run(pipe, recipe, progress)
    seconds, patch = time.perf_counter() - t0, done.patch
    derived = done.derived[0].reshape(-1, *done.derived[0].shape[-2:]) if done.derived else None
    if derived is None:  # UCE, or RECE with 0 epochs (which is UCE): derive as RECE's first epoch would
        derived = torch.stack([
            derive_embedding(pipe, item, original=snap, reg=recipe.reg, reg_scale=recipe.reg_scale)
            for item in recipe.erase
        ])  # fmt: skip
    erased = None
    if measured:
        fed = derived[:1] if feed is None else feed
        erased = measure(pipe, c, derived=fed, reference=original, desc=f"{how.label}-erased model", **kw)
    return ErasureRun(c, how.name, recipe, patch, derived, seconds, original, erased)
