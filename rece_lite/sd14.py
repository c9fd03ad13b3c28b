"""Stable Diffusion 1.4's shapes with random weights: kept for older imports.

Everything here now lives in :mod:`rece_lite.sd_shapes`, next to SD 2.1's and SDXL's.
"""

from __future__ import annotations

from rece_lite.sd_shapes import (
    SD14_SCHEDULER,
    SD14_TEXT,
    SD14_UNET,
    random_sd14_pipeline,
    sd14_text_config,
    sd14_unet_config,
)

__all__ = ["SD14_SCHEDULER", "SD14_TEXT", "SD14_UNET", "random_sd14_pipeline", "sd14_text_config", "sd14_unet_config"]
