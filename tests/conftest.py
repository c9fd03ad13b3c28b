"""Shared fixtures: small pipelines built in code (random weights, real classes)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def random_tiny_pipeline(seed: int = 0):
    """The miniature model's architecture with random weights (no checkpoint needed)."""
    from rece_lite.tiny.model import build_pipeline

    return build_pipeline(seed=seed)


@pytest.fixture
def rand_pipe():
    return random_tiny_pipeline()
