"""The benchmark (rece_lite.bench), on random-weight pipelines built in code (fast)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rece_lite import attacks as atk
from rece_lite import bench
from rece_lite.tiny.model import build_pipeline

SOFT = dict(opt_steps=4, batch=4, targets_per_prompt=1, steps=2)  # a soft-prompt attack in seconds


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(a: dict, b: dict) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


def test_kernel_distance_matches_a_brute_force_sum():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(4, 3, generator=g, dtype=torch.float64) + 1
    k = lambda a, b: (float(a @ b) / 3 + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(5) for j in range(5) if i != j) / 20
    yy = sum(k(y[i], y[j]) for i in range(4) for j in range(4) if i != j) / 12
    xy = sum(k(x[i], y[j]) for i in range(5) for j in range(4)) / 20
    assert bench.kernel_distance(x, y) == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    big = torch.randn(400, 8, generator=g)
    assert abs(bench.kernel_distance(big[:200], big[200:])) < 0.2 * bench.kernel_distance(big[:200], big[200:] + 1)


@pytest.fixture(scope="module")
def report():
    """One small bench run on a random-weight miniature pipeline (seconds, not minutes)."""
    pipe = build_pipeline(seed=0)
    before = _state(pipe.unet)
    rep = bench.run(
        pipe, "red", seeds=[0, 1], steps=2, repeats=1, progress=False,
        esd_kw=dict(steps=2, images_per_prompt=1, sample_steps=2), soft_prompt_kw=SOFT,
    )  # fmt: skip
    return rep, _changed(before, _state(pipe.unet))


def test_bench_puts_the_original_weights_back(report):
    assert report[1] == set()


def test_bench_has_one_row_per_model_in_order(report):
    assert list(report[0].rows) == list(bench.MODELS)


@pytest.mark.parametrize("model", bench.MODELS)
def test_every_row_has_every_attack(report, model):
    assert set(report[0].rows[model].attacks) == set(atk.ATTACKS)


@pytest.mark.parametrize("model", bench.MODELS)
def test_every_row_has_shares_and_a_finite_distance(report, model):
    row = report[0].rows[model]
    assert 0 <= row.showing <= 1
    assert np.isfinite(row.kid)


@pytest.mark.parametrize("model", bench.MODELS)
def test_only_the_original_has_no_edit_time(report, model):
    assert (report[0].rows[model].seconds is None) == (model == "original")


def test_write_gives_json_markdown_and_png(report, tmp_path):
    bench.write(report[0], tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"bench.json", "bench.md", "bench.png"}
    assert json.loads((tmp_path / "bench.json").read_text())["rows"]["RECE"]["seconds"] > 0
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_markdown_has_a_header_and_every_model(report):
    md = bench.markdown(report[0])
    assert md.startswith("| model | still showing ↓ | paraphrase ↓")
    assert all(f"| {m} |" in md for m in bench.MODELS)
