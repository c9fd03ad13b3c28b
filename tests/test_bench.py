"""The benchmark (rece_lite.bench), on random-weight pipelines built in code (fast)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from rece_lite import attacks as atk
from rece_lite import bench
from rece_lite import evaluate as ev
from rece_lite.tiny.model import build_pipeline

SOFT = dict(opt_steps=4, batch=4, targets_per_prompt=1, steps=2)  # a soft-prompt attack in seconds


@pytest.fixture
def classifier(monkeypatch):
    """The shipped shape CNN where it exists, else a seeded random one (same architecture)."""
    if not ev.CLASSIFIER_PATH.exists():
        torch.manual_seed(0)
        net = ev.ShapeNet().eval()
        monkeypatch.setattr(ev, "shape_classifier", lambda *a, **k: net)
    return ev.shape_classifier()


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


def test_bench_writes_json_markdown_and_png(rand_pipe, classifier, tmp_path):
    before = _state(rand_pipe.unet)
    report = bench.run(
        rand_pipe, "red", seeds=[0, 1], steps=2, repeats=1, progress=False,
        esd_kw=dict(steps=2, images_per_prompt=1, sample_steps=2), soft_prompt_kw=SOFT,
    )  # fmt: skip
    assert not _changed(before, _state(rand_pipe.unet))  # the original weights are back
    assert list(report["rows"]) == list(bench.MODELS)
    for name, row in report["rows"].items():
        assert set(row["attacks"]) == set(atk.ATTACKS)
        assert 0 <= row["erasure"] <= 1 and np.isfinite(row["kid"])
        assert (row["seconds"] is None) == (name == "original")
    bench.write(report, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"bench.json", "bench.md", "bench.png"}
    assert json.loads((tmp_path / "bench.json").read_text())["rows"]["RECE"]["seconds"] > 0
    md = (tmp_path / "bench.md").read_text()
    assert md.startswith("| model | erasure ↓ | paraphrase ↓") and "| ESD-x |" in md
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_command(classifier, tmp_path, capsys):
    build_pipeline(seed=0).save_pretrained(tmp_path / "model")
    out = tmp_path / "out"
    args = ["--model", str(tmp_path / "model"), "--seeds", "2", "--steps", "2", "--repeats", "1",
            "--esd-steps", "2", "--attack-steps", "2", "--out", str(out)]  # fmt: skip
    assert bench.main(args) == 0
    assert {p.name for p in out.iterdir()} == {"bench.json", "bench.md", "bench.png"}
    assert "| RECE |" in capsys.readouterr().out
    assert bench.main(args) == 2 and "--force" in capsys.readouterr().err  # never overwrites silently
    assert bench.main(["--concept", "dog", "--out", str(tmp_path / "x")]) == 2
    assert "known concepts" in capsys.readouterr().err and not (tmp_path / "x").exists()
