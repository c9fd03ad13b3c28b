"""The paraphrase attack: prompts that *mean* the erased concept without naming it.

An erasure edits what the model does with the concept's *word*; if the text encoder maps
a synonym near it, the erased model may still draw the concept from "a crimson circle".
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import rece_lite.attacks.checks as checks
from rece_lite.attacks.result import AttackResult, Judge, default_prompts, generate, judge_images
from rece_lite.pipeline import check_prompts
from rece_lite.settings import SAMPLING


def paraphrase_attack(
    pipe,
    concept: str,
    *,
    prompts: Sequence[str] | None = None,
    seeds: Sequence[int] = range(8),
    steps: int = SAMPLING.steps,
    guidance: float = SAMPLING.guidance,
    judge: Judge | None = None,
    progress: bool = True,
) -> AttackResult:
    """Prompts that mean ``concept`` without naming it.

    Args:
        pipe: the (erased) pipeline under attack.
        concept: e.g. ``"red"``.
        prompts: the paraphrases; default, for the miniature model, every prompt of
            :func:`rece_lite.evaluate.concept_prompts` with the concept written as one of
            its synonyms (``rece_lite.tiny.world.SYNONYMS``): "a crimson circle", ...
        seeds: S sampling seeds per prompt; steps: sampling steps; guidance: the guidance scale.
        judge: pictures -> one bool each (default: the miniature world's evaluator).
        progress: show a progress bar.

    Returns:
        An :class:`~rece_lite.attacks.AttackResult` with P * S pictures.
    """
    # 1. check the arguments (nothing is sampled before they all hold)
    t0 = time.perf_counter()
    concept = checks.concept_name(concept)
    prompts = default_prompts(concept, prompts, synonyms=True)
    check_prompts(pipe, prompts, "prompts")
    seeds = checks.seed_list(seeds)
    steps = checks.count("steps", steps, 1)
    guidance = checks.number("guidance", guidance)

    # 2. sample and judge
    images = generate(pipe, prompts, seeds=seeds, steps=steps, guidance=guidance, progress=progress, desc="paraphrase")
    labels, share = judge_images(images, concept, judge)
    return AttackResult(
        "paraphrase", concept, tuple(prompts), None, images, seeds, labels, share, time.perf_counter() - t0
    )
