"""Progress lines with an ETA for long stages (students i/N, epochs), on a terminal only.

Shown when stderr is a terminal and ``CI`` is not set; never in logs, pipes or CI (the log
lines say the same at each student's and epoch's end). ``KDPRUNE_PROGRESS=1`` forces them on,
``KDPRUNE_PROGRESS=0`` off. tqdm draws them (elapsed<remaining, rate).
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from typing import Iterator, Optional, TextIO

_ACTIVE: list = []  # the bars open in this process, innermost last
_LOCK = threading.Lock()


def enabled(stream: Optional[TextIO] = None) -> bool:
    forced = os.environ.get("KDPRUNE_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("CI")


@contextlib.contextmanager
def progress(desc: str, total: int, unit: str, stream: Optional[TextIO] = None) -> Iterator:
    """A bar of ``total`` ``unit``s; ``bar.update(1)`` per unit done. A disabled bar draws nothing."""
    from tqdm import tqdm

    stream = stream or sys.stderr
    bar = tqdm(total=total, desc=desc, unit=unit, file=stream, disable=not enabled(stream), leave=False,
               dynamic_ncols=True, bar_format="{desc}: {n_fmt}/{total_fmt} {unit}s [{elapsed}<{remaining}]{postfix}")
    with _LOCK:
        _ACTIVE.append(bar)
    try:
        yield bar
    finally:
        with _LOCK:
            _ACTIVE.remove(bar)
        bar.close()


def note(text: str) -> None:
    """Show ``text`` (e.g. which student is at which epoch) beside the innermost open bar."""
    with _LOCK:
        bar = _ACTIVE[-1] if _ACTIVE else None
    if bar is not None and not bar.disable:
        bar.set_postfix_str(text, refresh=True)
