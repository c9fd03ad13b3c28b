"""The miniature world: one coloured shape on a light background, with a caption.

Everything here is seeded and pure: the same seed gives the same pictures, masks
and captions.  The world is deliberately tiny (4 shapes x 4 colours, 32 x 32
pixels) so that a Stable Diffusion pipeline can learn it on a laptop CPU, and
every concept in it can be measured by a cheap classifier (see
:mod:`rece_lite.evaluate`).

Each colour and shape has two synonyms that appear in a minority of captions:
the red-teaming chapter needs words that *mean* an erased concept without
naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
}
SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet"),
    "green": ("emerald", "lime"),
    "blue": ("azure", "navy"),
    "yellow": ("golden", "lemon"),
    "circle": ("disc", "orb"),
    "square": ("box", "tile"),
    "triangle": ("wedge", "pyramid"),
    "star": ("pentagram", "starburst"),
}
SIZE = 32
SUPERSAMPLE = 4

# Caption templates.  {c} is a colour word, {s} a shape word.
FULL_TEMPLATES = (
    "a {c} {s}",
    "a {c} {s}",
    "a photo of a {c} {s}",
    "{c} {s} on a white background",
    "a picture of a {c} {s}",
    "a drawing of a {c} {s}",
    "one {c} {s}",
)
SHAPE_TEMPLATES = ("a {s}", "a photo of a {s}", "a {s} on a white background")
COLOUR_TEMPLATES = ("something {c}", "a {c} shape", "a {c} object")


@dataclass(frozen=True)
class Concept:
    """A colour or shape of the world, parsed once from its name or a synonym.

    Attributes:
        kind: ``"colour"`` or ``"shape"``.
        name: the canonical name (``"red"`` for ``"crimson"``).
        word: the word as given.
    """

    kind: Literal["colour", "shape"]
    name: str
    word: str

    @classmethod
    def parse(cls, word: str | Concept) -> Concept:
        """The concept a word names; a ValueError listing the known concepts otherwise."""
        if isinstance(word, Concept):
            return word
        for kind, names in (("colour", COLOURS), ("shape", SHAPES)):
            for name in names:
                if word == name or word in SYNONYMS[name]:
                    return cls(kind, name, word)  # type: ignore[arg-type]
        known = ", ".join(COLOURS + SHAPES)
        raise ValueError(f"unknown concept {word!r} for the tiny model; known concepts: {known} (or their synonyms)")

    @property
    def synonyms(self) -> tuple[str, ...]:
        return SYNONYMS[self.name]

    @property
    def same_kind(self) -> tuple[str, ...]:
        """Every concept of this kind, this one included (the colours, or the shapes)."""
        return COLOURS if self.kind == "colour" else SHAPES

    def prompts(self, *, synonyms: bool = False) -> list[str]:
        """Prompts that ask for the concept: "a red {shape}" for every shape (or "a {colour} circle").

        With ``synonyms``, the concept is written with each of its synonyms instead of its name.
        """
        words = self.synonyms if synonyms else (self.name,)
        if self.kind == "colour":
            return [f"a {w} {o}" for w in words for o in SHAPES]
        return [f"a {o} {w}" for w in words for o in COLOURS]

    def other_prompts(self) -> tuple[list[str], list[str], list[str]]:
        """Prompts "a {colour} {shape}" that do not involve the concept, with the shape and colour each asks for."""
        prompts, shapes, colours = [], [], []
        for c in COLOURS:
            for s in SHAPES:
                if self.name in (c, s):
                    continue
                prompts.append(f"a {c} {s}")
                shapes.append(s)
                colours.append(c)
        return prompts, shapes, colours


@dataclass(frozen=True)
class Sample:
    """One picture of the world.

    Attributes:
        image: (SIZE, SIZE, 3) uint8 RGB.
        mask: (SIZE, SIZE) float32 in [0, 1], the object's coverage of each pixel.
        shape: index into SHAPES.
        colour: index into COLOURS.
    """

    image: np.ndarray
    mask: np.ndarray
    shape: int
    colour: int


def _polygon(shape: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if shape == "square":
        k, radii = 4, [r] * 4
        angle += np.pi / 4
    elif shape == "triangle":
        k, radii = 3, [r * 1.15] * 3
        angle -= np.pi / 2
    elif shape == "star":
        k, radii = 10, [r * 1.2 if i % 2 == 0 else r * 0.5 for i in range(10)]
        angle -= np.pi / 2
    else:
        raise ValueError(shape)
    return [
        (cx + radii[i] * np.cos(angle + 2 * np.pi * i / k), cy + radii[i] * np.sin(angle + 2 * np.pi * i / k))
        for i in range(k)
    ]


def render(
    shape: int, colour: int, rng: np.random.Generator, *, rgb: tuple[float, float, float] | None = None
) -> Sample:
    """Draw one shape in one colour at a random place, size and tilt.

    Args:
        shape: index into SHAPES.
        colour: index into COLOURS.
        rng: the random source (position, size, tilt, colour and background jitter).
        rgb: paint in this colour instead of ``COLOURS[colour]`` (the shape classifier
            trains on arbitrary colours so that it judges shape alone).
    """
    big = SIZE * SUPERSAMPLE
    r = rng.uniform(0.24, 0.34) * big
    cx, cy = rng.uniform(r * 1.05, big - r * 1.05, size=2)
    angle = rng.uniform(-0.25, 0.25)  # a small tilt keeps shapes recognisable
    mask_img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask_img)
    name = SHAPES[shape]
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_polygon(name, cx, cy, r, angle), fill=255)
    mask = np.asarray(mask_img.resize((SIZE, SIZE), Image.BOX), dtype=np.float32) / 255.0
    base = RGB[COLOURS[colour]] if rgb is None else rgb
    fg = np.array(base, dtype=np.float32) + rng.normal(0, 8, size=3)
    bg = np.full(3, rng.uniform(225, 250), dtype=np.float32) + rng.normal(0, 3, size=3)
    img = mask[..., None] * fg + (1 - mask[..., None]) * bg
    img = np.clip(img + rng.normal(0, 2.0, size=img.shape), 0, 255).astype(np.uint8)
    return Sample(img, mask, shape, colour)


def _word(concept: str, rng: np.random.Generator, synonym_rate: float) -> str:
    if rng.random() < synonym_rate:
        return str(rng.choice(SYNONYMS[concept]))
    return concept


def caption(
    shape: int,
    colour: int,
    rng: np.random.Generator,
    *,
    empty_rate: float = 0.1,
    partial_rate: float = 0.2,
    synonym_rate: float = 0.2,
) -> str:
    """A caption for a picture: full, shape-only, colour-only or empty.

    Args:
        shape: index into SHAPES.
        colour: index into COLOURS.
        rng: the random source.
        empty_rate: share of empty captions (what classifier-free guidance learns from).
        partial_rate: share of captions that name only the shape or only the colour.
        synonym_rate: chance that each concept word is replaced by one of its synonyms.
    """
    u = rng.random()
    if u < empty_rate:
        return ""
    c = _word(COLOURS[colour], rng, synonym_rate)
    s = _word(SHAPES[shape], rng, synonym_rate)
    if u < empty_rate + partial_rate / 2:
        return str(rng.choice(SHAPE_TEMPLATES)).format(s=s)
    if u < empty_rate + partial_rate:
        return str(rng.choice(COLOUR_TEMPLATES)).format(c=c)
    return str(rng.choice(FULL_TEMPLATES)).format(c=c, s=s)


def generate(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n`` pictures with balanced shapes and colours.

    Returns:
        images (n, SIZE, SIZE, 3) uint8, masks (n, SIZE, SIZE) float32,
        shapes (n,) int64, colours (n,) int64.
    """
    rng = np.random.default_rng(seed)
    shapes = rng.integers(0, len(SHAPES), size=n)
    colours = rng.integers(0, len(COLOURS), size=n)
    samples = [render(int(s), int(c), rng) for s, c in zip(shapes, colours)]
    images = np.stack([s.image for s in samples])
    masks = np.stack([s.mask for s in samples])
    return images, masks, shapes.astype(np.int64), colours.astype(np.int64)


def vocabulary() -> list[str]:
    """Every word any caption template or concept can produce, sorted."""
    words: set[str] = set()
    for t in FULL_TEMPLATES + SHAPE_TEMPLATES + COLOUR_TEMPLATES:
        words.update(w for w in t.split() if not w.startswith("{"))
    for concept, syns in SYNONYMS.items():
        words.add(concept)
        words.update(syns)
    # a few neutral words a learner (or an attack) may type; the model never saw them
    # in training, so they act as near-random embeddings.
    words.update(["and", "the", "with", "image", "shape", "thing", "of", "in"])
    return sorted(words)


# ------------------------------------------------------------------ words in prompts
def _at(words: list[str], word: str) -> int | None:
    """Index of the first run of ``word``'s words in ``words`` (case-insensitive), or None."""
    want = [w.lower() for w in word.split()]
    for i in range(len(words) - len(want) + 1):
        if want and [w.lower() for w in words[i : i + len(want)]] == want:
            return i
    return None


def has_word(prompt: str, word: str) -> bool:
    """Whether ``prompt`` contains ``word`` as whole words ("a red circle" has "red", not "re").

    Words are whitespace-separated and compared case-insensitively; ``word`` may be
    several words ("van gogh").
    """
    return _at(prompt.split(), word) is not None


def without_word(prompt: str, word: str) -> str:
    """``prompt`` with every occurrence of ``word`` removed: ("a red circle", "red") -> "a circle".

    Whole words only, case-insensitive; the remaining words are joined by single spaces.
    """
    words, n = prompt.split(), len(word.split())
    out, i = [], 0
    while i < len(words):
        if _at(words[i : i + n], word) == 0:
            i += n
        else:
            out.append(words[i])
            i += 1
    return " ".join(out)


def replace_word(prompt: str, word: str, by: str) -> str:
    """``prompt`` with the *first* occurrence of ``word`` replaced by ``by``.

    ("a red circle", "red", "<v>") -> "a <v> circle".  Whole words only, case-insensitive; a
    prompt without ``word`` comes back as it was.
    """
    words = prompt.split()
    i = _at(words, word)
    if i is None:
        return prompt
    return " ".join(words[:i] + [by] + words[i + len(word.split()) :])
