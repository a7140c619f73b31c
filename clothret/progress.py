"""Progress of long loops: a tqdm bar on an interactive terminal, periodic log lines everywhere else.

When the output is not a terminal (CI logs, Prefect workers, ``make demo > log``) a tqdm bar writes one
``\\r`` frame per refresh into the log; there :func:`progress` returns a :class:`LogProgress` instead, with
the same methods (iterate, ``update``, ``set_postfix``, ``close``), which logs one line every
``log_every_s`` seconds and one at the end. ``CLOTHRET_PROGRESS=bar|log|off`` overrides the choice.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

logger = logging.getLogger(__name__)

LOG_EVERY_S = 30.0
MODES = ("bar", "log", "off")


class LogProgress:
    """A tqdm look-alike that logs ``desc: n/total (pct), postfix, rate, eta`` every ``log_every_s`` seconds."""

    def __init__(
        self, iterable: Iterable | None = None, *, total: int | None = None, initial: int = 0, desc: str = "",
        log_every_s: float = LOG_EVERY_S, unit: str = "it",
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.n, self.desc, self.unit = iterable, total, initial, desc, unit
        self.log_every_s = log_every_s
        self._initial = initial
        self._postfix = ""
        self._start = self._last = time.perf_counter()
        self._closed = False

    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("this progress has no iterable: use update()")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def set_postfix(self, **values: Any) -> None:
        self._postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.perf_counter()
        if now - self._last >= self.log_every_s:
            self._last = now
            self._log(now)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self._log(time.perf_counter(), final=True)

    def _log(self, now: float, final: bool = False) -> None:
        elapsed = now - self._start
        rate = (self.n - self._initial) / elapsed if elapsed > 0 else 0.0
        done = f"{self.n}/{self.total}" if self.total else str(self.n)
        parts = [f"{self.desc}: {done} {self.unit}"]
        if self.total:
            parts[0] += f" ({100.0 * self.n / self.total:.0f}%)"
        if self._postfix:
            parts.append(self._postfix)
        parts.append(f"{rate:.2f} {self.unit}/s")
        if final:
            parts.append(f"done in {elapsed:.0f} s")
        elif self.total and rate > 0:
            parts.append(f"eta {(self.total - self.n) / rate:.0f} s")
        logger.info(", ".join(parts))


def progress_mode(stream=None) -> str:
    """``bar`` on an interactive terminal, ``log`` elsewhere, unless ``CLOTHRET_PROGRESS`` says otherwise."""
    chosen = os.environ.get("CLOTHRET_PROGRESS", "").strip().lower()
    if chosen:
        if chosen not in MODES:
            raise ValueError(f"CLOTHRET_PROGRESS must be one of {', '.join(MODES)}, got {chosen!r}")
        return chosen
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "log"


def progress(
    iterable: Iterable | None = None, *, total: int | None = None, initial: int = 0, desc: str = "",
    disable: bool = False, leave: bool = True, log_every_s: float = LOG_EVERY_S, unit: str = "it",
):
    """A progress tracker for a loop: tqdm on a terminal, :class:`LogProgress` elsewhere, a silent one when
    ``disable`` (or ``CLOTHRET_PROGRESS=off``)."""
    mode = "off" if disable else progress_mode()
    if mode == "bar":
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, initial=initial, desc=desc, leave=leave, unit=unit)
    if mode == "off":
        return _Silent(iterable)
    return LogProgress(iterable, total=total, initial=initial, desc=desc, log_every_s=log_every_s, unit=unit)


class _Silent:
    """Progress that says nothing."""

    def __init__(self, iterable: Iterable | None) -> None:
        self.iterable = iterable

    def __iter__(self) -> Iterator:
        return iter(self.iterable if self.iterable is not None else ())

    def set_postfix(self, **values: Any) -> None:
        pass

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


__all__ = ["LOG_EVERY_S", "LogProgress", "progress", "progress_mode"]
