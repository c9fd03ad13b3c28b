"""A word's map, defined once: for the recorder that shows it and for the loss that teaches it.

A cross-attention layer's probabilities ``P = softmax(Q Kᵀ · scale)``
(:func:`rece_lite.attention.record.cross_attention_probs`, shape (B, heads, N, T)) give,
for each of N query pixels, a distribution over the T prompt tokens.  A word's map is

    A_word(u) = Σ_{k ∈ word} mean_h P[h, u, k]

the heads averaged, the word's token rows summed: at each pixel, the share of its
attention that goes to the word.  :meth:`AttentionStore.word_map` reads recorded maps
with :func:`word_heat`; training reads live, differentiable ones through
:func:`capture_probs` and scores them against object masks with :func:`token_loss`
(TokenCompose, Wang et al., CVPR 2024, ``train/src/loss_utils.py``, after layout guidance):

    L_token = mean_{ℓ, b, k} ( 1 − Σ_u A^ℓ_{b,k}(u) M_{b,k}(u) / Σ_u A^ℓ_{b,k}(u) )²

over every supervised layer ℓ, picture b and grounded token k, with ``M`` the mask of
the object token k names, area-resampled to layer ℓ's grid (coverage in [0, 1], the same
resampling as :func:`rece_lite.attention.mass_per_area`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from rece_lite.attention.record import cross_attention_probs
from rece_lite.layers import cross_attention_layers


def word_heat(maps: torch.Tensor, positions: Sequence[int], dim: int = 0) -> torch.Tensor:
    """A word's map: the rows of its token ``positions`` along ``dim`` (heads already averaged), summed.

    Args:
        maps: attention with a token axis ``dim`` (e.g. (T, H, W) from ``store.token_maps``,
            or (B, N, T) live from a layer with ``dim=-1``).
        positions: the word's token positions (``word_spans``).
    """
    idx = torch.as_tensor(list(positions), dtype=torch.long, device=maps.device)
    return maps.index_select(dim, idx).sum(dim)


class CapturingProcessor:
    """Wraps a layer's processor: its output is the wrapped one's; head-averaged probabilities are kept, with grad."""

    def __init__(self, inner, sink: list):
        self.inner, self.sink = inner, sink

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        if temb is not None:
            kwargs["temb"] = temb
        out = self.inner(
            attn, hidden_states, encoder_hidden_states=encoder_hidden_states, attention_mask=attention_mask, **kwargs
        )
        if encoder_hidden_states is not None:
            probs = cross_attention_probs(attn, hidden_states, encoder_hidden_states, attention_mask, temb)
            self.sink.append(probs.mean(1))  # (B, N, T)
        return out


@contextmanager
def capture_probs(unet) -> Iterator[list[torch.Tensor]]:
    """Inside the block every ``attn2`` call appends its (B, N, T) head-averaged probabilities to the yielded list.

    The maps keep their graph, so a loss on them trains ``to_q``, ``to_k`` and the text
    encoder.  The previous processors come back on exit.
    """
    modules = cross_attention_layers(unet)
    previous = {n: m.processor for n, m in modules.items()}
    sink: list[torch.Tensor] = []
    try:
        for m in modules.values():
            m.set_processor(CapturingProcessor(m.processor, sink))
        yield sink
    finally:
        for n, m in modules.items():
            m.set_processor(previous[n])


def masks_on_grid(masks: torch.Tensor, n: int) -> torch.Tensor:
    """(B, K, S, S) coverage masks area-resampled to a square grid of ``n`` pixels: (B, K, n)."""
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"a layer with {n} query pixels is not a square grid")
    return F.interpolate(masks, size=(side, side), mode="area").flatten(2)


def token_loss(probs: Sequence[torch.Tensor], masks: torch.Tensor, objects: torch.Tensor) -> torch.Tensor:
    """L_token over layers, pictures and grounded tokens (module docstring).

    Args:
        probs: per layer, (B, N, T) head-averaged probabilities (from :func:`capture_probs`).
        masks: (B, K, S, S) each object's coverage of each picture pixel.
        objects: (B, T) long, the object each token names, -1 for tokens without one
            (the start token, "a", padding, and every token of an empty caption).

    Returns:
        A scalar; 0 when no token is grounded.
    """
    grounded = objects >= 0
    if not grounded.any():
        return probs[0].sum() * 0.0
    which = objects.clamp(min=0)
    losses = []
    for p in probs:
        m = masks_on_grid(masks.to(p.dtype), p.shape[1])  # (B, K, N)
        m_tok = torch.gather(m, 1, which[..., None].expand(-1, -1, m.shape[-1]))  # (B, T, N)
        inside = (p.transpose(1, 2) * m_tok).sum(-1)  # (B, T)
        share = inside / p.sum(1).clamp_min(1e-12)
        losses.append((1.0 - share)[grounded].pow(2))
    return torch.cat(losses).mean()
