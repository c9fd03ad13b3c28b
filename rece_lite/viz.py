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


def _upsampled(heat, size: tuple[int, int]) -> np.ndarray:
    import torch
    import torch.nn.functional as F

    h = torch.as_tensor(np.asarray(heat.detach().cpu() if hasattr(heat, "detach") else heat), dtype=torch.float32)
    if h.ndim != 2:
        raise ValueError(f"heat must be one token's (h, w) map, e.g. store.token_maps()[i]; got shape {tuple(h.shape)}")
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
        ax.imshow(img.astype(np.float32) @ np.array([0.299, 0.587, 0.114]) / 255, cmap="gray", vmin=0, vmax=1)
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
        raise ValueError(
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
    from rece_lite.attention import _select, layer_label

    ids = [_token_index(tokens, t) for t in (token_ids if token_ids is not None else word_positions(tokens))]
    names = _select(store.layers, layers)
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


def explorer_figure(
    runs, prompt: str | None = None, token: int | str | None = None, layer=None, step=None, *, scale: float = 2.0
):
    """The explorer's picture, static: one prompt's runs side by side for one token, layer and step.

    The heat maps share one colour scale (the colour bar); each title gives the share of
    all attention that goes to the token (its map's mean; uniform would be 1/T).

    Args:
        runs: prompt -> {label -> run} (``Recording`` or ``(image, store, tokens)``),
            e.g. ``{"a red circle": {"original": rec0, "erased": rec1}}``.
        prompt: default the first; token: default the prompt's first word.
        layer, step: as in ``store.token_maps``.
    """
    prompt = prompt if prompt is not None else next(iter(runs))
    by_label = runs[prompt]
    tokens = next(iter(by_label.values()))[2]
    i = _token_index(tokens, token if token is not None else word_positions(tokens)[0])
    heats = {k: run[1].token_maps(layer=layer, step=step)[i] for k, run in by_label.items()}
    lo, hi = _scale(heats.values())
    fig, axes = _grid_axes(1, 2 * len(heats), scale, colorbar=True)
    for c, (k, heat) in enumerate(heats.items()):
        axes[0, 2 * c].imshow(_one_image(by_label[k][0]), interpolation="nearest")
        axes[0, 2 * c].set_title(k, fontsize=8, pad=2)
        overlay(
            by_label[k][0],
            heat,
            axes[0, 2 * c + 1],
            vmin=lo,
            vmax=hi,
            title=f"{tokens[i]!r}: mean {float(heat.mean()):.3f}",
        )
    _colorbar(fig, axes[0, 1::2], lo, hi)
    where = f"layer {layer}" if layer is not None else "all layers"
    when = f"step {step}" if step is not None else "all steps"
    fig.suptitle(f"{prompt!r} — {where}, {when}", fontsize=9)
    return fig


class _Explorer:
    """Widgets where a frontend renders them; the first view as a PNG where it does not."""

    def __init__(self, widget, first_figure):
        self.widget = widget
        self._first = first_figure

    def _repr_mimebundle_(self, **kwargs):
        import base64
        import io

        import matplotlib.pyplot as plt

        bundle = dict(self.widget._repr_mimebundle_(**kwargs))
        fig = self._first()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        bundle["image/png"] = base64.b64encode(buf.getvalue()).decode("ascii")
        return bundle


def attention_explorer(runs, *, token: int | str | None = None, scale: float = 2.0):
    """An interactive view of precomputed attention: prompt, token, layer and step pickers.

    The runs are computed beforehand (``rece_lite.attention.generate_with_attention``), so
    moving a control only averages stored maps.  Where widgets are not rendered (a static
    notebook view, or ipywidgets missing) the first view shows as a plain picture.

    Args:
        runs: prompt -> {label -> run}, e.g. ``{p: {"original": rec0, "erased": rec1}}``;
            each run a ``Recording`` or ``(image, store, tokens)``.
        token: the token shown first (position or string, in the first prompt); default
            its first word.

    Returns:
        A displayable explorer (or a matplotlib figure without ipywidgets).
    """
    prompts = list(runs)
    first_tokens = next(iter(runs[prompts[0]].values()))[2]
    start = _token_index(first_tokens, token if token is not None else word_positions(first_tokens)[0])
    first = lambda: explorer_figure(runs, token=start, scale=scale)
    try:
        import ipywidgets as w
    except ImportError:
        return first()
    import matplotlib.pyplot as plt
    from IPython.display import display

    from rece_lite.attention import layer_label

    store = next(iter(runs[prompts[0]].values()))[1]
    groups = [
        (g, p)
        for g, p in (("down", "down_blocks"), ("mid", "mid_block"), ("up", "up_blocks"))
        if any(n.startswith(p) for n in store.layers)
    ]
    layer_options = [("all layers", None), *groups, *[(layer_label(n), n) for n in store.layers]]

    def token_options(prompt):
        tokens = next(iter(runs[prompt].values()))[2]
        end = word_positions(tokens)[-1] + 1
        return [(f"{i}: {tokens[i]}", i) for i in range(min(end + 1, len(tokens)))]

    prompt_w = w.Dropdown(options=prompts, description="prompt")
    token_w = w.Dropdown(options=token_options(prompts[0]), value=start, description="token")
    layer_w = w.Dropdown(options=layer_options, description="layer")
    step_w = w.SelectionSlider(options=["all", *store.steps], value="all", description="step")
    out = w.Output()

    def draw(*_):
        with out:
            out.clear_output(wait=True)
            step = None if step_w.value == "all" else step_w.value
            fig = explorer_figure(runs, prompt_w.value, token_w.value, layer_w.value, step, scale=scale)
            display(fig)
            plt.close(fig)

    def new_prompt(change):
        # keep the same word where the new prompt has it ("red" in "a red circle" -> "a red star")
        old = next(iter(runs[change["old"]].values()))[2][token_w.value]
        tokens = next(iter(runs[change["new"]].values()))[2]
        options = token_options(change["new"])
        keep = [i for _, i in options if tokens[i] == old and i in word_positions(tokens)]
        token_w.options = options
        token_w.value = keep[0] if keep else word_positions(tokens)[0]

    prompt_w.observe(new_prompt, names="value")
    for c in (prompt_w, token_w, layer_w, step_w):
        c.observe(draw, names="value")
    draw()
    ui = w.VBox([w.HBox([prompt_w, token_w]), w.HBox([layer_w, step_w]), out])
    return _Explorer(ui, first)
