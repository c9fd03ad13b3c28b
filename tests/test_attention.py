"""Cross-attention recording: faithful (images unchanged), correct (distributions of the
conditional branch), tidy (processors restored), small (bytes as stated), strict about its
arguments, placed on the right device; and word maps and mass measurements with known answers."""

from __future__ import annotations

import json
import signal
from contextlib import contextmanager
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from transformers import CLIPTokenizer

import rece_lite
from rece_lite import viz
from rece_lite.attention import (
    SD14_RESOLUTIONS,
    AttentionStore,
    RecordingProcessor,
    attention_mass_on,
    generate_with_attention,
    mass_per_area,
    mass_ratio,
    record_attention,
    store_size,
    word_spans,
)
from rece_lite.tiny.model import build_pipeline
from rece_lite.tiny.tokenizer import build_tokenizer

PROMPT = "a red circle"
T = 16  # the miniature tokenizer's model_max_length


def run(pipe, prompt=PROMPT, steps=2, seed=0, **kwargs):
    g = torch.Generator().manual_seed(seed)
    return pipe(prompt, num_inference_steps=steps, generator=g, output_type="np", **kwargs).images


def processors(pipe) -> dict:
    return dict(pipe.unet.attn_processors)


def same_objects(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k] is b[k] for k in a)


@contextmanager
def returns_within(seconds: float):
    """Turns a hang into a TimeoutError (the old recorder looped forever on max_resolution=0)."""
    if not hasattr(signal, "SIGALRM"):
        yield
        return

    def give_up(*_):
        raise TimeoutError(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, give_up)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline(seed=0)


@pytest.fixture(scope="module")
def recorded(pipe):
    with record_attention(pipe, dtype=torch.float32) as store:
        run(pipe)
    return store


# ------------------------------------------------------------------ recording
def test_every_step_is_recorded(recorded):
    assert recorded.steps == [0, 1]


def test_the_store_counts_the_steps_the_pipeline_ran(recorded):
    assert recorded.num_steps == 2


def test_maps_are_distributions_over_tokens(recorded):
    for layer in recorded.layers:
        for step in recorded.steps:
            m = recorded.raw(layer, step)  # (images, K, T, H, W)
            assert m.shape[:3] == (1, 1, T)
            torch.testing.assert_close(m.sum(2), torch.ones_like(m.sum(2)), atol=1e-5, rtol=0)


def test_maps_per_head_pooled_in_float16_are_still_distributions(pipe):
    with record_attention(pipe, heads="all", max_resolution=4) as store:
        run(pipe, steps=1)
    for layer in store.layers:
        m = store.raw(layer, 0).float()
        assert m.shape == (1, 2, T, 4, 4)  # 2 heads; 8 x 8 layers pooled to 4 x 4
        torch.testing.assert_close(m.sum(2), torch.ones_like(m.sum(2)), atol=2e-3, rtol=0)
    torch.testing.assert_close(store.token_maps().sum(0), torch.ones(4, 4), atol=2e-3, rtol=0)


def maps_at_step_0(pipe, prompt, **kwargs):
    with record_attention(pipe, steps=[0], dtype=torch.float32, images=kwargs.pop("images", 1)) as store:
        run(pipe, prompt, steps=1, **kwargs)
    return store, torch.stack([store.raw(n, 0) for n in store.layers if store.resolution(n) == (8, 8)])


def test_records_the_conditional_branch(pipe):
    """At step 0 both branches see the same latents, so the cond half of a guided run
    must match an unguided run of the prompt, and not one of the empty prompt."""
    _, guided = maps_at_step_0(pipe, PROMPT, guidance_scale=7.5)
    _, cond = maps_at_step_0(pipe, PROMPT, guidance_scale=1.0)
    _, uncond = maps_at_step_0(pipe, "", guidance_scale=1.0)
    torch.testing.assert_close(guided, cond, atol=1e-5, rtol=1e-4)
    assert (guided - uncond).abs().max() > 1e-3


def test_records_the_first_images_of_the_batch(pipe):
    """The batch is [uncond 0, uncond 1, cond 0, cond 1]; the first picture's latents are
    the one-picture run's (same seed), so its maps are too."""
    _, one = maps_at_step_0(pipe, PROMPT, guidance_scale=7.5)
    store, two = maps_at_step_0(pipe, PROMPT, guidance_scale=7.5, images=2, num_images_per_prompt=2)
    assert two.shape[1] == 2
    torch.testing.assert_close(two[:, :1], one, atol=1e-5, rtol=1e-4)
    assert (store.token_maps(image=1) - store.token_maps(image=0)).abs().max() > 1e-4


def test_recording_leaves_images_bit_identical(pipe):
    before = run(pipe, steps=3)
    with record_attention(pipe, heads="all", max_resolution=None, dtype=torch.float32) as store:
        during = run(pipe, steps=3)
    after = run(pipe, steps=3)
    assert store.steps == [0, 1, 2]
    assert np.array_equal(before, during)
    assert np.array_equal(before, after)


def test_processors_restored_after_an_exception(pipe):
    unet = pipe.unet
    before = processors(pipe)
    hooks = len(unet._forward_pre_hooks)
    with pytest.raises(RuntimeError, match="boom"):
        with record_attention(pipe):
            now = processors(pipe)
            for key, proc in now.items():
                if ".attn2." in key:
                    assert isinstance(proc, RecordingProcessor)
                    assert proc.inner is before[key]
                else:
                    assert proc is before[key]  # self-attention untouched
            raise RuntimeError("boom")
    assert same_objects(processors(pipe), before)
    assert len(unet._forward_pre_hooks) == hooks


def test_layers_run_down_mid_up(recorded):
    kinds = [name.split(".")[0] for name in recorded.layers]
    assert kinds == ["down_blocks"] * 2 + ["mid_block"] + ["up_blocks"] * 4


def test_token_maps_come_at_the_largest_resolution_and_sum_to_one(recorded):
    assert recorded.token_maps().shape == (T, 8, 8)
    torch.testing.assert_close(recorded.token_maps().sum(0), torch.ones(8, 8), atol=1e-5, rtol=0)


def test_token_maps_come_back_on_the_cpu_by_default(recorded):
    assert recorded.token_maps().device == torch.device("cpu")


def test_a_layer_is_chosen_by_index_name_or_prefix(recorded):
    s, mid = recorded, recorded.layers[2]
    assert s.resolution(mid) == (4, 4)
    assert s.token_maps(layer=mid).shape == (T, 4, 4)
    torch.testing.assert_close(s.token_maps(layer=2), s.token_maps(layer=mid))
    torch.testing.assert_close(s.token_maps(layer="mid_block"), s.token_maps(layer=mid))
    assert s.token_maps(layer="up_blocks").shape == (T, 8, 8)


def test_token_maps_average_steps(recorded):
    s = recorded
    one = s.token_maps(layer=0, step=1)
    torch.testing.assert_close(one, s.raw(0, 1)[0, 0].float())
    torch.testing.assert_close(s.token_maps(step=-1), s.token_maps(step=1))
    torch.testing.assert_close(s.token_maps(layer=0), (s.token_maps(layer=0, step=0) + one) / 2)


def test_tokens_of_a_prompt(recorded):
    assert recorded.tokens(PROMPT)[:5] == ["<|startoftext|>", "a", "red", "circle", "<|endoftext|>"]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(layer="attn9"), ValueError, "no cross-attention layer is called 'attn9'"),
        (dict(layer=7), IndexError, "out of range"),
        (dict(layer=[]), ValueError, "layer is empty"),
        (dict(step=5), ValueError, "step 5 was not recorded"),
        (dict(step=[]), ValueError, "step is empty"),
        (dict(head=0), ValueError, "heads='all'"),
    ],
)
def test_reading_refuses_what_was_not_recorded(recorded, kwargs, error, message):
    with pytest.raises(error, match=message):
        recorded.token_maps(**kwargs)


def test_layers_and_steps_chosen_when_recording(pipe):
    with record_attention(pipe, layers=[0, "mid_block"], steps=[-1]) as store:
        run(pipe, steps=3)
    assert len(store.layers) == 2
    assert store.layers[1].startswith("mid_block")
    assert store.steps == [2]
    assert store.num_steps == 3
    assert store.token_maps().shape == (T, 8, 8)


def test_store_size_matches_the_stated_bound(pipe, recorded):
    assert store_size(SD14_RESOLUTIONS, tokens=77, steps=50) == 89_196_800  # the module docstring's number
    sides = [recorded.resolution(n) for n in recorded.layers]
    assert recorded.nbytes == store_size(sides, tokens=T, steps=2, dtype=torch.float32)
    with record_attention(pipe) as store:  # defaults: float16, heads averaged
        run(pipe)
    assert store.nbytes == store_size(sides, tokens=T, steps=2)
    assert store.nbytes == recorded.nbytes // 2


def test_two_calls_in_one_block_are_averaged(pipe):
    with record_attention(pipe, dtype=torch.float32) as both:
        run(pipe, seed=0)
        run(pipe, seed=1)
    singles = []
    for seed in (0, 1):
        with record_attention(pipe, dtype=torch.float32) as one:
            run(pipe, seed=seed)
        singles.append(one)
    assert both.steps == [0, 1]
    assert {c for per in both.counts.values() for c in per.values()} == {2}
    expected = (singles[0].token_maps(layer=0, step=1) + singles[1].token_maps(layer=0, step=1)) / 2
    torch.testing.assert_close(both.token_maps(layer=0, step=1), expected, atol=1e-6, rtol=0)


def test_the_store_knows_the_picture_size(pipe, recorded):
    assert recorded.image_size == (32, 32)  # 8 x 8 latents, an f = 4 VAE


# ------------------------------------------------------------------ bad arguments
@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_resolution=0), "max_resolution"),  # hung forever
        (dict(max_resolution=-4), "max_resolution"),  # hung forever
        (dict(max_resolution=2.5), "max_resolution"),
        (dict(layers=[]), "layers is empty"),  # recorded nothing, silently
        (dict(layers=[1.5]), "layers must name layers"),
        (dict(steps=5), r"steps=\[5\] records step 5 only"),  # TypeError: 'int' object is not iterable
        (dict(steps=[]), "steps is empty"),
        (dict(steps=[0.5]), "steps must hold whole-number step indices"),
        (dict(steps="0"), "steps must be a list"),
        (dict(heads="x"), "heads must be 'mean'"),
        (dict(images=0), "images must be a whole number ≥ 1"),
        (dict(images=1.5), "images must be a whole number ≥ 1"),
        (dict(dtype=torch.int64), "dtype must be a floating-point"),  # stored every map as zeros
        (dict(dtype="float16"), "dtype must be a floating-point"),
        (dict(device="gpu0"), "device must be a torch device"),
    ],
)
def test_bad_arguments_are_refused_before_the_model_is_touched(pipe, kwargs, message):
    before = processors(pipe)
    with returns_within(30), pytest.raises(ValueError, match=message):
        with record_attention(pipe, **kwargs):
            run(pipe, steps=1)
    assert same_objects(processors(pipe), before)


def test_something_that_is_not_a_pipeline_is_refused():
    with pytest.raises(ValueError, match="pipe must be a Stable Diffusion pipeline"):
        with record_attention(object()):
            pass


@pytest.mark.parametrize("steps", [[0, 5], [-3]])
def test_steps_the_pipeline_never_ran_are_an_error(pipe, steps):
    before = processors(pipe)
    with pytest.raises(ValueError, match="were never run: the pipeline ran 2 steps"):
        with record_attention(pipe, steps=steps):
            run(pipe, steps=2)
    assert same_objects(processors(pipe), before)


@pytest.mark.parametrize("max_resolution", [0, -4])
def test_store_size_refuses_a_max_resolution_below_one(max_resolution):
    with returns_within(5), pytest.raises(ValueError, match="max_resolution"):
        store_size([8], tokens=T, steps=1, max_resolution=max_resolution)


# ------------------------------------------------------------------ devices
def test_the_device_check_sees_a_tensor_created_without_a_device(unnamed_devices):
    with unnamed_devices(under=Path(__file__).resolve().parent) as check:
        torch.zeros(2)
    assert len(check.calls) == 1


def test_the_device_check_lets_a_tensor_with_a_device_pass(unnamed_devices):
    with unnamed_devices(under=Path(__file__).resolve().parent) as check:
        torch.zeros(2, device="cpu")
    assert check.calls == []


def test_recording_and_reading_name_the_device_of_every_tensor_they_create(pipe, unnamed_devices):
    mask = np.zeros((32, 32), bool)
    mask[:, :16] = True
    with unnamed_devices() as check:
        rec = generate_with_attention(pipe, PROMPT, num_inference_steps=2)
        heat = rec.word_map("red")
        rec.store.token_maps(layer="up_blocks", step=-1)
        store_size(SD14_RESOLUTIONS, tokens=77, steps=1)
        attention_mass_on(heat, mask)
        mass_per_area(heat, mask)
        mass_ratio(heat, mask, ~mask)
        viz.overlay(rec.image, heat)
    plt.close("all")
    assert check.calls == []


# ------------------------------------------------------------------ words
@pytest.fixture(scope="module")
def words():
    return build_tokenizer()


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """A real CLIP BPE tokenizer over a small made-up vocabulary: "rococo" is two tokens."""
    folder = tmp_path_factory.mktemp("bpe")
    letters = "abcdefghijklmnopqrstuvwxyz"
    pieces = [*letters, *(c + "</w>" for c in letters), "re", "red</w>", "ro", "roc", "oc", "oco</w>"]
    vocab = {p: i for i, p in enumerate([*pieces, "<|startoftext|>", "<|endoftext|>"])}
    merges = ["r e", "re d</w>", "r o", "ro c", "o c", "oc o</w>"]
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
    return CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), model_max_length=12)


def test_a_word_is_found_at_its_token(words):
    assert word_spans(words, "a red circle", "red") == [range(2, 3)]


def test_every_occurrence_of_a_word_is_found(words):
    assert word_spans(words, "a red circle and a red square", "red") == [range(2, 3), range(6, 7)]


def test_a_phrase_is_one_span_of_several_tokens(words):
    assert word_spans(words, "a red circle", "red circle") == [range(2, 4)]


def test_a_word_that_bpe_splits_is_one_span_of_its_pieces(bpe):
    assert bpe.tokenize("a red rococo") == ["a</w>", "red</w>", "roc", "oco</w>"]  # the premise
    assert word_spans(bpe, "a red rococo", "rococo") == [range(3, 5)]


def test_a_word_is_not_found_inside_a_longer_word(bpe):
    with pytest.raises(ValueError, match="'red' is not in the prompt 'a reddish rococo'"):
        word_spans(bpe, "a reddish rococo", "red")


@pytest.mark.parametrize(
    "word, message",
    [("blue", "'blue' is not in the prompt"), ("rococo", "does not know 'rococo'"), ("", "word must be")],
)
def test_words_that_cannot_be_found_are_refused(words, word, message):
    with pytest.raises(ValueError, match=message):
        word_spans(words, "a red circle", word)


# A hand-made store: two layers (4 x 4 and 2 x 2), two steps, T = 16 tokens of the
# miniature tokenizer; every pixel's attention that is not given to a word goes to <start>.
TWICE = "a red circle and a red square"  # "red" at 2 and 6
DOWN = "down_blocks.0.attentions.0.transformer_blocks.0.attn2"


def made_store(tokenizer, probs_of, image_size=(8, 8)) -> AttentionStore:
    """probs_of(layer, step) -> {token: (H, W) probabilities}; the rest goes to token 0."""
    layers = [DOWN, "mid_block.attentions.0.transformer_blocks.0.attn2"]
    store = AttentionStore(layers, dtype=torch.float32, tokenizer=tokenizer, image_size=image_size)
    for layer, side in zip(layers, (4, 2)):
        for step in (0, 1):
            p = torch.zeros(T, side, side, dtype=torch.float64)
            for token, m in probs_of(layer, step).items():
                p[token] = torch.as_tensor(m, dtype=torch.float64)
            p[0] = 1 - p[1:].sum(0)
            store.add(layer, step, p.float().flatten(1).T[None, None], (side, side))  # (1, 1, H·W, T)
    return store


def left_half(value, side=4):
    m = np.zeros((side, side))
    m[:, : side // 2] = value
    return m


@pytest.fixture(scope="module")
def known(words):
    """ "red" (2) on the left of the 4 x 4 layer: 0.5 at step 0, 0.3 at step 1; 0.25 everywhere on
    the 2 x 2 layer.  The second "red" (6): 0.1 everywhere; "circle" (3): 0.2 everywhere."""

    def probs_of(layer, step):
        if layer.startswith("down"):
            return {2: left_half(0.5 if step == 0 else 0.3), 3: np.full((4, 4), 0.2), 6: np.full((4, 4), 0.1)}
        return {2: np.full((2, 2), 0.25), 3: np.full((2, 2), 0.2), 6: np.full((2, 2), 0.1)}

    return made_store(words, probs_of)


def test_a_word_map_averages_steps_and_layers(known):
    # left: (mean(0.5, 0.3) + 0.25) / 2 = 0.325; right: (0 + 0.25) / 2 = 0.125
    expected = torch.tensor(left_half(0.2) + 0.125, dtype=torch.float32)
    torch.testing.assert_close(known.word_map("red", TWICE, occurrence=0, size=4), expected)


def test_a_word_map_of_one_step_and_layer_is_that_map(known):
    torch.testing.assert_close(
        known.word_map("red", TWICE, occurrence=0, layer=0, step=1, size=4),
        torch.tensor(left_half(0.3), dtype=torch.float32),
    )


def test_the_occurrences_of_a_word_are_addressed_by_number(known):
    torch.testing.assert_close(known.word_map("red", TWICE, occurrence=1, size=4), torch.full((4, 4), 0.1))


def test_a_negative_occurrence_counts_from_the_end(known):
    torch.testing.assert_close(known.word_map("red", TWICE, occurrence=-1, size=4), torch.full((4, 4), 0.1))


def test_all_occurrences_of_a_word_are_summed_by_default(known):
    expected = torch.tensor(left_half(0.2) + 0.225, dtype=torch.float32)
    torch.testing.assert_close(known.word_map("red", TWICE, size=4), expected)


def test_a_phrase_sums_its_words(known):
    expected = torch.tensor(left_half(0.2) + 0.325, dtype=torch.float32)
    torch.testing.assert_close(known.word_map("red circle", TWICE, size=4), expected)


def test_a_word_map_comes_at_the_picture_size(known):
    assert known.word_map("circle", TWICE).shape == (8, 8)


def test_upsampling_keeps_the_map_s_values(known):
    up = known.word_map("red", TWICE, occurrence=0)  # 4 x 4 -> 8 x 8, bilinear
    torch.testing.assert_close(up[:, :2], torch.full((8, 2), 0.325))
    torch.testing.assert_close(up[:, -2:], torch.full((8, 2), 0.125))


def test_an_occurrence_that_is_not_there_is_refused(known):
    with pytest.raises(ValueError, match="occurrence 2 is out of range: 'red' occurs 2 time"):
        known.word_map("red", TWICE, occurrence=2)


def test_a_store_without_a_tokenizer_cannot_find_words(known):
    store = AttentionStore(known.layers)
    with pytest.raises(ValueError, match="tokenizer"):
        store.word_map("red", PROMPT)


def test_a_word_bpe_splits_sums_its_pieces(bpe):
    # "a red rococo": roc (3) 0.1 everywhere, oco (4) 0.3 on the left
    store = AttentionStore([DOWN], dtype=torch.float32, tokenizer=bpe)
    p = torch.zeros(12, 4, 4)
    p[3], p[4] = 0.1, torch.tensor(left_half(0.3), dtype=torch.float32)
    p[0] = 1 - p[1:].sum(0)
    store.add(store.layers[0], 0, p.flatten(1).T[None, None], (4, 4))
    expected = torch.tensor(left_half(0.3) + 0.1, dtype=torch.float32)
    torch.testing.assert_close(store.word_map("rococo", "a red rococo"), expected)


# ------------------------------------------------------------------ mass on an object
LEFT = np.zeros((32, 32), bool)
LEFT[:, :16] = True
CORNER = np.zeros((32, 32), bool)
CORNER[:8, :8] = True  # a 16th of the picture: one pixel of a 4 x 4 map


def test_a_uniform_map_has_mass_per_area_one():
    assert mass_per_area(torch.ones(4, 4), CORNER) == pytest.approx(1.0)


def test_a_map_all_on_the_object_has_mass_per_area_one_over_its_area():
    heat = torch.zeros(4, 4)
    heat[0, 0] = 1.0
    assert mass_per_area(heat, CORNER) == pytest.approx(16.0)


def test_mass_per_area_counts_a_partly_covered_pixel_by_its_coverage():
    quarter = np.zeros((32, 32), bool)
    quarter[:4, :4] = True  # a quarter of one map pixel
    heat = torch.zeros(4, 4)
    heat[0, 0] = 1.0
    assert mass_per_area(heat, quarter) == pytest.approx(0.25 / (16 / 1024))


def test_mass_ratio_compares_two_objects():
    heat = torch.tensor(left_half(3.0) + 1.0)  # 4 on the left half, 1 on the right
    assert mass_ratio(heat, LEFT, ~LEFT) == pytest.approx(4.0)


def test_the_mass_on_an_object():
    heat = torch.tensor(left_half(1.0), dtype=torch.float32)
    assert attention_mass_on(heat, LEFT) == pytest.approx(1.0)


def test_the_mass_of_a_uniform_map_on_half_the_picture():
    assert attention_mass_on(torch.ones(4, 4), LEFT) == pytest.approx(0.5)


def test_mass_per_area_takes_arrays_and_float16_maps():
    assert mass_per_area(left_half(1.0).astype(np.float16), LEFT) == pytest.approx(2.0)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: attention_mass_on(torch.ones(T, 4, 4), LEFT), r"heat must be one \(H, W\) map"),
        (lambda: mass_per_area(torch.ones(4, 4), np.zeros((32, 32), bool)), "mask covers no pixel"),
        (lambda: mass_per_area(torch.zeros(4, 4), LEFT), "no attention mass"),
        (lambda: mass_per_area(-torch.ones(4, 4), LEFT), "≥ 0"),
        (lambda: mass_per_area(torch.ones(4, 4), LEFT * 2.0), r"coverage in \[0, 1\]"),
        (lambda: mass_ratio(torch.tensor(left_half(1.0)), LEFT, ~LEFT), "no mass on `other`"),
    ],
)
def test_measurements_refuse_what_they_cannot_measure(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# ------------------------------------------------------------------ the miniature model
@pytest.fixture(scope="module")
def tiny_recording():
    tiny = rece_lite.load_pipeline("tiny", device="cpu")
    return generate_with_attention(tiny, "a red circle and a blue square", num_inference_steps=4)


def test_a_word_map_of_the_miniature_model_covers_its_picture(tiny_recording):
    assert tiny_recording.word_map("red").shape == np.asarray(tiny_recording.image).shape[:2]


def test_a_word_map_of_the_miniature_model_is_a_share_of_attention(tiny_recording):
    heat = tiny_recording.word_map("red")
    assert 0 <= float(heat.min()) <= float(heat.max()) <= 1


def test_the_words_of_a_prompt_add_up(tiny_recording):
    rec = tiny_recording
    both = rec.word_map("red") + rec.word_map("circle")
    torch.testing.assert_close(rec.word_map("red circle"), both, atol=1e-6, rtol=0)


def test_the_words_and_the_other_tokens_share_all_the_attention(tiny_recording):
    rec = tiny_recording
    words = {"a", "red", "circle", "and", "blue", "square"}
    rows = {i for w in words for span in word_spans(rec.store.tokenizer, rec.prompt, w) for i in span}
    maps = rec.store.token_maps()
    rest = maps[[i for i in range(len(maps)) if i not in rows]].sum(0)  # <start>, <end>, padding
    rest = torch.nn.functional.interpolate(rest[None, None], size=rec.store.image_size, mode="bilinear")[0, 0]
    total = sum(rec.word_map(w) for w in words) + rest
    torch.testing.assert_close(total, torch.ones_like(total), atol=2e-3, rtol=0)  # float16 storage


def test_a_word_map_on_the_whole_picture_has_mass_per_area_one(tiny_recording):
    whole = np.ones(tiny_recording.word_map("blue").shape, bool)
    assert mass_per_area(tiny_recording.word_map("blue"), whole) == pytest.approx(1.0)


# ------------------------------------------------------------------ SD 1.4 shapes
@pytest.fixture(scope="module")
def sd14_recording():
    """SD 1.4's UNet and text-encoder shapes (one text layer), random weights, f = 8 VAE, PNDM."""
    from rece_lite.sd14 import random_sd14_pipeline

    pipe = random_sd14_pipeline(text_layers=1)
    with record_attention(pipe) as store:
        run(pipe, steps=2, height=64, width=64)  # 8 x 8 latents
    return pipe, store


def test_pndm_s_repeated_timestep_is_its_own_step(sd14_recording):
    pipe, store = sd14_recording
    # PNDM (SD 1.4's scheduler) repeats a timestep: 2 steps are 3 UNet calls, each its own step
    assert pipe.scheduler.timesteps[1] == pipe.scheduler.timesteps[2]
    assert store.steps == [0, 1, 2]
    assert store.num_steps == 3


def test_sd14_layers_and_resolutions(sd14_recording):
    _, store = sd14_recording
    sides = [store.resolution(n) for n in store.layers]
    assert sides == [(s // 8, s // 8) for s in SD14_RESOLUTIONS]  # 512 px: 64 x 64 latents


def test_sd14_maps_average_8_heads_over_77_tokens(sd14_recording):
    _, store = sd14_recording
    assert store.raw(0, 0).shape == (1, 1, 77, 8, 8)
    assert store.token_maps().shape == (77, 8, 8)


def test_sd14_store_size(sd14_recording):
    _, store = sd14_recording
    sides = [store.resolution(n) for n in store.layers]
    assert store.nbytes == store_size(sides, tokens=77, steps=3)
    assert store.nbytes <= store_size(SD14_RESOLUTIONS, tokens=77, steps=3)


def test_sd14_word_map_at_the_picture_size(sd14_recording):
    pipe, store = sd14_recording
    assert store.word_map("red", PROMPT).shape == (64, 64)


# ------------------------------------------------------------------ CUDA
GPU = "cuda"


@contextmanager
def exact_float32():
    """No TF32 in convolutions and matmuls while comparing with the CPU."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


@pytest.mark.cuda
def test_recording_on_cuda_matches_the_cpu(pipe):
    kw = dict(num_inference_steps=2, record=dict(dtype=torch.float32))
    on_gpu = build_pipeline(seed=0).to(GPU)  # the same weights as `pipe`
    with exact_float32():
        cpu = generate_with_attention(pipe, PROMPT, **kw)
        gpu = generate_with_attention(on_gpu, PROMPT, **kw)
    assert gpu.store.token_maps().device == torch.device("cpu")  # back on the CPU, ready to plot
    torch.testing.assert_close(gpu.store.token_maps(), cpu.store.token_maps(), atol=1e-4, rtol=0)
    torch.testing.assert_close(gpu.word_map("red"), cpu.word_map("red"), atol=1e-4, rtol=0)


@pytest.mark.cuda
def test_maps_kept_on_cuda_are_read_and_measured_there(pipe):
    on_gpu = build_pipeline(seed=0).to(GPU)
    with exact_float32():
        cpu = generate_with_attention(pipe, PROMPT, num_inference_steps=2, record=dict(dtype=torch.float32))
        gpu = generate_with_attention(
            on_gpu, PROMPT, num_inference_steps=2, record=dict(dtype=torch.float32, device=GPU)
        )
    heat = gpu.word_map("red")
    assert heat.device.type == GPU
    assert mass_per_area(heat, LEFT) == pytest.approx(mass_per_area(cpu.word_map("red"), LEFT), abs=1e-4)


@pytest.mark.cuda
def test_a_float16_pipeline_on_cuda_records_distributions():
    half = build_pipeline(seed=0).to(GPU, torch.float16)
    with record_attention(half) as store:
        run(half, steps=2)
    torch.testing.assert_close(store.token_maps().sum(0), torch.ones(8, 8), atol=5e-3, rtol=0)
