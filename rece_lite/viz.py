"""Pictures: image grids with labels and heat-map overlays (static figures).

The stateful attention explorer (:func:`attention_explorer`, :class:`AttentionExplorer`,
:func:`explorer_figure`) is :mod:`rece_lite.explorer`; its names are still reachable here
(``viz.attention_explorer``), imported on first use.

matplotlib and ipywidgets are imported where a picture or a widget is made (the library
works without a plotting backend).  Heat maps may live on any device; they are drawn from
a CPU copy.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rece_lite.attention import layer_label, select_layers
from rece_lite.errors import InputError


def to_array(images) -> np.ndarray:
    """(n, H, W, 3) uint8 from an array or tensor, or a list of PIL images / arrays (uint8, or floats in [0, 1])."""
    if isinstance(images, np.ndarray):
        arr = images
    elif isinstance(images, torch.Tensor):
        arr = images.detach().cpu().numpy()
    else:  # a list of PIL images (as pipelines return) or of arrays
        arr = np.stack([np.asarray(im.convert("RGB")) if hasattr(im, "convert") else np.asarray(im) for im in images])
    if arr.dtype != np.uint8:  # floats in [0, 1]
        arr = np.clip(arr * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if arr.ndim == 4 and arr.shape[1] == 3 and arr.shape[-1] != 3:
        arr = arr.transpose(0, 2, 3, 1)
    return arr


def image_grid(
    images,
    *,
    rows: int | None = None,
    titles: Sequence[str] | None = None,
    row_labels: Sequence[str] | None = None,
    scale: float = 1.1,
    suptitle: str | None = None,
):
    """A matplotlib figure of images in a grid, optionally titled per image and per row.

    Args:
        images: (n, H, W, 3) uint8, a list of PIL images, or floats in [0, 1].
        rows: number of rows (default: as square as possible).
        titles: one short title per image.
        row_labels: one label per row, written left of it.
        scale: inches per image.
    """
    import matplotlib.pyplot as plt

    arr = to_array(images)
    n = len(arr)
    rows = rows or int(np.ceil(np.sqrt(n)))
    cols = int(np.ceil(n / rows))
    width = cols * scale + (0.8 if row_labels else 0)
    fig, axes = plt.subplots(rows, cols, figsize=(width, rows * scale + 0.3), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        for s in ax.spines.values():
            s.set_visible(False)
        if i < n:
            ax.imshow(arr[i], interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=7, pad=2)
    if row_labels is not None:
        for r, label in enumerate(row_labels[:rows]):
            axes[r, 0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------ attention maps
# Heat maps come from rece_lite.attention: store.token_maps(...)[i] is token i's (h, w) map.
# A "run" below is a rece_lite.attention.Recording, or any (image, store, tokens) tuple.
#
# Colour scales: a map's values are attention probabilities.  Where they are nearly uniform
# (the miniature model spreads its attention over all 16 tokens: about 1/16 each) a scale
# from 0 would paint every pixel the same colour, so the default scale runs from the
# smallest to the largest value shown, and the pictures that compare maps share one scale
# and draw it as a colour bar.  The picture underneath is drawn in grey so that the heat
# colours are not confused with the object's own colour.

ATTENTION_CMAP = "jet"


def _one_image(image) -> np.ndarray:
    """(H, W, 3) uint8 from a PIL image, an (H, W, 3) array or floats in [0, 1]."""
    arr = to_array(image if isinstance(image, np.ndarray) or hasattr(image, "detach") else [image])
    return arr[0] if arr.ndim == 4 else arr


def _gray(img: np.ndarray) -> np.ndarray:
    """(H, W) luminance in [0, 1] of an (H, W, 3) uint8 picture."""
    return img.astype(np.float32) @ np.array([0.299, 0.587, 0.114]) / 255


def _upsampled(heat, size: tuple[int, int]) -> np.ndarray:
    h = torch.as_tensor(
        np.asarray(heat.detach().cpu() if hasattr(heat, "detach") else heat), dtype=torch.float32, device="cpu"
    )
    if h.ndim != 2:
        raise InputError(f"heat must be one token's (h, w) map, e.g. store.token_maps()[i]; got shape {tuple(h.shape)}")
    return F.interpolate(h[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].numpy()


def _scale(heats) -> tuple[float, float]:
    """(min, max) over maps: a shared colour scale (bilinear upsampling stays inside it)."""
    vals = [np.asarray(h.detach().cpu() if hasattr(h, "detach") else h, dtype=np.float64) for h in heats]
    lo, hi = min(float(v.min()) for v in vals), max(float(v.max()) for v in vals)
    return lo, max(hi, lo + 1e-12)


def _colorbar(fig, axes, vmin: float, vmax: float, cmap: str = ATTENTION_CMAP, label: str = "attention"):
    """One colour bar for ``axes`` (a list), drawn right of them."""
    import matplotlib as mpl

    sm = mpl.cm.ScalarMappable(norm=mpl.colors.Normalize(vmin, vmax), cmap=cmap)
    cb = fig.colorbar(sm, ax=list(axes), fraction=0.04, pad=0.02, aspect=12)
    cb.ax.tick_params(labelsize=6)
    cb.set_label(label, fontsize=7)
    return cb


def overlay(
    image,
    heat,
    ax=None,
    *,
    alpha: float = 0.6,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = ATTENTION_CMAP,
    gray: bool = True,
    title: str | None = None,
):
    """One token's heat map, upsampled bilinearly to the picture and drawn over it.

    Args:
        image: the generated picture (PIL, (H, W, 3) uint8 or floats in [0, 1]).
        heat: (h, w) map, e.g. ``store.token_maps()[i]``.
        ax: draw here (default: a new figure).
        alpha: opacity of the heat map.
        vmin, vmax: the values drawn as the coolest and the hottest colour; default the
            map's own minimum and maximum.  Give the same ``vmin``/``vmax`` to maps you
            compare (original vs erased) so that less attention looks cooler; ``vmin=0``
            gives an absolute scale.
        gray: draw the picture in grey under the map (heat colours are not object colours).

    Returns:
        The matplotlib figure.
    """
    import matplotlib.pyplot as plt

    img = _one_image(image)
    up = _upsampled(heat, img.shape[:2])
    lo = float(up.min()) if vmin is None else vmin
    hi = float(up.max()) if vmax is None else vmax
    if ax is None:
        _, ax = plt.subplots(figsize=(2.2, 2.2))
    if gray:
        ax.imshow(_gray(img), cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(img, interpolation="nearest")
    ax.imshow(up, cmap=cmap, alpha=alpha, vmin=lo, vmax=max(hi, lo + 1e-12))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=7, pad=2)
    return ax.figure


def word_positions(tokens: Sequence[str]) -> list[int]:
    """Positions of a prompt's words: after the start token, before the first end token."""
    end = next((i for i in range(1, len(tokens)) if tokens[i] == tokens[-1] or "endoftext" in tokens[i]), len(tokens))
    return list(range(1, end)) or list(range(len(tokens)))


def _token_index(tokens: Sequence[str], token: int | str) -> int:
    if isinstance(token, int):
        return token
    if token not in tokens:
        raise InputError(
            f"{token!r} is not one of this prompt's tokens: {list(tokens[: len(word_positions(tokens)) + 2])}"
        )
    return list(tokens).index(token)


def _grid_axes(rows: int, cols: int, scale: float, *, colorbar: bool = False):
    import matplotlib.pyplot as plt

    width = cols * scale + 0.6 + (0.6 if colorbar else 0)
    fig, axes = plt.subplots(rows, cols, figsize=(width, rows * scale + 0.4), squeeze=False, layout="constrained")
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def attention_grid(
    image,
    store,
    tokens: Sequence[str],
    *,
    token_ids: Sequence[int | str] | None = None,
    layers=None,
    step=None,
    scale: float = 1.3,
):
    """Tokens (rows) x layers (columns) of heat maps over one picture; the first column averages all layers.

    Each row (one token) shares one colour scale, drawn as a colour bar at its right, so
    layers that single out a region stand out from layers that spread their attention.

    Args:
        store: an :class:`rece_lite.attention.AttentionStore`.
        tokens: the prompt's tokens (``store.tokens(prompt)``).
        token_ids: rows, as positions or token strings (default: the prompt's words).
        layers: columns, as in ``store.token_maps(layer=...)`` (default: every recorded layer).
        step: one step, a list, or None for the average over steps.
    """
    ids = [_token_index(tokens, t) for t in (token_ids if token_ids is not None else word_positions(tokens))]
    names = select_layers(store.layers, layers)
    columns = [("all layers", store.token_maps(step=step))] + [
        (f"{layer_label(n)} {'x'.join(map(str, store.resolution(n)))}", store.token_maps(layer=n, step=step))
        for n in names
    ]
    fig, axes = _grid_axes(len(ids), len(columns), scale, colorbar=True)
    for r, i in enumerate(ids):
        lo, hi = _scale(maps[i] for _, maps in columns)
        for c, (label, maps) in enumerate(columns):
            overlay(image, maps[i], axes[r, c], vmin=lo, vmax=hi, title=label if r == 0 else None)
        axes[r, 0].set_ylabel(tokens[i], fontsize=8, rotation=0, ha="right", va="center")
        _colorbar(fig, axes[r], lo, hi)
    return fig


def step_strip(
    image,
    store,
    tokens: Sequence[str],
    token: int | str,
    *,
    steps: Sequence[int] | None = None,
    layer=None,
    n: int = 8,
    scale: float = 1.3,
):
    """One token's heat map at several denoising steps, left to right, then the average; one colour scale.

    Args:
        token: position or token string.
        steps: which steps (default: ``n`` evenly spaced recorded steps).
        layer: as in ``store.token_maps(layer=...)``.
    """
    i = _token_index(tokens, token)
    recorded = store.steps
    if steps is None:
        steps = [
            recorded[k] for k in np.unique(np.linspace(0, len(recorded) - 1, min(n, len(recorded))).round().astype(int))
        ]
    panels = [(f"step {s}", store.token_maps(layer=layer, step=s)[i]) for s in steps]
    panels.append(("all steps", store.token_maps(layer=layer)[i]))
    lo, hi = _scale(h for _, h in panels)
    fig, axes = _grid_axes(1, len(panels), scale, colorbar=True)
    for ax, (label, heat) in zip(axes[0], panels, strict=True):
        overlay(image, heat, ax, vmin=lo, vmax=hi, title=label)
    axes[0, 0].set_ylabel(tokens[i], fontsize=8, rotation=0, ha="right", va="center")
    _colorbar(fig, axes[0], lo, hi)
    return fig


def compare_attention(runs, *, token_ids: Sequence[int | str] | None = None, layer=None, step=None, scale: float = 1.3):
    """Runs (rows, e.g. original vs erased) x the picture and one heat map per token (columns).

    All heat maps share one colour scale (the colour bar), so weaker attention after an
    edit looks cooler, and tokens can be compared with each other.

    Args:
        runs: label -> run (``Recording`` or ``(image, store, tokens)``), same prompt.
        token_ids: columns, as positions or token strings (default: the prompt's words).
    """
    labels = list(runs)
    tokens = runs[labels[0]][2]
    ids = [_token_index(tokens, t) for t in (token_ids if token_ids is not None else word_positions(tokens))]
    maps = {k: runs[k][1].token_maps(layer=layer, step=step) for k in labels}
    lo, hi = _scale(maps[k][i] for k in labels for i in ids)
    fig, axes = _grid_axes(len(labels), 1 + len(ids), scale, colorbar=True)
    for r, k in enumerate(labels):
        axes[r, 0].imshow(_one_image(runs[k][0]), interpolation="nearest")
        axes[r, 0].set_ylabel(k, fontsize=8, rotation=0, ha="right", va="center")
        for c, i in enumerate(ids, start=1):
            overlay(runs[k][0], maps[k][i], axes[r, c], vmin=lo, vmax=hi, title=tokens[i] if r == 0 else None)
    axes[0, 0].set_title("image", fontsize=7, pad=2)
    _colorbar(fig, axes[:, 1:].flat, lo, hi)
    return fig


# the explorer's names, from their own module on first use (explorer imports this module's helpers)
_EXPLORER = ("AttentionExplorer", "attention_explorer", "explorer_figure")


def __getattr__(name: str):
    if name in _EXPLORER:
        from rece_lite import explorer

        return getattr(explorer, name)
    raise AttributeError(f"module 'rece_lite.viz' has no attribute {name!r}")
