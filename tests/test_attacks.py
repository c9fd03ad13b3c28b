"""What the attacks (rece_lite.attacks) promise, checked on random-weight pipelines built in code (fast)."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import rece_lite
import rece_lite as rl
from rece_lite import attacks as atk
from rece_lite import evaluate as ev
from rece_lite.pipeline import encode, sample
from rece_lite.tiny import world
from rece_lite.tiny.model import build_pipeline

LIBRARY = Path(rece_lite.__file__).resolve().parent

FAST = dict(seeds=[0, 1], progress=False)  # two seeds per prompt, no bars
SOFT = dict(opt_steps=4, batch=4, targets_per_prompt=1, steps=2)  # a soft prompt in seconds
SHAPES = ["a circle", "a square", "a triangle", "a star"]  # the red prompts without "red"


def state_of(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(a: dict, b: dict) -> set[str]:
    return {k for k in a if not torch.equal(a[k], b[k])}


@pytest.fixture
def classifier():
    """The shipped shape CNN (loaded once, so that timings in the tests do not include it)."""
    return ev.shape_classifier()


# ------------------------------------------------------------------ words in prompts
@pytest.mark.parametrize(
    ("prompt", "word", "expected"),
    [
        ("a red circle", "red", "a circle"),
        ("a Red red circle", "red", "a circle"),  # every occurrence, any case
        ("a reddish circle", "red", "a reddish circle"),  # whole words only
        ("a painting by Van Gogh", "van gogh", "a painting by"),  # several words
        ("a red circle", "", "a red circle"),  # nothing to take out
    ],
)
def test_without_word_takes_out_whole_words(prompt, word, expected):
    assert world.without_word(prompt, word) == expected


@pytest.mark.parametrize(
    ("prompt", "word", "by", "expected"),
    [
        ("a red circle", "red", "<v1> <v2>", "a <v1> <v2> circle"),
        ("red and red", "red", "blue", "blue and red"),  # the first occurrence only
        ("a blue circle", "red", "x", "a blue circle"),  # no occurrence: unchanged
        ("by Van Gogh", "van gogh", "x", "by x"),
    ],
)
def test_replace_word_replaces_the_first_occurrence(prompt, word, by, expected):
    assert world.replace_word(prompt, word, by) == expected


@pytest.mark.parametrize(
    ("prompt", "word", "expected"),
    [("a red circle", "red", True), ("a RED circle", "red", True), ("a reddish circle", "red", False),
     ("a painting by van gogh", "Van Gogh", True), ("a red circle", "", False)],
)  # fmt: skip
def test_has_word_matches_whole_words(prompt, word, expected):
    assert world.has_word(prompt, word) is expected


# --------------------------------------------------------------------------- results
def _result(showing: float) -> atk.AttackResult:
    return atk.AttackResult("paraphrase", "red", ("a crimson circle",), None, np.zeros((1, 4, 4, 3), np.uint8),
                            (0,), ("red",), showing, 0.1)  # fmt: skip


def test_success_rate_is_the_share_showing_the_concept():
    assert _result(0.25).success_rate == 0.25


def test_success_rate_is_read_only():
    with pytest.raises(AttributeError):
        _result(0.25).success_rate = 0.5


# ----------------------------------------------------------------------------- judge
@pytest.fixture(scope="module")
def rendered() -> np.ndarray:
    """Eight pictures drawn by the world itself: half of them red, two of each shape."""
    rng = np.random.default_rng(0)
    pairs = zip([0, 1, 2, 3] * 2, [0, 0, 1, 2] * 2, strict=True)  # (shape, colour)
    return np.stack([world.render(s, c, rng).image for s, c in pairs])


@pytest.mark.parametrize("concept", ["red", "circle", "scarlet"])
def test_default_judge_agrees_with_the_evaluator(rendered, classifier, concept):
    _, share = atk.judge_images(rendered, concept)
    assert share == pytest.approx(ev.share_showing(ev.classify(rendered), concept))


def test_default_judge_labels_every_picture(rendered):
    labels, _ = atk.judge_images(rendered, "red")
    assert len(labels) == len(rendered)


def test_default_judge_sees_the_rendered_colour(rendered):
    assert atk.judge_images(rendered, "red")[1] == pytest.approx(0.5)


def test_a_custom_judge_decides_and_is_counted(rendered):
    labels, share = atk.judge_images(rendered, "red", judge=lambda x: [True] * 3 + [False] * (len(x) - 3))
    assert share == pytest.approx(3 / len(rendered))


def test_a_custom_judge_labels_yes_and_no(rendered):
    labels, _ = atk.judge_images(rendered, "red", judge=lambda x: [True] * 3 + [False] * (len(x) - 3))
    assert labels[:4] == ("yes", "yes", "yes", "no")


def test_a_judge_must_answer_for_every_picture(rendered):
    with pytest.raises(ValueError, match="judge"):
        atk.judge_images(rendered, "red", judge=lambda x: [True])


def test_without_a_judge_a_concept_outside_the_world_is_not_judged(rendered):
    _, share = atk.judge_images(rendered, "Van Gogh")
    assert math.isnan(share)


# ------------------------------------------------------------------------ paraphrase
@pytest.fixture(scope="module")
def paraphrased() -> atk.AttackResult:
    return atk.paraphrase_attack(build_pipeline(seed=0), "red", steps=2, **FAST)


def test_paraphrases_never_name_the_concept(paraphrased):
    assert not [p for p in paraphrased.prompts if world.has_word(p, "red")]


def test_paraphrases_use_the_concepts_synonyms(paraphrased):
    assert {p.split()[1] for p in paraphrased.prompts} == {"crimson", "scarlet"}


def test_paraphrase_makes_a_picture_per_prompt_and_seed(paraphrased):
    assert paraphrased.images.shape == (16, 32, 32, 3)


def test_paraphrase_pictures_are_uint8(paraphrased):
    assert paraphrased.images.dtype == np.uint8


def test_paraphrase_feeds_prompts_not_embeddings(paraphrased):
    assert paraphrased.embeds is None


def test_paraphrase_showing_is_the_share_of_red_labels(paraphrased):
    assert paraphrased.showing == pytest.approx(np.mean([x == "red" for x in paraphrased.labels]))


def test_paraphrase_is_deterministic(paraphrased):
    again = atk.paraphrase_attack(build_pipeline(seed=0), "red", steps=2, **FAST)
    assert np.array_equal(again.images, paraphrased.images)


# ------------------------------------------------------------- soft prompt: the spaces
def test_free_tokens_pass_through_the_real_text_encoder(rand_pipe):
    # the oracle: the input embedding of "red" in the slot gives exactly the prompt "a red circle"
    soft = atk.FreeTokens.build(rand_pipe, ["a red circle", "a red star"], "red", 1, discrete=False)
    red = rand_pipe.text_encoder.get_input_embeddings().weight[rand_pipe.tokenizer.convert_tokens_to_ids("red")]
    with torch.no_grad():
        got = soft.condition(red[None])
    torch.testing.assert_close(got, encode(rand_pipe, ["a red circle", "a red star"]))


def test_free_tokens_take_the_concept_words_place(rand_pipe):
    soft = atk.FreeTokens.build(rand_pipe, ["a red circle"], "red", 3)
    assert soft.slots[0].tolist()[:6] == [False, False, True, True, True, False]  # <bos> a <v1> <v2> <v3> circle


def test_discrete_free_tokens_feed_exactly_the_words_they_show(rand_pipe):
    soft = atk.FreeTokens.build(rand_pipe, ["a red circle", "a red star"], "red", 3)
    v = torch.randn(3, soft.table.shape[1], generator=torch.Generator(device="cpu").manual_seed(0), device="cpu")
    with torch.no_grad():
        got = soft.condition(v)
    torch.testing.assert_close(got, encode(rand_pipe, soft.readable(v)))


def test_free_tokens_never_become_special_tokens(rand_pipe):
    soft = atk.FreeTokens.build(rand_pipe, ["a red circle"], "red", 3)
    v = soft.table[rand_pipe.tokenizer.all_special_ids[:3]]  # the special tokens themselves
    assert not set(soft.nearest_words(v)) & set(rand_pipe.tokenizer.all_special_tokens)


def test_free_tokens_need_the_concept_word(rand_pipe):
    with pytest.raises(ValueError, match="prompts must name the concept"):
        atk.FreeTokens.build(rand_pipe, ["a blue circle"], "red", 1)


def test_an_output_offset_is_added_to_the_prompts_without_the_concept(rand_pipe):
    soft = atk.OutputOffset.build(rand_pipe, ["a red circle", "a red star"], "red")
    v = torch.ones(16, 64, device="cpu")
    torch.testing.assert_close(soft.condition(v), encode(rand_pipe, ["a circle", "a star"]) + v)


def test_an_output_offset_reads_as_the_prompt_plus_delta(rand_pipe):
    soft = atk.OutputOffset.build(rand_pipe, ["a red circle"], "red")
    assert soft.readable(soft.initial(torch.Generator(device="cpu").manual_seed(0))) == ["a circle + Δ"]


# ------------------------------------------------------------- soft prompt: the attack
@pytest.fixture(scope="module")
def erased():
    """A random pipeline with "red" erased by UCE, and its snapshot from before."""
    pipe = build_pipeline(seed=0)
    snap = rl.snapshot(pipe)
    rl.uce_erase(pipe, "red")
    return pipe, snap


CONTINUOUS = dict(n_tokens=3, discrete=False, opt_steps=30, batch=8, targets_per_prompt=1, steps=2, **FAST)


@pytest.fixture(scope="module")
def continuous(erased):
    pipe, snap = erased
    unet, te = state_of(pipe.unet), state_of(pipe.text_encoder)
    result = atk.soft_prompt_attack(pipe, "red", original=snap, **CONTINUOUS)
    return result, unet, te


def test_soft_prompt_lowers_the_denoising_loss(continuous):
    r, _, _ = continuous
    assert r.loss_after < r.loss_before


def test_soft_prompt_records_a_loss_per_optimisation_step(continuous):
    r, _, _ = continuous
    assert len(r.losses) == 30


def test_input_space_soft_prompt_optimises_k_token_embeddings(continuous):
    r, _, _ = continuous
    assert r.tokens.shape == (3, 64)


def test_soft_prompt_feeds_one_embedding_per_prompt(continuous):
    r, _, _ = continuous
    assert r.embeds.shape == (4, 16, 64)


def test_soft_prompt_makes_a_picture_per_prompt_and_seed(continuous):
    r, _, _ = continuous
    assert r.images.shape == (8, 32, 32, 3)


def test_continuous_soft_prompt_is_written_as_placeholders(continuous):
    r, _, _ = continuous
    assert r.prompts[0] == "a <v1> <v2> <v3> circle"


def test_soft_prompt_leaves_the_unet_as_it_found_it(continuous, erased):
    _, unet, _ = continuous
    assert not changed(unet, state_of(erased[0].unet))


def test_soft_prompt_leaves_the_text_encoder_as_it_found_it(continuous, erased):
    _, _, te = continuous
    assert not changed(te, state_of(erased[0].text_encoder))


def test_soft_prompt_leaves_no_gradients_on_the_model(continuous, erased):
    pipe = erased[0]
    assert not [p for p in [*pipe.unet.parameters(), *pipe.text_encoder.parameters()] if p.grad is not None]


def test_soft_prompt_fits_the_original_models_pictures(continuous, erased):
    r, _, _ = continuous
    pipe, snap = erased
    with snap.applied(pipe):
        originals = sample(pipe, ev.concept_prompts("red"), seeds=[1000], steps=2)
    assert np.array_equal(originals, r.target_images)


def test_soft_prompt_is_deterministic(continuous, erased):
    r, _, _ = continuous
    again = atk.soft_prompt_attack(erased[0], "red", original=erased[1], **CONTINUOUS)
    assert torch.equal(r.tokens, again.tokens)


def test_soft_prompt_depends_on_its_seed(continuous, erased):
    r, _, _ = continuous
    other = atk.soft_prompt_attack(erased[0], "red", original=erased[1], **{**CONTINUOUS, "seed": 1, "opt_steps": 2})
    assert not torch.equal(r.tokens, other.tokens)


@pytest.fixture(scope="module")
def discrete():
    pipe = build_pipeline(seed=0)
    return pipe, atk.soft_prompt_attack(pipe, "red", **{**SOFT, "opt_steps": 10}, **FAST)


def test_discrete_soft_prompt_is_a_real_prompt(discrete):
    _, r = discrete
    assert r.prompts[0] == f"a {' '.join(r.nearest_words)} circle"


def test_discrete_soft_prompt_keeps_the_rest_of_each_prompt(discrete):
    _, r = discrete
    assert r.prompts[3].endswith(" star")


def test_discrete_soft_prompt_feeds_what_its_words_encode_to(discrete):
    pipe, r = discrete
    torch.testing.assert_close(r.embeds, encode(pipe, list(r.prompts)))


def test_discrete_soft_prompt_is_deterministic(discrete):
    pipe, r = discrete
    again = atk.soft_prompt_attack(pipe, "red", **{**SOFT, "opt_steps": 10}, **FAST)
    assert again.prompts == r.prompts


@pytest.fixture(scope="module")
def output_space():
    pipe = build_pipeline(seed=0)
    return pipe, atk.soft_prompt_attack(pipe, "red", space="output", **{**SOFT, "opt_steps": 20, "batch": 8}, **FAST)


def test_output_space_soft_prompt_is_a_whole_embedding_offset(output_space):
    _, r = output_space
    assert r.tokens.shape == (16, 64)


def test_output_space_soft_prompt_has_no_words(output_space):
    _, r = output_space
    assert r.nearest_words == ()


def test_output_space_soft_prompt_lowers_the_loss(output_space):
    _, r = output_space
    assert r.loss_after < r.loss_before


def test_output_space_soft_prompt_feeds_the_offset_prompts(output_space):
    pipe, r = output_space
    torch.testing.assert_close(r.embeds, encode(pipe, SHAPES) + r.tokens)


# ----------------------------------------------------------- soft prompt: step names
def test_soft_prompt_reads_the_old_step_names_as_before(rand_pipe):
    new = atk.soft_prompt_attack(rand_pipe, "red", **SOFT, **FAST)
    with pytest.warns(DeprecationWarning, match="opt_steps"):
        old = atk.soft_prompt_attack(rand_pipe, "red", **{**SOFT, "opt_steps": None, "steps": 4, "sample_steps": 2},
                                     **FAST)  # fmt: skip
    assert torch.equal(old.tokens, new.tokens)


def test_soft_prompt_steps_alone_are_the_sampling_steps(rand_pipe):
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        r = atk.soft_prompt_attack(rand_pipe, "red", steps=2, opt_steps=3, batch=2, targets_per_prompt=1, **FAST)
    assert len(r.losses) == 3


def test_soft_prompt_refuses_the_sampling_steps_twice(rand_pipe):
    with pytest.raises(TypeError, match="sampling steps"), pytest.warns(DeprecationWarning):
        atk.soft_prompt_attack(rand_pipe, "red", steps=2, sample_steps=2, opt_steps=3, **FAST)


def test_soft_prompt_with_no_optimisation_steps_samples_its_start(rand_pipe):
    r = atk.soft_prompt_attack(rand_pipe, "red", **{**SOFT, "opt_steps": 0}, **FAST)
    assert r.losses == ()


# -------------------------------------------------------------------- concept vector
@pytest.fixture(scope="module")
def vectored():
    pipe = build_pipeline(seed=0)
    return pipe, atk.concept_vector_attack(pipe, "red", strength=1.5, steps=2, **FAST)


def test_concept_vector_is_the_mean_difference(vectored):
    pipe, r = vectored
    with_c = encode(pipe, ["a red circle", "a red square", "a red triangle", "a red star"])
    without = encode(pipe, SHAPES)
    torch.testing.assert_close(r.vector, sum(with_c[i] - without[i] for i in range(4)) / 4)


def test_concept_vector_is_added_to_the_neutral_prompts(vectored):
    pipe, r = vectored
    torch.testing.assert_close(r.embeds, encode(pipe, SHAPES) + 1.5 * r.vector)


def test_concept_vector_neutral_prompts_are_the_prompts_without_the_concept(vectored):
    _, r = vectored
    assert r.neutral == tuple(SHAPES)


def test_concept_vector_prompts_read_as_neutral_plus_vector(vectored):
    _, r = vectored
    assert r.prompts[0] == "a circle + 1.5·v"


def test_concept_vector_makes_a_picture_per_prompt_and_seed(vectored):
    _, r = vectored
    assert r.images.shape == (8, 32, 32, 3)


def test_concept_vector_is_deterministic(vectored):
    pipe, r = vectored
    again = atk.concept_vector_attack(pipe, "red", strength=1.5, steps=2, **FAST)
    assert np.array_equal(r.images, again.images)


def test_a_shape_concepts_vector_is_added_to_colour_only_prompts(vectored, classifier):
    pipe, _ = vectored
    s = atk.concept_vector_attack(pipe, "star", steps=2, **FAST)
    assert s.neutral == tuple(f"a {c}" for c in world.COLOURS)


# ------------------------------------------------------------------------------- all
@pytest.fixture(scope="module")
def all_attacks(erased):
    pipe, snap = erased
    return atk.run_attacks(pipe, "red", original=snap, soft_prompt_kw=SOFT, steps=2, seeds=[0], progress=False)


def test_run_attacks_runs_each_attack_in_order(all_attacks):
    assert list(all_attacks) == list(atk.ATTACKS)


@pytest.mark.parametrize("name", atk.ATTACKS)
def test_run_attacks_reports_a_share_for_each(all_attacks, name):
    assert 0 <= all_attacks[name].showing <= 1


def test_run_attacks_samples_every_attack_with_its_steps(all_attacks, erased):
    alone = atk.paraphrase_attack(erased[0], "red", steps=2, seeds=[0], progress=False)
    assert np.array_equal(all_attacks["paraphrase"].images, alone.images)


def test_run_attacks_reads_the_old_sample_steps_as_steps(all_attacks, erased):
    pipe, snap = erased
    with pytest.warns(DeprecationWarning, match="steps"):
        old = atk.run_attacks(pipe, "red", original=snap, attacks=["concept_vector"], sample_steps=2, seeds=[0],
                              progress=False)  # fmt: skip
    assert np.array_equal(old["concept_vector"].images, all_attacks["concept_vector"].images)


def test_run_attacks_reads_old_soft_prompt_steps_as_optimisation_steps(all_attacks, erased):
    pipe, snap = erased
    old_kw = {"steps": 4, "batch": 4, "targets_per_prompt": 1}  # as `rece-lite bench --attack-steps 4` passed them
    with pytest.warns(DeprecationWarning, match="opt_steps"):
        old = atk.run_attacks(pipe, "red", original=snap, attacks=["soft_prompt"], soft_prompt_kw=old_kw, steps=2,
                              seeds=[0], progress=False)  # fmt: skip
    assert torch.equal(old["soft_prompt"].tokens, all_attacks["soft_prompt"].tokens)


def test_run_attacks_runs_only_the_attacks_asked_for(rand_pipe):
    out = atk.run_attacks(rand_pipe, "red", attacks=["paraphrase"], steps=2, seeds=[0], progress=False)
    assert list(out) == ["paraphrase"]


def test_run_attacks_refuses_unknown_attacks(rand_pipe):
    with pytest.raises(ValueError, match="unknown attacks"):
        atk.run_attacks(rand_pipe, "red", attacks=["jailbreak"])


# ------------------------------------------------------------- the deprecated helper
def test_original_images_is_deprecated(erased):
    pipe, snap = erased
    with pytest.warns(DeprecationWarning, match="applied"):
        atk.original_images(pipe, snap, ["a red circle"], [0], steps=2)


def test_original_images_are_the_originals_pictures(erased):
    pipe, snap = erased
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = atk.original_images(pipe, snap, ["a red circle"], [0], steps=2)
    with snap.applied(pipe):
        new = sample(pipe, ["a red circle"], seeds=[0], steps=2)
    assert np.array_equal(old, new)


# ------------------------------------------------------------------------ bad input
NAN, INF = float("nan"), float("inf")
BAD = [
    (atk.paraphrase_attack, dict(steps=0), "steps"),
    (atk.paraphrase_attack, dict(steps=-3), "steps"),
    (atk.paraphrase_attack, dict(seeds=[]), "seeds"),
    (atk.paraphrase_attack, dict(prompts=[]), "prompts"),
    (atk.paraphrase_attack, dict(prompts=[""]), "prompts"),
    (atk.paraphrase_attack, dict(prompts=["a vermilion circle"]), "prompts"),  # a word the model does not know
    (atk.paraphrase_attack, dict(guidance=NAN), "guidance"),
    (atk.soft_prompt_attack, dict(n_tokens=0), "n_tokens"),
    (atk.soft_prompt_attack, dict(opt_steps=-1), "opt_steps"),
    (atk.soft_prompt_attack, dict(steps=0), "steps"),
    (atk.soft_prompt_attack, dict(lr=0.0), "lr"),
    (atk.soft_prompt_attack, dict(lr=-0.05), "lr"),
    (atk.soft_prompt_attack, dict(lr=NAN), "lr"),
    (atk.soft_prompt_attack, dict(batch=0), "batch"),
    (atk.soft_prompt_attack, dict(targets_per_prompt=0), "targets_per_prompt"),
    (atk.soft_prompt_attack, dict(space="middle"), "space"),
    (atk.soft_prompt_attack, dict(prompts=["a blue circle"]), "prompts"),
    (atk.soft_prompt_attack, dict(space="output", prompts=["a blue circle"]), "prompts"),
    (atk.soft_prompt_attack, dict(target_images=np.zeros((4, 32, 32, 3))), "target_images"),  # float, not uint8
    (atk.soft_prompt_attack, dict(target_images=np.zeros((3, 32, 32, 3), np.uint8)), "target_images"),  # 3 for 4
    (atk.concept_vector_attack, dict(strength=NAN), "strength"),
    (atk.concept_vector_attack, dict(strength=INF), "strength"),
    (atk.concept_vector_attack, dict(prompts=["a blue circle"]), "prompts"),
    (atk.concept_vector_attack, dict(neutral=[]), "neutral"),
    (atk.concept_vector_attack, dict(steps=1.5), "steps"),
]


@pytest.mark.parametrize(
    ("attack", "kw", "argument"), BAD, ids=[f"{a.__name__}-{i}-{'-'.join(kw)}" for i, (a, kw, _) in enumerate(BAD)]
)
def test_bad_arguments_are_refused_naming_the_argument(rand_pipe, attack, kw, argument):
    with pytest.raises(ValueError, match=argument):
        attack(rand_pipe, "red", **kw, progress=False)


@pytest.mark.parametrize("concept", ["", "   ", None])
def test_an_empty_concept_is_refused(rand_pipe, concept):
    with pytest.raises(ValueError, match="concept"):
        atk.paraphrase_attack(rand_pipe, concept, prompts=["a crimson circle"], progress=False)


def test_a_refused_attack_leaves_the_model_untouched(rand_pipe):
    unet, te = state_of(rand_pipe.unet), state_of(rand_pipe.text_encoder)
    with pytest.raises(ValueError):
        atk.soft_prompt_attack(rand_pipe, "red", original=rl.snapshot(rand_pipe), lr=NAN, progress=False)
    assert not changed(unet, state_of(rand_pipe.unet)) | changed(te, state_of(rand_pipe.text_encoder))


# --------------------------------------------------------------------------- devices
def test_every_tensor_the_attacks_create_names_its_device(rand_pipe, unnamed_devices):
    snap = rl.snapshot(rand_pipe)
    with unnamed_devices(under=LIBRARY / "attacks") as watch:
        atk.paraphrase_attack(rand_pipe, "red", steps=1, seeds=[0], progress=False)
        atk.soft_prompt_attack(rand_pipe, "red", original=snap, **{**SOFT, "opt_steps": 1}, seeds=[0], progress=False)
        atk.soft_prompt_attack(rand_pipe, "red", space="output", **{**SOFT, "opt_steps": 1}, seeds=[0], progress=False)
        atk.concept_vector_attack(rand_pipe, "red", steps=1, seeds=[0], progress=False)
    assert watch.calls == []


@pytest.fixture
def on_cuda():
    return build_pipeline(seed=0).to("cuda")


@pytest.mark.cuda
def test_concept_vector_on_cuda_matches_the_cpu(on_cuda, rand_pipe):
    gpu = atk.concept_vector_attack(on_cuda, "red", steps=2, seeds=[0], progress=False)
    cpu = atk.concept_vector_attack(rand_pipe, "red", steps=2, seeds=[0], progress=False)
    torch.testing.assert_close(gpu.vector.cpu(), cpu.vector, rtol=1e-3, atol=1e-4)


@pytest.mark.cuda
@pytest.mark.parametrize("space", ["input", "output"])
def test_soft_prompt_on_cuda_starts_from_the_cpus_loss(on_cuda, rand_pipe, space):
    kw = dict(space=space, **{**SOFT, "opt_steps": 2}, seeds=[0], progress=False)
    gpu = atk.soft_prompt_attack(on_cuda, "red", original=rl.snapshot(on_cuda), **kw)
    cpu = atk.soft_prompt_attack(rand_pipe, "red", original=rl.snapshot(rand_pipe), **kw)
    assert gpu.loss_before == pytest.approx(cpu.loss_before, rel=2e-2)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_every_attack_runs_on_cuda(dtype):
    pipe = build_pipeline(seed=0).to("cuda", dtype)
    out = atk.run_attacks(pipe, "red", original=rl.snapshot(pipe), soft_prompt_kw=SOFT, steps=2, seeds=[0],
                          progress=False)  # fmt: skip
    assert [r.images.shape for r in out.values()] == [(4, 32, 32, 3)] * 3


# ------------------------------------------------------------------------ the real model
@pytest.mark.parametrize("attack", [atk.paraphrase_attack, atk.concept_vector_attack, atk.soft_prompt_attack])
def test_attacks_are_real_on_the_original_model(attack):
    pipe = rl.load_pipeline("tiny", device="cpu")
    assert attack(pipe, "red", seeds=[0, 1], progress=False).showing >= 0.7
