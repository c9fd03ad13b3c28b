"""The erasure methods by name: the one registry the command, :mod:`rece_lite.measure`, the bench
and the prompt-file run read.

Each :class:`Method` runs one edit of a pipeline from a :class:`rece_lite.recipes.Recipe`, in
place, and returns an :class:`Erased`: the patch and, for RECE, the embeddings it derived.
``rece-lite erase --method`` offers :data:`METHODS`' names, the bench has one row per method
(after the original model and ESD-x), and a name that is not here is refused naming the ones
that are (:func:`get`).

Adding a method is one entry in :data:`METHODS`; nothing else changes.  For a null-space edit
in ``rece_lite/null_space.py`` with ``null_space_erase(pipe, erase, guide, preserve, **settings)
-> Patch``::

    def _null_space(pipe, recipe, progress):
        from rece_lite.null_space import null_space_erase  # imported when run: `--help` stays fast

        return Erased(null_space_erase(pipe, **recipe.uce_kwargs()))


    METHODS = {
        ...,
        "null_space": Method("null_space", "NULL", "UCE's edit restricted to ...", _null_space),
    }

Standard library only at import time (the command reads the names before torch is imported);
each runner imports its algorithm when called.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from rece_lite.errors import InputError

if TYPE_CHECKING:
    import torch

    from rece_lite.patch import Patch
    from rece_lite.pipeline import Pipeline
    from rece_lite.recipes import Recipe


@dataclass(frozen=True)
class Erased:
    """What one method's run left.

    Attributes:
        patch: the edited matrices (already written into the pipeline).
        derived: RECE's derived embeddings, one entry per epoch (empty for a method that derives none).
    """

    patch: Patch
    derived: list[torch.Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class Method:
    """One erasure method.

    Attributes:
        name: the registry key and ``--method`` value (lower case).
        label: its name in tables and reports (``"UCE"``).
        description: one line for ``--help`` and the docs.
        run: ``run(pipe, recipe, progress) -> Erased``: erase ``recipe`` from ``pipe`` in place.
        compared: a row of the paper's comparison (the bench, the demo's and the prompt-file run's
            tables).  The null-space edit is offered by ``--method`` and :mod:`rece_lite.measure`
            but is not a row: it joins the comparison once it wins on the world (issue 21's bar:
            preservation >= 95% with <= 5% still showing, on held-out seeds), which it does not yet.
    """

    name: str
    label: str
    description: str
    run: Callable[[Pipeline, Recipe, bool], Erased]
    compared: bool = True


def _uce(pipe, recipe, progress: bool) -> Erased:
    from rece_lite.erase import uce_erase

    return Erased(uce_erase(pipe, **recipe.uce_kwargs()))


def _rece(pipe, recipe, progress: bool) -> Erased:
    from rece_lite.erase import rece_erase

    res = rece_erase(pipe, **recipe.rece_kwargs(), progress=progress)
    return Erased(res.patch, list(res.derived))


#: name -> :class:`Method`, in the order tables show them.
METHODS: dict[str, Method] = {
    "uce": Method("uce", "UCE", "UCE's closed form: one edit of every K/V matrix (Gandikota et al., 2024)", _uce),
    "rece": Method(
        "rece",
        "RECE",
        "UCE, then per epoch: derive the embedding that undoes the edit and erase it too (Gong et al., 2024)",
        _rece,
    ),
}


def _null_space(pipe, recipe, progress: bool) -> Erased:
    from rece_lite.null_space import null_space_erase

    return Erased(null_space_erase(pipe, **recipe.null_space_kwargs()))


METHODS["null_space"] = Method(
    "null_space",
    "null space",
    "UCE's edit confined to the null space of the preserved rows, which stay exact (SPEED, AlphaEdit)",
    _null_space,
    compared=False,
)


def compared() -> tuple[Method, ...]:
    """The methods that are rows of the paper's comparison (:attr:`Method.compared`), in order."""
    return tuple(m for m in METHODS.values() if m.compared)


def names() -> tuple[str, ...]:
    """The registered methods' names, in order."""
    return tuple(METHODS)


def get(name: str) -> Method:
    """The method called ``name`` (or by its label, any case); an :class:`~rece_lite.errors.InputError` naming
    the known ones otherwise."""
    if isinstance(name, str):
        for method in METHODS.values():
            if name.lower() in (method.name, method.label.lower()):
                return method
    raise InputError(f"method must be one of {', '.join(METHODS)}, got {name!r}")
