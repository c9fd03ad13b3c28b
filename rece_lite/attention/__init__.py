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

A word's heat map (DAAM-style: the word's tokens summed, averaged over layers, heads and
steps, upsampled to the picture), and how much of it lands on an object:

    rec = generate_with_attention(pipe, "a red circle and a blue square")
    red = rec.word_map("red")                    # (H, W) at the picture's size
    mass_per_area(red, red_object_mask)          # 1 = no denser on the object than anywhere

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

Devices: the recorder runs wherever the pipeline runs (CPU, CUDA) and copies each map,
reduced, to ``device`` (the CPU by default), so maps come back ready for plotting.

The package: :mod:`~rece_lite.attention.store` (the store, sizes, choosing layers, word
maps), :mod:`~rece_lite.attention.words` (a word's token positions),
:mod:`~rece_lite.attention.record` (the processor and the ``with`` block) and
:mod:`~rece_lite.attention.mass` (mass on an object).
"""

from rece_lite.attention.mass import attention_mass_on, mass_per_area, mass_ratio
from rece_lite.attention.record import (
    Recording,
    RecordingProcessor,
    cross_attention_probs,
    generate_with_attention,
    record_attention,
)
from rece_lite.attention.store import (
    SD14_RESOLUTIONS,
    AttentionStore,
    Heads,
    LayerKey,
    StepKey,
    layer_label,
    pooled_size,
    select_layers,
    store_size,
)
from rece_lite.attention.words import prompt_tokens, word_spans

__all__ = [
    "SD14_RESOLUTIONS",
    "AttentionStore",
    "Heads",
    "LayerKey",
    "Recording",
    "RecordingProcessor",
    "StepKey",
    "attention_mass_on",
    "cross_attention_probs",
    "generate_with_attention",
    "layer_label",
    "mass_per_area",
    "mass_ratio",
    "pooled_size",
    "prompt_tokens",
    "record_attention",
    "select_layers",
    "store_size",
    "word_spans",
]
