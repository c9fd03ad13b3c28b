"""The miniature world: one or two coloured shapes on a light background, with a caption.

Everything here is seeded and pure: the same seed gives the same pictures, masks
and captions.  The world is deliberately tiny (4 shapes x 5 colours, a few dozen
pixels a side) so that a Stable Diffusion pipeline can learn it on a laptop CPU,
and every concept in it can be measured by a cheap classifier (see
:mod:`rece_lite.evaluate`).

* Each colour and shape has two synonyms that appear in a minority of captions:
  the red-teaming chapter needs words that *mean* an erased concept without
  naming it.
* Grey (:data:`NEUTRAL`) is the harmless colour: erasing "red" *toward* grey asks
  the model to draw the same shape without the colour, which is RECE's point about
  aligning an erased concept to a harmless one (the empty prompt instead gives the
  model's unconditional habit, which may be any shape).
* A scene holds one object, or two that do not overlap ("a red circle and a blue
  square"): with two objects the model has to decide *where* each word applies,
  which is what makes cross-attention maps land on objects, and what lets the
  course measure what an erasure does to the *other* object of a prompt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageDraw

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "grey")
NEUTRAL = "grey"  #: the harmless colour an erased colour can be aligned to
#: the shape an erased shape is aligned to: the one the model's unconditional habit draws least
#: (what ``""`` draws, seeds 0-63: triangle 39%, square 28%, star 20%, circle 12.5%)
NEUTRAL_SHAPE = "circle"
RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 40),
    "blue": (30, 60, 220),
    "yellow": (235, 200, 20),
    "grey": (125, 125, 125),
}
SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("crimson", "scarlet"),
    "green": ("emerald", "lime"),
    "blue": ("azure", "navy"),
    "yellow": ("golden", "lemon"),
    "grey": ("gray", "ashen"),
    "circle": ("disc", "orb"),
    "square": ("box", "tile"),
    "triangle": ("wedge", "pyramid"),
    "star": ("pentagram", "starburst"),
}
SIZE = 32  #: the default picture side in pixels
SUPERSAMPLE = 4
ONE_OBJECT_RADIUS = (0.24, 0.34)  #: an object's radius as a share of the picture side, alone ...
TWO_OBJECT_RADIUS = (0.15, 0.21)  #: ... and beside another

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
# Two objects, written in either order.
PAIR_TEMPLATES = (
    "a {c1} {s1} and a {c2} {s2}",
    "a {c1} {s1} and a {c2} {s2}",
    "{c1} {s1} and {c2} {s2}",
    "a photo of a {c1} {s1} and a {c2} {s2}",
    "a {c1} {s1} next to a {c2} {s2}",
)
# Words no caption uses, for learners and attacks to type: the model never saw them.
EXTRA_WORDS = ("the", "with", "image", "thing", "of", "in")


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
    """One picture with one object.

    Attributes:
        image: (size, size, 3) uint8 RGB.
        mask: (size, size) float32 in [0, 1], the object's coverage of each pixel.
        shape: index into SHAPES.
        colour: index into COLOURS.
    """

    image: np.ndarray
    mask: np.ndarray
    shape: int
    colour: int


@dataclass(frozen=True)
class Scene:
    """One picture with one or two objects.

    Attributes:
        image: (size, size, 3) uint8 RGB.
        masks: (k, size, size) float32 in [0, 1], each object's coverage of each pixel.
        shapes: k indices into SHAPES.
        colours: k indices into COLOURS.
    """

    image: np.ndarray
    masks: np.ndarray
    shapes: tuple[int, ...]
    colours: tuple[int, ...]


@dataclass(frozen=True)
class Scenes:
    """Many scenes as arrays; a scene with one object has ``-1`` in its second slot.

    Attributes:
        images: (n, size, size, 3) uint8.
        masks: (n, 2, size, size) float32 (zeros for an absent second object).
        shapes: (n, 2) int64 indices into SHAPES, -1 where there is no object.
        colours: (n, 2) int64 indices into COLOURS, -1 where there is no object.
    """

    images: np.ndarray
    masks: np.ndarray
    shapes: np.ndarray
    colours: np.ndarray

    def __len__(self) -> int:
        return len(self.images)

    @property
    def objects(self) -> np.ndarray:
        """(n,) the number of objects in each scene."""
        return (self.shapes >= 0).sum(1)


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


def _mask(shape: int, cx: float, cy: float, r: float, angle: float, size: int) -> np.ndarray:
    """Coverage in [0, 1] of one shape, drawn at SUPERSAMPLE x and box-filtered down."""
    big = size * SUPERSAMPLE
    img = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(img)
    name = SHAPES[shape]
    if name == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    else:
        draw.polygon(_polygon(name, cx, cy, r, angle), fill=255)
    return np.asarray(img.resize((size, size), Image.BOX), dtype=np.float32) / 255.0


def _paint(
    masks: list[np.ndarray], rgbs: list[tuple[float, float, float]], rng: np.random.Generator, size: int
) -> np.ndarray:
    """Objects of the given colours (with a little jitter) over a light, slightly noisy background."""
    bg = np.full(3, rng.uniform(225, 250), dtype=np.float32) + rng.normal(0, 3, size=3)
    img = np.broadcast_to(bg, (size, size, 3)).astype(np.float32)
    for mask, base in zip(masks, rgbs):
        fg = np.array(base, dtype=np.float32) + rng.normal(0, 8, size=3)
        img = mask[..., None] * fg + (1 - mask[..., None]) * img
    return np.clip(img + rng.normal(0, 2.0, size=img.shape), 0, 255).astype(np.uint8)


def render(
    shape: int,
    colour: int,
    rng: np.random.Generator,
    *,
    rgb: tuple[float, float, float] | None = None,
    size: int = SIZE,
) -> Sample:
    """Draw one shape in one colour at a random place, size and tilt.

    Args:
        shape: index into SHAPES.
        colour: index into COLOURS.
        rng: the random source (position, size, tilt, colour and background jitter).
        rgb: paint in this colour instead of ``COLOURS[colour]`` (the shape classifier
            trains on arbitrary colours so that it judges shape alone).
        size: the picture's side in pixels.
    """
    big = size * SUPERSAMPLE
    r = rng.uniform(*ONE_OBJECT_RADIUS) * big
    cx, cy = rng.uniform(r * 1.05, big - r * 1.05, size=2)
    angle = rng.uniform(-0.25, 0.25)  # a small tilt keeps shapes recognisable
    mask = _mask(shape, cx, cy, r, angle, size)
    img = _paint([mask], [RGB[COLOURS[colour]] if rgb is None else rgb], rng, size)
    return Sample(img, mask, shape, colour)


def render_pair(
    shapes: tuple[int, int], colours: tuple[int, int], rng: np.random.Generator, *, size: int = SIZE
) -> Scene:
    """Two objects at random, non-overlapping places (their outer radii at least a pixel apart).

    Args:
        shapes: two indices into SHAPES.
        colours: two indices into COLOURS.
        rng: the random source.
        size: the picture's side in pixels.
    """
    big = size * SUPERSAMPLE
    gap = 1.25 * SUPERSAMPLE  # a pixel and a quarter between the objects' outer radii
    while True:  # rejection sampling: a few tries at most for these radii
        r = rng.uniform(*TWO_OBJECT_RADIUS, size=2) * big
        reach = 1.2 * r  # the farthest any shape reaches from its centre (a star's points)
        centres = [rng.uniform(reach[i] * 0.95, big - reach[i] * 0.95, size=2) for i in range(2)]
        if np.hypot(*(centres[0] - centres[1])) >= reach.sum() + gap:
            break
    angles = rng.uniform(-0.25, 0.25, size=2)
    masks = [_mask(shapes[i], *centres[i], r[i], angles[i], size) for i in range(2)]
    img = _paint(masks, [RGB[COLOURS[c]] for c in colours], rng, size)
    return Scene(img, np.stack(masks), tuple(int(s) for s in shapes), tuple(int(c) for c in colours))


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
    """A caption for a one-object picture: full, shape-only, colour-only or empty.

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


def pair_caption(
    shapes: tuple[int, int],
    colours: tuple[int, int],
    rng: np.random.Generator,
    *,
    empty_rate: float = 0.1,
    synonym_rate: float = 0.2,
) -> str:
    """A caption for a two-object picture, naming both objects in a random order (or empty)."""
    if rng.random() < empty_rate:
        return ""
    order = (0, 1) if rng.random() < 0.5 else (1, 0)
    words = {}
    for k, i in enumerate(order, start=1):
        words[f"c{k}"] = _word(COLOURS[colours[i]], rng, synonym_rate)
        words[f"s{k}"] = _word(SHAPES[shapes[i]], rng, synonym_rate)
    return str(rng.choice(PAIR_TEMPLATES)).format(**words)


def scene_caption(shapes: np.ndarray, colours: np.ndarray, rng: np.random.Generator, **kw) -> str:
    """:func:`caption` or :func:`pair_caption`, for one row of :class:`Scenes` (``-1``: no object)."""
    if shapes[1] < 0:
        return caption(int(shapes[0]), int(colours[0]), rng, **kw)
    kw.pop("partial_rate", None)
    return pair_caption((int(shapes[0]), int(shapes[1])), (int(colours[0]), int(colours[1])), rng, **kw)


def generate_scenes(n: int, seed: int = 0, *, two_object_rate: float = 0.0, size: int = SIZE) -> Scenes:
    """``n`` scenes with balanced shapes and colours; a share ``two_object_rate`` hold two objects.

    The two objects of a scene differ in shape and in colour, so that which colour went
    with which shape can be read off the picture.
    """
    if not 0.0 <= two_object_rate <= 1.0:
        raise ValueError(f"two_object_rate must be in [0, 1], got {two_object_rate}")
    rng = np.random.default_rng(seed)
    images = np.empty((n, size, size, 3), np.uint8)
    masks = np.zeros((n, 2, size, size), np.float32)
    shapes = np.full((n, 2), -1, np.int64)
    colours = np.full((n, 2), -1, np.int64)
    for i in range(n):
        if rng.random() < two_object_rate:
            s = rng.choice(len(SHAPES), size=2, replace=False)
            c = rng.choice(len(COLOURS), size=2, replace=False)
            scene = render_pair((int(s[0]), int(s[1])), (int(c[0]), int(c[1])), rng, size=size)
            images[i], masks[i] = scene.image, scene.masks
            shapes[i], colours[i] = scene.shapes, scene.colours
        else:
            s, c = int(rng.integers(len(SHAPES))), int(rng.integers(len(COLOURS)))
            one = render(s, c, rng, size=size)
            images[i], masks[i, 0], shapes[i, 0], colours[i, 0] = one.image, one.mask, s, c
    return Scenes(images, masks, shapes, colours)


def generate(n: int, seed: int = 0, *, size: int = SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """``n`` one-object pictures with balanced shapes and colours.

    Returns:
        images (n, size, size, 3) uint8, masks (n, size, size) float32,
        shapes (n,) int64, colours (n,) int64.
    """
    sc = generate_scenes(n, seed, two_object_rate=0.0, size=size)
    return sc.images, sc.masks[:, 0], sc.shapes[:, 0], sc.colours[:, 0]


def vocabulary() -> list[str]:
    """Every word any caption template or concept can produce, and a few the model never saw; sorted."""
    words: set[str] = set(EXTRA_WORDS)
    for t in FULL_TEMPLATES + SHAPE_TEMPLATES + COLOUR_TEMPLATES + PAIR_TEMPLATES:
        words.update(w for w in t.split() if not w.startswith("{"))
    for concept, syns in SYNONYMS.items():
        words.add(concept)
        words.update(syns)
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
