"""The ``rece-lite`` command: parse, call the library, write.

    rece-lite erase --model tiny --concept red --method rece --out runs/red
    rece-lite demo                     # the whole story for one concept, with a short table
    rece-lite bench --concept red      # original, ESD-x, UCE, RECE side by side

Every argument is checked before any work starts, and the concept is parsed there once;
bad input (a :class:`rece_lite.errors.InputError` from the library, a
:class:`rece_lite.files.UsageError` from here, a model, file or pipeline that is not there
or not editable) exits with status 2 and one line saying what to do; any other exception
is a bug and keeps its traceback.  The methods are :data:`rece_lite.methods.METHODS`, the
sampling settings written to reports :data:`rece_lite.settings.SAMPLING`.

Output folders are never replaced without ``--force`` and appear
whole or not at all (:func:`rece_lite.files.staged_dir`).  torch and diffusers are imported
only once a command runs, so ``--help`` and ``--version`` answer at once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from rece_lite import methods
from rece_lite._version import __version__
from rece_lite.errors import InputError
from rece_lite.files import UsageError, check_out, staged_dir
from rece_lite.paths import is_embedded
from rece_lite.settings import SAMPLING, SamplingSettings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

#: ``--method``'s choices: the names of :data:`rece_lite.methods.METHODS`.
METHODS: tuple[str, ...] = methods.names()
DERIVED_IS = (
    "the bare concept word's embedding derived in closed form right after the UCE edit (RECE's first derivation)"
)


# ------------------------------------------------------------------------ checks
def _at_least(value: int | None, low: int, option: str, why: str = "") -> None:
    if value is not None and value < low:
        raise UsageError(f"{option} must be >= {low}{why}, got {value}")


def _concept(model: str, word: str):
    """The miniature world's concept for ``word`` (None for other models, which take any prompt)."""
    if not is_embedded(model):
        if not word.strip():
            raise UsageError("--concept is empty: give the concept to erase")
        return None
    from rece_lite.tiny.world import Concept

    try:
        return Concept.parse(word)
    except ValueError as e:
        raise UsageError(str(e)) from None


def _parsed(args: argparse.Namespace, model: str):
    """The concept :func:`check` parsed (parsing it here only for a caller that skipped :func:`check`)."""
    if not hasattr(args, "parsed"):
        args.parsed = _concept(model, args.concept)
    return args.parsed


def _environment(pipe) -> dict:
    import diffusers
    import torch

    return {
        "versions": {"rece_lite": __version__, "torch": torch.__version__, "diffusers": diffusers.__version__},
        "device": str(pipe.unet.device),
        "dtype": str(pipe.unet.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
    }


def _load(model: str, *, say: bool = True):
    import torch

    import rece_lite as rl

    torch.manual_seed(0)
    if say:
        print(f"loading {model} ...", flush=True)
    return rl.load_pipeline(model)


# ------------------------------------------------------------------------ output
def _grid(pipe, concept, path: Path, title: str, seeds: list[int]) -> None:
    """A grid of the concept's prompts (rows) x the first four seeds, as a PNG."""
    from rece_lite.pipeline import sample
    from rece_lite.viz import image_grid

    prompts = concept.prompts()
    imgs = sample(pipe, prompts, seeds=seeds[:4])
    fig = image_grid(imgs, rows=len(prompts), row_labels=prompts, suptitle=title)
    fig.savefig(path, dpi=110)
    _close(fig)


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


# ------------------------------------------------------------------------ commands
def run_erase(args: argparse.Namespace) -> dict:
    """``rece-lite erase``: one erasure, its patch, its measurements and pictures."""
    from rece_lite.measure import erase_and_measure
    from rece_lite.recipes import recipe_for

    concept = _parsed(args, args.model)
    tiny = concept is not None
    with staged_dir(args.out, force=args.force) as tmp:
        recipe = recipe_for(args.model, concept if tiny else args.concept, epochs=args.epochs)
        pipe = _load(args.model)
        seeds = list(range(args.seeds))
        if tiny:
            _grid(pipe, concept, tmp / "before.png", "original", seeds)
        run = erase_and_measure(
            pipe, concept if tiny else args.concept, recipe, method=args.method, seeds=seeds, steps=args.steps,
            measured=tiny,
        )  # fmt: skip
        if tiny:
            title = f"after {methods.get(args.method).label} ({concept.name} erased)"
            _grid(pipe, concept, tmp / "after.png", title, seeds)
        run.patch.save(tmp / "patch.safetensors")
        report = {
            "model": args.model,
            "concept": args.concept,
            "method": args.method,
            "recipe": asdict(recipe),
            "seeds": seeds,
            "sampling": asdict(SamplingSettings(steps=args.steps)),
            "edit_seconds": run.edit_seconds,
            "original": asdict(run.original) if run.original else None,
            "erased": asdict(run.erased) if run.erased else None,
            "derived_is": DERIVED_IS,
            **_environment(pipe),
        }
        _write_json(tmp / "report.json", report)
    print(f"done: {args.out}/patch.safetensors, report.json" + (", before.png, after.png" if tiny else ""))
    return report


def run_demo(args: argparse.Namespace) -> dict:
    """``rece-lite demo``: original, UCE, the derived embedding, RECE: one concept, one table."""
    from rece_lite.erase import snapshot
    from rece_lite.measure import erase_and_measure
    from rece_lite.recipes import recipe_for

    concept = _parsed(args, "tiny")
    with staged_dir(args.out, force=args.force) as tmp:
        recipe = recipe_for("tiny", concept)
        seeds = list(range(args.seeds))
        pipe = _load("tiny")
        print(f"rece-lite demo: erasing {concept.name!r} from the embedded miniature Stable Diffusion")
        print(f"recipe: {recipe}")
        _grid(pipe, concept, tmp / "original.png", "original", seeds)
        snap = snapshot(pipe)
        uce = erase_and_measure(pipe, concept, recipe, method="uce", seeds=seeds)
        c_adv = uce.derived[:1]  # the bare concept word's derived embedding, fed to both erased models
        _grid(pipe, concept, tmp / "uce.png", "after UCE", seeds)
        snap.apply(pipe)
        rece = erase_and_measure(
            pipe, concept, recipe, method="rece", seeds=seeds, original=uce.original, feed=c_adv, progress=True
        )
        _grid(pipe, concept, tmp / "rece.png", f"after RECE ({recipe.epochs} epochs)", seeds)
        rece.patch.save(tmp / "patch.safetensors")
        rows = {"original": uce.original, "UCE": uce.erased, "RECE": rece.erased}
        seconds = {"UCE": uce.edit_seconds, "RECE": rece.edit_seconds}
        report = {
            "recipe": asdict(recipe),
            "rows": {name: asdict(m) for name, m in rows.items()},
            "edit_seconds": seconds,
            "derived_is": DERIVED_IS,
            **_environment(pipe),
        }
        _write_json(tmp / "report.json", report)
    print()
    print(f"share of pictures still showing {concept.name!r} ({len(seeds)} seeds per prompt; lower is better "
          "except 'preserved')")  # fmt: skip
    print(f"{'model':<10}{'named':>8}{'synonyms':>10}{'derived c′':>12}{'preserved':>11}{'edit s':>9}")
    for name, m in rows.items():
        d = "-" if m.showing_derived is None else f"{m.showing_derived:.0%}"
        p = "-" if m.preservation is None else f"{m.preservation:.0%}"
        s = f"{seconds[name]:.3f}" if name in seconds else "-"
        print(f"{name:<10}{m.showing:>8.0%}{m.showing_synonyms:>10.0%}{d:>12}{p:>11}{s:>9}")
    print("(derived c′: the embedding derived in closed form right after UCE, fed to each model)")
    print(f"\npictures and numbers: {args.out}/")
    return report


def run_bench(args: argparse.Namespace) -> dict:
    """``rece-lite bench``: the comparison table (or a prompt file's), split across processes under
    ``accelerate launch``; only the first process writes and prints."""
    from rece_lite.parallel import split_sampling

    with split_sampling() as split:
        main = split.rank == 0
        report, write, markdown = _bench_prompt_file(args, main) if args.prompts else _bench_tiny(args, main)
        if main:
            with staged_dir(args.out, force=args.force) as tmp:
                write(report, tmp)
    if main:
        print()
        print(markdown(report))
        print(f"written: {args.out}/bench.json, bench.md" + ("" if args.prompts else ", bench.png"))
    return asdict(report)


def _bench_tiny(args: argparse.Namespace, main: bool):
    from rece_lite import bench

    concept = _parsed(args, "tiny")
    pipe = _load(args.model, say=main)
    report = bench.run(
        pipe, concept.name, seeds=range(args.seeds), steps=args.steps, repeats=args.repeats,
        esd_kw={} if args.esd_steps is None else {"steps": args.esd_steps},
        soft_prompt_kw={} if args.attack_steps is None else {"opt_steps": args.attack_steps},
        model=str(args.model), command="rece-lite " + " ".join(args.argv), progress=main,
    )  # fmt: skip
    return report, bench.write, bench.markdown


def _bench_prompt_file(args: argparse.Namespace, main: bool):
    from rece_lite import prompt_file
    from rece_lite.recipes import recipe_for

    concept = _parsed(args, args.model)
    rows = prompt_file.read_prompts(args.prompts)
    if args.judge:
        judge, judge_name = prompt_file.load_judge(args.judge), args.judge
    elif is_embedded(args.model):
        judge, judge_name = _tiny_judge(concept), f"the evaluator: shows {args.concept!r}"
    else:
        raise UsageError("--judge is needed with --prompts on a model other than 'tiny' (package.module:function)")
    if args.patch:
        edits = {Path(p).stem: _load_patch(p) for p in args.patch}
    else:
        recipe = recipe_for(args.model, concept or args.concept)
        edits = {m.label: recipe for m in methods.compared()}
    pipe = _load(args.model, say=main)
    report = prompt_file.prompt_file_run(
        pipe, rows, judge, edits, steps=args.steps, prompts_name=str(args.prompts), judge_name=judge_name,
        model=str(args.model), command="rece-lite " + " ".join(args.argv), progress=main,
    )  # fmt: skip
    return report, prompt_file.write_prompt_file, prompt_file.prompt_file_markdown


def _load_patch(path: str):
    """A ``--patch`` file; one whose contents are no patch (a 3-d tensor, say) is the user's input, said in one line."""
    from rece_lite.patch import Patch

    try:
        return Patch.load(path)
    except TypeError as e:
        raise InputError(f"--patch {e}") from None


def _tiny_judge(concept):
    """The miniature world's evaluator as a judge: does each picture show ``concept``?"""
    from rece_lite import evaluate as ev

    def shows(images):
        labels = ev.classify(images)
        return [x == concept.name for x in (labels.colours if concept.kind == "colour" else labels.shapes)]

    return shows


# ------------------------------------------------------------------------ parser
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rece-lite", description="Closed-form concept erasure (UCE, RECE) for teaching, on a miniature "
        "Stable Diffusion that runs on a laptop CPU (or any SD 1.x / 2.x / XL you have)."
    )  # fmt: skip
    p.add_argument("--version", action="version", version=f"rece-lite {__version__}")
    sub = p.add_subparsers(dest="cmd", required=True, metavar="{erase,demo,bench}")

    e = sub.add_parser("erase", help="erase a concept; write patch.safetensors, report.json and pictures",
                       description="Erase one concept with UCE or RECE and write the patch, a report and, for the "
                       "miniature model, before/after pictures and measurements.")  # fmt: skip
    e.add_argument("--model", default="tiny",
                   help="'tiny' (the embedded model; 'tiny-grounded', 'tiny-ungrounded' its variants), a local "
                        "folder or a cached hub id")  # fmt: skip
    e.add_argument("--concept", required=True, help="what to erase (tiny: a colour or shape, or a synonym)")
    e.add_argument("--method", default="rece", choices=METHODS,
                   help="the closed form to use: " + "; ".join(f"{m.name}: {m.description}" for m in
                                                                methods.METHODS.values()) + " (default: rece)")
    e.add_argument("--epochs", type=int, default=None, help="RECE epochs (default: the recipe's)")
    e.add_argument("--out", required=True, help="the folder to write (created; replaced only with --force)")
    e.add_argument("--force", action="store_true", help="replace --out if it exists")
    e.add_argument("--seeds", type=int, default=8, help="seeds per prompt for the measurements (default: 8)")
    e.add_argument("--steps", type=int, default=SAMPLING.steps,
                   help=f"sampling steps for the measurements (default: {SAMPLING.steps})")

    d = sub.add_parser("demo", help="the whole story for one concept on the embedded model",
                       description="Erase a concept from the embedded model with UCE and RECE and print a table: "
                       "what is left of the concept, of its synonyms, of the derived embedding, and of everything "
                       "else.")  # fmt: skip
    d.add_argument("--concept", default="red", help="a colour or shape of the miniature world (default: red)")
    d.add_argument("--out", default="rece-lite-demo", help="the folder to write (default: rece-lite-demo)")
    d.add_argument("--force", action="store_true", help="replace --out if it exists")
    d.add_argument("--seeds", type=int, default=8, help="seeds per prompt for the measurements (default: 8)")

    b = sub.add_parser("bench", help="the comparison table: original, ESD-x, UCE, RECE",
                       description="The paper's comparison on the miniature model: erasure, three attacks, "
                       "preservation, a kernel distance and edit time, for the original model, an ESD-x fine-tune, "
                       "UCE and RECE.")  # fmt: skip
    b.add_argument("--model", default="tiny", help="'tiny' or a checkpoint of it; with --prompts any SD model")
    b.add_argument("--concept", default="red", help="what to erase (tiny: a colour or shape; default: red)")
    b.add_argument("--out", default="rece-lite-bench", help="output folder: bench.json, bench.md, bench.png")
    b.add_argument("--force", action="store_true", help="replace --out if it exists")
    b.add_argument("--seeds", type=int, default=8, help="seeds per prompt for every measurement (default: 8)")
    b.add_argument("--steps", type=int, default=SAMPLING.steps, help=f"sampling steps (default: {SAMPLING.steps})")
    b.add_argument("--repeats", type=int, default=5, help="timed runs of UCE and RECE, median reported (default: 5)")
    b.add_argument("--esd-steps", type=int, default=None, help="ESD fine-tuning steps (default: esd_erase's)")
    b.add_argument("--attack-steps", type=int, default=None,
                   help="the soft prompt's optimisation steps (default: the attack's)")  # fmt: skip
    b.add_argument("--prompts", default=None, help="a CSV prompt file (columns: prompt, optional evaluation_seed; "
                   "the I2P / Ring-A-Bell format): measure the share of its pictures the judge flags, per model")
    b.add_argument("--judge", default=None, help="with --prompts: 'package.module:function' taking (n, H, W, 3) "
                   "uint8 pictures and returning n bools (default for tiny: the evaluator, for --concept)")
    b.add_argument("--patch", action="append", default=None,
                   help="with --prompts: a patch file to evaluate (repeatable; default: UCE and RECE of --concept)")
    return p


def check(args: argparse.Namespace) -> None:
    """Every argument, before any work starts."""
    _at_least(getattr(args, "seeds", None), 2 if args.cmd == "bench" else 1, "--seeds",
              " (the kernel distance compares sets of pictures)" if args.cmd == "bench" else "")  # fmt: skip
    _at_least(getattr(args, "steps", None), 1, "--steps")
    _at_least(getattr(args, "epochs", None), 0, "--epochs")
    _at_least(getattr(args, "repeats", None), 1, "--repeats")
    _at_least(getattr(args, "esd_steps", None), 1, "--esd-steps")
    _at_least(getattr(args, "attack_steps", None), 1, "--attack-steps")
    model = getattr(args, "model", "tiny")
    # parsed once, here: the commands read args.parsed (a Concept for the miniature world, None otherwise)
    args.parsed = _concept(model if args.cmd != "bench" or getattr(args, "prompts", None) else "tiny", args.concept)
    if args.cmd == "bench" and args.prompts is None and (args.judge or args.patch):
        raise UsageError("--judge and --patch go with --prompts")
    check_out(args.out, force=args.force)


COMMANDS = {"erase": run_erase, "demo": run_demo, "bench": run_bench}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser().parse_args(argv)
    args.argv = argv
    try:
        check(args)
        COMMANDS[args.cmd](args)
    except (InputError, UsageError, FileNotFoundError, NotImplementedError) as err:
        # the user's input (InputError, UsageError), or a model / file that is not there (FileNotFoundError)
        # or not a pipeline rece-lite edits (NotImplementedError): one line. Anything else is a bug: traceback.
        print(f"rece-lite: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rece-lite: interrupted; nothing was written", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
