"""One apply as a list of undoable steps: the iptables restores of each family, the native nft transaction, and
what the rules rely on outside the tables (``::6`` on lo, the TPROXY policy route), and the removal of the other
capture kind under ``--reconcile``. ``run_steps`` runs them in order; if one fails, every step it started
(the failing one included) is undone in reverse order, so exit 1 always means "as before".
"""

from __future__ import annotations

from netinit.errors import ApplyError, NetinitError
from netinit.typing_lite import NamedTuple

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence


class Step(NamedTuple):
    """``do`` one change; ``undo`` puts back what ``do`` changed, also after a ``do`` that failed half-way
    (a step records what it did as it goes). Both raise ``NetinitError`` on failure."""

    name: str
    do: Callable[[], None]
    undo: Callable[[], None]


def run_steps(steps: Sequence[Step]) -> None:
    """Run ``steps``; on a failure undo the started ones (newest first) and raise one ``ApplyError`` that says
    what failed and what was rolled back - the one message the user sees."""
    started: list[Step] = []
    try:
        for step in steps:
            started.append(step)
            step.do()
    except NetinitError as e:
        failed: list[str] = []
        for step in reversed(started):
            try:
                step.undo()
            except NetinitError as undo_error:
                failed.append(f"{step.name}: {undo_error}")
        names = ", ".join(s.name for s in started)
        if failed:
            raise ApplyError(f"{e}; ROLLBACK ALSO FAILED: {'; '.join(failed)}") from e
        raise ApplyError(f"{e} (state rolled back to the snapshot: {names})") from e
