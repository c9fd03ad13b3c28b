"""Storing cross-attention maps as they arrive, and reading them back: per token, per word.

:class:`AttentionStore` keeps a running mean per (layer, step) of maps that are already
reduced (heads averaged, area-pooled); :meth:`AttentionStore.token_maps` averages them over
layers, steps and heads into one (T, H, W) stack; :meth:`AttentionStore.word_map` turns a
word of the prompt into one heat map at the picture's size, DAAM-style.  :func:`store_size`
says how many bytes a recording will take before it runs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable, Sequence
from typing import Literal

import torch
import torch.nn.functional as F

from rece_lite.attention.words import prompt_tokens, word_spans

Heads = Literal["mean", "all"]
LayerKey = str | int | Sequence[str | int] | None
StepKey = int | Sequence[int] | None

# Side of every attn2 layer's grid in SD 1.4 at 512 px (64 x 64 latents), in run order.
SD14_RESOLUTIONS = (64, 64, 32, 32, 16, 16, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64)


# ------------------------------------------------------------------ checking arguments
def _whole_number(value, name: str, *, at_least: int) -> int:
    """``value`` as an int if it is a whole number ≥ ``at_least``; else a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < at_least:
        raise ValueError(f"{name} must be a whole number ≥ {at_least}, got {value!r}")
    return int(value)


def _check_max_resolution(max_resolution) -> int | None:
    """None, or a whole number of pixels ≥ 1 (0 or less would pool forever)."""
    if max_resolution is None:
        return None
    if isinstance(max_resolution, bool) or not isinstance(max_resolution, numbers.Integral) or max_resolution < 1:
        raise ValueError(
            "max_resolution must be a whole number of pixels ≥ 1 (larger maps are area-pooled down to it) "
            f"or None to keep every map at its own resolution, got {max_resolution!r}"
        )
    return int(max_resolution)


def _check_dtype(dtype) -> torch.dtype:
    """A floating-point torch dtype: maps are probabilities, an integer dtype would round them to 0."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating-point torch dtype such as torch.float16, got {dtype!r}")
    return dtype


# ------------------------------------------------------------------------ sizes
def store_size(
    resolutions: Iterable[int | tuple[int, int]],
    *,
    tokens: int,
    steps: int,
    heads: int = 1,
    images: int = 1,
    max_resolution: int | None = 32,
    dtype: torch.dtype = torch.float16,
) -> int:
    """Bytes an :class:`AttentionStore` holds after recording every step.

    Args:
        resolutions: each recorded layer's grid, as a side or ``(H, W)``.
        tokens: T, the prompt length padding included (77 for SD 1.x).
        steps: recorded denoising steps.
        heads: 1 for ``heads="mean"``, the number of heads for ``heads="all"``.
        images: recorded pictures per pipeline call.
        max_resolution, dtype: as in :func:`rece_lite.attention.record_attention`.

    ``store_size(SD14_RESOLUTIONS, tokens=77, steps=50)`` is 89,196,800.
    """
    max_resolution = _check_max_resolution(max_resolution)
    pixels = 0
    for r in resolutions:
        h, w = (r, r) if isinstance(r, int) else r
        pixels += math.prod(pooled_size(h, w, max_resolution))
    return pixels * tokens * steps * heads * images * _check_dtype(dtype).itemsize


def pooled_size(h: int, w: int, max_resolution: int | None) -> tuple[int, int]:
    """The grid a (h, w) map is stored at: halved (rounding up) until both sides are ≤ ``max_resolution``."""
    f = 1
    while max_resolution is not None and max(h, w) > max_resolution * f:
        f *= 2
    return -(-h // f), -(-w // f)


# -------------------------------------------------------------------- choosing layers
def select_layers(names: Sequence[str], key: LayerKey, *, arg: str = "layer") -> list[str]:
    """The layers ``key`` names, in the order of ``names``.

    Args:
        names: layer names, e.g. ``store.layers``.
        key: None (all), an index into ``names``, a full name, a name prefix
            (``"up_blocks"``, ``"down_blocks.1"``, ``"mid_block"``), or a list of these.
        arg: the caller's argument name, for error messages.
    """
    if key is None:
        return list(names)
    keys = [key] if isinstance(key, (str, int)) else list(key) if isinstance(key, Iterable) else [key]
    if not keys:
        raise ValueError(f"{arg} is empty, so nothing would be chosen; give None for every layer")
    chosen: set[str] = set()
    for k in keys:
        if isinstance(k, bool) or not isinstance(k, (str, numbers.Integral)):
            raise ValueError(f"{arg} must name layers by index, full name or prefix (or a list of these), got {k!r}")
        if isinstance(k, numbers.Integral):
            if not -len(names) <= k < len(names):
                raise IndexError(f"{arg} index {k} is out of range: there are {len(names)} layers")
            chosen.add(names[k])
            continue
        hits = [n for n in names if n == k or n.startswith(k.rstrip(".") + ".")]
        if not hits:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise ValueError(
                f"{arg}: no cross-attention layer is called {k!r}; give a full name ({shown}), a prefix such as "
                "'down_blocks', 'mid_block' or 'up_blocks.1', or an index into store.layers"
            )
        chosen.update(hits)
    return [n for n in names if n in chosen]


def layer_label(name: str) -> str:
    """A short label: ``down_blocks.1.attentions.0.transformer_blocks.0.attn2`` -> ``down1.0``."""
    parts = name.split(".")
    if parts[0] == "mid_block":
        return "mid" + (f".{parts[2]}" if len(parts) > 2 and parts[2] != "0" else "")
    if parts[0] in ("down_blocks", "up_blocks") and len(parts) > 3:
        return f"{parts[0][:-7]}{parts[1]}.{parts[3]}"
    return name


# ------------------------------------------------------------------------ the store
class AttentionStore:
    """Cross-attention maps recorded during generation, reduced as they arrive.

    Built by :func:`rece_lite.attention.record_attention`; read with :meth:`token_maps`
    (every token) and :meth:`word_map` (one word of the prompt, at the picture's size).

    Attributes:
        layers: recorded ``attn2`` module names, in the order the UNet runs them.
        maps: layer -> step -> running mean over calls, ``(images, K, T, H, W)``
            (K = 1 for ``heads="mean"``, else the number of heads).
        counts: layer -> step -> how many UNet calls were averaged into ``maps``.
        num_steps: denoising steps the pipeline ran while recording.
        image_size: (H, W) of the generated pictures in pixels, when known.
    """

    def __init__(
        self,
        layers: Sequence[str],
        *,
        heads: Heads = "mean",
        max_resolution: int | None = 32,
        images: int = 1,
        dtype: torch.dtype = torch.float16,
        device: str | torch.device = "cpu",
        tokenizer=None,
        image_size: tuple[int, int] | None = None,
    ):
        if heads not in ("mean", "all"):
            raise ValueError(f"heads must be 'mean' (average them while recording) or 'all', got {heads!r}")
        self.layers = list(layers)
        self.heads = heads
        self.max_resolution = _check_max_resolution(max_resolution)
        self.images = _whole_number(images, "images", at_least=1)
        self.dtype = _check_dtype(dtype)
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError):
            raise ValueError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}") from None
        self.tokenizer = tokenizer
        self.image_size = image_size
        # what the recorded pictures were conditioned on, to check a prompt given to word_map against
        self.text_encoder = None  # set by record_attention: encodes a prompt given to word_map
        self.context: torch.Tensor | None = None  # (images, T, d) float32 on the CPU, of the first call
        self.mixed_contexts = False  # True when calls in one block had different prompts: no check
        self.maps: dict[str, dict[int, torch.Tensor]] = {n: {} for n in self.layers}
        self.counts: dict[str, dict[int, int]] = {n: {} for n in self.layers}
        self.num_steps = 0

    # -- writing
    @torch.no_grad()
    def note_context(self, context: torch.Tensor) -> None:
        """Keep the text embeddings the recorded pictures were drawn from, (images, T, d); see :meth:`word_map`."""
        c = context.detach().to("cpu", torch.float32)
        if self.context is None:
            self.context = c
        elif self.context.shape != c.shape or not torch.equal(self.context, c):
            self.mixed_contexts = True

    @torch.no_grad()
    def _check_prompt(self, prompt: str, image: int, tokens: list[int]) -> None:
        """Refuse a prompt that is not the one the store recorded for ``image`` (its embeddings differ).

        CLIP's text encoder is causal: the embeddings of the word's tokens and of every token
        before them are compared, rows ``0 .. max(tokens)``.  Skipped where the store cannot
        tell (no text encoder, several prompts in one block, embeddings of another width).
        """
        te, ctx = self.text_encoder, self.context
        if te is None or ctx is None or self.mixed_contexts or not tokens or not -len(ctx) <= image < len(ctx):
            return
        if not hasattr(self, "_encoded"):
            self._encoded: dict[str, torch.Tensor] = {}
        if prompt not in self._encoded:
            tok = self.tokenizer
            ids = tok(prompt, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids  # fmt: skip
            try:
                p = next(te.parameters())
                self._encoded[prompt] = te(ids.to(p.device))[0][0].to("cpu", torch.float32)
            except Exception:  # noqa: BLE001 - a text encoder we cannot run the usual way: no check
                return
        enc = self._encoded[prompt]
        rec = ctx[image]
        if enc.shape != rec.shape:
            return
        n = max(tokens) + 1
        a, b = rec[:n], enc[:n]
        if not torch.allclose(a, b, rtol=0.02, atol=0.02 * float(b.abs().max())):
            raise ValueError(
                f"prompt {prompt!r} is not the prompt this store recorded for image {image} (its text embeddings "
                "differ at the word's tokens): give word_map the prompt the pipeline drew from"
            )

    @torch.no_grad()
    def add(self, layer: str, step: int, probs: torch.Tensor, grid: tuple[int, int]) -> None:
        """Fold one call's probabilities into the running mean.

        Args:
            probs: (n, heads, H·W, T) attention probabilities of the recorded images.
            grid: (H, W) of the layer.
        """
        n, nh, hw, t = probs.shape
        h, w = grid
        m = probs.transpose(-1, -2).reshape(n, nh, t, h, w)
        if self.heads == "mean":
            m = m.mean(1, keepdim=True)
        size = pooled_size(h, w, self.max_resolution)
        if size != (h, w):  # area pooling keeps every pixel a distribution over tokens
            m = F.adaptive_avg_pool2d(m.flatten(0, 2), size).unflatten(0, m.shape[:3])
        old = self.maps[layer].get(step)
        if old is None:
            self.maps[layer][step] = m.to(self.device, self.dtype)
            self.counts[layer][step] = 1
            return
        if old.shape != m.shape:
            raise RuntimeError(
                f"{layer}, step {step}: maps of shape {tuple(m.shape)} cannot be averaged with earlier ones of shape "
                f"{tuple(old.shape)}; record one pipeline call (one batch shape) per `with record_attention(...)` block"
            )
        c = self.counts[layer][step] + 1
        old.copy_(old.float() + (m.to(old.device).float() - old.float()) / c)
        self.counts[layer][step] = c

    # -- reading
    @property
    def steps(self) -> list[int]:
        """Recorded step indices (the pipeline's ``i`` in ``for i, t in enumerate(timesteps)``)."""
        return sorted({s for per_step in self.maps.values() for s in per_step})

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for per_step in self.maps.values() for t in per_step.values())

    def resolution(self, layer: str | int) -> tuple[int, int]:
        """(H, W) at which ``layer``'s maps are stored (after pooling to ``max_resolution``)."""
        name = self._one(layer)
        per_step = self.maps[name]
        if not per_step:
            raise ValueError(f"nothing was recorded for {name}: generate inside the `with record_attention(...)` block")
        return tuple(next(iter(per_step.values())).shape[-2:])

    def _one(self, layer: str | int) -> str:
        names = select_layers(self.layers, layer)
        if len(names) != 1:
            raise ValueError(f"layer {layer!r} names {len(names)} layers; give one full name or an index")
        return names[0]

    def _select_steps(self, step: StepKey) -> list[int]:
        recorded = self.steps
        if not recorded:
            raise ValueError("nothing was recorded: call the pipeline inside the `with record_attention(...)` block")
        if step is None:
            return recorded
        wanted = [step] if isinstance(step, int) else list(step)
        if not wanted:
            raise ValueError("step is empty, so no map would be chosen; give None for every recorded step")
        out = []
        for s in wanted:
            s = s + self.num_steps if s < 0 else s
            if s not in recorded:
                raise ValueError(f"step {s} was not recorded; recorded steps: {recorded}")
            out.append(s)
        return out

    def raw(self, layer: str | int, step: int) -> torch.Tensor:
        """The stored maps of one layer and step: (images, K, T, H, W), storage dtype."""
        name = self._one(layer)
        (s,) = self._select_steps(step)
        if s not in self.maps[name]:
            raise ValueError(f"{name} has no maps for step {s}")
        return self.maps[name][s]

    def token_maps(
        self, layer: LayerKey = None, step: StepKey = None, *, image: int = 0, head: int | None = None
    ) -> torch.Tensor:
        """Attention per prompt token, averaged over the chosen layers, steps and heads.

        Each layer's step-averaged map is upsampled bilinearly to the largest recorded
        resolution among the chosen layers, then layers are averaged with equal weight.
        Every pixel stays a distribution over the T tokens (sums to one).

        Args:
            layer: None (all), an index into :attr:`layers`, a full name, a prefix
                (``"up_blocks"``, ``"mid_block"``), or a list of these.
            step: None (all recorded), a step index (negative counts from the end),
                or a list of them.
            image: which recorded image of the batch (conditional branch).
            head: one head (needs ``heads="all"``); None averages them.

        Returns:
            (T, H, W) float32 on the store's device (the CPU unless recorded with ``device=``).
        """
        names = select_layers(self.layers, layer)
        steps = self._select_steps(step)
        if head is not None and self.heads != "all":
            raise ValueError("this store averaged the heads while recording; record with heads='all' to pick one")
        per_layer = []
        for name in names:
            maps = [self.maps[name][s] for s in steps if s in self.maps[name]]
            if not maps:
                continue
            if not 0 <= image < maps[0].shape[0]:
                raise IndexError(f"image {image} was not recorded: the store holds {maps[0].shape[0]} image(s)")
            m = torch.stack([x[image] for x in maps]).float().mean(0)  # (K, T, H, W)
            per_layer.append(m[head] if head is not None else m.mean(0))
        if not per_layer:
            raise ValueError(f"no maps recorded for layers {names} at steps {steps}")
        size = max((m.shape[-2:] for m in per_layer), key=lambda s: s[0] * s[1])
        up = [
            m
            if m.shape[-2:] == size
            else F.interpolate(m[None], size=tuple(size), mode="bilinear", align_corners=False)[0]
            for m in per_layer
        ]
        return torch.stack(up).mean(0)

    def word_map(
        self,
        word: str,
        prompt: str,
        *,
        occurrence: int | None = None,
        layer: LayerKey = None,
        step: StepKey = None,
        image: int = 0,
        head: int | None = None,
        size: tuple[int, int] | None = None,
    ) -> torch.Tensor:
        """Where a word of the prompt goes in the picture: its heat map, DAAM-style.

        For every pixel, the share of its cross-attention that goes to the word: the
        :meth:`token_maps` rows of the word's tokens (averaged over the chosen layers,
        steps and heads), summed, then upsampled bilinearly to the picture.  A word that
        the tokenizer splits (CLIP's BPE: "rococo" -> "roc", "oco</w>") sums its pieces;
        a word-level tokenizer gives one token per word; a phrase ("red circle") works too.

        Compared with DAAM (Tang et al., *What the DAAM*, ACL 2023; castorini/daam's
        ``trace.py`` and ``heatmap.py``), which

        1. sums each layer's and head's maps over every denoising step, keeping the
           conditional branch;
        2. upsamples each (layer, head) sum bicubically to the latent grid (64 x 64),
           clamps the undershoot at 0 and averages over all layers and heads of the down
           and up blocks (the mid block is not hooked, and 8 x 8 maps are skipped);
        3. averages the rows of the word's tokens (every occurrence of the word, unless a
           token index is given);
        4. upsamples bicubically to the image and, by default, rescales to [0, 1];

        this map differs in four ways, each so that its values stay attention shares
        (uniform attention is 1/T everywhere, and maps compare across words and models):
        steps are averaged rather than summed (a constant factor); heads are averaged
        within each layer before layers are averaged (the same as DAAM when every layer
        has as many heads, as in SD 1.x); upsampling is bilinear, which cannot undershoot,
        and maps larger than the recorder's ``max_resolution`` (32 by default) were
        area-pooled while recording; a word's tokens are summed (the share of attention
        the *word* gets) rather than averaged, and nothing is rescaled.  All layers are
        used by default; ``layer=["down_blocks", "up_blocks"]`` picks DAAM's.

        Args:
            word: a word or phrase of ``prompt``.
            prompt: the prompt the store recorded (needs the store's tokenizer).
            occurrence: which occurrence of the word, 0 for the first, -1 for the last;
                None sums all of them (DAAM merges them too).
            layer, step, image, head: as in :meth:`token_maps`.
            size: (H, W) or a side to upsample to; default the recorded picture's size, or the
                maps' own grid when the store does not know it.

        Returns:
            (H, W) float32 on the store's device, values in [0, 1].
        """
        if self.tokenizer is None:
            raise ValueError("this store has no tokenizer: build it with tokenizer=pipe.tokenizer to find words")
        spans = word_spans(self.tokenizer, prompt, word)
        if occurrence is not None:
            if isinstance(occurrence, bool) or not isinstance(occurrence, numbers.Integral):
                raise ValueError(f"occurrence must be a whole number (0 = the first) or None, got {occurrence!r}")
            if not -len(spans) <= occurrence < len(spans):
                raise ValueError(
                    f"occurrence {occurrence} is out of range: {word!r} occurs {len(spans)} time(s) in {prompt!r}"
                )
            spans = [spans[occurrence]]
        maps = self.token_maps(layer, step, image=image, head=head)
        if maps.shape[0] != self.tokenizer.model_max_length:
            raise ValueError(
                f"the store's maps have {maps.shape[0]} tokens but its tokenizer makes "
                f"{self.tokenizer.model_max_length}: record with the pipeline whose tokenizer this is"
            )
        self._check_prompt(prompt, image, [i for span in spans for i in span])
        from rece_lite.attention.maps import word_heat  # the one definition (maps imports the recorder)

        heat = word_heat(maps, [i for span in spans for i in span])
        if size is None:
            size = self.image_size if self.image_size is not None else heat.shape
        size = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(heat.shape) != size:
            heat = F.interpolate(heat[None, None], size=size, mode="bilinear", align_corners=False)[0, 0]
        return heat

    def tokens(self, prompt: str) -> list[str]:
        """Token strings of ``prompt``, one per row of :meth:`token_maps` (needs the pipeline's tokenizer)."""
        if self.tokenizer is None:
            raise ValueError("this store has no tokenizer; use rece_lite.attention.prompt_tokens(tokenizer, prompt)")
        return prompt_tokens(self.tokenizer, prompt)

    def __repr__(self) -> str:
        s = self.steps
        steps = "none" if not s else f"{s[0]}" if len(s) == 1 else f"{len(s)} ({s[0]}..{s[-1]})"
        size = f"{self.nbytes / 1e6:.2f} MB"
        return f"AttentionStore({len(self.layers)} layers, steps {steps}, heads={self.heads!r}, {size})"
