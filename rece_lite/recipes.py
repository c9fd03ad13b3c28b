"""Recommended erasure settings, per model (the ones the notebooks justify).

The paper's settings (official README): λ = 0.1 and preserve scale 0.1 for every
concept; λ' = 0.1 with 2-3 epochs for unsafe concepts, λ' = 1e-3 with 1 epoch for
styles and hard objects.  For the miniature model, notebooks 03-05 measure what
works; the choices and their numbers are recorded here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rece_lite.tiny import world


@dataclass(frozen=True)
class Recipe:
    """Everything :func:`rece_lite.uce_erase` / :func:`rece_lite.rece_erase` need besides the pipeline."""

    erase: tuple[str, ...]
    guide: str = ""
    preserve: tuple[str, ...] = ()
    lamb: float = 0.1
    erase_scale: float = 1.0
    preserve_scale: float = 0.1
    reg: str = "zero"
    reg_scale: float = 0.1
    epochs: int = 2

    def uce_kwargs(self) -> dict:
        return dict(
            erase=list(self.erase),
            guide=self.guide,
            preserve=list(self.preserve),
            lamb=self.lamb,
            erase_scale=self.erase_scale,
            preserve_scale=self.preserve_scale,
        )

    def rece_kwargs(self) -> dict:
        kw = self.uce_kwargs()
        kw["concepts"] = kw.pop("erase")
        return dict(kw, reg=self.reg, reg_scale=self.reg_scale, epochs=self.epochs)

    def as_dict(self) -> dict:
        return asdict(self)


def tiny_recipe(concept: str) -> Recipe:
    """The miniature model's recipe: erase the concept word toward the empty prompt,
    preserving the other concepts of the same kind (the other colours for a colour)."""
    from rece_lite.evaluate import concept_of

    kind, name = concept_of(concept)
    same_kind = world.COLOURS if kind == "colour" else world.SHAPES
    return Recipe(erase=(name,), guide="", preserve=tuple(c for c in same_kind if c != name))


def sd_recipe(concept: str) -> Recipe:
    """Real Stable Diffusion 1.x: the paper's settings for an object-like concept."""
    return Recipe(erase=(concept,), guide="", preserve=(), reg_scale=1e-3, epochs=1)
