"""Catalogue ``training``: the miniature model's training script.

Bad options, outputs and work folders, corrupt or foreign resumes; a few small runs (~20 s each).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time

from .harness import PY, REPO, TRAIN_BASE, Broken, Weak, add, expect_refusal, last_line, subproc, train, train_refused


def register_training() -> None:
    cat = "training"
    for label, argv, names in [
        ("--steps 0", ["--steps", "0"], "--steps"),
        ("--images 0", ["--images", "0"], "--images"),
        ("--batch -8", ["--batch", "-8"], "--batch"),
        ("--checkpoint-every 0", ["--checkpoint-every", "0"], "--checkpoint-every"),
        ("--vae-steps 0", ["--vae-steps", "0"], "--vae-steps"),
        ("--classifier-steps 0", ["--classifier-steps", "0"], "--classifier-steps"),
        ("--threads 0", ["--threads", "0"], "--threads"),
        ("--lr -1", ["--lr", "-1"], "--lr"),
        ("--lr nan", ["--lr", "nan"], "--lr"),
        ("--two-object-rate 1.5", ["--two-object-rate", "1.5"], "--two-object-rate"),
        ("--size 0", ["--size", "0"], "--size"),
        ("--size 30 (not a multiple of the VAE's factor)", ["--size", "30"], "--size"),
        ("--unet-heads 0", ["--unet-heads", "0"], "--unet-heads"),
        ("--text-width 30 --text-heads 4 (not divisible)", ["--text-width", "30", "--text-heads", "4"],
         ("--text-width", "--text-heads")),
        ("--device tpu", ["--device", "tpu"], "--device"),
        ("--steps abc", ["--steps", "abc"], "--steps"),
    ]:
        add(cat, f"train {label}", lambda ctx, a=argv: train_refused(ctx, *a), names)

    def ro_work(ctx):
        res = subproc(ctx, [PY, "-m", "rece_lite.tiny.train", "--out", str(ctx.tmp / "o"), "--work", "/proc/w",
                            *TRAIN_BASE], 40)  # fmt: skip
        expect_refusal(res, "training with a read-only --work")

    add(cat, "train --work /proc/w (read-only)", ro_work, ("--work", "/proc/w"))

    def out_in_file(ctx):
        (ctx.tmp / "f.txt").write_text("x")
        ctx.arm()
        train_refused(ctx, "--out", str(ctx.tmp / "f.txt" / "o"))

    add(cat, "train --out inside a file", out_in_file, ("--out", "f.txt"))

    def corrupt_state(ctx):
        (ctx.tmp / "w").mkdir()
        (ctx.tmp / "w" / "diffusion_state.safetensors").write_bytes(b"garbage" * 10)
        ctx.arm()
        res = train(ctx, timeout=90)
        if res.returncode == 0:
            raise Weak("a corrupt diffusion_state.safetensors was silently replaced")
        with contextlib.suppress(FileNotFoundError):
            for q in list((ctx.tmp / "w").iterdir()):  # stages before the state file are legitimate work
                if q.name != "diffusion_state.safetensors":
                    shutil.rmtree(q) if q.is_dir() else q.unlink()
        expect_refusal(res, "training with a corrupt state file")

    add(cat, "train with a corrupt diffusion_state.safetensors in --work", corrupt_state, "diffusion_state", limit=120)

    def small_run(ctx):
        res = train(ctx, timeout=120, out="o", work="w")
        if res.returncode != 0:
            raise Broken(f"a small valid run failed (exit {res.returncode}): {last_line(res.stderr)[:250]}")
        if not (ctx.tmp / "o" / "model_index.json").exists():
            raise Broken("exit 0 but --out has no model_index.json")
        keep = ctx.root / "run1"
        shutil.copytree(ctx.tmp / "o", keep)
        ctx.shared["run1"] = keep
        shutil.rmtree(ctx.tmp / "o")
        # finish, delete --out, rerun: --out must be written again
        res = train(ctx, timeout=120, out="o", work="w")
        if res.returncode != 0 or not (ctx.tmp / "o" / "model_index.json").exists():
            raise Broken(f"rerun after deleting --out: exit {res.returncode}, --out "
                         f"{'written' if (ctx.tmp / 'o').exists() else 'never written'}: {last_line(res.stdout)}")
        for q in list(ctx.tmp.iterdir()):
            shutil.rmtree(q)

    add(cat, "train a small valid run; then delete --out and rerun (valid)", small_run, expect="ok", limit=300)

    def reproducible(ctx):
        first = ctx.shared.get("run1")
        if first is None:
            raise Weak("inconclusive: the first small run failed")
        res = train(ctx, timeout=120, out="o", work="w")
        if res.returncode != 0:
            raise Broken(f"second run failed (exit {res.returncode}): {last_line(res.stderr)}")
        from safetensors.torch import load_file

        differ = []
        for part in ("unet", "text_encoder", "vae"):
            a = load_file(str(next((first / part).glob("*.safetensors"))))
            b = load_file(str(next((ctx.tmp / "o" / part).glob("*.safetensors"))))
            if a.keys() != b.keys() or any(not a[k].equal(b[k]) for k in a):
                differ.append(part)
        for q in list(ctx.tmp.iterdir()):
            shutil.rmtree(q)
        if differ:
            raise Broken(f"the same command twice with --threads 1 gives different {', '.join(differ)}")

    add(cat, "train the same small run twice with --threads 1 (must be identical)", reproducible, expect="ok",
        limit=180)

    def resume_other_seed(ctx):
        args = [PY, "-m", "rece_lite.tiny.train", "--out", str(ctx.tmp / "o"), "--work", str(ctx.tmp / "w"),
                *TRAIN_BASE, "--steps", "40", "--checkpoint-every", "1"]  # fmt: skip
        env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TMPDIR=str(ctx.systmp), PYTHONPATH=str(REPO))
        proc = subprocess.Popen(args, env=env, cwd=ctx.tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)  # fmt: skip
        state = ctx.tmp / "w" / "diffusion_state.safetensors"
        deadline = time.time() + 90
        while time.time() < deadline and not state.exists() and proc.poll() is None:
            time.sleep(0.1)
        time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if not state.exists():
            raise Weak("inconclusive: no diffusion state was written before the kill")
        ctx.arm()
        res = train(ctx, "--steps", "40", "--checkpoint-every", "1", "--seed", "1", timeout=120)
        for q in list(ctx.tmp.iterdir()):
            shutil.rmtree(q)
        ctx.arm()
        if res.returncode == 0 and "resum" in res.stdout.lower():
            raise Broken("killed mid-run, resumed with another --seed: finished silently with mixed settings "
                         f"({last_line(res.stdout)[:120]})")
        if res.returncode == 0:
            return  # it started over with the new seed: a documented choice, not a mix
        expect_refusal(res, "resume with another --seed")

    add(cat, "train killed mid-run, resumed with another --seed", resume_other_seed, ("--seed", "seed"), limit=300)
