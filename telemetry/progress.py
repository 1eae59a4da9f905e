"""Progress bars with an ETA for long stages (epochs, proxy runs, students, evaluation), on a terminal only.

Shown when stderr is a terminal and ``CI`` is not set; never in logs, pipes or CI (the log
lines say the same at each student's and epoch's end). ``KDPRUNE_PROGRESS=1`` forces them on,
``KDPRUNE_PROGRESS=0`` off. tqdm draws them (elapsed<remaining, rate).

One clean line per event: while a bar is drawn, the console's log handlers (Prefect's, on the root
logger) are stood in for by :class:`BarSafeHandler`, which has tqdm clear the bars, lets the
handler write its line, and has tqdm redraw the bars below it (tqdm's ``external_write_mode``, what
``tqdm.write`` does). Without it a log line was glued to the bar drawn before it on the same line
(``[00:07<02:05]13:04:04.681 | INFO ...``). The handlers are put back when the last bar closes.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from typing import Iterator, Optional, TextIO

_ACTIVE: list = []  # the bars open in this process, innermost last
_LOCK = threading.Lock()
_SWAPPED: list[tuple[logging.Logger, logging.Handler, "BarSafeHandler"]] = []  # while bars are drawn


def enabled(stream: Optional[TextIO] = None) -> bool:
    forced = os.environ.get("KDPRUNE_PROGRESS", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)()) and not os.environ.get("CI")


class BarSafeHandler(logging.Handler):
    """Stands in for a console handler while progress bars are drawn: each record goes to that
    handler (its level, filters, formatter and colours unchanged) with the bars cleared first and
    redrawn after, so the record is a line of its own."""

    def __init__(self, inner: logging.Handler):
        super().__init__(inner.level)
        self.inner = inner

    def handle(self, record: logging.LogRecord) -> bool:
        from tqdm import tqdm

        with tqdm.external_write_mode(file=getattr(self.inner, "stream", None)):
            return bool(self.inner.handle(record))

    def emit(self, record: logging.LogRecord) -> None:  # handle() does the work; kept for logging's interface
        self.handle(record)


def _console_handlers() -> list[tuple[logging.Logger, logging.Handler]]:
    """The handlers that write to this terminal (stdout or stderr): Prefect's console handler on the
    root logger, and any stream handler another logger has of its own."""
    loggers = [logging.getLogger()] + [lg for lg in list(logging.Logger.manager.loggerDict.values())
                                       if isinstance(lg, logging.Logger)]
    return [(lg, h) for lg in loggers for h in list(lg.handlers)
            if isinstance(h, logging.StreamHandler) and getattr(h, "stream", None) in (sys.stderr, sys.stdout)]


def _swap_in() -> None:
    for lg, h in _console_handlers():
        safe = BarSafeHandler(h)
        lg.addHandler(safe)
        lg.removeHandler(h)
        _SWAPPED.append((lg, h, safe))


def _swap_out() -> None:
    while _SWAPPED:
        lg, h, safe = _SWAPPED.pop()
        lg.addHandler(h)
        lg.removeHandler(safe)


@contextlib.contextmanager
def progress(desc: str, total: int, unit: str, stream: Optional[TextIO] = None) -> Iterator:
    """A bar of ``total`` ``unit``s; ``bar.update(1)`` per unit done. A disabled bar draws nothing."""
    from tqdm import tqdm

    stream = stream or sys.stderr
    bar = tqdm(total=total, desc=desc, unit=unit, file=stream, disable=not enabled(stream), leave=False,
               dynamic_ncols=True, bar_format="{desc}: {n_fmt}/{total_fmt} {unit}s [{elapsed}<{remaining}]{postfix}")
    with _LOCK:
        if not bar.disable and not any(not b.disable for b in _ACTIVE):
            _swap_in()
        _ACTIVE.append(bar)
    try:
        yield bar
    finally:
        with _LOCK:
            _ACTIVE.remove(bar)
            if not any(not b.disable for b in _ACTIVE):
                _swap_out()
        bar.close()


def note(text: str) -> None:
    """Show ``text`` (e.g. which student is at which epoch) beside the innermost open bar."""
    with _LOCK:
        bar = _ACTIVE[-1] if _ACTIVE else None
    if bar is not None and not bar.disable:
        bar.set_postfix_str(text, refresh=True)
