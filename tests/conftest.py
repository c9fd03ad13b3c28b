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


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` run where a CUDA device is present and are reported as skipped elsewhere."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (run benchmarks/gpu_check.py on a GPU machine)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
