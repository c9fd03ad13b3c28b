"""Train the miniature Stable Diffusion from scratch: ``python -m rece_lite.tiny.train``.

Stages (each resumable; a finished stage is skipped on the next run):

1. ``vae``: the autoencoder, on pictures of the world (reconstruction + a tiny KL term).
2. ``classifier``: the evaluator's shape CNN (:class:`rece_lite.evaluate.ShapeNet`).
3. ``diffusion``: the UNet and the text encoder jointly, on the epsilon objective,
   latents pre-encoded; an EMA of both is what gets shipped.

Intermediate state lives in ``--work`` (default ``runs/tiny``, not committed); the
pipeline is written with ``save_pretrained`` to ``--out`` (default ``data/tiny``).
Every random draw of step ``k`` comes from a generator seeded with ``(seed, k)``, so
a resumed run takes the same path as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import json
import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tqdm.auto import tqdm

from rece_lite.files import new_dir_for, replace_dir, save_tensors
from rece_lite.pipeline import assemble_pipeline
from rece_lite.tiny import model as tm
from rece_lite.tiny import world

REPO = Path(__file__).resolve().parents[2]


def _gen(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """(n, H, W, 3) uint8 -> (n, 3, H, W) float in [-1, 1], as SD's VAE expects."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# ----------------------------------------------------------------------------- vae
def train_vae(
    images: np.ndarray, steps: int, batch: int, seed: int, work: Path, device: str = "cpu"
) -> torch.nn.Module:
    path = work / "vae.safetensors"
    vae = tm.build_vae()
    if path.exists():
        vae.load_state_dict(load_file(str(path)))
        return vae
    torch.manual_seed(seed)
    vae.to(device)
    x_all = _to_tensor(images)
    opt = torch.optim.AdamW(vae.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=steps, pct_start=0.05)
    bar = tqdm(range(steps), desc="vae")
    for k in bar:
        idx = torch.randint(0, len(x_all), (batch,), generator=_gen(seed, k))
        x = x_all[idx].to(device)
        post = vae.encode(x).latent_dist
        eps = torch.randn(post.mean.shape, generator=_gen(seed + 1, k)).to(device)
        rec = vae.decode(post.mean + post.std * eps).sample
        loss = F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if k % 50 == 0:
            psnr = 10 * math.log10(4.0 / F.mse_loss(rec, x).item())
            bar.set_postfix(psnr=f"{psnr:.1f}dB")
    vae.cpu()
    save_tensors(vae.state_dict(), path)
    return vae


@torch.no_grad()
def encode_latents(vae: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    vae.eval()
    x = _to_tensor(images)
    return torch.cat([vae.encode(x[i : i + 512]).latent_dist.mean for i in range(0, len(x), 512)])


# ---------------------------------------------------------------------- classifier
def train_classifier(steps: int, batch: int, seed: int, out: Path) -> None:
    from rece_lite.evaluate import ShapeNet, augment

    if out.exists():
        return
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = ShapeNet()
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    bar = tqdm(range(steps), desc="shape classifier")
    for k in bar:
        x, y = classifier_batch(batch, rng)
        x = augment(x, _gen(seed, k))
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if k % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    save_tensors(net.state_dict(), out)


def classifier_batch(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Pictures in arbitrary colours (the CNN must judge shape alone) plus empty ones.

    Returns (n, 3, H, W) float in [0, 1] and labels in 0..len(SHAPES) (the last: no object).
    """
    imgs, labels = [], []
    for _ in range(n):
        label = int(rng.integers(0, len(world.SHAPES) + 1))
        if label == len(world.SHAPES):
            s = world.render(0, 0, rng)
            bg = s.image.astype(np.float32)
            img = np.full_like(bg, float(np.median(bg))) + rng.normal(0, 2, size=bg.shape)
            imgs.append(np.clip(img, 0, 255).astype(np.uint8))
        else:
            rgb = tuple(rng.uniform(0, 255, size=3)) if rng.random() < 0.5 else None
            imgs.append(world.render(label, int(rng.integers(0, 4)), rng, rgb=rgb).image)
        labels.append(label)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.tensor(labels)


# ----------------------------------------------------------------------- diffusion
def _tokenize_all(tokenizer, shapes: np.ndarray, colours: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    caps = [world.caption(int(s), int(c), rng) for s, c in zip(shapes, colours)]
    return tokenizer(
        caps, padding="max_length", max_length=tm.MAX_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids


def train_diffusion(
    latents: torch.Tensor,
    shapes: np.ndarray,
    colours: np.ndarray,
    *,
    steps: int,
    batch: int,
    seed: int,
    work: Path,
    checkpoint_every: int,
    on_checkpoint,
    device: str = "cpu",
) -> tuple[torch.nn.Module, torch.nn.Module]:
    tokenizer = tm.build_tokenizer()
    torch.manual_seed(seed)
    unet, te = tm.build_unet(), tm.build_text_encoder(len(tokenizer))
    ema_unet, ema_te = tm.build_unet(), tm.build_text_encoder(len(tokenizer))
    ema_unet.load_state_dict(unet.state_dict())
    ema_te.load_state_dict(te.state_dict())
    for mod in (unet, te, ema_unet, ema_te):
        mod.to(device)  # before the optimiser exists, so its state lives on the same device
    params = list(unet.parameters()) + list(te.parameters())
    ema_params = list(ema_unet.parameters()) + list(ema_te.parameters())
    opt = torch.optim.AdamW(params, lr=5e-4, weight_decay=1e-2)
    warmup = 300
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps)))
    )
    noise_sched = tm.train_scheduler()
    acp = noise_sched.alphas_cumprod
    state_path = work / "diffusion_state.safetensors"
    start = 0
    if state_path.exists():
        st = load_file(str(state_path))
        start = int(st.pop("step").item())
        for prefix, mod in (("unet.", unet), ("te.", te), ("ema_unet.", ema_unet), ("ema_te.", ema_te)):
            mod.load_state_dict({k[len(prefix) :]: v for k, v in st.items() if k.startswith(prefix)})
        opt_state = opt.state_dict()
        for i in range(len(params)):
            if f"opt.{i}.exp_avg" in st:
                opt_state["state"][i] = {
                    "step": st[f"opt.{i}.step"],
                    "exp_avg": st[f"opt.{i}.exp_avg"],
                    "exp_avg_sq": st[f"opt.{i}.exp_avg_sq"],
                }
        opt.load_state_dict(opt_state)
        with warnings.catch_warnings():  # fast-forwarding the schedule, not skipping a step
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(start):
                sched.step()
        print(f"resuming diffusion training at step {start}/{steps}")

    def save_state(k: int) -> None:  # safetensors, not pickles: the optimiser's tensors, flattened
        st = {"step": torch.tensor(k)}
        for prefix, mod in (("unet.", unet), ("te.", te), ("ema_unet.", ema_unet), ("ema_te.", ema_te)):
            st.update({prefix + n: v for n, v in mod.state_dict().items()})
        for i, s in opt.state_dict()["state"].items():
            for n in ("step", "exp_avg", "exp_avg_sq"):
                st[f"opt.{i}.{n}"] = torch.as_tensor(s[n])
        save_tensors(st, state_path)

    unet.train()
    te.train()
    bar = tqdm(range(start, steps), desc="unet + text encoder", initial=start, total=steps)
    t0 = time.time()
    for k in bar:
        g = _gen(seed, k)
        idx = torch.randint(0, len(latents), (batch,), generator=g)
        rng = np.random.default_rng([seed, k])
        ids = _tokenize_all(tokenizer, shapes[idx.numpy()], colours[idx.numpy()], rng)
        z0 = latents[idx]
        noise = torch.randn(z0.shape, generator=g)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch,), generator=g)
        a = acp[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * noise
        zt, t, ids, noise = zt.to(device), t.to(device), ids.to(device), noise.to(device)
        emb = te(ids).last_hidden_state
        loss = F.mse_loss(unet(zt, t, emb).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        decay = min(0.999, (1 + k) / (10 + k))
        with torch.no_grad():
            for e, p in zip(ema_params, params):
                e.lerp_(p, 1 - decay)
        if k % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if (k + 1) % checkpoint_every == 0 or k + 1 == steps:
            save_state(k + 1)
            on_checkpoint(ema_unet, ema_te, k + 1, time.time() - t0)
    return ema_unet.cpu(), ema_te.cpu()


def export_pipeline(vae, unet, te, scaling_factor: float, out: Path, info: dict) -> None:
    """Write a real ``StableDiffusionPipeline`` with ``save_pretrained`` (atomically)."""
    vae.register_to_config(scaling_factor=scaling_factor)
    pipe = assemble_pipeline(
        vae=vae, text_encoder=te, tokenizer=tm.build_tokenizer(), unet=unet, scheduler=tm.sample_scheduler()
    )
    tmp = new_dir_for(out)
    pipe.save_pretrained(tmp)
    (tmp / "training.json").write_text(json.dumps(info, indent=2) + "\n")
    replace_dir(tmp, out)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=REPO / "data" / "tiny")
    p.add_argument("--work", type=Path, default=REPO / "runs" / "tiny")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--images", type=int, default=40_000, help="pictures in the training set")
    p.add_argument("--vae-steps", type=int, default=1500)
    p.add_argument("--classifier-steps", type=int, default=600)
    p.add_argument("--steps", type=int, default=10_000, help="UNet + text-encoder steps")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--checkpoint-every", type=int, default=500)
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    device = a.device or ("cuda" if torch.cuda.is_available() else "cpu")
    a.work.mkdir(parents=True, exist_ok=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    t_start = time.time()
    images, _, shapes, colours = world.generate(a.images, seed=a.seed)
    vae = train_vae(images, a.vae_steps, a.batch, a.seed, a.work, device)
    train_classifier(a.classifier_steps, a.batch, a.seed, a.out.parent / "shape_classifier.safetensors")
    latents = encode_latents(vae, images)
    scaling = float(1.0 / latents.std())
    latents = latents * scaling

    def on_checkpoint(unet, te, step, seconds):
        info = {
            "seed": a.seed,
            "steps": step,
            "batch": a.batch,
            "images": a.images,
            "vae_steps": a.vae_steps,
            "diffusion_seconds_this_run": round(seconds, 1),
            "total_seconds_this_run": round(time.time() - t_start, 1),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        }
        export_pipeline(vae, unet, te, scaling, a.work / "pipeline", info)
        if step == a.steps:
            export_pipeline(vae, unet, te, scaling, a.out, info)
            print(f"saved the pipeline to {a.out}")

    train_diffusion(
        latents,
        shapes,
        colours,
        steps=a.steps,
        batch=a.batch,
        seed=a.seed,
        work=a.work,
        checkpoint_every=a.checkpoint_every,
        on_checkpoint=on_checkpoint,
        device=device,
    )
    print(f"done in {(time.time() - t_start) / 60:.1f} min")


if __name__ == "__main__":
    main()
