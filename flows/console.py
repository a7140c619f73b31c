"""Prefect's console output without tracebacks, for command-line runs that end in one error line.

A failing task or flow logs its exception with the traceback; the console handler prints all of it
(~60 lines) before the command prints its own one-line error. :func:`console_without_tracebacks` keeps
the log lines and drops the tracebacks on the console only: the API handler still sends them to the
server, where the UI shows them. Dask worker processes started inside the block (a local cluster)
configure their logging from the environment, so it names :class:`TracebackFreeConsoleHandler` there.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
from collections.abc import Iterator

from prefect.logging.handlers import PrefectConsoleHandler

HANDLER_CLASS_ENV = "PREFECT_LOGGING_HANDLERS_CONSOLE_CLASS"
"""Prefect's override of the ``console`` handler's class in its logging configuration."""


def without_traceback(record: logging.LogRecord) -> logging.LogRecord:
    """The record itself when it carries no traceback, else a copy without one (the original is untouched)."""
    if not (record.exc_info or record.exc_text or record.stack_info):
        return record
    quiet = copy.copy(record)
    quiet.exc_info, quiet.exc_text, quiet.stack_info = None, None, None
    return quiet


class TracebackFreeConsoleHandler(PrefectConsoleHandler):
    """Prefect's console handler, printing each record without its traceback."""

    def emit(self, record: logging.LogRecord) -> None:
        super().emit(without_traceback(record))


class _TracebackFreeFormatter(logging.Formatter):
    """Formats with another formatter, leaving the traceback out."""

    def __init__(self, inner: logging.Formatter) -> None:
        super().__init__()
        self.inner = inner

    def format(self, record: logging.LogRecord) -> str:
        return self.inner.format(without_traceback(record))


def _console_handlers() -> list[logging.Handler]:
    """Prefect's console handlers and plain stream handlers (``logging.basicConfig``'s: Prefect leaves the
    root logger's handlers alone when the application configured one)."""
    loggers = [logging.getLogger()] + [
        lg for lg in logging.Logger.manager.loggerDict.values() if isinstance(lg, logging.Logger)
    ]
    found = {
        id(h): h
        for lg in loggers
        for h in lg.handlers
        if isinstance(h, PrefectConsoleHandler) or type(h) is logging.StreamHandler
    }
    return list(found.values())


@contextlib.contextmanager
def console_without_tracebacks() -> Iterator[None]:
    """Inside the block, Prefect's console handlers (here and in worker processes started here) print
    log lines without tracebacks."""
    handlers = _console_handlers()
    formatters = {id(h): h.formatter for h in handlers}
    previous_class = os.environ.get(HANDLER_CLASS_ENV)
    for handler in handlers:
        handler.setFormatter(_TracebackFreeFormatter(handler.formatter or logging.Formatter()))
    os.environ[HANDLER_CLASS_ENV] = f"{__name__}.{TracebackFreeConsoleHandler.__name__}"
    try:
        yield
    finally:
        for handler in handlers:
            handler.setFormatter(formatters[id(handler)])
        if previous_class is None:
            os.environ.pop(HANDLER_CLASS_ENV, None)
        else:
            os.environ[HANDLER_CLASS_ENV] = previous_class
