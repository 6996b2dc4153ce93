"""Per-thread state of a running check: cooperative cancellation (per-check ``timeout_s``, Ctrl-C) and the
sink that batched model calls report their progress to.

Python threads cannot be killed; the runner marks a thread as cancelled and every batched model call (and
``ctx.check_cancelled()``) raises :class:`~auditor.errors.CheckCancelled` in that thread at its next step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from auditor.errors import CheckCancelled

_cancelled: set[int] = set()
_lock = threading.Lock()


def cancel(thread_ident: int | None) -> None:
    """Mark a thread as cancelled."""
    if thread_ident is None:
        return
    with _lock:
        _cancelled.add(thread_ident)


def forget(thread_ident: int | None) -> None:
    """Clear a thread's mark (thread idents are reused after a thread ends)."""
    with _lock:
        _cancelled.discard(thread_ident or -1)


def raise_if_cancelled() -> None:
    """Raise :class:`CheckCancelled` if the calling thread was cancelled."""
    if threading.get_ident() in _cancelled:
        raise CheckCancelled("cancelled by the runner")


_local = threading.local()


def set_progress_sink(sink: Callable[[int, int | None, str], None] | None) -> None:
    """Route progress of model calls made by the calling thread to ``sink(done, total, what)``."""
    _local.sink = sink


def progress_sink() -> Callable[[int, int | None, str], None] | None:
    """The calling thread's progress sink, if a check installed one."""
    return getattr(_local, "sink", None)
