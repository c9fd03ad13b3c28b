"""The miniature Stable Diffusion's parts, built from configs.

The classes are exactly SD 1.4's (``AutoencoderKL``, ``UNet2DConditionModel``,
``CLIPTextModel``, a tokenizer that ``AutoTokenizer`` loads, a DDIM scheduler);
only the sizes are tiny.  :func:`build_pipeline` returns an untrained pipeline; the
training script (:mod:`rece_lite.tiny.train`) fits them and saves a
``StableDiffusionPipeline`` with ``save_pretrained``.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from rece_lite.pipeline import assemble_pipeline
from rece_lite.sd14 import SD14_SCHEDULER
from rece_lite.tiny import world
from rece_lite.tiny.tokenizer import BOS, EOS, MAX_LENGTH, UNK, build_tokenizer

TEXT_WIDTH = 64  # text-embedding width d (SD 1.4: 768)

# SD 1.x's noise schedule, so that the same sampler settings make sense on both.
SCHEDULE = {k: SD14_SCHEDULER[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule")}
SCHEDULE["clip_sample"] = False


def build_text_encoder(vocab_size: int) -> CLIPTextModel:
    cfg = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=TEXT_WIDTH,
        intermediate_size=2 * TEXT_WIDTH,
        projection_dim=TEXT_WIDTH,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=MAX_LENGTH,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    return CLIPTextModel(cfg)


def build_vae() -> AutoencoderKL:
    """f = 4: 32 x 32 x 3 pictures <-> 8 x 8 x 4 latents; no mid-block attention (10x slower)."""
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        block_out_channels=(16, 32, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=world.SIZE,
        mid_block_add_attention=False,
    )


def build_unet() -> UNet2DConditionModel:
    """Cross-attention in every block: 7 ``attn2`` layers at 8 x 8 and 4 x 4."""
    return UNet2DConditionModel(
        sample_size=world.SIZE // 4,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=TEXT_WIDTH,
        attention_head_dim=2,  # diffusers' legacy name: this is the number of heads
    )


def train_scheduler() -> DDPMScheduler:
    return DDPMScheduler(**SCHEDULE)


def sample_scheduler() -> DDIMScheduler:
    return DDIMScheduler(**SCHEDULE, set_alpha_to_one=False, steps_offset=1)


def build_pipeline(*, seed: int = 0):
    """The miniature model's architecture with random weights (for tests; training fits these parts)."""
    torch.manual_seed(seed)
    tok = build_tokenizer()
    return assemble_pipeline(
        unet=build_unet(),
        text_encoder=build_text_encoder(len(tok)),
        tokenizer=tok,
        vae=build_vae(),
        scheduler=sample_scheduler(),
    )


__all__ = [
    "BOS", "EOS", "MAX_LENGTH", "TEXT_WIDTH", "UNK", "build_pipeline", "build_text_encoder", "build_tokenizer",
    "build_unet", "build_vae", "sample_scheduler", "train_scheduler",
]  # fmt: skip
