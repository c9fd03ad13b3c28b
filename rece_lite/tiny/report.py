"""How well the miniature model draws what it is asked: ``python -m rece_lite.tiny.report``.

For the 16 prompts "a {colour} {shape}" (8 seeds each, 20 DDIM steps, guidance 6)
it prints shape, colour and joint accuracy as judged by :mod:`rece_lite.evaluate`;
the same for the prompts written with synonyms; what unconditional samples cover;
and how long 16 images take on this machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections import Counter

import numpy as np
import torch

from rece_lite import evaluate as ev
from rece_lite.pipeline import load_pipeline, sample
from rece_lite.tiny import world


def prompt_grid(synonyms: bool = False) -> tuple[list[str], list[str], list[str]]:
    """Prompts "a {colour} {shape}" (or with synonyms) and what each asks for."""
    prompts, shapes, colours = [], [], []
    for c, s in itertools.product(world.COLOURS, world.SHAPES):
        if synonyms:
            for cw, sw in zip(world.SYNONYMS[c], world.SYNONYMS[s]):
                prompts.append(f"a {cw} {sw}")
                shapes.append(s)
                colours.append(c)
        else:
            prompts.append(f"a {c} {s}")
            shapes.append(s)
            colours.append(c)
    return prompts, shapes, colours


def measure(pipe, prompts, shapes, colours, seeds, steps=20, guidance=6.0) -> dict[str, float]:
    imgs = sample(pipe, prompts, seeds=seeds, steps=steps, guidance=guidance)
    k = len(seeds)
    return ev.accuracy(ev.classify(imgs), [s for s in shapes for _ in range(k)], [c for c in colours for _ in range(k)])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="tiny")
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--json", default=None, help="also write the numbers here")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    pipe = load_pipeline(a.model)
    seeds = list(range(a.seeds))
    out: dict = {}
    out["named"] = measure(pipe, *prompt_grid(False), seeds)
    # synonyms: two phrasings per (colour, shape), half the seeds each, same number of images
    syn_seeds = seeds[: max(1, len(seeds) // 2)]
    out["synonyms"] = measure(pipe, *prompt_grid(True), syn_seeds)
    unc = ev.classify(sample(pipe, [""], seeds=range(64)))
    out["unconditional"] = {"shapes": dict(Counter(unc.shapes)), "colours": dict(Counter(unc.colours))}
    sample(pipe, ["a red circle"], seeds=[0])  # warm-up
    t = []
    for _ in range(3):
        t0 = time.perf_counter()
        sample(pipe, prompt_grid(False)[0], seeds=[0])
        t.append(time.perf_counter() - t0)
    out["seconds_for_16_images"] = float(np.median(t))
    print(f"model: {a.model}   {a.seeds} seeds x 16 prompts, 20 DDIM steps, guidance 6")
    print(f"{'prompts':<14}{'shape':>8}{'colour':>8}{'both':>8}")
    for key in ("named", "synonyms"):
        r = out[key]
        print(f"{key:<14}{r['shape']:>8.1%}{r['colour']:>8.1%}{r['both']:>8.1%}")
    print("unconditional (64 seeds):", out["unconditional"])
    print(f"16 images: {out['seconds_for_16_images']:.2f} s (median of 3, {torch.get_num_threads()} threads)")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
    return out


if __name__ == "__main__":
    main()
