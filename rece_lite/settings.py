"""Every default of the edits and of sampling, stated once.

The functions take these values as their keyword defaults (``lamb: float = EDIT.lamb``), the
recipes build on them, and the reports write ``asdict(...)`` of the settings actually used
instead of restating numbers.  Change a default here and every signature, recipe and report
follows.  Standard library only: the command and :mod:`rece_lite.closed_form` import it.

============================  =====================================  ==================================
value                         default                                used by
============================  =====================================  ==================================
:data:`EDIT`                  λ = 0.1, s_e = 1.0, s_p = 0.1          UCE, RECE's edits, ``Recipe``
:data:`RECE`                  3 epochs, ``reg="zero"``, λ' = 0.1     ``rece_erase``, ``derive_embedding``
:data:`SAMPLING`              20 steps, guidance 6.0                 ``sample``, measure, bench, reports
:data:`NULL_SPACE`            rank_tol = 1e-6                        ``null_space_erase``, ``Recipe``
``Recipe.epochs``             2 (see :class:`rece_lite.recipes.Recipe`)
============================  =====================================  ==================================
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EditSettings:
    """UCE's closed form (UCE eq. 7): ``λ‖W'−W‖² + s_e Σ‖W'c_i − v*_i‖² + s_p Σ‖W'c_j − W c_j‖²``.

    Attributes:
        lamb: λ > 0, the pull toward the current weights (the paper's 0.1).
        erase_scale: s_e ≥ 0, the weight of the erased concepts.
        preserve_scale: s_p ≥ 0, the weight of the preserved ones (the paper's 0.1).
    """

    lamb: float = 0.1
    erase_scale: float = 1.0
    preserve_scale: float = 0.1


@dataclass(frozen=True)
class ReceSettings:
    """RECE's loop and derivation (Gong et al., §3.2-3.3).

    Attributes:
        epochs: rounds of derive-an-embedding + erase-it after the UCE edit.  3 is the top of
            the paper's range for unsafe concepts ("2-3 epochs"), the most a caller of
            :func:`rece_lite.rece_erase` gets without choosing; a :class:`rece_lite.recipes.Recipe`
            defaults to 2, the miniature model's measured colour recipe (its own docstring).
        reg: the derivation's regulariser, ``"zero" | "standard" | "surrogate"``.
        reg_scale: λ', its weight (the paper's 0.1 for unsafe concepts).
    """

    epochs: int = 3
    reg: str = "zero"
    reg_scale: float = 0.1


@dataclass(frozen=True)
class NullSpaceSettings:
    """The null-space edit (:func:`rece_lite.null_space.null_space_erase`).

    Attributes:
        rank_tol: kept directions with singular value above ``rank_tol · σ_max`` are held
            exactly; 1e-6 holds every one up to rounding.  The miniature model's recipe holds only
            the main ones (:data:`rece_lite.null_space.TINY_RANK_TOL`: its 64 dimensions fill up).
    """

    rank_tol: float = 1e-6


@dataclass(frozen=True)
class SamplingSettings:
    """How pictures are drawn (:func:`rece_lite.sample`).

    Attributes:
        steps: denoising steps of the scheduler.
        guidance: the classifier-free guidance scale.
    """

    steps: int = 20
    guidance: float = 6.0


#: The defaults, one value each.
EDIT = EditSettings()
RECE = ReceSettings()
SAMPLING = SamplingSettings()
NULL_SPACE = NullSpaceSettings()
