"""The first two training stages: the autoencoder and the evaluator's shape CNN (the diffusion stage is
in :mod:`rece_lite.tiny.train`).  Each is resumable: a finished stage's state file is loaded, not redone.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rece_lite.evaluate import ShapeNet, augment
from rece_lite.tiny import model as tm
from rece_lite.tiny import world
from rece_lite.tiny.train_config import TrainConfig, _gen, _load_state, _save_state, _set_lr, _to_tensor, lr_at


# ----------------------------------------------------------------------------- vae
def train_vae(images: np.ndarray, cfg: TrainConfig, work: Path, device: str = "cpu") -> torch.nn.Module:
    path = work / "vae.safetensors"
    settings = cfg.stage("vae")
    torch.manual_seed(cfg.seed)  # before building: the initial weights are part of the run
    vae = tm.build_vae(cfg.model)
    if path.exists():
        vae.load_state_dict(_load_state(path, settings))
        return vae
    vae.to(device)
    x_all = _to_tensor(images)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr)
    bar = tqdm(range(cfg.vae_steps), desc="vae")
    for k in bar:
        _set_lr(opt, cfg.vae_lr * lr_at(k, cfg.vae_steps, max(1, cfg.vae_steps // 20), 0.01))
        idx = torch.randint(0, len(x_all), (cfg.batch,), generator=_gen(cfg.seed, k))
        x = x_all[idx].to(device)
        post = vae.encode(x).latent_dist
        eps = torch.randn(post.mean.shape, generator=_gen(cfg.seed + 1, k)).to(device)
        rec = vae.decode(post.mean + post.std * eps).sample
        loss = F.mse_loss(rec, x) + 1e-6 * post.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if k % 50 == 0:
            psnr = 10 * math.log10(4.0 / F.mse_loss(rec, x).item())
            bar.set_postfix(psnr=f"{psnr:.1f}dB")
    vae.cpu()
    _save_state(vae.state_dict(), path, settings)
    return vae


@torch.no_grad()
def encode_latents(vae: torch.nn.Module, images: np.ndarray) -> torch.Tensor:
    vae.eval()
    x = _to_tensor(images)
    return torch.cat([vae.encode(x[i : i + 512]).latent_dist.mean for i in range(0, len(x), 512)])


# ---------------------------------------------------------------------- classifier
def train_classifier(cfg: TrainConfig, out: Path) -> None:
    """The evaluator's shape CNN, written to ``out`` (skipped when ``out`` was made with these settings)."""
    settings = cfg.stage("classifier")
    if out.exists():
        _load_state(out, settings)
        return
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    net = ShapeNet()
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.classifier_lr, weight_decay=1e-4)
    bar = tqdm(range(cfg.classifier_steps), desc="shape classifier")
    for k in bar:
        _set_lr(opt, cfg.classifier_lr * lr_at(k, cfg.classifier_steps, max(1, cfg.classifier_steps // 10), 0.01))
        x, y = classifier_batch(cfg.batch, rng)
        x = augment(x, _gen(cfg.seed, k))
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if k % 50 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    _save_state(net.state_dict(), out, settings)


def classifier_batch(n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Pictures in arbitrary colours (the CNN must judge shape alone) plus empty ones.

    Returns (n, 3, SIZE, SIZE) float in [0, 1] and labels in 0..len(SHAPES) (the last: no object).
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
            imgs.append(world.render(label, int(rng.integers(0, len(world.COLOURS))), rng, rgb=rgb).image)
        labels.append(label)
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255.0
    return x, torch.tensor(labels)

