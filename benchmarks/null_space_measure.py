"""UCE, RECE and the null-space edit on one colour and one shape, measured on held-out seeds.

    PYTHONPATH=. python benchmarks/null_space_measure.py --seeds 100 116

Each method uses the miniature model's recipe (:func:`rece_lite.recipes.tiny_recipe`); the
null-space edit keeps the recipe's preserve forms with ``rank_tol=TINY_RANK_TOL`` (chosen on
seeds 0-7).  Measured with :func:`rece_lite.measure.measure`: named prompts, synonyms, the other
concepts' prompts (preservation: their accuracy as a share of the original model's).
"""

from __future__ import annotations

import argparse

import torch

import rece_lite as rl
from rece_lite.measure import measure
from rece_lite.null_space import TINY_RANK_TOL, null_space_erase
from rece_lite.recipes import tiny_recipe
from rece_lite.tiny.world import Concept


def edit(pipe, method: str, r) -> None:
    """Erase with ``method`` and the recipe ``r``, in place."""
    if method == "UCE":
        rl.uce_erase(pipe, **r.uce_kwargs())
    elif method == "RECE":
        rl.rece_erase(pipe, **r.rece_kwargs())
    else:
        null_space_erase(
            pipe, r.erase, r.guide, r.preserve, lamb=r.lamb, erase_scale=r.erase_scale, rank_tol=TINY_RANK_TOL
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs=2, default=(100, 116), metavar=("FIRST", "STOP"))
    ap.add_argument("--concepts", nargs="+", default=["red", "circle"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    seeds = range(*args.seeds)
    pipe = rl.load_pipeline("tiny")
    original = rl.snapshot(pipe)
    print(f"seeds {seeds.start}-{seeds.stop - 1}; rank_tol {TINY_RANK_TOL:g}")
    for concept in args.concepts:
        r = tiny_recipe(concept)
        ref = measure(pipe, concept, seeds=seeds)
        c = Concept.parse(concept)
        n_named, n_others = len(c.prompts()), len(c.other_prompts()[0])
        print(f"{concept}: original others right {ref.others_accuracy:.1%}")
        for name in ("UCE", "RECE", "null space"):
            original.apply(pipe)
            edit(pipe, name, r)
            m = measure(pipe, concept, seeds=seeds, reference=ref)
            print(
                f"  {name:10s} still showing {m.showing:5.1%} (synonyms {m.showing_synonyms:5.1%}; "
                f"{n_named * len(seeds)} pictures)  preservation {m.preservation:5.1%} "
                f"({n_others * len(seeds)} pictures)"
            )
        original.apply(pipe)


if __name__ == "__main__":
    main()
