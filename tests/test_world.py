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


# --------------------------------------------------------------- grey and two objects
def test_grey_is_the_neutral_colour_with_synonyms():
    assert world.NEUTRAL == "grey"
    assert ev.concept_of("gray") == ("colour", "grey")


def test_grey_renders_are_judged_grey():
    rng = np.random.default_rng(5)
    imgs = np.stack([world.render(s % 4, world.COLOURS.index("grey"), rng).image for s in range(200)])
    assert np.mean([c == "grey" for c in ev.classify_colour(imgs)]) >= 0.99


def test_two_object_scenes_do_not_overlap():
    sc = world.generate_scenes(200, seed=2, two_object_rate=1.0)
    assert float((sc.masks[:, 0] * sc.masks[:, 1]).max()) == 0.0


def test_two_objects_differ_in_colour_and_shape():
    sc = world.generate_scenes(200, seed=2, two_object_rate=1.0)
    assert (sc.shapes[:, 0] != sc.shapes[:, 1]).all()
    assert (sc.colours[:, 0] != sc.colours[:, 1]).all()


def test_the_two_object_rate_is_honoured():
    sc = world.generate_scenes(1000, seed=3, two_object_rate=0.3)
    assert 0.25 < float(np.mean(sc.objects == 2)) < 0.35


def test_scenes_are_deterministic_per_seed():
    a = world.generate_scenes(30, seed=4, two_object_rate=0.5)
    b = world.generate_scenes(30, seed=4, two_object_rate=0.5)
    assert np.array_equal(a.images, b.images)


def test_pair_captions_name_both_objects_in_either_order():
    rng = np.random.default_rng(0)
    caps = [world.pair_caption((0, 1), (0, 2), rng, synonym_rate=0.0, empty_rate=0.0) for _ in range(200)]
    assert all("red circle" in c and "blue square" in c for c in caps)
    assert {c.index("red") < c.index("blue") for c in caps} == {True, False}


def test_every_caption_word_is_in_the_vocabulary():
    sc = world.generate_scenes(300, seed=6, two_object_rate=0.5)
    rng = np.random.default_rng(1)
    caps = [world.scene_caption(s, c, rng) for s, c in zip(sc.shapes, sc.colours)]
    tok = tm.build_tokenizer()
    ids = tok(caps, padding="max_length", max_length=tm.MAX_LENGTH, truncation=True).input_ids
    assert all(tok.unk_token_id not in row for row in ids)


def test_the_longest_caption_fits_the_tokenizer():
    longest = "a photo of a scarlet starburst and a emerald pentagram"
    assert len(tm.build_tokenizer()(longest).input_ids) <= tm.MAX_LENGTH


def test_find_objects_reads_clean_two_object_scenes():
    sc = world.generate_scenes(300, seed=7, two_object_rate=1.0)
    found = ev.find_objects(sc.images)
    right = [
        {(o.colour, o.shape) for o in objs}
        == {(world.COLOURS[c], world.SHAPES[s]) for s, c in zip(sc.shapes[i], sc.colours[i])}
        for i, objs in enumerate(found)
    ]
    assert np.mean(right) >= 0.98


def test_find_objects_sees_nothing_in_a_blank_picture():
    assert ev.find_objects(np.full((2, 32, 32, 3), 240, np.uint8)) == [[], []]


def test_concept_prompts_come_from_the_parsed_concept():
    c = world.Concept.parse("crimson")
    assert (c.kind, c.name, c.word) == ("colour", "red", "crimson")
    assert c.prompts()[0] == "a red circle"
    assert "a red circle" not in c.other_prompts()[0]
