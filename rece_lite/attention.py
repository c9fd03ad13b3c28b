"""Recording cross-attention: which pixels look at which prompt token, per layer and step.

Every ``attn2`` in the UNet computes ``softmax(Q Kᵀ · scale)``: for each latent pixel a
probability distribution over the ``T`` prompt tokens.  Cut out one token's column and
reshape it to the layer's grid and you get that token's heat map (Hertz et al.,
*Prompt-to-Prompt*, 2022, whose ``AttentionStore`` this follows).  Erasing a concept
changes the keys and values, so the maps show *where* an edited model still listens to
the erased word.

    with record_attention(pipe) as store:
        image = pipe("a red circle", num_inference_steps=20).images[0]
    maps = store.token_maps()                    # (T, H, W)
    red = maps[store.tokens("a red circle").index("red")]

How it stays faithful and small:

* The recorder is a diffusers attention processor that *wraps* the one it replaces: the
  wrapped processor computes the layer's output exactly as before (images are
  bit-identical with recording on or off); the probabilities are recomputed on the side,
  in float32, for the recorded images only.  Self-attention (``attn1``) is untouched.
* Only the conditional branch of classifier-free guidance is kept (the pipeline stacks
  ``[uncond, cond]``), and only the first ``images`` pictures of it.
* Maps are reduced as they arrive: averaged over heads (``heads="mean"``), area-pooled to at
  most ``max_resolution`` pixels a side, kept as a running mean per (layer, step) in
  ``dtype`` on ``device``.

Memory, SD 1.4 at 512 px, 50 steps, 77 tokens, defaults (``heads="mean"``,
``max_resolution=32``, float16, one image): its 16 ``attn2`` layers work at 64² (5 layers),
32² (5), 16² (5) and 8² (1); pooled to ≤ 32² that is 11,584 pixels x 77 tokens x 50 steps
x 2 bytes = **89,196,800 bytes (≈ 89 MB)**, see :func:`store_size`.  Without pooling in
float32 it would be 415 MB, and ``heads="all"`` multiplies either by 8 (SD 1.4's heads).
A step is one UNet call of the pipeline's loop: SD 1.4's PNDM scheduler makes 51 of them
for 50 steps (91.0 MB).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from rece_lite.layers import cross_attention_layers

Heads = Literal["mean", "all"]
LayerKey = str | int | Sequence[str | int] | None
StepKey = int | Sequence[int] | None

# Side of every attn2 layer's grid in SD 1.4 at 512 px (64 x 64 latents), in run order.
SD14_RESOLUTIONS = (64, 64, 32, 32, 16, 16, 8, 16, 16, 16, 32, 32, 32, 64, 64, 64)


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

    ``store_size(SD14_RESOLUTIONS, tokens=77, steps=50)`` is 89,196,800.
    """
    pixels = 0
    for r in resolutions:
        h, w = (r, r) if isinstance(r, int) else r
        pixels += math.prod(_pooled_size(h, w, max_resolution))
    return pixels * tokens * steps * heads * images * torch.empty((), dtype=dtype).element_size()


def _pooled_size(h: int, w: int, max_resolution: int | None) -> tuple[int, int]:
    """Halve (rounding up) until both sides are at most ``max_resolution``."""
    f = 1
    while max_resolution is not None and max(h, w) > max_resolution * f:
        f *= 2
    return -(-h // f), -(-w // f)


def _grid(n: int, latent_hw: tuple[int, int] | None) -> tuple[int, int]:
    """The (H, W) of a layer with ``n`` query pixels, from the UNet input's latent size."""
    if latent_hw is None:
        side = math.isqrt(n)
        if side * side == n:
            return side, side
        raise RuntimeError(f"cannot tell the grid of a layer with {n} pixels (not square, latent size unknown)")
    h, w = latent_hw
    while h * w > n:  # each UNet level halves, rounding up (stride-2 convs with padding 1)
        h, w = -(-h // 2), -(-w // 2)
    if h * w != n:
        raise RuntimeError(f"a layer with {n} pixels does not fit the {latent_hw} latents")
    return h, w


def _run_order(name: str) -> int:
    """Down blocks, then the mid block, then up blocks: the order the UNet runs them."""
    return 0 if name.startswith("down") else 2 if name.startswith("up") else 1


def _select(names: Sequence[str], key: LayerKey, *, what: str = "layer") -> list[str]:
    """Layers by index, full name, or name prefix (``"up_blocks"``, ``"down_blocks.1"``)."""
    if key is None:
        return list(names)
    keys = [key] if isinstance(key, (str, int)) else list(key)
    chosen: set[str] = set()
    for k in keys:
        if isinstance(k, int):
            if not -len(names) <= k < len(names):
                raise IndexError(f"{what} index {k} is out of range: there are {len(names)} recorded layers")
            chosen.add(names[k])
            continue
        hits = [n for n in names if n == k or n.startswith(k.rstrip(".") + ".")]
        if not hits:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            raise ValueError(
                f"no recorded cross-attention layer is called {k!r}; give a full name ({shown}), a prefix such as "
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


def prompt_tokens(tokenizer, prompt: str) -> list[str]:
    """The T token strings the text encoder sees for ``prompt`` (padding included)."""
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length, truncation=True).input_ids
    return [t.removesuffix("</w>") for t in tokenizer.convert_ids_to_tokens(ids)]


# --------------------------------------------------------------------------- store
class AttentionStore:
    """Cross-attention maps recorded during generation, reduced as they arrive.

    Built by :func:`record_attention`; read with :meth:`token_maps`.

    Attributes:
        layers: recorded ``attn2`` module names, in the order the UNet runs them.
        maps: layer -> step -> running mean over calls, ``(images, K, T, H, W)``
            (K = 1 for ``heads="mean"``, else the number of heads).
        counts: layer -> step -> how many UNet calls were averaged into ``maps``.
        num_steps: denoising steps the pipeline ran while recording.
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
    ):
        if heads not in ("mean", "all"):
            raise ValueError(f"heads must be 'mean' or 'all', got {heads!r}")
        if images < 1:
            raise ValueError(f"images must be at least 1, got {images}")
        self.layers = list(layers)
        self.heads = heads
        self.max_resolution = max_resolution
        self.images = images
        self.dtype = dtype
        self.device = torch.device(device)
        self.tokenizer = tokenizer
        self.maps: dict[str, dict[int, torch.Tensor]] = {n: {} for n in self.layers}
        self.counts: dict[str, dict[int, int]] = {n: {} for n in self.layers}
        self.num_steps = 0

    # -- writing
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
        size = _pooled_size(h, w, self.max_resolution)
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
        names = _select(self.layers, layer)
        if len(names) != 1:
            raise ValueError(f"{layer!r} names {len(names)} layers; give one full name or an index")
        return names[0]

    def _select_steps(self, step: StepKey) -> list[int]:
        recorded = self.steps
        if not recorded:
            raise ValueError("nothing was recorded: call the pipeline inside the `with record_attention(...)` block")
        if step is None:
            return recorded
        wanted = [step] if isinstance(step, int) else list(step)
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
            (T, H, W) float32 on the store's device.
        """
        names = _select(self.layers, layer)
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


# ----------------------------------------------------------------------- processor
@dataclass
class _Now:
    """What the UNet is doing at this moment, shared by the hook and the processors."""

    step: int = 0
    cfg: bool = False
    latent_hw: tuple[int, int] | None = None
    recording: bool = True
    calls: int = 0  # UNet calls since `timesteps` was set
    timesteps: object = None  # the scheduler's timesteps tensor of the current pipeline call


def cross_attention_probs(
    attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, attention_mask=None, temb=None
) -> torch.Tensor:
    """``softmax(Q Kᵀ · scale)`` of a diffusers ``Attention``, in float32.

    Mirrors the first half of diffusers' ``AttnProcessor`` (norms, projections, heads).

    Returns:
        (B, heads, N, T): for each of N query pixels a distribution over T tokens.
    """
    x = hidden_states
    if attn.spatial_norm is not None:
        x = attn.spatial_norm(x, temb)
    if x.ndim == 4:
        b, c, h, w = x.shape
        x = x.view(b, c, h * w).transpose(1, 2)
    if attn.group_norm is not None:
        x = attn.group_norm(x.transpose(1, 2)).transpose(1, 2)
    ctx = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
    q, k = attn.to_q(x), attn.to_k(ctx)
    b, t = k.shape[0], k.shape[1]
    q = q.view(b, -1, attn.heads, q.shape[-1] // attn.heads).transpose(1, 2)
    k = k.view(b, -1, attn.heads, k.shape[-1] // attn.heads).transpose(1, 2)
    if getattr(attn, "norm_q", None) is not None:
        q = attn.norm_q(q)
    if getattr(attn, "norm_k", None) is not None:
        k = attn.norm_k(k)
    scores = q.float() @ k.float().transpose(-1, -2) * attn.scale
    if attention_mask is not None:
        mask = attn.prepare_attention_mask(attention_mask, t, b)
        scores = scores + mask.view(b, attn.heads, -1, t).float()
    return scores.softmax(-1)


class RecordingProcessor:
    """An attention processor that records cross-attention and otherwise changes nothing.

    The layer's output comes from ``inner`` (the processor it replaced), untouched; the
    probabilities of the recorded images are recomputed separately for the store.
    (``Attention.forward`` passes on only the keyword arguments this ``__call__`` names, so
    ``cross_attention_kwargs`` other than ``temb`` do not reach ``inner`` while recording;
    Stable Diffusion pipelines pass none by default.)
    """

    def __init__(self, inner, store: AttentionStore, name: str, now: _Now):
        self.inner, self.store, self.name, self.now = inner, store, name, now

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if temb is not None:
            kwargs["temb"] = temb
        out = self.inner(
            attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, **kwargs
        )
        if self.now.recording and encoder_hidden_states is not None:
            self._record(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
        return out

    @torch.no_grad()
    def _record(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb) -> None:
        b = hidden_states.shape[0]
        first = b // 2 if self.now.cfg and b % 2 == 0 else 0  # [uncond, cond]: keep cond
        rows = slice(first, min(b, first + self.store.images))
        pick = lambda x: x[rows] if isinstance(x, torch.Tensor) and x.ndim > 1 and x.shape[0] == b else x
        probs = cross_attention_probs(
            attn, hidden_states[rows], encoder_hidden_states[rows], pick(attention_mask), pick(temb)
        )
        grid = hidden_states.shape[-2:] if hidden_states.ndim == 4 else _grid(probs.shape[2], self.now.latent_hw)
        self.store.add(self.name, self.now.step, probs, tuple(grid))


@contextmanager
def record_attention(
    pipe,
    *,
    layers: LayerKey = None,
    steps: Iterable[int] | None = None,
    heads: Heads = "mean",
    max_resolution: int | None = 32,
    images: int = 1,
    dtype: torch.dtype = torch.float16,
    device: str | torch.device = "cpu",
) -> Iterator[AttentionStore]:
    """Record cross-attention maps of every pipeline call inside the ``with`` block.

    On exit (also after an exception) the previous processors come back, object for
    object, and the UNet hook is removed.  Use one pipeline call per block: a second
    call is averaged into the same (layer, step) slots.

    Args:
        pipe: a Stable Diffusion pipeline (anything with ``.unet``; ``.scheduler`` and
            ``.tokenizer`` are used when present).
        layers: which ``attn2`` layers (index, name, prefix, or list); None = all.
        steps: which step indices to record; None = all.  A step index is the pipeline's
            loop index ``i``; negative ones count back from ``len(pipe.scheduler.timesteps)``.
        heads: ``"mean"`` (average the heads while recording) or ``"all"``.
        max_resolution: area-pool larger maps to at most this many pixels a side; None keeps
            full resolution.
        images: record the first ``images`` pictures of the batch (conditional branch).
        dtype, device: where the maps are kept.

    Yields:
        The :class:`AttentionStore`, filled while the pipeline runs.
    """
    unet = pipe.unet
    modules = cross_attention_layers(unet)
    names = _select(sorted(modules, key=_run_order), layers)
    wanted = None if steps is None else set(steps)
    store = AttentionStore(
        names,
        heads=heads,
        max_resolution=max_resolution,
        images=images,
        dtype=dtype,
        device=device,
        tokenizer=getattr(pipe, "tokenizer", None),
    )
    now = _Now()

    def before_unet(module, args, kwargs):
        # The pipeline's step index is the number of UNet calls since it set the scheduler's
        # timesteps (a new tensor each call): one call per `for i, t in enumerate(timesteps)`.
        # Looking t up in `timesteps` would not do: PNDM repeats one timestep, Heun all.
        timesteps = getattr(getattr(pipe, "scheduler", None), "timesteps", None)
        if timesteps is not now.timesteps:
            now.timesteps, now.calls = timesteps, 0
        now.step = now.calls
        now.calls += 1
        total = len(timesteps) if timesteps is not None else now.calls
        store.num_steps = max(store.num_steps, now.calls)
        now.recording = wanted is None or now.step in wanted or now.step - total in wanted
        now.cfg = bool(getattr(pipe, "do_classifier_free_guidance", False))
        sample = args[0] if args else kwargs["sample"]
        now.latent_hw = tuple(sample.shape[-2:])

    previous = {n: modules[n].processor for n in names}
    handle = unet.register_forward_pre_hook(before_unet, with_kwargs=True)
    try:
        for n in names:
            modules[n].set_processor(RecordingProcessor(previous[n], store, n, now))
        yield store
    finally:
        handle.remove()
        for n in names:
            modules[n].set_processor(previous[n])


class Recording(NamedTuple):
    """One generated image with its attention maps and the prompt's tokens."""

    image: object  # a PIL image
    store: AttentionStore
    tokens: list[str]


def generate_with_attention(
    pipe, prompt: str, *, seed: int = 0, record: dict | None = None, **pipe_kwargs
) -> Recording:
    """Generate one image from ``prompt`` with a fixed seed and record its attention.

    Args:
        record: keyword arguments for :func:`record_attention` (``layers``, ``steps``, ...).
        **pipe_kwargs: passed to the pipeline (``num_inference_steps``, ``guidance_scale``, ...).
    """
    generator = torch.Generator(device=pipe.device).manual_seed(seed)
    with record_attention(pipe, **(record or {})) as store:
        image = pipe(prompt, generator=generator, **pipe_kwargs).images[0]
    return Recording(image, store, store.tokens(prompt))


# --------------------------------------------------------------------- measurement
def attention_mass_on(heat, mask) -> float:
    """Share of one token's attention mass that falls on an object's pixels.

    The mask is area-averaged down to the map's grid, so a map pixel half covered by the
    object counts half.

    Args:
        heat: (H, W) map of one token, e.g. ``store.token_maps()[i]``.
        mask: (H_img, W_img) object mask (bool or coverage in [0, 1]), tensor or array.
    """
    heat = torch.as_tensor(np.asarray(heat.detach().cpu() if isinstance(heat, torch.Tensor) else heat)).double()
    if heat.ndim != 2:
        raise ValueError(f"heat must be one token's (H, W) map, e.g. maps[i]; got shape {tuple(heat.shape)}")
    m = torch.as_tensor(np.asarray(mask.detach().cpu() if isinstance(mask, torch.Tensor) else mask)).double()
    if m.ndim != 2:
        raise ValueError(f"mask must be (H_img, W_img); got shape {tuple(m.shape)}")
    m = F.interpolate(m[None, None], size=tuple(heat.shape), mode="area")[0, 0]
    total = heat.sum()
    if total <= 0:
        raise ValueError("this map holds no attention mass (all zeros)")
    return float((heat * m).sum() / total)
