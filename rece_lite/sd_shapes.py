"""Stable Diffusion 1.4, 2.1 and XL shapes with random weights, for tests and benchmarks.

The closed forms' cost and numerics depend on the *shapes* of the model, not on its
weights.  Real weights cannot be downloaded here, so the functions below build genuine
diffusers pipelines from each model's configs, written out as constants, with random
weights: the right size for timing an edit or checking the algebra at scale, useless
for pictures (they draw noise).

=========  ==================  ===========  ======  =========================================
model      pipeline class      d (K/V in)   attn2   text encoder(s)
=========  ==================  ===========  ======  =========================================
SD 1.4     StableDiffusion     768          16      CLIP ViT-L/14, 12 layers
SD 2.1     StableDiffusion     1024         16      OpenCLIP ViT-H/14, 23 layers; v-prediction
SDXL 1.0   StableDiffusionXL   2048         70      CLIP ViT-L (768) + OpenCLIP bigG (1280),
                                                    penultimate states concatenated per token
=========  ==================  ===========  ======  =========================================

What differs from the real models, and why it does not matter for those uses:

* the tokenizer is the miniature model's word-level one (CLIP's BPE vocabulary cannot
  be downloaded), padded to 77 tokens; its ids are a small subset of the text
  encoders' 49 408, and the encoders' BOS/EOS/PAD ids are set to match it;
* the VAE is a small random ``AutoencoderKL`` with SD's 8x downsampling and 4 latent
  channels: edits never touch it and the benchmarks never decode;
* depth may be reduced (text layers; for SDXL also transformer layers per block):
  every width the edit sees (d, the K/V output widths, 77 tokens) stays real.

Memory (float32): SD 1.4's UNet 3.4 GB, SD 2.1's 3.5 GB, SDXL's 9.6 GB at full depth and
2.4 GB with one transformer layer per block (:func:`random_sdxl_pipeline`'s default).
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import AutoencoderKL, DDIMScheduler, EulerDiscreteScheduler, PNDMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from rece_lite.pipeline import assemble_pipeline, assemble_sdxl_pipeline
from rece_lite.tiny.tokenizer import build_tokenizer

# ------------------------------------------------------------------------- SD 1.4
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

# ------------------------------------------------------------------------- SD 2.1
#: ``stabilityai/stable-diffusion-2-1``'s ``unet/config.json``: d = 1024, linear projections
#: in and out of each transformer, (5, 10, 20, 20) heads of 64 channels, attention upcast to float32.
SD21_UNET: dict[str, Any] = {
    **SD14_UNET,
    "sample_size": 96,  # 768 px
    "cross_attention_dim": 1024,
    "attention_head_dim": (5, 10, 20, 20),  # diffusers' legacy name: heads per level
    "use_linear_projection": True,
    "upcast_attention": True,
}

#: ``stabilityai/stable-diffusion-2-1``'s ``text_encoder/config.json``: OpenCLIP ViT-H/14's text
#: tower without its last layer (SD 2 conditions on the penultimate one, so the export keeps 23).
SD21_TEXT: dict[str, Any] = {
    **SD14_TEXT,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "projection_dim": 512,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "hidden_act": "gelu",
}

#: SD 2.1's scheduler (DDIM, v-prediction: the UNet predicts v = α ε − σ x₀, not the noise).
SD21_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
    prediction_type="v_prediction",
)

# --------------------------------------------------------------------------- SDXL
#: ``stabilityai/stable-diffusion-xl-base-1.0``'s ``unet/config.json``: d = 2048 = 768 + 1280; the
#: pooled embedding (1280) and six time ids (6 x 256) enter through ``add_embedding`` (1280 + 1536 = 2816).
SDXL_UNET: dict[str, Any] = dict(
    sample_size=128,  # 1024 px
    in_channels=4,
    out_channels=4,
    center_input_sample=False,
    flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280),
    layers_per_block=2,
    transformer_layers_per_block=(1, 2, 10),
    downsample_padding=1,
    mid_block_scale_factor=1,
    act_fn="silu",
    norm_num_groups=32,
    norm_eps=1e-5,
    cross_attention_dim=2048,
    attention_head_dim=(5, 10, 20),  # diffusers' legacy name: heads per level
    use_linear_projection=True,
    addition_embed_type="text_time",
    addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816,
)

#: SDXL's ``text_encoder/config.json``: CLIP ViT-L/14's text tower (as SD 1.4's).
SDXL_TEXT: dict[str, Any] = dict(SD14_TEXT)

#: SDXL's ``text_encoder_2/config.json``: OpenCLIP ViT-bigG/14's text tower with its projection
#: (``CLIPTextModelWithProjection``; the projected EOS state is the 1280-wide pooled embedding).
SDXL_TEXT_2: dict[str, Any] = {
    **SD14_TEXT,
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "projection_dim": 1280,
    "num_hidden_layers": 32,
    "num_attention_heads": 20,
    "hidden_act": "gelu",
}

#: SDXL's ``scheduler/scheduler_config.json`` (Euler, epsilon prediction).
SDXL_SCHEDULER: dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    interpolation_type="linear",
    timestep_spacing="leading",
    steps_offset=1,
    use_karras_sigmas=False,
)


def sd14_unet_config() -> dict[str, Any]:
    """Keyword arguments for ``UNet2DConditionModel``: SD 1.4's 16 ``attn2`` layers, 32 K/V matrices."""
    return dict(SD14_UNET)


def sd14_text_config() -> dict[str, Any]:
    """Keyword arguments for ``CLIPTextConfig``: SD 1.4's text encoder (d = 768, 77 positions)."""
    return dict(SD14_TEXT)


# ------------------------------------------------------------------------ builders
def _small_vae(scaling_factor: float = 0.18215) -> AutoencoderKL:
    """A random f = 8, 4-channel ``AutoencoderKL`` (SD's latent shape, 0.36 M parameters)."""
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
        scaling_factor=scaling_factor,
        mid_block_add_attention=False,
    )


def _tokenizer_and_text_config(text: dict[str, Any], layers: int, what: str):
    """The word-level tokenizer padded to 77, and ``text`` with ``layers`` layers and its special ids."""
    if not isinstance(layers, int) or layers < 1:
        raise ValueError(f"{what} must be an integer >= 1, got {layers!r}")
    tok = build_tokenizer()
    tok.model_max_length = text["max_position_embeddings"]
    if len(tok) > text["vocab_size"]:
        raise ValueError(f"tokenizer has {len(tok)} ids, the text encoder only {text['vocab_size']}")
    # the word-level tokenizer's special ids (pooling looks for EOS)
    cfg = {
        **text,
        "num_hidden_layers": layers,
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }
    return tok, cfg


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
    tok, text_cfg = _tokenizer_and_text_config(SD14_TEXT, text_layers, "text_layers")
    torch.manual_seed(seed)
    return assemble_pipeline(
        vae=_small_vae(),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text_cfg)),
        tokenizer=tok,
        unet=UNet2DConditionModel(**sd14_unet_config()),
        scheduler=PNDMScheduler(**SD14_SCHEDULER),
    )


def random_sd21_pipeline(text_layers: int = 23, seed: int = 0):
    """A ``StableDiffusionPipeline`` with SD 2.1's shapes (d = 1024, v-prediction), random weights.

    Args:
        text_layers: transformer layers in the text encoder (SD 2.1: 23). The embeddings
            keep their (77, 1024) shape whatever the depth.
        seed: seeds the random weights.

    Returns:
        A float32 pipeline on the CPU, in eval mode, progress bars off; its scheduler
        predicts v (``prediction_type="v_prediction"``).
    """
    tok, text_cfg = _tokenizer_and_text_config(SD21_TEXT, text_layers, "text_layers")
    torch.manual_seed(seed)
    return assemble_pipeline(
        vae=_small_vae(),
        text_encoder=CLIPTextModel(CLIPTextConfig(**text_cfg)),
        tokenizer=tok,
        unet=UNet2DConditionModel(**SD21_UNET),
        scheduler=DDIMScheduler(**SD21_SCHEDULER),
    )


def random_sdxl_pipeline(
    *,
    transformer_layers: tuple[int, int, int] = (1, 1, 1),
    text_layers: tuple[int, int] = (2, 2),
    sample_size: int = SDXL_UNET["sample_size"],
    seed: int = 0,
):
    """A ``StableDiffusionXLPipeline`` with SDXL's widths, two text encoders, random weights.

    Every width an edit sees is SDXL's: cross-attention d = 2048 (768 + 1280), K/V outputs
    of 640 and 1280, 77 tokens, a 1280-wide pooled embedding and six time ids through
    ``add_embedding``.  Depth is reduced by default so that the model fits in about 3 GB.

    Args:
        transformer_layers: transformer blocks per cross-attention block at the 320-,
            640- and 1280-channel levels (SDXL: (1, 2, 10), 70 ``attn2`` layers, 9.6 GB;
            the default (1, 1, 1) has 11 layers, 22 K/V matrices, 2.4 GB).
        text_layers: layers of the two text encoders (SDXL: (12, 32)). SDXL conditions on
            each encoder's penultimate layer, so 2 is the least that keeps a
            transformer layer in the path.
        sample_size: latent side (SDXL: 128, i.e. 1024 px); smaller makes sampling cheap.
        seed: seeds the random weights.

    Returns:
        A float32 pipeline on the CPU, in eval mode, progress bars off, no watermarker.
    """
    layers = tuple(transformer_layers)
    if len(layers) != 3 or not all(isinstance(n, int) and n >= 1 for n in layers):
        raise ValueError(
            f"transformer_layers must be three integers >= 1 (SDXL: (1, 2, 10)), got {transformer_layers!r}"
        )
    if len(tuple(text_layers)) != 2:
        raise ValueError(
            f"text_layers must be two integers, one per text encoder (SDXL: (12, 32)), got {text_layers!r}"
        )
    if not isinstance(sample_size, int) or sample_size < 8 or sample_size % 4:
        raise ValueError(f"sample_size must be an integer >= 8 divisible by 4 (SDXL: 128), got {sample_size!r}")
    tok, cfg = _tokenizer_and_text_config(SDXL_TEXT, text_layers[0], "text_layers[0]")
    tok_2, cfg_2 = _tokenizer_and_text_config(SDXL_TEXT_2, text_layers[1], "text_layers[1]")
    torch.manual_seed(seed)
    return assemble_sdxl_pipeline(
        vae=_small_vae(scaling_factor=0.13025),
        text_encoder=CLIPTextModel(CLIPTextConfig(**cfg)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**cfg_2)),
        tokenizer=tok,
        tokenizer_2=tok_2,
        unet=UNet2DConditionModel(**{**SDXL_UNET, "transformer_layers_per_block": layers, "sample_size": sample_size}),
        scheduler=EulerDiscreteScheduler(**SDXL_SCHEDULER),
    )


__all__ = [
    "SD14_SCHEDULER", "SD14_TEXT", "SD14_UNET", "SD21_SCHEDULER", "SD21_TEXT", "SD21_UNET", "SDXL_SCHEDULER",
    "SDXL_TEXT", "SDXL_TEXT_2", "SDXL_UNET", "random_sd14_pipeline", "random_sd21_pipeline", "random_sdxl_pipeline",
    "sd14_text_config", "sd14_unet_config",
]  # fmt: skip
