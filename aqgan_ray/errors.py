"""The one exception type that means "the user asked for something we cannot do".

The CLI turns it into a one-line ``error: ...`` on stderr and exit status 2; anything else
escaping is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message says what was wrong, what was expected, and how to fix it."""


class PoolFailure(UserError):
    """The evaluators' Ray cluster failed under a run (a node died, evaluators keep dying or
    stall, the pool cannot be placed): nothing the user typed was wrong, but the message is
    as final, one line; what was evaluated is already in the store."""
