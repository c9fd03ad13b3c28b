"""Sampling split across processes, with the engine diffusers users already have (``accelerate``).

    accelerate launch --num_processes 4 -m rece_lite.cli bench --model tiny --concept red

Under ``accelerate launch`` the command wraps its work in :func:`split_sampling`; inside it,
:func:`rece_lite.pipeline.sample` cuts its (prompt, seed) jobs into the same batches as in one
process, runs only this process's share of the batches (round-robin) and gathers every
batch on every process.  Each picture has its own generator and each batch the same
composition as in one process, so the pictures — and every table made from them — are
the same with 1 process or N (with the same number of torch threads per process, since
threads change the rounding of batched kernels).  Work that is not sampling (the closed
forms, the soft prompt's optimisation, ESD's fine-tuning) is cheap or sequential and runs,
deterministically, on every process.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Split:
    """This process's place among ``world`` processes."""

    rank: int
    world: int

    def mine(self, n_batches: int) -> list[int]:
        """The batches this process computes: every ``world``-th, from ``rank``."""
        return list(range(self.rank, n_batches, self.world))


_split: ContextVar[Split | None] = ContextVar("rece_lite_split", default=None)


def current() -> Split | None:
    """The active split, or None (one process does every batch)."""
    return _split.get()


@contextlib.contextmanager
def split_sampling() -> Iterator[Split]:
    """Split :func:`rece_lite.pipeline.sample`'s batches across the processes ``accelerate launch`` started.

    In a plain single process this is a split of one: everything runs here, as without it.
    """
    from accelerate import PartialState

    state = PartialState()
    token = _split.set(Split(state.process_index, state.num_processes))
    try:
        yield _split.get()
    finally:
        _split.reset(token)


def is_main_process() -> bool:
    """True outside a split, and on the first process inside one (the one that writes files and prints)."""
    s = current()
    return s is None or s.rank == 0


def gather(done: dict[int, object]) -> dict[int, object]:
    """Every process's ``{batch index: result}`` merged, on every process (identity without a split)."""
    s = current()
    if s is None or s.world == 1:
        return done
    from accelerate.utils import gather_object

    merged: dict[int, object] = {}
    for part in gather_object([done]):
        merged.update(part)
    return merged
