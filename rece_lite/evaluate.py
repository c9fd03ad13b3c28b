"""Measuring concepts in generated pictures of the miniature world.

Classifiers make erasure a number instead of an impression.  A picture is read the way a
person would: find the objects, then name each one's colour and shape.

* objects (:func:`find_objects`): pixels that differ from the background (the median of
  the picture's border) form connected components; components too small to be an object
  are dropped.
* colour: from each object's core pixels (those farthest from the background): mostly
  saturated pixels vote for the nearest of the world's hues ("other" if far from all);
  mostly unsaturated mid-tone pixels are grey.
* shape: a tiny CNN (:class:`ShapeNet`) trained on renders in arbitrary colours, blurred
  and noised (:func:`augment`), with a class for "no object", applied to a crop around the
  object with every other object painted out.

:func:`classify` labels each picture by its largest object ("none" when there is none);
:func:`find_objects` gives every object, for two-object scenes.  *Showing* a concept
(:func:`share_showing`) is being labelled with it; for pictures from prompts of an erased
concept that share is what is left of it (lower is better).  *Preservation* is accuracy on
other concepts as a share of the original model's.
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

from rece_lite.errors import InputError
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


CHROMATIC = tuple(c for c in world.COLOURS if c != world.NEUTRAL)
WORLD_HUES = np.array([_hue(np.array(world.RGB[c], dtype=float) / 255.0) for c in CHROMATIC])
FOREGROUND_GAP = 45 / 255  # a pixel this far from the background (any channel) belongs to an object
MIN_OBJECT_SHARE = 12 / 1024  # components smaller than this share of the picture are specks, not objects


def _saturation(x: np.ndarray) -> np.ndarray:
    mx = x.max(-1)
    return (mx - x.min(-1)) / np.maximum(mx, 1e-9)


def colour_of(pixels: np.ndarray, *, max_hue_gap: float = 40.0) -> str:
    """The world colour of an object from its (n, 3) RGB pixels in [0, 1], or "other".

    Mostly saturated pixels vote for the nearest chromatic hue (the winner must be within
    ``max_hue_gap`` degrees, as a median); mostly unsaturated ones are grey if mid-toned.
    """
    sat = (_saturation(pixels) > 0.45) & (pixels.max(-1) > 0.3)
    if sat.mean() >= 0.5:
        gaps = np.abs((_hue(pixels[sat])[:, None] - WORLD_HUES[None, :] + 180) % 360 - 180)
        best = int(np.bincount(gaps.argmin(1), minlength=len(CHROMATIC)).argmax())
        return CHROMATIC[best] if np.median(gaps[:, best]) <= max_hue_gap else "other"
    value = float(np.median(pixels[~sat].mean(-1)))
    return world.NEUTRAL if 0.25 <= value <= 0.72 else "other"


@dataclass(frozen=True, eq=False)
class Found:
    """One object found in a picture.

    Attributes:
        colour: one of the world's colours, or "other".
        shape: one of the world's shapes (or "none" if the CNN sees no shape in it).
        mask: (H, W) bool, the object's pixels.
    """

    colour: str
    shape: str
    mask: np.ndarray

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    @property
    def centre(self) -> tuple[float, float]:
        """(row, column) of the object's centroid."""
        ys, xs = np.nonzero(self.mask)
        return float(ys.mean()), float(xs.mean())

    def __repr__(self) -> str:
        y, x = self.centre
        return f"Found({self.colour} {self.shape}, {self.area} px at ({y:.0f}, {x:.0f}))"


def _background(img: np.ndarray) -> np.ndarray:
    """The background colour: the median of the picture's outer two-pixel frame."""
    frame = np.concatenate([img[:2].reshape(-1, 3), img[-2:].reshape(-1, 3), img[:, :2].reshape(-1, 3),
                            img[:, -2:].reshape(-1, 3)])  # fmt: skip
    return np.median(frame, axis=0)


def _components(img: np.ndarray, bg: np.ndarray, min_share: float) -> list[np.ndarray]:
    """Masks of the connected foreground regions, largest first."""
    from scipy import ndimage

    gap = np.abs(img - bg).max(-1)
    labels, n = ndimage.label(gap > FOREGROUND_GAP, structure=np.ones((3, 3)))
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:]
    keep = [k + 1 for k in np.argsort(-sizes, kind="stable") if sizes[k] >= min_share * img.shape[0] * img.shape[1]]
    return [labels == k for k in keep]


def _crop(img: np.ndarray, bg: np.ndarray, mask: np.ndarray, others: list[np.ndarray]) -> np.ndarray:
    """A square crop around ``mask`` with the object at about the scale the CNN was trained on, other
    objects painted over with the background, resized to (SIZE, SIZE, 3)."""
    clean = img.copy()
    for o in others:
        clean[o] = bg
    ys, xs = np.nonzero(mask)
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / 0.6  # objects fill ~60% of a training picture
    side = int(np.ceil(max(side, 8)))
    y0, x0 = int(round(cy - side / 2)), int(round(cx - side / 2))
    canvas = np.broadcast_to(bg, (side, side, 3)).copy()
    h, w = img.shape[:2]
    sy, sx = slice(max(0, y0), min(h, y0 + side)), slice(max(0, x0), min(w, x0 + side))
    canvas[sy.start - y0 : sy.stop - y0, sx.start - x0 : sx.stop - x0] = clean[sy, sx]
    t = torch.from_numpy(canvas).permute(2, 0, 1)[None].float()
    return F.interpolate(t, size=(world.SIZE, world.SIZE), mode="bilinear", antialias=True)[0]


@torch.no_grad()
def find_objects(images, *, min_share: float = MIN_OBJECT_SHARE, max_objects: int | None = None) -> list[list[Found]]:
    """Every object in each picture, largest first, with its colour and shape.

    Args:
        images: (n, H, W, 3) uint8 array, a list of PIL images, or floats in [0, 1].
        min_share: the smallest object, as a share of the picture's area (12 pixels of 32 x 32).
        max_objects: keep at most this many (the largest) per picture.

    Returns:
        Per picture, a list of :class:`Found`.
    """
    arr = _as_array(images).astype(np.float64) / 255.0
    found: list[list[tuple[str, np.ndarray]]] = []
    crops: list[torch.Tensor] = []
    for img in arr:
        bg = _background(img)
        masks = _components(img, bg, min_share)
        objs = []
        for k, m in enumerate(masks[:max_objects]):
            gap = np.abs(img[m] - bg).max(-1)
            core = img[m][gap >= 0.6 * gap.max()]
            objs.append((colour_of(core), m))
            crops.append(_crop(img, bg, m, masks[:k] + masks[k + 1 :]))
        found.append(objs)
    shapes = iter([])
    if crops:
        logits = shape_classifier()(torch.stack(crops))
        shapes = iter(SHAPE_LABELS[i] for i in logits.argmax(1).tolist())
    return [[Found(colour, next(shapes), m) for colour, m in objs] for objs in found]


def classify_colour(images) -> list[str]:
    """The colour of each picture's largest object, or "none" / "other"."""
    return classify(images).colours


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


def classify_shape(images) -> list[str]:
    """The shape of each picture's largest object (or "none").

    Args:
        images: (n, H, W, 3) uint8 array, a list of PIL images, or floats in [0, 1].
    """
    return classify(images).shapes


@dataclass(frozen=True)
class Labels:
    """What the classifiers see in each picture: its largest object's shape and colour."""

    shapes: list[str]
    colours: list[str]


def classify(images) -> Labels:
    """Shape and colour labels of each picture's largest object ("none" for an empty picture)."""
    objects = find_objects(images, max_objects=1)
    return Labels([o[0].shape if o else "none" for o in objects], [o[0].colour if o else "none" for o in objects])


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


# -------------------------------------------------------------- kernel distance (KID)
def kernel_distance(x: torch.Tensor, y: torch.Tensor, degree: int = 3) -> float:
    """Unbiased MMD² with the polynomial kernel ``k(a, b) = (aᵀb / d + 1)^degree`` (KID's).

    Args:
        x: (m, d) features; y: (n, d) features; m, n >= 2.
    """
    x, y = x.double(), y.double()
    m, n, d = len(x), len(y), x.shape[1]
    if m < 2 or n < 2:
        raise InputError("the kernel distance needs at least two pictures on each side")
    k = lambda a, b: (a @ b.T / d + 1) ** degree  # noqa: E731
    kxx, kyy = k(x, x), k(y, y)
    xx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    yy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(xx + yy - 2 * k(x, y).mean())


@torch.no_grad()
def features(images: np.ndarray) -> torch.Tensor:
    """(n, 64) features of the evaluator's shape CNN (:meth:`ShapeNet.embed`)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return shape_classifier().embed(x)
