"""Shared fixtures: small pipelines built in code (random weights, real classes)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def random_tiny_pipeline(seed: int = 0):
    """The miniature model's architecture with random weights (no checkpoint needed)."""
    from diffusers import StableDiffusionPipeline

    from rece_lite.tiny import model as tm

    torch.manual_seed(seed)
    tok = tm.build_tokenizer()
    pipe = StableDiffusionPipeline(
        vae=tm.build_vae(),
        text_encoder=tm.build_text_encoder(len(tok)),
        tokenizer=tok,
        unet=tm.build_unet(),
        scheduler=tm.sample_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture
def rand_pipe():
    return random_tiny_pipeline()
