"""The generated world and the evaluator."""

from __future__ import annotations

import numpy as np
import pytest

from rece_lite import evaluate as ev
from rece_lite.tiny import model as tm
from rece_lite.tiny import world


def test_generator_is_deterministic_per_seed():
    a, b, c = world.generate(20, seed=3), world.generate(20, seed=3), world.generate(20, seed=4)
    for x, y in zip(a, b):
        assert np.array_equal(x, y)
    assert not np.array_equal(a[0], c[0])
    rng1, rng2 = np.random.default_rng(1), np.random.default_rng(1)
    assert [world.caption(1, 2, rng1) for _ in range(30)] == [world.caption(1, 2, rng2) for _ in range(30)]


def test_captions_mix_full_partial_empty_and_synonyms():
    rng = np.random.default_rng(0)
    caps = [world.caption(0, 0, rng) for _ in range(2000)]
    empty = np.mean([c == "" for c in caps])
    assert 0.07 < empty < 0.13
    assert any("crimson" in c or "scarlet" in c for c in caps)
    assert any(c in ("a circle", "a photo of a circle") for c in caps)
    tok = tm.build_tokenizer()
    ids = tok(caps, padding="max_length", max_length=tm.MAX_LENGTH, truncation=True).input_ids
    unk = tok.convert_tokens_to_ids(tm.UNK)
    assert all(unk not in row for row in ids), "every caption word is in the vocabulary"


def test_masks_cover_the_object():
    imgs, masks, _, _ = world.generate(50, seed=1)
    assert masks.min() >= 0 and masks.max() <= 1
    assert (masks.sum((1, 2)) > 20).all()
    dark = imgs.astype(float).min(-1) < 150  # object pixels are saturated, the background light
    inside = (dark & (masks > 0.9)).sum() / max(1, (masks > 0.9).sum())
    assert inside > 0.6


def test_colour_rule_is_accurate_on_clean_renders():
    imgs, _, _, colours = world.generate(1000, seed=11)
    got = ev.classify_colour(imgs)
    assert np.mean([g == world.COLOURS[c] for g, c in zip(got, colours)]) >= 0.99
    blank = np.full((4, 32, 32, 3), 240, np.uint8)
    assert ev.classify_colour(blank) == ["none"] * 4


def test_shape_cnn_is_accurate_on_clean_and_degraded_renders():
    import torch

    imgs, _, shapes, _ = world.generate(1000, seed=12)
    got = ev.classify_shape(imgs)
    assert np.mean([g == world.SHAPES[s] for g, s in zip(got, shapes)]) >= 0.99
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float() / 255
    noisy = ev.augment(x, torch.Generator().manual_seed(0)).permute(0, 2, 3, 1).numpy()
    got = ev.classify_shape(noisy)
    assert np.mean([g == world.SHAPES[s] for g, s in zip(got, shapes)]) >= 0.95


def test_concept_names_and_synonyms():
    assert ev.concept_of("crimson") == ("colour", "red")
    assert ev.concept_of("orb") == ("shape", "circle")
    with pytest.raises(ValueError, match="known concepts"):
        ev.concept_of("dog")
