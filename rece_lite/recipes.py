"""Recommended erasure settings, per model (the ones the notebooks justify).

The paper's settings (official README): λ = 0.1 and preserve scale 0.1 for every
concept; λ' = 0.1 with 2-3 epochs for unsafe concepts, λ' = 1e-3 with 1 epoch for
styles and hard objects.  For the miniature model, notebooks 03-05 measure what
works; the choices and their numbers are recorded here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from rece_lite.errors import InputError
from rece_lite.paths import is_embedded
from rece_lite.settings import EDIT, NULL_SPACE, RECE
from rece_lite.tiny import world


@dataclass(frozen=True)
class Recipe:
    """Everything :func:`rece_lite.uce_erase` / :func:`rece_lite.rece_erase` need besides the pipeline.

    The closed form's and the derivation's defaults are :data:`rece_lite.settings.EDIT` and
    :data:`rece_lite.settings.RECE`.  ``epochs`` is the one default stated here, and it differs
    on purpose from ``rece_erase``'s 3 (the top of the paper's 2-3 epochs for unsafe concepts,
    what a bare call gets): a recipe is what rece-lite *recommends*, and 2 is the epochs the
    miniature model's colour recipe was chosen and measured with (:func:`tiny_recipe`'s table;
    a third epoch was not measured there).  Both behaviours are kept as they were.
    """

    erase: tuple[str, ...]
    guide: str | tuple[str, ...] = ""
    preserve: tuple[str, ...] = ()
    lamb: float = EDIT.lamb
    erase_scale: float = EDIT.erase_scale
    preserve_scale: float = EDIT.preserve_scale
    reg: str = RECE.reg
    reg_scale: float = RECE.reg_scale
    epochs: int = 2
    rank_tol: float = NULL_SPACE.rank_tol
    hold_erased: bool = False

    def uce_kwargs(self) -> dict:
        return dict(
            erase=list(self.erase),
            guide=self.guide if isinstance(self.guide, str) else list(self.guide),
            preserve=list(self.preserve),
            lamb=self.lamb,
            erase_scale=self.erase_scale,
            preserve_scale=self.preserve_scale,
        )

    def null_space_kwargs(self) -> dict:
        """:func:`rece_lite.null_space.null_space_erase`'s arguments: the preserve set is held exactly."""
        kw = self.uce_kwargs()
        kw["keep"] = kw.pop("preserve")
        del kw["preserve_scale"]
        return dict(kw, rank_tol=self.rank_tol)

    def rece_kwargs(self) -> dict:
        return dict(self.uce_kwargs(), reg=self.reg, reg_scale=self.reg_scale, epochs=self.epochs,
                    hold_erased=self.hold_erased)

    def as_dict(self) -> dict:
        return asdict(self)


def _templates(kind: str, word: str) -> tuple[str, ...]:
    """A concept in three of the training captions' forms (not the evaluation prompts "a red circle")."""
    if kind == "colour":
        return (word, f"something {word}", f"a {word} object")
    return (word, f"a {word}", f"a photo of a {word}")


#: The miniature model's null-space recipe holds the kept rows' directions above 3e-3 · σ_max
#: (chosen on seeds 0-7: the table is at :data:`rece_lite.null_space.TINY_RANK_TOL`).
TINY_RANK_TOL = 3e-3


def tiny_recipe(concept: str | world.Concept, *, guide: str | None = None, context: bool | None = None) -> Recipe:
    """The miniature model's recipe, chosen on seeds 0-7 and checked on others (``python -m rece_lite.tiny.report``).

    Erase the concept in three caption forms ("red", "something red", "a red object"; like
    the official UCE's ``expand_prompts``) toward the same forms of the guide, preserving the
    other concepts of the same kind in the same forms, with the paper's λ = 0.1 and preserve
    scale 0.1, every token row (RECE's ``tokens="all"``); RECE with λ' = 0.01 (the paper, too,
    lowers λ' for concepts UCE finds hard): two epochs for a colour, one for a shape; and the
    concept in context, in sentences no measurement asks (below).

    How the colour's settings were chosen (erasing "red" toward grey; 4 prompts x 8 seeds
    "a red {shape}", seeds 0-7; "kept": both right on the other colours' prompts, 4 seeds):

    ======================  ========================  =========================  ==========================
    λ', epochs              red left                  derived c′ still red       kept
    ======================  ========================  =========================  ==========================
    UCE alone               3%                        100%                       80%
    0.1, 1 (the old recipe) 41%                       0%                         66%
    0.1, 2                  9%                        100%                       70%
    0.01, 1                 25%                       0%                         84%
    0.01, 2 (this recipe)   0%                        0%                         78%
    ======================  ========================  =========================  ==========================

    Each RECE epoch is one more linear map of a 64-wide embedding space, fit (bare) to 48 erase rows
    and 192 preserve rows at once: on this model the outcome for prompts the edit did not
    name is not monotone in λ' or in the epochs (notebook 05 shows it).  The λ' sweep for a
    shape was not repeated on this model.

    **In context, for a colour (the default since issue 19).**  The bare forms never touch the
    rows where the causal text encoder writes a colour into the next word ("star" in "a red
    star"), so the recipe also erases "a photo of a red {shape}" toward "a photo of a grey
    {shape}" and preserves the other colours in that sentence (:data:`IN_CONTEXT_TEMPLATE`, a
    form no measurement asks).  Chosen on seeds 0-7 (8 seeds x 4 shapes; shapes and colour
    judged on 32 seeds per shape), the bare recipe and the in-context one (RECE 2 epochs):

    ==========  =======  ===================  ===================  ==================  ===============
    colour      method   still showing        worst shape kept     judged grey         preservation
    ==========  =======  ===================  ===================  ==================  ===============
    red         UCE      3% -> 0%             44% -> 100%          82% -> 100%         0.79 -> 1.00
    red         RECE     0% -> 0%             78% -> 100%          100% -> 100%        0.82 -> 1.00
    green       RECE     0% -> 0%             100% -> 100%         100% -> 100%        0.91 -> 1.00
    blue        RECE     0% -> 0%             100% -> 100%         98% -> 20%          0.84 -> 1.00
    yellow      RECE     0% -> 0%             100% -> 100%         100% -> 100%        0.91 -> 1.00
    ==========  =======  ===================  ===================  ==================  ===============

    (UCE in context: 0% showing, every shape kept, grey 100%, preservation 1.00 for all four.
    The embedding derived after RECE in context still brings the colour back in 0-34% of
    pictures: red 19%, yellow 34%, green and blue 0%.)
    RECE's later edits can carry the colour past grey (blue: 20% grey, the rest another
    colour); one epoch instead of two moved that failure to green (0% grey), so two stay.
    **A shape goes toward a circle, in context.**  Toward ``""`` an erased "a red triangle"
    becomes whatever the model draws when told nothing, and that habit *is* mostly a triangle:
    ``""`` draws a triangle in 39% of pictures, a square 28%, a star 20%, a circle 12.5%
    (seeds 0-63), so "still showing" cannot fall below that chance level.  The circle, the
    shape the habit draws least, plays grey's part (:data:`rece_lite.tiny.world.NEUTRAL_SHAPE`):
    "a photo of a red triangle" -> "a photo of a red circle".  Seeds 0-7 (still showing of
    40 pictures; preservation; 32 seeds per colour for the colour kept):

    ==========  =======  =====================  =====================  ==========================
    shape       method   ``""`` in context      circle, bare           circle, in context
    ==========  =======  =====================  =====================  ==========================
    square      UCE      45%, 1.00              68%, 0.69              0%, 1.00, colour 100%
    square      RECE     55%, 0.93              48%, 0.41              32%, 0.89, colour 100%
    triangle    UCE      57%, 1.00              28%, 0.62              0%, 1.00, colour 100%
    triangle    RECE     12%, 1.00              32%, 0.60              38%, 1.00, colour 100%
    star        UCE      --                     0%, 0.96               0%, 1.00, colour 100%
    star        RECE     --                     0%, 0.87               0%, 1.00, colour 100%
    ==========  =======  =====================  =====================  ==========================

    UCE toward the circle erases every shape tried; RECE's epoch brings some of the triangle
    and the square back (each epoch is fit to the derived rows, not to the sentences UCE
    already moved).  The circle itself, and grey, go toward ``""``, bare: in context they did
    no better (circle 47% still showing with UCE against 20% bare; grey 31% and 78% against
    19% and 25%).

    **RECE's epochs hold the erased forms (``hold_erased``, whenever the guide is a concept).**
    Official RECE preserves only the preserve set in its epochs; an epoch, fit to the derived
    c′ and those rows alone, can carry the sentences UCE already moved back toward the concept.
    Measured without it (``python -m rece_lite.tiny.report``, seeds 100-115): blue erased by
    RECE came out grey in 21% of pictures (yellow in the rest), the derived c′ still drew
    yellow in 36% and red in 19%, and 29-30% of square and triangle pictures showed the
    erased shape.  Each epoch also preserving the erase forms at the keys and values UCE gave
    them (seeds 0-7: still showing, preservation, derived c′ showing, colour grey or kept):

    ==========  ========  ============  ==========  =============
    concept     showing   preservation  derived c′  grey / kept
    ==========  ========  ============  ==========  =============
    red         0%        1.00          0%          100%
    green       0%        1.00          0%          100%
    blue        0%        1.00          0%          100%
    yellow      0%        1.00          0%          100%
    square      5%        0.87          3%          100%
    triangle    0%        1.00          0%          100%
    star        0%        1.00          0%          100%
    circle ("") 2%        0.80          6%          87%
    grey ("")   41%       1.00          59%         45%
    ==========  ========  ============  ==========  =============

    Toward ``""`` it is not set: held, grey got worse (not held: 25%, 1.00, 41%, 35%) and the
    circle about the same (not held: 5%, 0.80, 9%, 87%).

    Args:
        concept: a colour or shape of the world (or a synonym).
        context: also erase the concept *in context* (default: whenever the guide is another
            concept, not toward ``""``; see the tables above): for a colour,
            "a photo of a red {shape}" -> "a photo of a grey {shape}" for every shape, preserving
            the other colours in the same sentences; for a shape, "a photo of a {colour} triangle"
            -> "a photo of a {colour} circle" for every colour, preserving the other shapes so
            (toward ``""``: "a photo of a {colour} shape").
            The causal text encoder writes "red" into the "star" row of "a red star" too, which
            the bare forms never touch.  The sentences are :data:`IN_CONTEXT_TEMPLATE`'s, which no
            measurement asks ("a red star" is measured): an edit that names the measured prompts
            themselves would be graded on its own training rows.
        guide: what the erased concept should become: a concept of the same kind, or ``""``
            (the unconditional branch, the paper's default).  Default: the harmless colour
            :data:`rece_lite.tiny.world.NEUTRAL` (grey) for a colour, the circle
            (:data:`rece_lite.tiny.world.NEUTRAL_SHAPE`) for a shape, ``""`` for grey and the
            circle themselves.  With ``""`` an erased "a red star" is drawn as the model's
            unconditional habit, which need not be a star; with grey it stays a star.
    """
    c = world.Concept.parse(concept)
    if guide is None:
        neutral = world.NEUTRAL if c.kind == "colour" else world.NEUTRAL_SHAPE
        guide = neutral if c.name != neutral else ""
    if guide:
        g = world.Concept.parse(guide)
        if g.kind != c.kind or g.name == c.name:
            raise InputError(f"guide must be another {c.kind} than {c.name!r} (or '' for none), got {guide!r}")
        guides: str | tuple[str, ...] = _templates(c.kind, g.name)
    else:
        guides = ""
    recipe = Recipe(
        erase=_templates(c.kind, c.name),
        guide=guides,
        preserve=tuple(p for other in c.same_kind if other != c.name for p in _templates(c.kind, other)),
        reg_scale=0.01,
        epochs=2 if c.kind == "colour" else 1,
        rank_tol=TINY_RANK_TOL,
        hold_erased=bool(guide),
    )
    if context is None:
        context = bool(guide)
    return _in_context(recipe, c, guide) if context else recipe


#: The sentence form the in-context recipe erases and preserves in: a training-caption form that no
#: measurement uses (they ask "a red star", :meth:`rece_lite.tiny.world.Concept.prompts`), so what the
#: report and the notebooks measure is the edit's reach to sentences it was not given.
IN_CONTEXT_TEMPLATE = "a photo of a {c} {s}"


def _in_context(recipe: Recipe, c: world.Concept, guide: str) -> Recipe:
    """``recipe`` plus the concept in every sentence ``IN_CONTEXT_TEMPLATE`` can put it in (see :func:`tiny_recipe`)."""
    n = len(recipe.erase)
    guides = (recipe.guide,) * n if isinstance(recipe.guide, str) else recipe.guide
    say = IN_CONTEXT_TEMPLATE.format
    if c.kind == "colour":
        others = [o for o in world.COLOURS if o not in (c.name, guide)]
        erase = tuple(say(c=c.name, s=s) for s in world.SHAPES)
        to = tuple(say(c=guide, s=s) if guide else "" for s in world.SHAPES)
        keep = tuple(say(c=o, s=s) for o in others for s in world.SHAPES)
    else:
        others = [o for o in world.SHAPES if o not in (c.name, guide)]
        erase = tuple(say(c=col, s=c.name) for col in world.COLOURS)
        to = tuple(say(c=col, s=guide or "shape") for col in world.COLOURS)
        keep = tuple(say(c=col, s=o) for col in world.COLOURS for o in others)
    return replace(recipe, erase=recipe.erase + erase, guide=guides + to, preserve=recipe.preserve + keep)


def sd_recipe(concept: str) -> Recipe:
    """Real Stable Diffusion 1.x: the paper's settings for an object-like concept."""
    return Recipe(erase=(concept,), guide="", preserve=(), reg_scale=1e-3, epochs=1)


def recipe_for(
    model: str, concept: str | world.Concept, *, epochs: int | None = None, guide: str | None = None
) -> Recipe:
    """The recommended recipe: the miniature model's (``model == "tiny"``) or real SD's.

    Args:
        epochs: overrides RECE's epochs.
        guide: overrides the guide (the miniature model: see :func:`tiny_recipe`; real SD: a prompt).
    """
    if is_embedded(str(model)):  # "tiny" and its named variants
        recipe = tiny_recipe(concept, guide=guide)
    else:
        recipe = sd_recipe(str(concept))
        recipe = recipe if guide is None else replace(recipe, guide=guide)
    return recipe if epochs is None else replace(recipe, epochs=epochs)
