"""The miniature Stable Diffusion's parts, built from a small config.

The classes are exactly SD 1.4's (``AutoencoderKL``, ``UNet2DConditionModel``,
``CLIPTextModel``, a tokenizer that ``AutoTokenizer`` loads, a DDIM scheduler);
only the sizes are tiny, and :class:`ModelConfig` names them.  :func:`build_pipeline`
returns an untrained pipeline; the training script (:mod:`rece_lite.tiny.train`) fits
the parts and saves a ``StableDiffusionPipeline`` with ``save_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from rece_lite.pipeline import assemble_pipeline, assemble_sdxl_pipeline
from rece_lite.sd14 import SD14_SCHEDULER
from rece_lite.tiny import world
from rece_lite.tiny.tokenizer import BOS, EOS, MAX_LENGTH, UNK, build_tokenizer

# SD 1.x's noise schedule, so that the same sampler settings make sense on both.
SCHEDULE = {k: SD14_SCHEDULER[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")}
SCHEDULE["clip_sample"] = False


@dataclass(frozen=True)
class ModelConfig:
    """The miniature model's sizes (SD 1.4's in brackets).

    Attributes:
        size: picture side in pixels (512).
        vae_channels: the autoencoder's channels per level; it downsamples by
            ``2 ** (len - 1)`` (SD: 8 from four levels).
        unet_channels: the UNet's channels per level; every level has a cross-attention
            layer, and so does the mid block ((320, 640, 1280, 1280)).
        unet_heads: attention heads per UNet attention layer (8).
        text_width: d, the text-embedding width the cross-attention reads (768).
        text_layers: transformer layers in the text encoder (12).
        text_heads: attention heads in the text encoder (12).
        max_length: T, tokens per prompt, padding included (77).
    """

    size: int = world.SIZE
    vae_channels: tuple[int, ...] = (16, 32, 64)
    unet_channels: tuple[int, ...] = (32, 64)
    unet_heads: int = 2
    text_width: int = 64
    text_layers: int = 2
    text_heads: int = 2
    max_length: int = MAX_LENGTH

    @property
    def latent_size(self) -> int:
        return self.size // 2 ** (len(self.vae_channels) - 1)


TEXT_WIDTH = ModelConfig().text_width  # the shipped model's d


def build_text_encoder(vocab_size: int, cfg: ModelConfig = ModelConfig()) -> CLIPTextModel:
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.text_width,
            intermediate_size=2 * cfg.text_width,
            projection_dim=cfg.text_width,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.max_length,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    )


def build_vae(cfg: ModelConfig = ModelConfig()) -> AutoencoderKL:
    """Pictures <-> 4-channel latents; no mid-block attention (10x slower on a CPU)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(cfg.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(cfg.vae_channels),
        block_out_channels=cfg.vae_channels,
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=cfg.size,
        mid_block_add_attention=False,
    )


def build_unet(cfg: ModelConfig = ModelConfig()) -> UNet2DConditionModel:
    """Cross-attention in every block (the default: 7 ``attn2`` layers at 8 x 8 and 4 x 4)."""
    n = len(cfg.unet_channels)
    return UNet2DConditionModel(
        sample_size=cfg.latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * n,
        up_block_types=("CrossAttnUpBlock2D",) * n,
        block_out_channels=cfg.unet_channels,
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=cfg.text_width,
        attention_head_dim=cfg.unet_heads,  # diffusers' legacy name: this is the number of heads
    )


def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE)


def sample_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULE, set_alpha_to_one=False, steps_offset=1)


def build_pipeline(cfg: ModelConfig = ModelConfig(), *, seed: int = 0):
    """A ``StableDiffusionPipeline`` of the miniature architecture with random weights.

    For tests and as training's starting point (the training script builds the parts
    the same way and fits them).
    """
    torch.manual_seed(seed)
    tok = build_tokenizer(cfg.max_length)
    return assemble_pipeline(
        unet=build_unet(cfg),
        text_encoder=build_text_encoder(len(tok), cfg),
        tokenizer=tok,
        vae=build_vae(cfg),
        scheduler=sample_scheduler(),
    )


__all__ = [
    "BOS", "EOS", "MAX_LENGTH", "TEXT_WIDTH", "UNK", "ModelConfig", "build_pipeline", "build_text_encoder",
    "build_tokenizer", "build_unet", "build_vae", "sample_scheduler", "train_scheduler",
]  # fmt: skip


def build_sdxl_pipeline(*, seed: int = 0):
    """SDXL's structure at toy size, random weights: two text encoders (d = 32 + 64 per token), a
    16-wide pooled embedding plus 6 time ids through ``add_embedding``, the miniature world's
    tokenizer and VAE.  For tests and probes of the SDXL code paths that need seconds, not SDXL's
    widths (those are :func:`rece_lite.sd_shapes.random_sdxl_pipeline`)."""
    small = dict(intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=16,
                 bos_token_id=0, eos_token_id=1, pad_token_id=1)  # fmt: skip
    torch.manual_seed(seed)
    tok, tok_2 = build_tokenizer(), build_tokenizer()
    unet = UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=96, attention_head_dim=(2, 4), transformer_layers_per_block=(1, 2),
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=16 + 6 * 8,
    )  # fmt: skip
    text = CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), hidden_size=32, projection_dim=32, **small))
    text_2 = CLIPTextModelWithProjection(
        CLIPTextConfig(vocab_size=len(tok), hidden_size=64, projection_dim=16, **small)
    )
    scheduler = EulerDiscreteScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, steps_offset=1, timestep_spacing="leading"
    )
    return assemble_sdxl_pipeline(
        unet=unet, text_encoder=text, text_encoder_2=text_2, tokenizer=tok, tokenizer_2=tok_2, vae=build_vae(),
        scheduler=scheduler,
    )  # fmt: skip
