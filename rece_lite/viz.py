"""Pictures: image grids with labels (and, in the attention chapter, heat-map overlays)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def to_array(images) -> np.ndarray:
    """(n, H, W, 3) uint8 from a list of PIL images, a uint8 array or floats in [0, 1]."""
    from rece_lite.evaluate import _as_array

    return _as_array(images)


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
    fig, axes = plt.subplots(rows, cols, figsize=(cols * scale + (0.8 if row_labels else 0), rows * scale + 0.3), squeeze=False)
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
