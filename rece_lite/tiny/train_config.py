"""The training's settings and its resumable state files (:mod:`rece_lite.tiny.train` runs them).

One :class:`TrainConfig` decides what a run produces; :meth:`TrainConfig.stage` is the part of it a
stage's saved state depends on, so a resumed run with other settings is refused rather than mixed in.
Every random draw of step ``k`` comes from :func:`_gen` ``(seed, k)``.  State files are safetensors
with the settings in their header (never pickles).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from rece_lite.files import save_tensors
from rece_lite.tiny import model as tm


class TrainingError(Exception):
    """A setting or a state file the training cannot use: printed as one line, exit status 2."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides what the training produces.

    Attributes:
        seed: seeds the pictures, the weights and every step's draws.
        images: pictures in the training set.
        two_object_rate: share of pictures with two objects (0: the one-object world).
        vae_steps, classifier_steps, steps: optimiser steps of the three stages.
        batch: samples per step, every stage.
        lr: the UNet and text encoder's peak learning rate (AdamW).
        warmup: steps of linear warm-up before the cosine decay.
        final_lr: the decay's floor, as a share of ``lr``.
        weight_decay: AdamW's, for the UNet and text encoder.
        ema: the exponential moving average's decay (of the shipped weights).
        vae_lr, classifier_lr: the other stages' peak learning rates.
        init: a saved pipeline folder to fine-tune ("": train from scratch).
        ground_weight: w, the weight of the token loss (0: the denoising loss alone).
        model: the sizes of every part.
    """

    seed: int = 0
    images: int = 40_000
    two_object_rate: float = 0.0
    vae_steps: int = 1500
    classifier_steps: int = 600
    steps: int = 10_000
    batch: int = 64
    lr: float = 5e-4
    warmup: int = 300
    final_lr: float = 0.1
    weight_decay: float = 1e-2
    ema: float = 0.999
    vae_lr: float = 1e-3
    classifier_lr: float = 2e-3
    init: str = ""
    ground_weight: float = 0.0
    model: tm.ModelConfig = field(default_factory=tm.ModelConfig)

    def check(self) -> None:
        """Refuse settings that cannot train, naming the option."""
        for name in ("images", "vae_steps", "classifier_steps", "steps", "batch"):
            if getattr(self, name) < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.two_object_rate <= 1.0:
            raise TrainingError(f"--two-object-rate must be in [0, 1], got {self.two_object_rate}")
        for name in ("lr", "vae_lr", "classifier_lr"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise TrainingError(
                    f"--{name.replace('_', '-')} must be a finite number > 0, got {getattr(self, name)}"
                )
        if self.warmup < 0:
            raise TrainingError(f"--warmup must be >= 0, got {self.warmup}")
        for name in ("final_lr", "ema"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise TrainingError(f"--{name.replace('_', '-')} must be in [0, 1], got {getattr(self, name)}")
        for name in ("weight_decay", "ground_weight"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise TrainingError(
                    f"--{name.replace('_', '-')} must be a finite number >= 0, got {getattr(self, name)}"
                )
        m = self.model
        for name in ("size", "unet_heads", "text_width", "text_layers", "text_heads"):
            if getattr(m, name) < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(m, name)}")
        for name in ("vae_channels", "unet_channels"):
            if not getattr(m, name) or min(getattr(m, name)) < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be one or more numbers >= 1")
        if m.size % 2 ** (len(m.vae_channels) - 1):
            raise TrainingError(f"--size {m.size} is not a multiple of the VAE's downsampling")
        if any(c % m.unet_heads for c in m.unet_channels):
            raise TrainingError(
                f"--unet-heads {m.unet_heads} does not divide every --unet-channels {list(m.unet_channels)}"
            )
        if m.text_width % m.text_heads:
            raise TrainingError(f"--text-width {m.text_width} is not a multiple of --text-heads {m.text_heads}")

    def stage(self, name: str) -> dict:
        """The settings a stage's state depends on (a resumed stage must match them)."""
        m = asdict(self.model)
        keys = {
            "vae": dict(seed=self.seed, images=self.images, two_object_rate=self.two_object_rate,
                        steps=self.vae_steps, batch=self.batch, lr=self.vae_lr, size=m["size"],
                        channels=m["vae_channels"]),
            "classifier": dict(seed=self.seed, steps=self.classifier_steps, batch=self.batch, lr=self.classifier_lr),
            "diffusion": {**{f.name: getattr(self, f.name) for f in fields(self)
                             if f.name not in ("classifier_steps", "classifier_lr", "model")}, "model": m},
        }  # fmt: skip
        return json.loads(json.dumps(keys[name]))  # tuples as lists, as they come back from a file


def lr_at(step: int, total: int, warmup: int, final: float) -> float:
    """The learning rate at ``step`` as a share of the peak.

    1) linear warm-up over ``warmup`` steps; 2) cosine decay from 1 to ``final`` over
    ``total`` steps (and ``final`` after them).
    """
    rise = min(1.0, (step + 1) / max(1, warmup))
    progress = min(step, total) / max(1, total)
    return rise * (final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def _gen(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + step)


def _to_tensor(images: np.ndarray) -> torch.Tensor:
    """(n, H, W, 3) uint8 -> (n, 3, H, W) float in [-1, 1], as SD's VAE expects."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# ------------------------------------------------------------------------ state files
def _save_state(tensors: dict[str, torch.Tensor], path: Path, settings: dict) -> None:
    save_tensors(tensors, path, {"rece_lite.settings": json.dumps(settings, sort_keys=True)})


def _load_state(path: Path, settings: dict) -> dict[str, torch.Tensor]:
    """A stage's saved tensors, if they were made with ``settings``; a clear error otherwise."""
    try:
        with safe_open(str(path), framework="pt") as f:
            saved = json.loads((f.metadata() or {}).get("rece_lite.settings", "null"))
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise TrainingError(
            f"{path} is not a readable state file ({type(e).__name__}: {e}); delete it to redo that stage"
        ) from None
    if saved != settings:
        diff = sorted(k for k in set(settings) | set(saved or {}) if (saved or {}).get(k) != settings.get(k))
        was = ", ".join(f"{k}={(saved or {}).get(k)!r}" for k in diff)
        now = ", ".join(f"{k}={settings.get(k)!r}" for k in diff)
        raise TrainingError(
            f"{path} was made with {was or 'unrecorded settings'}, not {now}: rerun with the settings it was made "
            "with, or give another --work to start afresh"
        )
    return tensors

