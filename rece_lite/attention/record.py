"""Recording: an attention processor that copies cross-attention out of a running pipeline.

:func:`record_attention` wraps every chosen ``attn2`` processor in a
:class:`RecordingProcessor` for the duration of a ``with`` block and puts the old ones back
afterwards, object for object; :func:`generate_with_attention` is the one-picture shortcut.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import torch

from rece_lite.attention.store import AttentionStore, Heads, LayerKey, select_layers
from rece_lite.layers import cross_attention_layers


@dataclass
class _Now:
    """What the UNet is doing at this moment, shared by the hook and the processors."""

    step: int = 0
    cfg: bool = False
    latent_hw: tuple[int, int] | None = None
    recording: bool = True
    calls: int = 0  # UNet calls since `timesteps` was set
    timesteps: object = None  # the scheduler's timesteps tensor of the current pipeline call


def run_order(name: str) -> int:
    """Down blocks, then the mid block, then up blocks: the order the UNet runs them."""
    return 0 if name.startswith("down") else 2 if name.startswith("up") else 1


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

    def unlink(self, module) -> bool:
        """Take this processor out of ``module``'s chain of processors, wherever it sits; True if found.

        Recorders nest: an inner one wraps the outer one's processor.  Leaving out of order
        (the outer block first) must not put back a processor of a recorder still running,
        nor leave this one behind: the processor that wraps this one gets this one's ``inner``.
        """
        current = module.processor
        if current is self:
            module.set_processor(self.inner)
            return True
        while isinstance(current, RecordingProcessor):
            if current.inner is self:
                current.inner = self.inner
                return True
            current = current.inner
        return False

    @torch.no_grad()
    def _record(self, attn, hidden_states, encoder_hidden_states, attention_mask, temb) -> None:
        b = hidden_states.shape[0]
        first = b // 2 if self.now.cfg and b % 2 == 0 else 0  # [uncond, cond]: keep cond
        rows = slice(first, min(b, first + self.store.images))

        def pick(x):
            return x[rows] if isinstance(x, torch.Tensor) and x.ndim > 1 and x.shape[0] == b else x

        probs = cross_attention_probs(
            attn, hidden_states[rows], encoder_hidden_states[rows], pick(attention_mask), pick(temb)
        )
        if self.name == self.store.layers[0]:
            self.store.note_context(encoder_hidden_states[rows])
        grid = hidden_states.shape[-2:] if hidden_states.ndim == 4 else _grid(probs.shape[2], self.now.latent_hw)
        self.store.add(self.name, self.now.step, probs, tuple(grid))


def _wanted_steps(steps) -> set[int] | None:
    """``steps`` as a set of step indices; a clear error for a bare number, an empty list or a non-integer."""
    if steps is None:
        return None
    if isinstance(steps, numbers.Integral) and not isinstance(steps, bool):
        raise ValueError(
            f"steps must be a list of step indices, got the number {steps}: steps=[{steps}] records step {steps} "
            f"only, steps=range({steps}) the first {steps}; how many steps the pipeline runs is its "
            "num_inference_steps"
        )
    if isinstance(steps, (str, bytes, numbers.Number)) or not isinstance(steps, Iterable):
        raise ValueError(f"steps must be a list of step indices (e.g. [0, -1]) or None for every step, got {steps!r}")
    wanted = set()
    for s in steps:
        if isinstance(s, bool) or not isinstance(s, numbers.Integral):
            raise ValueError(f"steps must hold whole-number step indices, got {s!r}")
        wanted.add(int(s))
    if not wanted:
        raise ValueError("steps is empty, so nothing would be recorded; give None to record every step")
    return wanted


def _check_steps_ran(wanted: set[int] | None, ran: int) -> None:
    """After the block: every asked-for step must exist in a pipeline of ``ran`` steps."""
    if wanted is None or ran == 0:
        return
    missing = sorted(s for s in wanted if not -ran <= s < ran)
    if missing:
        raise ValueError(
            f"steps {missing} were never run: the pipeline ran {ran} steps (0 to {ran - 1}, or -{ran} to -1 from "
            "the end); nothing was recorded for them"
        )


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
) -> Recorder:
    """Record cross-attention maps of every pipeline call inside the ``with`` block.

    On exit (also after an exception) the previous processors come back, object for
    object, and the UNet hook is removed.  Use one pipeline call per block: a second
    call is averaged into the same (layer, step) slots.  Works wherever the pipeline
    runs (CPU, CUDA); the maps are copied to ``device`` as they arrive.

    Args:
        pipe: a Stable Diffusion pipeline (anything with ``.unet``; ``.scheduler``,
            ``.tokenizer`` and ``.vae_scale_factor`` are used when present).
        layers: which ``attn2`` layers (index, name, prefix, or list); None = all.
        steps: a list of step indices to record (``[0, -1]``, ``range(10)``); None = all.
            A step index is the pipeline's loop index ``i``; negative ones count back from
            ``len(pipe.scheduler.timesteps)``.  A bare int is refused (ambiguous: one step,
            or that many?); after the block, indices the pipeline never reached are an error.
        heads: ``"mean"`` (average the heads while recording) or ``"all"``.
        max_resolution: area-pool larger maps to at most this many pixels a side (≥ 1);
            None keeps full resolution.
        images: record the first ``images`` pictures of the batch (conditional branch).
        dtype, device: where the maps are kept (a floating dtype; by default float16 on
            the CPU, wherever the pipeline runs, ready for plotting).

    Returns:
        A :class:`Recorder`, for one ``with`` block, whose ``__enter__`` gives the
        :class:`AttentionStore`, filled while the pipeline runs.
    """
    # 1. Check every argument before touching the model.
    if getattr(pipe, "unet", None) is None:
        raise ValueError(f"pipe must be a Stable Diffusion pipeline (with a .unet), got {type(pipe).__name__}")
    unet = pipe.unet
    modules = cross_attention_layers(unet)
    names = select_layers(sorted(modules, key=run_order), layers, arg="layers")
    wanted = _wanted_steps(steps)
    store = AttentionStore(
        names,
        heads=heads,
        max_resolution=max_resolution,
        images=images,
        dtype=dtype,
        device=device,
        tokenizer=getattr(pipe, "tokenizer", None),
    )
    vae_factor = getattr(pipe, "vae_scale_factor", None)
    now = _Now()

    # 2. A hook before each UNet call tells the processors which step this is.
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
        if isinstance(vae_factor, int):
            store.image_size = (now.latent_hw[0] * vae_factor, now.latent_hw[1] * vae_factor)

    store.text_encoder = getattr(pipe, "text_encoder", None)
    return Recorder(unet, modules, names, store, before_unet, wanted, now)


class Recorder:
    """One recording: processors and the step hook in on ``__enter__``, out on ``__exit__`` (any order).

    Made by :func:`record_attention`; good for one ``with`` block (a second raises a clear error).
    """

    def __init__(self, unet, modules, names, store: AttentionStore, hook, wanted, now: _Now):
        self.unet, self.modules, self.names, self.store = unet, modules, names, store
        self._hook, self._wanted, self._now = hook, wanted, now
        self._state = "new"
        self._handle = None
        self._mine: dict[str, RecordingProcessor] = {}

    def __enter__(self) -> AttentionStore:
        if self._state != "new":
            raise RuntimeError(
                f"this record_attention(...) recorder is {'in use' if self._state == 'in' else 'used up'}: one "
                "recorder records one with block; call record_attention(pipe) again for each block"
            )
        self._state = "in"
        # 3. Swap the processors in for the block, and back out whatever happens.
        self._handle = self.unet.register_forward_pre_hook(self._hook, with_kwargs=True)
        try:
            for n in self.names:
                m = self.modules[n]
                self._mine[n] = RecordingProcessor(m.processor, self.store, n, self._now)
                m.set_processor(self._mine[n])
        except BaseException:
            self._restore()
            raise
        return self.store

    def _restore(self) -> None:
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
        for n, proc in self._mine.items():
            proc.unlink(self.modules[n])
        self._mine = {}

    def __exit__(self, exc_type, exc, tb) -> None:
        self._restore()
        self._state = "done"
        if exc_type is None:
            _check_steps_ran(self._wanted, self.store.num_steps)


class Recording(NamedTuple):
    """One generated image with its attention maps, the prompt's tokens and the prompt."""

    image: object  # a PIL image (or an array, with output_type="np")
    store: AttentionStore
    tokens: list[str]
    prompt: str

    def word_map(self, word: str, **kwargs) -> torch.Tensor:
        """``store.word_map(word, prompt, **kwargs)``: the word's heat map over this image, (H, W)."""
        return self.store.word_map(word, self.prompt, **kwargs)


def generate_with_attention(
    pipe, prompt: str, *, seed: int = 0, record: dict | None = None, **pipe_kwargs
) -> Recording:
    """Generate one image from ``prompt`` with a fixed seed and record its attention.

    The starting noise is drawn on the CPU from ``seed``, so a seed gives the same
    picture on every device (up to the device's rounding), as :func:`rece_lite.pipeline.sample`.

    Args:
        record: keyword arguments for :func:`record_attention` (``layers``, ``steps``, ...).
        **pipe_kwargs: passed to the pipeline (``num_inference_steps``, ``guidance_scale``, ...).
    """
    generator = torch.Generator(device="cpu").manual_seed(seed)
    with record_attention(pipe, **(record or {})) as store:
        image = pipe(prompt, generator=generator, **pipe_kwargs).images[0]
    return Recording(image, store, store.tokens(prompt), prompt)
