"""Pictures: every drawing function draws, images convert, and the live explorer follows
the word a learner picked from prompt to prompt."""

from __future__ import annotations

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from rece_lite import viz
from rece_lite.attention import generate_with_attention
from rece_lite.tiny.model import build_pipeline

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline(seed=0)


@pytest.fixture(scope="module")
def runs(pipe):
    """prompt -> {label -> Recording}: two seeds stand in for "original" and "erased"."""
    prompts = ["a red circle", "a photo of a red circle", "a blue circle", "a photo of a green square"]
    return {
        p: {
            "original": generate_with_attention(pipe, p, num_inference_steps=2),
            "erased": generate_with_attention(pipe, p, seed=1, num_inference_steps=2),
        }
        for p in prompts
    }


@pytest.fixture(autouse=True)
def no_windows():
    """Draw off screen, and close what was drawn."""
    matplotlib.use("Agg")
    yield
    plt.close("all")


# ------------------------------------------------------------------ drawing
DRAWINGS = {
    "overlay": lambda r: viz.overlay(r["original"].image, r["original"].store.token_maps()[2]),
    "overlay of a word map": lambda r: viz.overlay(r["original"].image, r["original"].word_map("red")),
    "attention_grid": lambda r: viz.attention_grid(
        r["original"].image, r["original"].store, r["original"].tokens, layers="up_blocks"
    ),
    "step_strip": lambda r: viz.step_strip(r["original"].image, r["original"].store, r["original"].tokens, "red"),
    "compare_attention": lambda r: viz.compare_attention(r, token_ids=["red", 3]),
    "explorer_figure": lambda r: viz.explorer_figure({PROMPT: r}, token="red", layer="mid_block", step=1),
}


@pytest.mark.parametrize("name", DRAWINGS)
def test_drawing_functions_return_a_figure(runs, name):
    assert isinstance(DRAWINGS[name](runs[PROMPT]), Figure)


def test_the_recorded_prompt_has_its_words_where_the_drawings_expect_them(runs):
    assert runs[PROMPT]["original"].tokens[2] == "red"


def test_word_positions_are_the_words_between_start_and_end(runs):
    assert viz.word_positions(runs[PROMPT]["original"].tokens) == [1, 2, 3]


def test_a_token_that_is_not_in_the_prompt_is_refused(runs):
    r = runs[PROMPT]
    with pytest.raises(ValueError, match="'blue' is not one of this prompt's tokens"):
        viz.step_strip(r["original"].image, r["original"].store, r["original"].tokens, "blue")


# ------------------------------------------------------------------ to_array
def test_to_array_takes_pil_images():
    images = [Image.new("RGB", (4, 3), (255, 0, 0))] * 2
    assert viz.to_array(images).shape == (2, 3, 4, 3)


def test_to_array_takes_a_list_of_arrays():
    images = [np.zeros((3, 4, 3), np.uint8), np.full((3, 4, 3), 7, np.uint8)]
    assert viz.to_array(images)[1].max() == 7


def test_to_array_turns_floats_into_bytes():
    assert viz.to_array(np.full((1, 2, 2, 3), 0.5)).max() == 128


def test_to_array_moves_channels_last():
    assert viz.to_array(torch.zeros(1, 3, 5, 6)).shape == (1, 5, 6, 3)


# ------------------------------------------------------------------ the live explorer
def shown(explorer) -> str:
    """The token the explorer shows, as its string."""
    c = explorer.controls
    return next(iter(explorer.runs[c["prompt"].value].values())).tokens[c["token"].value]


def test_the_explorer_starts_on_the_given_token(runs):
    assert shown(viz.attention_explorer(runs, token="red")) == "red"


def test_the_explorer_keeps_the_word_when_the_prompt_changes(runs):
    explorer = viz.attention_explorer(runs, token="red")
    explorer.controls["prompt"].value = "a photo of a red circle"  # "red" moves from token 2 to 5
    assert explorer.controls["token"].value == 5


def test_without_the_word_the_explorer_shows_the_word_in_the_same_place(runs):
    explorer = viz.attention_explorer(runs, token="red")
    explorer.controls["prompt"].value = "a photo of a green square"  # red's place counted from the end
    assert shown(explorer) == "green"


def test_the_explorer_comes_back_to_the_picked_word(runs):
    explorer = viz.attention_explorer(runs, token="red")
    explorer.controls["prompt"].value = "a blue circle"
    explorer.controls["prompt"].value = "a photo of a red circle"
    assert shown(explorer) == "red"


def test_a_token_the_learner_picks_is_the_word_followed(runs):
    explorer = viz.attention_explorer(runs, token="red")
    explorer.controls["token"].value = 3  # "circle"
    explorer.controls["prompt"].value = "a photo of a red circle"
    assert shown(explorer) == "circle"


def test_the_explorer_draws_what_the_controls_say(runs):
    explorer = viz.attention_explorer(runs, token="red")
    explorer.controls["layer"].value = "mid_block"
    explorer.controls["step"].value = 1
    assert explorer.figure().get_suptitle() == "'a red circle' — layer mid_block, step 1"


def test_the_explorer_shows_as_widgets_and_as_a_picture(runs):
    bundle = viz.attention_explorer(runs)._repr_mimebundle_()
    assert {"application/vnd.jupyter.widget-view+json", "image/png"} <= bundle.keys()


# ------------------------------------------------------------------ CUDA
@pytest.mark.cuda
def test_maps_on_cuda_are_drawn(runs):
    rec = runs[PROMPT]["original"]
    assert isinstance(viz.overlay(rec.image, rec.word_map("red").to("cuda")), Figure)
