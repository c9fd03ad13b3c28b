"""Pictures: image grids with labels, heat-map overlays and the attention explorer.

matplotlib and ipywidgets are imported where a picture or a widget is made (the library
works without a plotting backend).  Heat maps may live on any device; they are drawn from
a CPU copy.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rece_lite.attention import layer_label, select_layers


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
    tokens = next(iter(runs[prompt].values()))[2]
    i = _token_index(tokens, token if token is not None else word_positions(tokens)[0])
    maps = {k: run[1].token_maps(layer=layer, step=step) for k, run in runs[prompt].items()}
    return _explorer_figure(runs[prompt], tokens, i, maps, prompt=prompt, layer=layer, step=step, scale=scale)


def _heat_title(tokens, i: int, heat) -> str:
    return f"{tokens[i]!r}: mean {float(heat.mean()):.3f}"


def _explorer_title(prompt: str, layer, step) -> str:
    where = f"layer {layer}" if layer is not None else "all layers"
    when = f"step {step}" if step is not None else "all steps"
    return f"{prompt!r} — {where}, {when}"


def _explorer_figure(by_label, tokens, i: int, maps, *, prompt: str, layer, step, scale: float):
    """The figure of :func:`explorer_figure` from precomputed maps: label -> (T, H, W)."""
    heats = {k: m[i] for k, m in maps.items()}
    lo, hi = _scale(heats.values())
    fig, axes = _grid_axes(1, 2 * len(heats), scale, colorbar=True)
    for c, (k, heat) in enumerate(heats.items()):
        axes[0, 2 * c].imshow(_one_image(by_label[k][0]), interpolation="nearest")
        axes[0, 2 * c].set_title(k, fontsize=8, pad=2)
        overlay(by_label[k][0], heat, axes[0, 2 * c + 1], vmin=lo, vmax=hi, title=_heat_title(tokens, i, heat))
    _colorbar(fig, axes[0, 1::2], lo, hi)
    fig.suptitle(_explorer_title(prompt, layer, step), fontsize=9)
    return fig


def _follow_word(old_tokens: Sequence[str], old: int, word: str, tokens: Sequence[str]) -> int:
    """The token to show after a prompt change: ``word`` (the one the user picked) where the
    new prompt has it; else the word in the same place counted from the prompt's end ("red"
    in "a red circle" -> "blue" in "a photo of a blue circle"); else the first word."""
    words = word_positions(tokens)
    for i in words:
        if tokens[i] == word:
            return i
    old_words = word_positions(old_tokens)
    if old in old_words:
        i = words[-1] - (old_words[-1] - old)
        if i in words:
            return i
    return words[0]


class AttentionExplorer:
    """The live explorer: ipywidgets where a frontend renders them, a PNG of the current view where not.

    Attributes:
        widget: the whole control panel and picture (an ``ipywidgets.VBox``).
        controls: ``{"prompt", "token", "layer", "step"}`` -> its ipywidgets control;
            setting a control's ``value`` redraws as a click would.
    """

    def __init__(self, runs, *, token: int | str | None, scale: float):
        import ipywidgets as w

        self.runs, self.scale = runs, scale
        prompts = list(runs)
        first = self._tokens(prompts[0])
        start = _token_index(first, token if token is not None else word_positions(first)[0])
        self._word = first[start]  # the word the user picked: followed from prompt to prompt
        self._syncing = False
        self._maps = functools.lru_cache(maxsize=256)(self._token_maps)

        store = next(iter(runs[prompts[0]].values()))[1]
        groups = [
            (g, p)
            for g, p in (("down", "down_blocks"), ("mid", "mid_block"), ("up", "up_blocks"))
            if any(n.startswith(p) for n in store.layers)
        ]
        layer_options = [("all layers", None), *groups, *[(layer_label(n), n) for n in store.layers]]
        self.controls = {
            "prompt": w.Dropdown(options=prompts, description="prompt"),
            "token": w.Dropdown(options=self._token_options(prompts[0]), value=start, description="token"),
            "layer": w.Dropdown(options=layer_options, description="layer"),
            "step": w.SelectionSlider(options=["all", *store.steps], value="all", description="step"),
        }
        self._out = w.Output()
        c = self.controls
        c["prompt"].observe(self._new_prompt, names="value")
        c["token"].observe(self._new_token, names="value")
        c["layer"].observe(self._draw, names="value")
        c["step"].observe(self._draw, names="value")
        self.widget = w.VBox([w.HBox([c["prompt"], c["token"]]), w.HBox([c["layer"], c["step"]]), self._out])
        self._draw()

    def _tokens(self, prompt: str) -> list[str]:
        return next(iter(self.runs[prompt].values()))[2]

    def _token_options(self, prompt: str) -> list[tuple[str, int]]:
        tokens = self._tokens(prompt)
        end = word_positions(tokens)[-1] + 1  # the words, then the first end token
        return [(f"{i}: {tokens[i]}", i) for i in range(min(end + 1, len(tokens)))]

    def _token_maps(self, prompt: str, label: str, layer, step):
        return self.runs[prompt][label][1].token_maps(layer=layer, step=step)

    def _view(self) -> dict:
        c = self.controls
        prompt, layer = c["prompt"].value, c["layer"].value
        step = None if c["step"].value == "all" else c["step"].value
        maps = {k: self._maps(prompt, k, layer, step) for k in self.runs[prompt]}
        return dict(
            by_label=self.runs[prompt],
            tokens=self._tokens(prompt),
            i=c["token"].value,
            maps=maps,
            prompt=prompt,
            layer=layer,
            step=step,
            scale=self.scale,
        )

    def figure(self):
        """The current view as a matplotlib figure."""
        return _explorer_figure(**self._view())

    def _draw(self, *_):
        import matplotlib.pyplot as plt
        from IPython.display import display

        with self._out:
            self._out.clear_output(wait=True)
            fig = self.figure()
            display(fig)
            plt.close(fig)

    def _new_token(self, change):
        if self._syncing:
            return
        self._word = self._tokens(self.controls["prompt"].value)[change["new"]]
        self._draw()

    def _new_prompt(self, change):
        token = self.controls["token"]
        keep = _follow_word(self._tokens(change["old"]), token.value, self._word, self._tokens(change["new"]))
        self._syncing = True  # one redraw, after the token list and the token are both set
        try:
            with token.hold_sync():  # the browser gets the new options and the kept token in one message
                token.options = self._token_options(change["new"])
                token.value = keep
        finally:
            self._syncing = False
        self._draw()

    def _repr_mimebundle_(self, **kwargs):
        import base64
        import io

        import matplotlib.pyplot as plt

        bundle = dict(self.widget._repr_mimebundle_(**kwargs))
        fig = self.figure()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=80)
        plt.close(fig)
        bundle["image/png"] = base64.b64encode(buf.getvalue()).decode("ascii")
        return bundle


def attention_explorer(runs, *, token: int | str | None = None, scale: float = 2.0):
    """An interactive view of precomputed attention: prompt, token, layer and step pickers.

    The runs are computed beforehand (``rece_lite.attention.generate_with_attention``), so
    moving a control only averages stored maps (each average is kept, so coming back to a
    view costs only the drawing).  When the prompt changes, the token shown stays the word
    last picked where the new prompt has it (else the word in the same place, counted from
    the prompt's end).  Where widgets are not rendered (a static notebook view, or
    ipywidgets missing) the current view shows as a plain picture.

    Args:
        runs: prompt -> {label -> run}, e.g. ``{p: {"original": rec0, "erased": rec1}}``;
            each run a ``Recording`` or ``(image, store, tokens)``.
        token: the token shown first (position or string, in the first prompt); default
            its first word.

    Returns:
        An :class:`AttentionExplorer` (or a matplotlib figure without ipywidgets).
    """
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return explorer_figure(runs, token=token, scale=scale)
    return AttentionExplorer(runs, token=token, scale=scale)
