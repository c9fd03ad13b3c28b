"""Stable Diffusion 1.4's shapes with random weights, for tests and benchmarks.

The closed forms' cost and numerics depend on the *shapes* of the model: 16
cross-attention layers with ``to_k``/``to_v`` of width d = 768 (32 matrices, 24 960
rows in all), a 77-token context and a 12-layer CLIP text encoder.  Real SD 1.4
weights cannot be downloaded here, so :func:`random_sd14_pipeline` builds a genuine
``StableDiffusionPipeline`` from SD 1.4's configs, written out below, with random
weights: the right size for timing an edit or checking the algebra at scale, and
useless for pictures (it draws noise).

What differs from SD 1.4, and why it does not matter for those uses:

* the tokenizer is the miniature model's word-level one (CLIP's BPE vocabulary
  cannot be downloaded), padded to 77 tokens; its ids are a small subset of the
  text encoder's 49 408, and the text encoder's BOS/EOS/PAD ids are set to match it;
* the VAE is a small random ``AutoencoderKL`` with SD's 8x downsampling and 4
  latent channels: edits never touch it and the benchmarks never decode.

Memory: the float32 UNet is 3.4 GB, the 12-layer text encoder 0.5 GB.
"""

from __future__ import annotations

from typing import Any

import torch

#: ``CompVis/stable-diffusion-v1-4``'s ``unet/config.json``, as constructor arguments.
SD14_UNET: dict[str, Any] = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    block_out_channels=(320, 640, 1280, 1280),
    layers_per_block=2,
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=768,
    attention_head_dim=8,  # diffusers' legacy name: SD 1.x has 8 heads per layer
)

#: ``CompVis/stable-diffusion-v1-4``'s ``text_encoder/config.json`` (CLIP ViT-L/14's text tower).
SD14_TEXT: dict[str, Any] = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    projection_dim=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-5,
    attention_dropout=0.0,
    dropout=0.0,
    initializer_range=0.02,
    initializer_factor=1.0,
    bos_token_id=0,
    eos_token_id=2,
    pad_token_id=1,
)

#: SD 1.4's noise schedule (``scheduler/scheduler_config.json``).
SD14_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    skip_prk_steps=True,
    set_alpha_to_one=False,
    steps_offset=1,
)


def sd14_unet_config() -> dict[str, Any]:
    """Keyword arguments for ``UNet2DConditionModel``: SD 1.4's 16 ``attn2`` layers, 32 K/V matrices."""
    return dict(SD14_UNET)


def sd14_text_config() -> dict[str, Any]:
    """Keyword arguments for ``CLIPTextConfig``: SD 1.4's text encoder (d = 768, 77 positions)."""
    return dict(SD14_TEXT)


def _small_vae():
    """A random f = 8, 4-channel ``AutoencoderKL`` (SD 1.4's latent shape, 0.36 M parameters)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(32, 32, 32, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
        mid_block_add_attention=False,
    )


def random_sd14_pipeline(text_layers: int = 12, seed: int = 0):
    """A ``StableDiffusionPipeline`` with SD 1.4's UNet and text encoder shapes, random weights.

    For tests and benchmarks of real shapes, not for images (see the module docstring).

    Args:
        text_layers: transformer layers in the text encoder (SD 1.4: 12). Fewer make
            the pipeline cheaper to build and to encode with; the embeddings keep
            their (77, 768) shape.
        seed: seeds the random weights.

    Returns:
        A float32 pipeline on the CPU, in eval mode, progress bars off.
    """
    from diffusers import PNDMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from rece_lite.pipeline import assemble_pipeline
    from rece_lite.tiny.tokenizer import build_tokenizer

    if text_layers < 1:
        raise ValueError(f"text_layers must be >= 1, got {text_layers}")
    tok = build_tokenizer()
    tok.model_max_length = SD14_TEXT["max_position_embeddings"]
    text_cfg = sd14_text_config()
    if len(tok) > text_cfg["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tok)} ids, the text encoder only {text_cfg['vocab_size']}")
    # the word-level tokenizer's special ids (pooling looks for EOS; SD itself never uses the pooled output)
    text_cfg.update(
        num_hidden_layers=text_layers,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(seed)
    return assemble_pipeline(
        vae=_small_vae(),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text_cfg)),
        tokenizer=tok,
        unet=UNet2DConditionModel(**sd14_unet_config()),
        scheduler=PNDMScheduler(**SD14_SCHEDULER),
    )
