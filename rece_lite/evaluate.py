"""Measuring concepts in generated pictures of the miniature world.

Two classifiers make erasure a number instead of an impression:

* colour: a pixel rule.  Saturated pixels are the object; each votes for the
  nearest of the world's hues; too few saturated pixels means "none", a hue far
  from all four means "other".
* shape: a tiny CNN (:class:`ShapeNet`) trained on renders in arbitrary colours,
  blurred and noised (:func:`augment`), with a fifth class for "no object".

Definitions (DESIGN §5): *erasure rate* is the share of images from prompts of
the erased concept still labelled with it (lower is better); *preservation* is
accuracy on other concepts as a share of the original model's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from rece_lite.paths import classifier_path
from rece_lite.tiny import world

SHAPE_LABELS: tuple[str, ...] = (*world.SHAPES, "none")
COLOUR_LABELS: tuple[str, ...] = (*world.COLOURS, "none", "other")
CLASSIFIER_PATH = classifier_path()


def _hue(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees of (..., 3) float RGB in [0, 1]."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    d = np.where(mx - mn == 0, 1e-9, mx - mn)
    h = np.where(mx == r, (g - b) / d % 6, np.where(mx == g, (b - r) / d + 2, (r - g) / d + 4))
    return h * 60.0


WORLD_HUES = np.array([_hue(np.array(world.RGB[c], dtype=float) / 255.0) for c in world.COLOURS])


def classify_colour(images: np.ndarray, *, min_pixels: int = 12, max_hue_gap: float = 40.0) -> list[str]:
    """The colour of each picture's object, or "none" / "other".

    Args:
        images: (n, H, W, 3) uint8 RGB.
        min_pixels: fewer saturated pixels than this means there is no object.
        max_hue_gap: a median hue farther than this (degrees) from every world colour is "other".
    """
    x = np.asarray(images, dtype=np.float64) / 255.0
    mx, mn = x.max(-1), x.min(-1)
    sat = (mx - mn) / np.maximum(mx, 1e-9)
    fg = (sat > 0.45) & (mx > 0.3)
    hue = _hue(x)
    out = []
    for i in range(len(x)):
        h = hue[i][fg[i]]
        if h.size < min_pixels:
            out.append("none")
            continue
        gaps = np.abs((h[:, None] - WORLD_HUES[None, :] + 180) % 360 - 180)
        votes = np.bincount(gaps.argmin(1), minlength=len(world.COLOURS))
        best = int(votes.argmax())
        out.append(world.COLOURS[best] if np.median(gaps[:, best]) <= max_hue_gap else "other")
    return out


class ShapeNet(nn.Module):
    """A tiny CNN: (n, 3, 32, 32) RGB in [0, 1] -> logits over SHAPE_LABELS."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        )  # fmt: skip
        self.head = nn.Linear(64, len(SHAPE_LABELS))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 64) features, used for the image-quality distance."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """Blur, noise, contrast and colour-channel shuffles, like a sampler's artefacts."""
    n = x.shape[0]
    sigma = torch.rand(n, generator=g) * 1.2
    k = torch.arange(-2, 3, dtype=torch.float32)
    kern = torch.exp(-(k[None] ** 2) / (2 * sigma[:, None].clamp_min(0.05) ** 2))
    kern = kern / kern.sum(1, keepdim=True)  # (n, 5)
    xb = x.reshape(1, n * 3, *x.shape[2:])
    kh = kern.repeat_interleave(3, 0).view(n * 3, 1, 1, 5)
    xb = F.conv2d(F.pad(xb, (2, 2, 0, 0), mode="replicate"), kh, groups=n * 3)
    xb = F.conv2d(F.pad(xb, (0, 0, 2, 2), mode="replicate"), kh.transpose(2, 3), groups=n * 3)
    x = xb.view_as(x)
    perm = torch.stack([torch.randperm(3, generator=g) for _ in range(n)])
    x = torch.gather(x, 1, perm[:, :, None, None].expand_as(x))
    contrast = 0.7 + 0.6 * torch.rand(n, 1, 1, 1, generator=g)
    x = (x - 0.5) * contrast + 0.5
    x = x + torch.randn(x.shape, generator=g) * 0.08 * torch.rand(n, 1, 1, 1, generator=g)
    return x.clamp(0, 1)


@lru_cache(maxsize=1)
def shape_classifier(path: Path = CLASSIFIER_PATH) -> ShapeNet:
    """The shipped shape CNN, in eval mode."""
    from safetensors.torch import load_file

    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: train it with `python -m rece_lite.tiny.train`.")
    net = ShapeNet()
    net.load_state_dict(load_file(str(path)))
    return net.eval()


def _as_array(images) -> np.ndarray:
    if isinstance(images, np.ndarray):
        arr = images
    elif isinstance(images, torch.Tensor):
        arr = images.detach().cpu().numpy()
    else:  # a list of PIL images, as pipelines return
        arr = np.stack([np.asarray(im.convert("RGB")) for im in images])
    if arr.dtype != np.uint8:  # floats in [0, 1]
        arr = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if arr.ndim == 4 and arr.shape[1] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(0, 2, 3, 1)
    return arr


@torch.no_grad()
def classify_shape(images) -> list[str]:
    """The shape in each picture (or "none").

    Args:
        images: (n, H, W, 3) uint8 array, a list of PIL images, or floats in [0, 1].
    """
    arr = _as_array(images)
    x = torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 255.0
    if x.shape[-1] != world.SIZE:
        x = F.interpolate(x, size=(world.SIZE, world.SIZE), mode="bilinear", antialias=True)
    return [SHAPE_LABELS[i] for i in shape_classifier()(x).argmax(1).tolist()]


@dataclass(frozen=True)
class Labels:
    """What the classifiers see in each picture."""

    shapes: list[str]
    colours: list[str]


def classify(images) -> Labels:
    """Shape and colour labels for a batch of pictures (PIL list or arrays)."""
    arr = _as_array(images)
    return Labels(classify_shape(arr), classify_colour(arr))


def concept_of(word: str) -> tuple[str, str]:
    """("colour" | "shape", canonical name) for a concept word or one of its synonyms."""
    c = world.Concept.parse(word)
    return c.kind, c.name


def share_showing(labels: Labels, concept: str) -> float:
    """Share of pictures that show ``concept`` (a colour or a shape, or a synonym of one).

    For pictures from prompts of an erased concept this is what is left of it (lower is
    better); for an attack's pictures, its success rate.
    """
    c = world.Concept.parse(concept)
    seen = labels.colours if c.kind == "colour" else labels.shapes
    return float(np.mean([s == c.name for s in seen])) if seen else float("nan")


share_with = share_showing  # the first landing's name (notebooks 03-05 used it)


def accuracy(labels: Labels, shapes: Sequence[str | None], colours: Sequence[str | None]) -> dict[str, float]:
    """Shape, colour and joint accuracy against what the prompts asked for (None: not asked)."""
    s_ok = [a == b for a, b in zip(labels.shapes, shapes) if b is not None]
    c_ok = [a == b for a, b in zip(labels.colours, colours) if b is not None]
    both = [
        ls == s and lc == c
        for ls, lc, s, c in zip(labels.shapes, labels.colours, shapes, colours)
        if s is not None and c is not None
    ]
    mean = lambda v: float(np.mean(v)) if v else float("nan")  # noqa: E731
    return {"shape": mean(s_ok), "colour": mean(c_ok), "both": mean(both)}


# ------------------------------------------------------------- prompts and scores
def concept_prompts(concept: str, *, synonyms: bool = False) -> list[str]:
    """Prompts that ask for ``concept`` (see :meth:`rece_lite.tiny.world.Concept.prompts`)."""
    return world.Concept.parse(concept).prompts(synonyms=synonyms)


def other_prompts(concept: str) -> tuple[list[str], list[str], list[str]]:
    """Prompts that do not involve ``concept``, with what each asks for (see :meth:`~world.Concept.other_prompts`)."""
    return world.Concept.parse(concept).other_prompts()


def concept_share(pipe, concept: str, *, prompts=None, embeds=None, seeds=range(8), **sample_kw) -> float:
    """Share of images (from ``prompts``, default :func:`concept_prompts`, or ``embeds``) showing ``concept``.

    For the prompts of an erased concept this is the *erasure rate* (lower is better).
    """
    from rece_lite.pipeline import sample

    if embeds is None and prompts is None:
        prompts = concept_prompts(concept)
    imgs = sample(pipe, prompts, embeds=embeds, seeds=list(seeds), **sample_kw)
    return share_with(classify(imgs), concept)


def other_accuracy(pipe, concept: str, *, seeds=range(8), **sample_kw) -> dict[str, float]:
    """Shape / colour / joint accuracy on prompts of the *other* concepts (preservation's numerator)."""
    from rece_lite.pipeline import sample

    prompts, shapes, colours = other_prompts(concept)
    k = len(list(seeds))
    imgs = sample(pipe, prompts, seeds=list(seeds), **sample_kw)
    return accuracy(classify(imgs), [s for s in shapes for _ in range(k)], [c for c in colours for _ in range(k)])


def erasure_row(pipe, concept: str, seeds, *, derived=None, reference: dict | None = None, steps: int = 20) -> dict:
    """The numbers of one model state: shares showing ``concept`` for named prompts, synonym prompts
    and (optionally) a derived embedding; joint accuracy on other prompts; and preservation
    relative to ``reference`` (a row of the original model)."""
    kw = dict(seeds=list(seeds), steps=steps)
    row = {
        "named": concept_share(pipe, concept, **kw),
        "synonyms": concept_share(pipe, concept, prompts=concept_prompts(concept, synonyms=True), **kw),
        "others": other_accuracy(pipe, concept, **kw)["both"],
    }
    if derived is not None:
        row["derived"] = concept_share(pipe, concept, embeds=derived, **kw)
    if reference is not None:
        row["preservation"] = row["others"] / max(reference["others"], 1e-9)
    return row
