"""The miniature model's report: its confidence bounds, its targets and its arguments."""

from __future__ import annotations

import math

import pytest

from rece_lite.tiny import report


def test_wilson_bounds_bracket_the_share_and_tighten_with_n():
    for share in (0.0, 0.3, 1.0):
        lo, hi = report.wilson(share, 64, upper=False), report.wilson(share, 64, upper=True)
        assert 0.0 <= lo <= share <= hi <= 1.0
    assert report.wilson(1.0, 320, upper=False) > report.wilson(1.0, 64, upper=False)
    # closed form at share 1: n / (n + z^2)
    assert report.wilson(1.0, 320, upper=False) == pytest.approx(320 / (320 + report.Z95**2))
    assert math.isnan(report.wilson(0.5, 0, upper=True))


def test_a_share_target_is_met_only_by_its_bound():
    assert report.Target("x", 1.0, 0.98, n=320).met  # lower bound 99.2%
    assert not report.Target("x", 1.0, 0.98, n=64).met  # lower bound 95.9%
    assert report.Target("x", 0.0, 0.05, at_least=False, n=64).met  # upper bound 4.1%
    assert not report.Target("x", 0.0, 0.05, at_least=False, n=32).met
    assert report.Target("t", 0.7, 3.0, at_least=False, unit="seconds").met  # not a share: the value itself


def _run(concept, kind, guide, method="uce"):
    return {"concept": concept, "kind": kind, "method": method, "context": bool(guide), "guide": guide,
            "showing": 0.0, "n_showing": 64, "shape_kept_worst": 1.0, "n_per_shape": 64, "grey": 1.0, "n": 320,
            "colour_kept": 1.0, "preservation": 1.0, "derived_showing": 1.0, "n_derived": 64}  # fmt: skip


def test_each_alignment_target_names_its_guide():
    out = {k: {"both": 1.0, "n": 320} for k in ("named", "synonyms", "grey")}
    out["seconds_for_16_images"] = 1.0
    out["alignment"] = [_run("red", "colour", ("grey", "something grey")), _run("square", "shape", ("circle",)),
                        _run("circle", "shape", "")]  # fmt: skip
    whats = [t.what for t in report.targets(out)]
    assert "UCE red in context -> grey: named prompts still showing it" in whats
    assert "UCE square in context -> circle: the colour kept" in whats
    assert 'UCE circle -> "": named prompts still showing it' in whats


@pytest.mark.parametrize("argv", [["--seeds", "0"], ["--first-seed", "-1"], ["--erase", "purple"]])
def test_bad_arguments_are_refused(argv):
    with pytest.raises(SystemExit):
        report.main(argv)
