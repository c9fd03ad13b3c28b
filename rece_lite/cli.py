"""The ``rece-lite`` command.

    rece-lite erase --model tiny --concept red --method rece --epochs 2 --out runs/red
    rece-lite demo                     # the whole story for one concept, with a short table

Exits non-zero with a one-line reason on bad input; never overwrites an output
directory without ``--force``; writes every file atomically (a temporary directory
renamed into place).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from rece_lite.files import replace_dir

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


class UsageError(Exception):
    """Bad input: printed as one line, exit status 2."""


def prepare_out(out: Path, force: bool) -> Path:
    """A temporary directory to fill, refusing to replace ``out`` without ``--force``."""
    from rece_lite.files import new_dir_for

    if out.exists() and not force:
        raise UsageError(f"{out} already exists; pass --force to replace it")
    return new_dir_for(out)


def _check_concept(model: str, concept: str) -> None:
    if model == "tiny":
        from rece_lite.evaluate import concept_of

        try:
            concept_of(concept)
        except ValueError as e:
            raise UsageError(str(e)) from None


def _grid(pipe, concept: str, path: Path, title: str, seeds: list[int]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rece_lite.evaluate import concept_prompts
    from rece_lite.pipeline import sample
    from rece_lite.viz import image_grid

    prompts = concept_prompts(concept)
    imgs = sample(pipe, prompts, seeds=seeds[:4])
    fig = image_grid(imgs, rows=len(prompts), row_labels=prompts, suptitle=title)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def run_erase(args) -> dict:
    import torch

    import rece_lite as rl
    from rece_lite.evaluate import erasure_row
    from rece_lite.recipes import sd_recipe, tiny_recipe

    _check_concept(args.model, args.concept)
    if args.method not in ("uce", "rece"):
        raise UsageError(f"--method must be uce or rece, not {args.method!r}")
    if args.epochs is not None and args.epochs < 0:
        raise UsageError("--epochs must be >= 0")
    out = Path(args.out)
    tmp = prepare_out(out, args.force)
    try:
        torch.manual_seed(0)
        recipe = tiny_recipe(args.concept) if args.model == "tiny" else sd_recipe(args.concept)
        if args.epochs is not None:
            recipe = type(recipe)(**{**recipe.as_dict(), "epochs": args.epochs})
        print(f"loading {args.model} ...", flush=True)
        pipe = rl.load_pipeline(args.model)
        seeds = list(range(args.seeds))
        tiny = args.model == "tiny"
        report: dict = {
            "model": args.model,
            "concept": args.concept,
            "method": args.method,
            "recipe": recipe.as_dict(),
            "seeds": seeds,
            "sampling": {"steps": args.steps, "guidance": 6.0},
            "version": rl.__version__,
        }
        if tiny:
            print("measuring the original model ...", flush=True)
            report["original"] = erasure_row(pipe, args.concept, seeds, steps=args.steps)
            _grid(pipe, args.concept, tmp / "before.png", "original", seeds)
        snap = rl.snapshot(pipe)
        t0 = time.perf_counter()
        if args.method == "uce":
            patch = rl.uce_erase(pipe, **recipe.uce_kwargs())
            derived = None
        else:
            res = rl.rece_erase(pipe, **recipe.rece_kwargs(), progress=True)
            patch, derived = res.patch, (res.derived[0] if res.derived else None)
        report["edit_seconds"] = time.perf_counter() - t0
        if args.method == "uce":
            derived = rl.derive_embedding(pipe, args.concept, original=snap, reg=recipe.reg, reg_scale=recipe.reg_scale)
        if tiny:
            print(f"measuring the {args.method.upper()}-erased model ...", flush=True)
            report["erased"] = erasure_row(
                pipe, args.concept, seeds, derived=derived, reference=report["original"], steps=args.steps
            )
            report["erased"]["derived_is"] = "the embedding derived in closed form right after the UCE edit"
            _grid(pipe, args.concept, tmp / "after.png", f"after {args.method.upper()} ({args.concept} erased)", seeds)
        patch.save(tmp / "patch.safetensors")
        (tmp / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(f"done: {out}/patch.safetensors, report.json" + (", before.png, after.png" if tiny else ""))
    return report


def run_demo(args) -> dict:
    """Original, UCE, the derived embedding, RECE: one concept, one table."""
    import torch

    import rece_lite as rl
    from rece_lite.evaluate import erasure_row
    from rece_lite.recipes import tiny_recipe

    _check_concept("tiny", args.concept)
    out = Path(args.out)
    tmp = prepare_out(out, args.force)
    try:
        torch.manual_seed(0)
        recipe = tiny_recipe(args.concept)
        seeds = list(range(args.seeds))
        pipe = rl.load_pipeline("tiny")
        print(f"rece-lite demo: erasing {args.concept!r} from the embedded miniature Stable Diffusion")
        print(f"recipe: {recipe}")
        rows = {}
        rows["original"] = erasure_row(pipe, args.concept, seeds)
        _grid(pipe, args.concept, tmp / "original.png", "original", seeds)
        snap = rl.snapshot(pipe)
        t0 = time.perf_counter()
        rl.uce_erase(pipe, **recipe.uce_kwargs())
        t_uce = time.perf_counter() - t0
        c_adv = rl.derive_embedding(pipe, args.concept, original=snap, reg=recipe.reg, reg_scale=recipe.reg_scale)
        rows["UCE"] = erasure_row(pipe, args.concept, seeds, derived=c_adv, reference=rows["original"])
        rows["UCE"]["seconds"] = t_uce
        _grid(pipe, args.concept, tmp / "uce.png", "after UCE", seeds)
        snap.apply(pipe)
        res = rl.rece_erase(pipe, **recipe.rece_kwargs())
        rows["RECE"] = erasure_row(pipe, args.concept, seeds, derived=c_adv, reference=rows["original"])
        rows["RECE"]["seconds"] = res.seconds
        _grid(pipe, args.concept, tmp / "rece.png", f"after RECE ({recipe.epochs} epochs)", seeds)
        res.patch.save(tmp / "patch.safetensors")
        (tmp / "report.json").write_text(json.dumps({"recipe": recipe.as_dict(), "rows": rows}, indent=2) + "\n")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print()
    print(
        f"share of images showing {args.concept!r} ({len(seeds)} seeds per prompt; lower is better except 'preserved')"
    )
    print(f"{'model':<10}{'named':>8}{'synonyms':>10}{'derived c′':>12}{'preserved':>11}{'edit s':>9}")
    for name, r in rows.items():
        d = f"{r['derived']:.0%}" if "derived" in r else "-"
        p = f"{r['preservation']:.0%}" if "preservation" in r else "-"
        s = f"{r['seconds']:.3f}" if "seconds" in r else "-"
        print(f"{name:<10}{r['named']:>8.0%}{r['synonyms']:>10.0%}{d:>12}{p:>11}{s:>9}")
    print("(derived c′: the embedding derived in closed form right after UCE, fed to each model)")
    print(f"\npictures and numbers: {out}/")
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # its own parser: rece_lite.bench.main
        from rece_lite.bench import main as bench_main

        return bench_main(argv[1:])
    p = argparse.ArgumentParser(prog="rece-lite", description="Closed-form concept erasure (UCE, RECE) for teaching.")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("erase", help="erase a concept and write patch.safetensors, report.json and pictures")
    e.add_argument("--model", default="tiny", help="'tiny' or a local SD 1.x folder / cached hub id")
    e.add_argument("--concept", required=True)
    e.add_argument("--method", default="rece", help="uce or rece")
    e.add_argument("--epochs", type=int, default=None, help="RECE epochs (default: the recipe's)")
    e.add_argument("--out", required=True)
    e.add_argument("--force", action="store_true", help="replace --out if it exists")
    e.add_argument("--seeds", type=int, default=8, help="seeds per prompt for the measurements")
    e.add_argument("--steps", type=int, default=20, help="sampling steps for the measurements")
    sub.add_parser("bench", help="the benchmark table: original, ESD-x, UCE, RECE (rece-lite bench -h)")
    d = sub.add_parser("demo", help="the whole story for one concept on the embedded model")
    d.add_argument("--concept", default="red")
    d.add_argument("--out", default="rece-lite-demo")
    d.add_argument("--force", action="store_true")
    d.add_argument("--seeds", type=int, default=8)
    args = p.parse_args(argv)
    try:
        if args.cmd == "erase":
            run_erase(args)
        elif args.cmd == "demo":
            run_demo(args)
    except (UsageError, FileNotFoundError, NotImplementedError) as err:
        print(f"rece-lite: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
