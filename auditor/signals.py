"""SIGINT and SIGTERM during a run.

CI runners and Kubernetes cancel a job with SIGTERM (then SIGKILL after a grace period); a person presses
Ctrl-C. Both must end the run the same way: the checks stop at their next step, a partial report marked
``interrupted`` is written, and the exit code is 130. :func:`terminate_like_interrupt` makes SIGTERM raise
:class:`Terminated` (a ``KeyboardInterrupt``) in the main thread, as SIGINT does.

While reports are written, a signal must not stop the writing half-way (one format missing, another saying
``pass``): :func:`deferred` records the signals instead, and the writer re-marks its reports as interrupted
before they are committed. A third signal while deferred aborts the writing (nothing is committed), so that a
reporter that hangs can still be stopped.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

_HANDLED = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM received: handled exactly like Ctrl-C."""


def describe(exc: BaseException | None) -> str:
    """How a run was interrupted, for messages and reports: ``Ctrl-C`` or ``SIGTERM``."""
    return "SIGTERM" if isinstance(exc, Terminated) else "Ctrl-C"


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def terminate_like_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread (restored afterwards)."""
    if not _in_main_thread():
        yield
        return

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@dataclass
class Deferred:
    """Signals received while :func:`deferred` was active, in order (``Ctrl-C`` / ``SIGTERM``)."""

    received: list[str] = field(default_factory=list)

    @property
    def caught(self) -> bool:
        """Whether any signal arrived."""
        return bool(self.received)

    @property
    def first(self) -> str:
        """The first signal's name."""
        return self.received[0] if self.received else ""


ABORT_AFTER = 3
"""The signal that aborts a deferred block (the third: a person pressing Ctrl-C again and again)."""


@contextlib.contextmanager
def deferred() -> Iterator[Deferred]:
    """Within the block, SIGINT and SIGTERM are recorded instead of raising (the :data:`ABORT_AFTER`-th raises
    ``KeyboardInterrupt``, or :class:`Terminated`). Outside the main thread this records nothing."""
    state = Deferred()
    if not _in_main_thread():
        yield state
        return

    def on_signal(signum: int, frame: FrameType | None) -> None:
        name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
        state.received.append(name)
        if len(state.received) >= ABORT_AFTER:
            raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    previous: dict[int, Any] = {}
    try:
        for sig in _HANDLED:
            previous[int(sig)] = signal.signal(sig, on_signal)
        yield state
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
