"""The two-object measurements (rece_lite.tiny.two_objects) against pictures whose objects are known."""

from __future__ import annotations

import numpy as np
import pytest

from rece_lite.tiny import two_objects as two
from rece_lite.tiny import world


def test_pair_prompts_are_distinct_pairs_and_deterministic():
    ps = two.pair_prompts(40)
    assert ps == two.pair_prompts(40) and ps != two.pair_prompts(40, seed=1)
    assert len({p for p, _, _ in ps}) == 40
    for prompt, (c1, s1), (c2, s2) in ps:
        assert c1 != c2 and s1 != s2 and prompt == f"a {c1} {s1} and a {c2} {s2}"
        words = prompt.split()
        assert [words[i - 1] for i in two.COLOUR_POSITIONS] == [c1, c2]  # position 0 is the start token
    assert all("red" in (a[0], b[0]) for _, a, b in two.pair_prompts(30, colour="red"))


def _world_pictures(asked, seed=0, size=48):
    rng = np.random.default_rng(seed)
    idx = lambda names, xs: tuple(names.index(x) for x in xs)  # noqa: E731
    return np.stack([world.render_pair(idx(world.SHAPES, (a[1], b[1])), idx(world.COLOURS, (a[0], b[0])), rng,
                                       size=size).image for a, b in asked])  # fmt: skip


def test_judge_on_the_worlds_own_pictures():
    asked = [(a, b) for _, a, b in two.pair_prompts(24, seed=3)]
    right = two.judge(_world_pictures(asked), asked)
    assert right["n"] == 24 and right["both_colours"] >= 0.95 and right["binding"] >= 0.95
    # the same pictures judged against swapped shapes: colours still right, binding wrong
    swapped = [((a[0], b[1]), (b[0], a[1])) for a, b in asked]
    wrong = two.judge(_world_pictures(asked), swapped)
    assert wrong["both_colours"] == right["both_colours"] and wrong["binding"] <= 0.1


def test_bad_arguments_are_refused():
    with pytest.raises(SystemExit):
        two.main(["--prompts", "0"])
