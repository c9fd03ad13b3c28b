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


def test_claim_passes_within_noise_and_fails_beyond_it():
    course.claim(0.12, n=64, at_most=0.10)  # 2 points over, well within 3 standard errors
    with pytest.raises(AssertionError, match="claimed at most 10%"):
        course.claim(0.50, n=64, at_most=0.10)


def test_claim_at_least_fails_below():
    with pytest.raises(AssertionError, match="claimed at least 90%"):
        course.claim(0.50, n=200, at_least=0.90)


def test_claim_needs_a_bound():
    with pytest.raises(ValueError, match="at_most"):
        course.claim(0.5, n=10)


def test_differ_refuses_a_difference_inside_noise():
    course.differ(0.9, 0.1, n_a=32, n_b=32)
    with pytest.raises(AssertionError, match="within seed noise"):
        course.differ(0.55, 0.45, n_a=32, n_b=32)


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
