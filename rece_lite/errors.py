"""The one exception class for a user's mistake.

:class:`InputError` is raised where the library refuses what it was given (a setting out of
range, a prompt the tokenizer does not know, a patch for another model, a malformed prompt
file).  It is a ``ValueError``, so callers' ``except ValueError`` still catches it; the
command (:func:`rece_lite.cli.main`) reports it, and :class:`rece_lite.files.UsageError`, in
one line with exit status 2, while any other exception is a bug and keeps its traceback.
Standard library only: the command imports this before torch.
"""

from __future__ import annotations


class InputError(ValueError):
    """The caller gave something the library cannot use; the message names it and what to give instead."""
