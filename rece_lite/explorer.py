"""The attention explorer: one prompt's runs side by side, a token, layer and step picked live.

:func:`attention_explorer` gives an :class:`AttentionExplorer` (ipywidgets where a frontend
renders them, a PNG of the current view where not); :func:`explorer_figure` is its picture,
static.  The drawing helpers (overlays, colour scale, grids) are :mod:`rece_lite.viz`'s.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from rece_lite.attention import layer_label
from rece_lite.viz import _colorbar, _grid_axes, _one_image, _scale, _token_index, overlay, word_positions


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
