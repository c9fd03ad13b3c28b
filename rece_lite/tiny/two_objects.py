"""Two objects in one picture, against issue 19's moonshot targets: ``python -m rece_lite.tiny.two_objects``.

The one-object model never saw two objects; ``data/two_objects`` (and its grounded fine-tune)
did.  For "a {c1} {s1} and a {c2} {s2}" (distinct colours, distinct shapes), on seeds 100 and
up that nothing was chosen on, this measures:

1. both colours right (the two objects found have the two asked colours) >= 90%;
   binding (each found object has the colour *and* shape asked for it) >= 60%;
2. each colour word's map (:func:`rece_lite.attention.maps.word_heat`, every layer and step
   averaged) on its own object: mass ÷ area >= 2 and mass on its own object >= 2x its mass
   on the other object, both, in >= 80% of the pictures where both colours came out right
   (only there is "its own object" defined);
3. erasing red (:func:`rece_lite.recipes.tiny_recipe`, UCE and RECE) keeps the other object's
   colour and shape >= 90% in "a red {s} and a {c} {s'}" (either order).

Shares are judged against their one-sided 95% Wilson bound, as in :mod:`rece_lite.tiny.report`.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections.abc import Sequence

import numpy as np
import torch

from rece_lite import evaluate as ev
from rece_lite.attention import generate_with_attention, mass_per_area, mass_ratio
from rece_lite.attention.maps import word_heat
from rece_lite.erase import rece_erase, snapshot, uce_erase
from rece_lite.pipeline import load_pipeline, sample
from rece_lite.recipes import tiny_recipe
from rece_lite.tiny import world
from rece_lite.tiny.report import Target

PAIR = "a {c1} {s1} and a {c2} {s2}"
#: token positions of the two colour words in PAIR (0 is the start token)
COLOUR_POSITIONS = (2, 6)
FIRST_SEED = 100


Pair = tuple[str, tuple[str, str], tuple[str, str]]  #: (prompt, (c1, s1), (c2, s2))


def pair_prompts(k: int, *, seed: int = 0, colour: str | None = None) -> list[Pair]:
    """``k`` prompts (prompt, (c1, s1), (c2, s2)): distinct colours and shapes, drawn without repeats from ``seed``.

    With ``colour``, only pairs where one of the two objects has that colour.
    """
    combos = [
        ((c1, s1), (c2, s2))
        for (c1, c2) in itertools.permutations(world.COLOURS, 2)
        for (s1, s2) in itertools.permutations(world.SHAPES, 2)
        if colour is None or colour in (c1, c2)
    ]
    order = np.random.default_rng(seed).permutation(len(combos))[:k]
    return [(PAIR.format(c1=a[0], s1=a[1], c2=b[0], s2=b[1]), a, b) for a, b in (combos[i] for i in order)]


def judge(images, asked: Sequence[tuple[tuple[str, str], tuple[str, str]]]) -> dict[str, float]:
    """Both colours right and binding, as shares of the pictures (``asked``: each picture's two objects)."""
    found = ev.find_objects(images, max_objects=2)
    colours = [len(f) == 2 and sorted(o.colour for o in f) == sorted((a[0], b[0])) for f, (a, b) in zip(found, asked)]
    bound = [len(f) == 2 and {(o.colour, o.shape) for o in f} == {a, b} for f, (a, b) in zip(found, asked)]
    return {"both_colours": float(np.mean(colours)), "binding": float(np.mean(bound)), "n": len(asked)}


def maps(pipe, prompts, seeds: Sequence[int]) -> dict:
    """Each colour word's map on its own object vs the other, in pictures whose two colours came out right."""
    per_area, own_other, both = [], [], []
    judged = 0
    for prompt, a, b in prompts:
        for seed in seeds:
            rec = generate_with_attention(pipe, prompt, seed=seed, num_inference_steps=20, guidance_scale=6.0,
                                          record={"dtype": torch.float32})  # fmt: skip
            judged += 1
            found = ev.find_objects([rec.image], max_objects=2)[0]
            if len(found) != 2 or sorted(o.colour for o in found) != sorted((a[0], b[0])):
                continue
            token_maps = rec.store.token_maps()
            for pos, colour in zip(COLOUR_POSITIONS, (a[0], b[0])):
                own = next(o.mask for o in found if o.colour == colour)
                other = next(o.mask for o in found if o.colour != colour)
                heat = word_heat(token_maps, [pos])
                per_area.append(mass_per_area(heat, own))
                own_other.append(mass_ratio(heat, own, other))
                both.append(per_area[-1] >= 2 and own_other[-1] >= 2)
    return {
        "pictures": judged,
        "words": len(both),
        "median_mass_per_area": float(np.median(per_area)) if per_area else float("nan"),
        "median_own_over_other": float(np.median(own_other)) if own_other else float("nan"),
        "share_both_at_least_2": float(np.mean(both)) if both else float("nan"),
    }


def after_erasing(pipe, colour: str, method: str, seeds: Sequence[int], k: int) -> dict:
    """Erase ``colour`` with the recipe; how often the *other* object keeps its colour and shape; weights put back."""
    prompts = pair_prompts(k, seed=1, colour=colour)
    recipe = tiny_recipe(colour)
    snap = snapshot(pipe)
    try:
        if method == "uce":
            uce_erase(pipe, **recipe.uce_kwargs())
        else:
            rece_erase(pipe, **recipe.rece_kwargs())
        images = sample(pipe, [p for p, _, _ in prompts], seeds=list(seeds))
    finally:
        snap.apply(pipe)
    found = ev.find_objects(images, max_objects=2)
    others = [b if a[0] == colour else a for _, a, b in prompts for _ in seeds]
    kept = [any((o.colour, o.shape) == want for o in f) for f, want in zip(found, others)]
    showing = [any(o.colour == colour for o in f) for f in found]
    return {"method": method, "other_kept": float(np.mean(kept)), "still_showing": float(np.mean(showing)),
            "n": len(kept)}  # fmt: skip


def targets(out: dict) -> list[Target]:
    d, m = out["drawing"], out["maps"]
    ts = [
        Target("both colours right", d["both_colours"], 0.90, n=d["n"]),
        Target("binding: each object its own colour and shape", d["binding"], 0.60, n=d["n"]),
        Target("colour word: mass ÷ area >= 2 and own ÷ other >= 2", m["share_both_at_least_2"], 0.80, n=m["words"]),
    ]
    for r in out["erase"]:
        ts.append(Target(f"{r['method'].upper()} red erased: the other object kept", r["other_kept"], 0.90, n=r["n"]))
    return ts


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m rece_lite.tiny.two_objects", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="data/two_objects", help="a two-object pipeline folder")
    p.add_argument("--prompts", type=int, default=24, help="pair prompts (distinct colours and shapes)")
    p.add_argument("--seeds", type=int, default=4, help="seeds per prompt, from --first-seed up")
    p.add_argument("--first-seed", type=int, default=FIRST_SEED, help="100 and up for claims; 0-99 for choosing")
    p.add_argument("--json", default=None, help="also write the numbers here")
    a = p.parse_args(argv)
    if a.prompts < 1 or a.seeds < 1 or a.first_seed < 0:
        p.error(f"--prompts and --seeds must be >= 1 and --first-seed >= 0, got {a.prompts}, {a.seeds}, {a.first_seed}")
    torch.manual_seed(0)
    t0 = time.time()
    pipe = load_pipeline(a.model, device="cpu")
    pipe.set_progress_bar_config(disable=True)
    seeds = [a.first_seed + i for i in range(a.seeds)]
    prompts = pair_prompts(a.prompts)
    images = sample(pipe, [q for q, _, _ in prompts], seeds=seeds)
    out: dict = {"model": a.model, "seeds": seeds, "prompts": [q for q, _, _ in prompts]}
    out["drawing"] = judge(images, [(x, y) for _, x, y in prompts for _ in seeds])
    out["maps"] = maps(pipe, prompts, seeds[:1])
    out["erase"] = [after_erasing(pipe, "red", m, seeds, a.prompts // 2) for m in ("uce", "rece")]
    ts = targets(out)
    out["targets"] = [dict(t.__dict__, confidence=t.confidence, met=t.met) for t in ts]
    out["seconds"] = round(time.time() - t0, 1)
    print(f"model: {a.model}   {a.prompts} pair prompts x seeds {seeds[0]}-{seeds[-1]}")
    m = out["maps"]
    print(f"colour-word maps ({m['words']} words in {m['pictures']} pictures): median mass ÷ area "
          f"{m['median_mass_per_area']:.2f}, median own ÷ other {m['median_own_over_other']:.2f}")  # fmt: skip
    for r in out["erase"]:
        print(f"{r['method'].upper()} red erased: red still showing in {r['still_showing']:.0%} of {r['n']} pictures")
    for t in ts:
        print(t.line())
    print(f"\ntook {out['seconds']} s")
    if a.json:
        with open(a.json, "w") as f:  # as tiny.report does
            json.dump(out, f, indent=2, default=str)
    return out


if __name__ == "__main__":
    main()
