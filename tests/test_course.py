"""The notebooks' helpers: claims against seed noise, checks that catch wrong answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rece_lite import course


def test_noise_is_the_binomial_standard_error():
    assert course.noise(0.5, 100) == pytest.approx(0.05)


def test_noise_of_an_extreme_share_is_not_zero():
    assert course.noise(0.0, 32) == pytest.approx(math.sqrt((1 / 32) * (31 / 32) / 32))


# --------------------------------------------------------------- strict claims
# The sample sizes the notebooks claim on (pictures per share); see the notebooks' SEEDS cells.
SIZES = (8, 16, 32, 48, 64, 128, 160, 200)
DRAWS = 4000
# Simulation slack on a 5% rate measured from DRAWS draws: three binomial standard errors.
SLACK = 3 * math.sqrt(0.05 * 0.95 / DRAWS)


def _passes(fn) -> bool:
    try:
        fn()
    except AssertionError:
        return False
    return True


def _pass_rate(n: int, p: float, **claim_kw) -> float:
    rng = np.random.default_rng(20)
    ks = rng.binomial(n, p, size=DRAWS)
    outcome = {k: _passes(lambda k=k: course.claim(k / n, n=n, quiet=True, **claim_kw)) for k in set(ks.tolist())}
    return float(np.mean([outcome[k] for k in ks.tolist()]))


def _binomial_bisect(k: int, n: int, *, upper: bool) -> float:
    """An independent oracle: the p where P(X <= k) = 5% (upper) or P(X >= k) = 5% (lower), by bisection."""
    from scipy.stats import binom

    lo, hi = 0.0, 1.0
    for _ in range(80):
        mid = (lo + hi) / 2
        tail = binom.cdf(k, n, mid) if upper else binom.sf(k - 1, n, mid)
        if upper:
            lo, hi = (mid, hi) if tail > 0.05 else (lo, mid)
        else:
            lo, hi = (lo, mid) if tail > 0.05 else (mid, hi)
    return (lo + hi) / 2


@pytest.mark.parametrize("n", SIZES)
def test_bounds_match_the_binomial_tail_found_by_bisection(n):
    for k in (1, n // 4, n // 2, n - 1):
        assert course.upper_bound(k / n, n) == pytest.approx(_binomial_bisect(k, n, upper=True), abs=1e-6)
        assert course.lower_bound(k / n, n) == pytest.approx(_binomial_bisect(k, n, upper=False), abs=1e-6)
    assert course.upper_bound(1.0, n) == 1.0 and course.lower_bound(0.0, n) == 0.0
    assert course.upper_bound(0.0, n) == pytest.approx(1 - 0.05 ** (1 / n))  # the "rule of three" exactly


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("x", (0.1, 0.2, 0.5))
def test_a_false_at_most_claim_passes_less_than_5_percent_of_the_time(n, x):
    # Just above the claimed bound is the hardest false claim to catch.
    assert _pass_rate(n, x + 0.01, at_most=x) <= 0.05 + SLACK


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("x", (0.5, 0.8, 0.9))
def test_a_false_at_least_claim_passes_less_than_5_percent_of_the_time(n, x):
    assert _pass_rate(n, x - 0.01, at_least=x) <= 0.05 + SLACK


@pytest.mark.parametrize(("n", "p", "kw"), [
    (32, 0.01, dict(at_most=0.2)),   # 4 prompts x 8 seeds: a nearly perfect erasure
    (64, 0.05, dict(at_most=0.2)),
    (128, 0.05, dict(at_most=0.15)),
    (32, 0.995, dict(at_least=0.85)),
    (64, 0.99, dict(at_least=0.9)),
    (128, 0.97, dict(at_least=0.9)),
    (8, 0.995, dict(at_least=0.6)),    # 08's prompt file: 8 pictures
    (160, 0.995, dict(at_least=0.9)),  # 02: 20 prompts x 8 seeds
    (200, 0.999, dict(at_least=0.95)), # 02: the evaluator on 200 world pictures
])  # fmt: skip
def test_a_true_claim_with_room_passes_at_the_notebooks_sizes(n, p, kw):
    assert _pass_rate(n, p, **kw) >= 0.9


def test_the_old_slack_no_longer_lets_false_claims_through():
    # The previous course.claim passed both of these (3 standard errors on the passing side).
    with pytest.raises(AssertionError, match="upper bound"):
        course.claim(13 / 32, n=32, at_most=0.2)
    with pytest.raises(AssertionError, match="lower bound"):
        course.claim(2 / 8, n=8, at_least=0.5)
    with pytest.raises(AssertionError, match="upper bound"):
        course.claim(2 / 32, n=32, at_most=0.0625)  # the measurement itself is not enough


def test_claim_prints_the_measurement_and_the_bound(capsys):
    bound = course.claim(0.0, n=32, at_most=0.2, what="still red")
    out = capsys.readouterr().out
    assert "still red" in out and "0.0% of 32" in out and f"{bound:.1%}" in out and "<= 20%" in out


def test_claim_needs_a_bound_and_a_share():
    with pytest.raises(ValueError, match="at_most"):
        course.claim(0.5, n=10)
    with pytest.raises(ValueError, match="share"):
        course.claim(float("nan"), n=10, at_most=0.5)
    with pytest.raises(ValueError, match="n must be"):
        course.claim(0.5, n=0, at_most=0.5)


def _differ_rate(n: int, pa: float, pb: float) -> float:
    rng = np.random.default_rng(21)
    ka, kb = rng.binomial(n, pa, size=DRAWS), rng.binomial(n, pb, size=DRAWS)
    return float(np.mean([_passes(lambda a=a, b=b: course.differ(a / n, b / n, n_a=n, n_b=n, quiet=True))
                          for a, b in zip(ka.tolist(), kb.tolist())]))  # fmt: skip


@pytest.mark.parametrize("n", (16, 32, 64))
@pytest.mark.parametrize("p", (0.1, 0.5, 0.9))
def test_differ_between_equal_shares_passes_about_5_percent_of_the_time(n, p):
    assert _differ_rate(n, p, p) <= 0.05 + SLACK


@pytest.mark.parametrize(("n", "pa", "pb"), [(16, 0.9, 0.2), (32, 0.8, 0.4), (64, 0.5, 0.2)])
def test_differ_finds_a_real_difference_at_the_notebooks_sizes(n, pa, pb):
    assert _differ_rate(n, pa, pb) >= 0.8


def test_differ_refuses_the_wrong_direction_and_prints_its_bound(capsys):
    lo = course.differ(0.9, 0.1, n_a=32, n_b=32, what="UCE lowers red")
    assert 0 < lo < 0.8 and "UCE lowers red" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="not supported"):
        course.differ(0.55, 0.45, n_a=32, n_b=32)
    with pytest.raises(AssertionError, match="not supported"):
        course.differ(0.1, 0.9, n_a=32, n_b=32)


def test_claim_seeds_are_held_out():
    assert set(course.claim_seeds(8)).isdisjoint(range(8)) and min(course.claim_seeds(4, offset=8)) == 108
    with pytest.raises(ValueError):
        course.claim_seeds(0)


def test_check_close_catches_a_wrong_answer():
    course.check_close(np.array([1.0, 2.0]), np.array([1.0, 2.0]))
    with pytest.raises(AssertionError, match="is off"):
        course.check_close(np.array([1.0, 2.1]), np.array([1.0, 2.0]))


def test_check_close_catches_a_wrong_shape():
    with pytest.raises(AssertionError, match="shape"):
        course.check_close(np.zeros(3), np.zeros(2))


def test_an_unanswered_exercise_does_not_fail(capsys):
    course.check_close(None, 1.0, what="the rank")
    assert "not answered yet" in capsys.readouterr().out


def test_check_function_compares_on_every_case():
    course.check_function(lambda x: x * 2, lambda x: x + x, [(1.0,), (np.arange(3.0),)])
    with pytest.raises(AssertionError):
        course.check_function(lambda x: x * 2, lambda x: x * 3, [(1.0,)])


def test_check_choice_ignores_case_and_spaces():
    course.check_choice(" Values ", "values")
    with pytest.raises(AssertionError):
        course.check_choice("keys", "values")


def test_say_formats_numbers_from_variables(capsys):
    assert course.say("{x:.0%} still red", x=0.125) == "12% still red"


def test_predict_compares_without_raising(capsys):
    assert course.predict(None, 0.5) is None and "not answered yet" in capsys.readouterr().out
    assert course.predict(0.5, None) is None
    assert course.predict(0.5, 0.52) is True
    assert course.predict(0.1, 0.9) is False and "not as predicted" in capsys.readouterr().out
    assert course.predict("Smaller ", "smaller") is True


def test_check_answer_uses_the_answer_key():
    course.check_answer("03.4", "smaller")
    with pytest.raises(AssertionError):
        course.check_answer("03.4", "larger")
    with pytest.raises(KeyError, match="no exercise"):
        course.check_answer("99.9", 1)

    class Labels:
        colours = ["grey", "grey", "blue"]

    course.check_answer("03.1", "grey", labels=Labels())
    with pytest.raises(AssertionError):
        course.check_answer("03.1", "blue", labels=Labels())
