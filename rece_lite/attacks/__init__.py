"""Red-teaming an erased model: three attacks that try to bring an erased concept back.

* :func:`paraphrase_attack` (:mod:`.paraphrase`) — prompts that *mean* the concept without
  naming it (the miniature world's synonyms: "a crimson circle" for red).
* :func:`soft_prompt_attack` (:mod:`.soft_prompt`) — in the spirit of UnlearnDiff (Zhang et
  al., *To Generate or Not? Safety-Driven Unlearned Diffusion Models Are Still Easy To
  Generate Unsafe Images ... For Now*, arXiv 2310.11868): optimise a few free token
  embeddings so that the *erased* model denoises pictures of the concept (made by the
  original model) well, then generate from them.
* :func:`concept_vector_attack` (:mod:`.concept_vector`) — in the spirit of Ring-A-Bell
  (Tsai et al., arXiv 2310.10012): the mean difference of text embeddings of prompts with
  and without the concept, added with a strength to neutral prompts' embeddings.

RECE (Gong et al., ECCV 2024, arXiv 2407.12383, §4.3) measures its reliability with
exactly these families of attacks.  Every attack here is seeded, bounded in steps, and
returns a frozen :class:`AttackResult` (:mod:`.result`): what it found, the pictures it
made (uint8, from :func:`rece_lite.pipeline.sample`) and :attr:`~AttackResult.showing`,
the share of pictures the evaluator labels with the erased concept — the attack success
rate (lower is better for the erased model).  ``steps`` are sampling steps in every attack;
the soft prompt's optimisation steps are ``opt_steps``.

On a model other than the miniature one, give ``prompts`` (which name the concept) and a
``judge`` (pictures -> one bool per picture); the defaults use the miniature world.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

from rece_lite.attacks.concept_vector import concept_vector, concept_vector_attack
from rece_lite.attacks.paraphrase import paraphrase_attack
from rece_lite.attacks.result import (
    AttackResult,
    ConceptVectorResult,
    Judge,
    SoftPromptResult,
    default_prompts,
    generate,
    judge_images,
)
from rece_lite.attacks.soft_prompt import (
    FreeTokens,
    OutputOffset,
    SoftPrompt,
    Space,
    encode_with_tokens,
    soft_prompt_attack,
)
from rece_lite.erase import Patch
from rece_lite.pipeline import sample

ATTACKS: tuple[str, ...] = ("paraphrase", "soft_prompt", "concept_vector")

__all__ = [
    "ATTACKS",
    "AttackResult",
    "ConceptVectorResult",
    "FreeTokens",
    "Judge",
    "OutputOffset",
    "SoftPrompt",
    "SoftPromptResult",
    "Space",
    "concept_vector",
    "concept_vector_attack",
    "default_prompts",
    "encode_with_tokens",
    "generate",
    "judge_images",
    "original_images",
    "paraphrase_attack",
    "run_attacks",
    "soft_prompt_attack",
]


def run_attacks(
    pipe,
    concept: str,
    *,
    original: Patch | None = None,
    attacks: Sequence[str] = ATTACKS,
    seeds: Sequence[int] = range(8),
    steps: int | None = None,
    soft_prompt_kw: dict | None = None,
    concept_vector_kw: dict | None = None,
    progress: bool = True,
    sample_steps: int | None = None,
) -> dict[str, AttackResult]:
    """Every attack against ``pipe``, by name.

    Args:
        pipe: the (erased) pipeline under attack.
        concept: e.g. ``"red"``.
        original: the pre-erasure snapshot (for the soft-prompt attack's targets).
        attacks: which of :data:`ATTACKS` to run, in this order.
        seeds, steps: sampling seeds and sampling steps (default 20) of every attack's pictures.
        soft_prompt_kw, concept_vector_kw: extra keyword arguments for those attacks
            (e.g. ``soft_prompt_kw=dict(target_images=..., opt_steps=100)``).  In the old
            spelling, still read with a DeprecationWarning, ``soft_prompt_kw["steps"]``
            without ``opt_steps`` are the optimisation steps.
        progress: show progress bars.
        sample_steps: deprecated: the old name of ``steps``.

    Returns:
        attack name -> its result.
    """
    if sample_steps is not None:
        if steps is not None:
            raise TypeError("run_attacks: give the sampling steps once, as steps= (sample_steps= is its old name)")
        warnings.warn("run_attacks(sample_steps=...) is now run_attacks(steps=...)", DeprecationWarning, stacklevel=2)
        steps = sample_steps
    steps = 20 if steps is None else steps
    attacks = [attacks] if isinstance(attacks, str) else list(attacks)
    unknown = [a for a in attacks if a not in ATTACKS]
    if unknown:
        raise ValueError(f"attacks must be among {', '.join(ATTACKS)}; got unknown attacks {unknown}")
    sp_kw = _soft_prompt_keywords(soft_prompt_kw or {}, steps)
    cv_kw = {"steps": steps, **(concept_vector_kw or {})}
    out: dict[str, AttackResult] = {}
    for name in attacks:
        if name == "paraphrase":
            out[name] = paraphrase_attack(pipe, concept, seeds=seeds, steps=steps, progress=progress)
        elif name == "soft_prompt":
            out[name] = soft_prompt_attack(pipe, concept, original=original, seeds=seeds, progress=progress, **sp_kw)
        else:
            out[name] = concept_vector_attack(pipe, concept, seeds=seeds, progress=progress, **cv_kw)
    return out


def _soft_prompt_keywords(kw: dict, steps: int) -> dict:
    """``soft_prompt_kw`` in today's spelling, with the sampling ``steps`` unless it gives its own.

    The old spelling (``run_attacks`` then passed the sampling steps as ``sample_steps``):
    ``steps`` without ``opt_steps`` were the optimisation steps, ``sample_steps`` the sampling steps.
    """
    kw = dict(kw)
    if "sample_steps" in kw or ("steps" in kw and "opt_steps" not in kw):
        warnings.warn(
            "soft_prompt_kw in the old spelling: write opt_steps= for the optimisation steps (there steps=) "
            "and steps= for the sampling steps (there sample_steps=)",
            DeprecationWarning,
            stacklevel=3,
        )
        if "steps" in kw and "opt_steps" in kw:
            raise TypeError("soft_prompt_kw gives steps, opt_steps and sample_steps: drop sample_steps")
        if "steps" in kw:
            kw["opt_steps"] = kw.pop("steps")
        kw["steps"] = kw.pop("sample_steps", steps)
    kw.setdefault("steps", steps)
    return kw


def original_images(
    pipe, original: Patch | None, prompts: Sequence[str], seeds: Sequence[int], **sample_kw
) -> np.ndarray:
    """Deprecated: pictures from the pipeline with ``original``'s weights (then the current ones back).

    Write instead::

        with original.applied(pipe):
            images = rece_lite.pipeline.sample(pipe, prompts, seeds=seeds)
    """
    warnings.warn(
        "attacks.original_images is deprecated: use `with original.applied(pipe): sample(pipe, prompts, seeds=...)`",
        DeprecationWarning,
        stacklevel=2,
    )
    if original is None:
        return sample(pipe, list(prompts), seeds=list(seeds), **sample_kw)
    with original.applied(pipe):
        return sample(pipe, list(prompts), seeds=list(seeds), **sample_kw)
