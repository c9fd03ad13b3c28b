"""What every attack returns, how its pictures are judged, and how they are drawn.

An attack's number is :attr:`AttackResult.showing`: the share of its pictures that show
the erased concept (the *attack success rate*; lower is better for the erased model).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

import rece_lite.attacks.checks as checks
from rece_lite import evaluate as ev
from rece_lite.pipeline import sample
from rece_lite.settings import SAMPLING
from rece_lite.tiny.world import has_word

Judge = Callable[[np.ndarray], Sequence[bool]]


@dataclass(frozen=True, eq=False)
class AttackResult:
    """What an attack found and what it made.

    Attributes:
        attack: ``"paraphrase" | "soft_prompt" | "concept_vector"``.
        concept: the concept the attack tries to bring back.
        prompts: P prompts, as text (the soft-prompt attack's words, "a drawing crimson red
            circle", or for the embedding attacks a readable form: "a circle + 2·v").
        embeds: (P, T, d) text-encoder outputs fed to the pipeline, or None where the
            prompts themselves were fed.
        images: (P * S, H, W, 3) uint8, prompt-major (as :func:`~rece_lite.pipeline.sample`).
        seeds: the S sampling seeds.
        labels: per picture, what the judge saw (the evaluator's colour or shape label
            for the miniature model; ``"yes"``/``"no"`` with a custom judge).
        showing: the share of the pictures that show the concept: the attack's success
            rate (NaN where no judge could tell).
        seconds: wall time of the attack (optimisation and sampling).
    """

    attack: str
    concept: str
    prompts: tuple[str, ...]
    embeds: torch.Tensor | None
    images: np.ndarray
    seeds: tuple[int, ...]
    labels: tuple[str, ...]
    showing: float
    seconds: float

    @property
    def success_rate(self) -> float:
        """The attack success rate: the share of its pictures that show the concept (:attr:`showing`)."""
        return self.showing

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.attack!r} on {self.concept!r}: {len(self.prompts)} prompts x "
            f"{len(self.seeds)} seeds, {self.showing:.0%} showing it, {self.seconds:.1f} s)"
        )


@dataclass(frozen=True, eq=False, repr=False)
class SoftPromptResult(AttackResult):
    """A soft-prompt attack's result, plus what it optimised.

    Attributes:
        tokens: the optimised free vector: (k, d_in) token embeddings for
            ``space="input"``, a (T, d) offset of the text-encoder output for ``"output"``.
        space: ``"input"`` or ``"output"``.
        nearest_words: per free token, the vocabulary word whose input embedding is
            closest in cosine (input space only; empty otherwise).  With ``discrete=True``
            these are the words the attack fed: ``prompts`` spells them out.
        losses: the training loss at every optimisation step (noisy: fresh noise each step).
        loss_before, loss_after: the loss on one fixed batch of (picture, t, noise),
            before and after the optimisation.
        target_images: the original model's pictures of the concept the loss was fit on.
    """

    tokens: torch.Tensor
    space: str
    nearest_words: tuple[str, ...]
    losses: tuple[float, ...]
    loss_before: float
    loss_after: float
    target_images: np.ndarray


@dataclass(frozen=True, eq=False, repr=False)
class ConceptVectorResult(AttackResult):
    """A concept-vector attack's result, plus the vector.

    Attributes:
        vector: (T, d) mean over pairs of ``E(with) - E(without)``.
        strength: α in ``E(neutral) + α v``.
        neutral: the neutral prompts the vector was added to.
    """

    vector: torch.Tensor
    strength: float
    neutral: tuple[str, ...]


def judge_images(images: np.ndarray, concept: str, judge: Judge | None = None) -> tuple[tuple[str, ...], float]:
    """Labels and the share of pictures showing ``concept``.

    The default judge is the miniature world's evaluator, of the concept's kind only (a
    colour concept needs no shape CNN); its share equals
    ``evaluate.share_showing(evaluate.classify(images), concept)``.  For a concept outside
    that world and no ``judge``, the labels are ``"?"`` and the share is NaN.

    Args:
        images: (n, H, W, 3) uint8.
        concept: e.g. ``"red"`` (or a synonym, ``"scarlet"``).
        judge: pictures -> one bool per picture, True where it shows the concept.

    Returns:
        n labels and the share showing the concept.
    """
    if judge is not None:
        hits = [bool(h) for h in judge(images)]
        if len(hits) != len(images):
            raise ValueError(f"judge must return one bool per picture: got {len(hits)} for {len(images)} pictures")
        return tuple("yes" if h else "no" for h in hits), float(np.mean(hits)) if hits else float("nan")
    try:
        kind, name = ev.concept_of(concept)
    except ValueError:
        return ("?",) * len(images), float("nan")
    labels = ev.classify_colour(images) if kind == "colour" else ev.classify_shape(images)
    return tuple(labels), float(np.mean([x == name for x in labels])) if labels else float("nan")


def generate(
    pipe,
    prompts: Sequence[str] | None = None,
    *,
    embeds: torch.Tensor | None = None,
    seeds: Sequence[int],
    steps: int = SAMPLING.steps,
    guidance: float = SAMPLING.guidance,
    progress: bool = True,
    desc: str = "sampling",
) -> np.ndarray:
    """:func:`rece_lite.pipeline.sample` in chunks of prompts, with a progress bar over pictures.

    Args:
        prompts: P prompts; or
        embeds: (P, T, d) text-encoder outputs.
        seeds: S sampling seeds; steps: sampling steps; guidance: the guidance scale.

    Returns:
        (P * S, H, W, 3) uint8, prompt-major.
    """
    conds = list(prompts) if prompts is not None else list(embeds)
    per_chunk = max(1, 64 // max(1, len(seeds)))
    out = []
    with tqdm(total=len(conds) * len(seeds), desc=desc, disable=not progress, leave=False) as bar:
        for i in range(0, len(conds), per_chunk):
            chunk = conds[i : i + per_chunk]
            if prompts is not None:
                imgs = sample(pipe, chunk, seeds=list(seeds), steps=steps, guidance=guidance)
            else:
                imgs = sample(pipe, embeds=torch.stack(chunk), seeds=list(seeds), steps=steps, guidance=guidance)
            out.append(imgs)
            bar.update(len(imgs))
    return np.concatenate(out)


def default_prompts(concept: str, prompts: str | Sequence[str] | None, *, synonyms: bool = False) -> list[str]:
    """``prompts`` as a list, or the miniature world's prompts naming ``concept`` (with synonyms)."""
    if prompts is not None:
        return checks.prompt_list("prompts", prompts)
    try:
        return ev.concept_prompts(concept, synonyms=synonyms)
    except ValueError as e:
        raise ValueError(f"{e}; for another model, give prompts= that name the concept") from None


def concept_word(concept: str, prompts: Sequence[str]) -> str:
    """The word the prompts use for ``concept``: the miniature world's canonical name if they all use it.

    Raises:
        ValueError: if a prompt does not contain that word (the attacks take it out or replace it).
    """
    try:
        name = ev.concept_of(concept)[1]
    except ValueError:
        name = None
    word = name if name is not None and all(has_word(p, name) for p in prompts) else concept
    for p in prompts:
        if not has_word(p, word):
            raise ValueError(
                f"prompts must name the concept: {p!r} does not contain the word {word!r} (the attack takes its place)"
            )
    return word
