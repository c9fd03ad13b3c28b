"""The concept-vector attack, in the spirit of Ring-A-Bell (Tsai et al., arXiv 2310.10012).

The mean difference of text embeddings of prompts with and without the concept word is a
direction that means the concept; added with a strength to neutral prompts' embeddings,
it may bring the concept back where the word itself no longer does.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import torch

import rece_lite.attacks.checks as checks
from rece_lite.attacks.result import ConceptVectorResult, Judge, concept_word, default_prompts, generate, judge_images
from rece_lite.pipeline import check_prompts, encode
from rece_lite.settings import SAMPLING
from rece_lite.tiny.world import without_word


@torch.no_grad()
def concept_vector(pipe, with_concept: Sequence[str], without_concept: Sequence[str]) -> torch.Tensor:
    """Ring-A-Bell's concept vector: ``mean_i E(with_i) - E(without_i)``, all T positions.

    Args:
        with_concept, without_concept: n paired prompts ("a red circle", "a circle").

    Returns:
        (T, d) in the text encoder's dtype, on its device.
    """
    if len(with_concept) != len(without_concept) or not with_concept:
        raise ValueError(
            "with_concept and without_concept must hold the same, non-zero number of prompts, "
            f"got {len(with_concept)} and {len(without_concept)}"
        )
    return (encode(pipe, list(with_concept)) - encode(pipe, list(without_concept))).mean(0)


def concept_vector_attack(
    pipe,
    concept: str,
    *,
    strength: float = 2.0,
    prompts: Sequence[str] | None = None,
    neutral: Sequence[str] | None = None,
    seeds: Sequence[int] = range(8),
    steps: int = SAMPLING.steps,
    guidance: float = SAMPLING.guidance,
    judge: Judge | None = None,
    progress: bool = True,
) -> ConceptVectorResult:
    """Add the concept vector to neutral prompts' embeddings (Ring-A-Bell-style, continuous).

    The vector is :func:`concept_vector` over the pairs (prompt, prompt without the concept
    word): "a red circle" / "a circle", for every prompt; the attack feeds
    ``E(neutral) + strength · v`` to the pipeline.  (Ring-A-Bell goes on to search for
    discrete tokens whose embedding approximates this; here the embedding is fed as is.)

    Args:
        pipe: the (erased) pipeline under attack.  Erasure edits only the cross-attention,
            so the vector is the same for every erased copy of a model.
        concept: e.g. ``"red"``.
        strength: α.  Ring-A-Bell scales its vector by a few units; α = 1 reproduces the
            named prompts' embeddings on average, α = 2 pushes past them.
        prompts: prompts naming the concept (default: :func:`rece_lite.evaluate.concept_prompts`).
        neutral: prompts to push (default: ``prompts`` without the concept word).
        seeds: S sampling seeds per prompt; steps: sampling steps; guidance: the guidance scale.
        judge: pictures -> one bool each (default: the miniature world's evaluator).
        progress: show a progress bar.

    Returns:
        A :class:`~rece_lite.attacks.ConceptVectorResult` with one picture per neutral prompt and seed.
    """
    # 1. check the arguments (nothing is sampled before they all hold)
    t0 = time.perf_counter()
    concept = checks.concept_name(concept)
    strength = checks.number("strength", strength)
    prompts = default_prompts(concept, prompts)
    check_prompts(pipe, prompts, "prompts")
    word = concept_word(concept, prompts)
    without = [without_word(p, word) for p in prompts]
    neutral = without if neutral is None else checks.prompt_list("neutral", neutral, allow_empty=True)
    check_prompts(pipe, neutral, "neutral")
    seeds = checks.seed_list(seeds)
    steps = checks.count("steps", steps, 1)
    guidance = checks.number("guidance", guidance)

    # 2. the vector, added to the neutral prompts' embeddings
    v = concept_vector(pipe, prompts, without)
    embeds = encode(pipe, neutral) + strength * v

    # 3. sample and judge
    images = generate(pipe, embeds=embeds, seeds=seeds, steps=steps, guidance=guidance, progress=progress,
                      desc="concept vector")  # fmt: skip
    labels, share = judge_images(images, concept, judge)
    return ConceptVectorResult(
        "concept_vector", concept, tuple(f"{n} + {strength:g}·v" for n in neutral), embeds, images, seeds, labels,
        share, time.perf_counter() - t0, v, strength, tuple(neutral),
    )  # fmt: skip
