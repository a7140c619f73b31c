"""Worker deaths, made visible: why a Dask worker process died and the last lines it logged.

Two plugins, registered by the flow's Dask client on every worker and nanny of the cluster (restarted ones
included), and a watch on the client's side:

- :class:`WorkerLogTee` (in each worker process) sends every log record the worker emits (Prefect task-run
  lines, warnings and errors of any library) to the scheduler as an event, so its last lines outlive a
  ``SIGKILL``; a fatal signal (``SIGSEGV``, ``SIGABRT``) also writes a Python traceback with ``faulthandler``.
- :class:`WorkerDeathReporter` (in each nanny) turns the nanny's own death message (``Worker process P was
  killed by signal S`` / ``exited with status N``, logged at INFO) into a warning and an event on
  :data:`DEATHS_TOPIC`, with the traceback of a fatal signal when there is one.
- :class:`WorkerDeathWatch` (the flow's client) receives each death, adds the worker's last log lines and
  hands a :class:`WorkerDeath` to a callback (the flow run's logger).

The same works for a LocalCluster, a LocalCUDACluster and workers of an existing scheduler started with
``dask worker`` (with its nanny: the default).
"""

from __future__ import annotations

import atexit
import contextlib
import faulthandler
import logging
import os
import re
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import localtime, strftime

from distributed.diagnostics.plugin import NannyPlugin, WorkerPlugin

logger = logging.getLogger(__name__)

DEATHS_TOPIC = "clothret-worker-died"
"""Scheduler event topic of worker deaths, one event per death, sent by the nanny."""

LAST_LINES = 20
"""Lines of a dead worker's log shown with its death."""

_LINE_CHARS = 400
_DEATH_MESSAGE = re.compile(r"Worker process (?P<pid>\d+) (?:was killed by|exited with status)")


def log_topic(worker_address: str) -> str:
    """Scheduler event topic holding the log lines of the worker at ``worker_address``."""
    return f"clothret-worker-log-{worker_address}"


def fault_file(pid: int) -> Path:
    """Where the worker process ``pid`` writes a traceback on a fatal signal (the nanny reads it)."""
    return Path(tempfile.gettempdir()) / "clothret-worker-faults" / f"{pid}.txt"


def format_line(record: logging.LogRecord) -> str:
    """One log line: time, level, task run (or logger) name and message, with an exception's last line."""
    who = getattr(record, "task_run_name", None) or getattr(record, "flow_run_name", None) or record.name
    text = record.getMessage()
    if record.exc_info and record.exc_info[1] is not None:
        exc = record.exc_info[1]
        text += f" [{type(exc).__name__}: {exc}]"
    line = f"{strftime('%H:%M:%S', localtime(record.created))} {record.levelname} {who}: {text}"
    return line if len(line) <= _LINE_CHARS else line[: _LINE_CHARS - 3] + "..."


class _EventTee(logging.Handler):
    """Sends each record as a scheduler event of the worker (never raises, never recurses)."""

    def __init__(self, worker, topic: str) -> None:
        super().__init__(level=logging.INFO)
        self.worker, self.topic = worker, topic
        self._sending = threading.local()

    def emit(self, record: logging.LogRecord) -> None:
        if getattr(self._sending, "active", False):
            return
        self._sending.active = True
        try:
            self.worker.log_event(self.topic, {"line": format_line(record)})
        except Exception:  # noqa: BLE001 - a closing worker has no stream to send on; its log goes on anyway
            pass
        finally:
            self._sending.active = False


def _tee_loggers() -> list[logging.Logger]:
    """The root logger, and the loggers whose records never reach it (dask's ``distributed``)."""
    loggers = [logging.getLogger()]
    for name in ("distributed", "prefect"):
        candidate = logging.getLogger(name)
        if not candidate.propagate:
            loggers.append(candidate)
    return loggers


_closed = False


def _exit_now_if_closed() -> None:
    """The last exit handler of a worker process that closed in order: end it at once.

    In a worker that ran Prefect tasks, the interpreter's own finalisation (after every exit handler has
    run) takes more than the 4 s its nanny waits before it kills the process, which then stops a cluster
    late and can make closing it fail with a ``TimeoutError``. Everything worth finishing is done by then.
    """
    if _closed:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(0)


def _configure_prefect_logging() -> None:
    """Prefect's logging configuration in this process, once (as a task run would do it later)."""
    try:
        from prefect.logging.configuration import ensure_logging_setup
    except ImportError:
        return
    ensure_logging_setup()


class WorkerLogTee(WorkerPlugin):
    """In each worker process: its log lines as scheduler events, and a traceback file on a fatal signal."""

    name = "clothret-worker-log"

    def setup(self, worker) -> None:
        if "prefect" not in sys.modules:  # every exit handler Prefect registers will run before this one
            atexit.register(_exit_now_if_closed)
        _configure_prefect_logging()  # before the handler is added: Prefect's set-up replaces the root's handlers
        self._handler = _EventTee(worker, log_topic(worker.address))
        self._loggers = _tee_loggers()
        for target in self._loggers:
            target.addHandler(self._handler)
        path = fault_file(os.getpid())
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._faults = path.open("w")
            faulthandler.enable(file=self._faults, all_threads=True)
        except OSError as exc:
            logger.warning("no traceback file for fatal signals in this worker (%s)", exc)
            self._faults = None

    def teardown(self, worker) -> None:
        global _closed
        _closed = True
        for target in self._loggers:
            target.removeHandler(self._handler)
        if self._faults is not None:
            faulthandler.disable()
            self._faults.close()
            with contextlib.suppress(OSError):
                os.unlink(self._faults.name)


class _DeathMessages(logging.Filter):
    """On the ``distributed.nanny`` logger of one process (a LocalCluster runs all its nannies in one):
    passes each death message on as a warning and tells the nanny whose worker died; drops the other
    records below the level the logger had before."""

    def __init__(self, threshold: int) -> None:
        super().__init__()
        self.threshold = threshold
        self.listeners: dict[int, Callable[[int, str], bool]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        match = _DEATH_MESSAGE.match(record.getMessage())
        claimed = match is not None and any(
            listener(int(match["pid"]), record.getMessage()) for listener in list(self.listeners.values())
        )
        if not claimed:
            return record.levelno >= self.threshold
        record.levelno, record.levelname = max(record.levelno, logging.WARNING), "WARNING"
        return True


_death_filter: _DeathMessages | None = None
_level_before = logging.NOTSET
_filter_lock = threading.Lock()


class WorkerDeathReporter(NannyPlugin):
    """In each nanny: every death of its worker process as a warning and an event on :data:`DEATHS_TOPIC`."""

    name = "clothret-worker-deaths"

    def setup(self, nanny) -> None:
        global _death_filter, _level_before
        nanny_logger = logging.getLogger("distributed.nanny")
        with _filter_lock:
            if _death_filter is None:
                _death_filter, _level_before = _DeathMessages(nanny_logger.getEffectiveLevel()), nanny_logger.level
                nanny_logger.addFilter(_death_filter)
                if nanny_logger.getEffectiveLevel() > logging.INFO:
                    nanny_logger.setLevel(logging.INFO)  # the death message is logged at INFO
            _death_filter.listeners[id(self)] = lambda pid, message: self._on_death(nanny, pid, message)

    def teardown(self, nanny) -> None:
        global _death_filter
        with _filter_lock:
            if _death_filter is None:
                return
            _death_filter.listeners.pop(id(self), None)
            if not _death_filter.listeners:
                nanny_logger = logging.getLogger("distributed.nanny")
                nanny_logger.removeFilter(_death_filter)
                nanny_logger.setLevel(_level_before)
                _death_filter = None

    def _on_death(self, nanny, pid: int, message: str) -> bool:
        """Report the death if it is this nanny's worker and the nanny did not end it itself (closing)."""
        process = getattr(getattr(nanny, "process", None), "process", None)
        if process is None or process.pid != pid or nanny.status.name != "running":
            return False
        worker = nanny.worker_address or ""
        nanny.loop.add_callback(self._report, nanny, worker, pid, message)
        return True

    @staticmethod
    def _report(nanny, worker: str, pid: int, message: str) -> None:
        path = fault_file(pid)
        faults = ""
        with contextlib.suppress(OSError):
            faults = path.read_text(errors="replace")[-8000:]
            path.unlink()
        nanny.log_event(DEATHS_TOPIC, {"worker": worker, "nanny": nanny.address, "pid": pid, "message": message,
                                       "faults": faults})


@dataclass(frozen=True)
class WorkerDeath:
    """One death of a worker process: the nanny's message, the worker's last log lines, and the traceback
    ``faulthandler`` wrote on a fatal signal (empty otherwise)."""

    worker: str
    pid: int
    message: str
    last_lines: tuple[str, ...] = ()
    faults: str = ""
    time: float = 0.0

    def report(self) -> str:
        """A few lines for a log: who died, how, and what it said last."""
        lines = [f"Dask worker {self.worker} died: {self.message}."]
        if self.last_lines:
            lines.append(f"Its last {len(self.last_lines)} log lines:")
            lines += [f"  | {line}" for line in self.last_lines]
        else:
            lines.append("It logged nothing before it died.")
        if self.faults.strip():
            lines.append("Traceback written on the fatal signal:")
            lines += [f"  | {line}" for line in _crashed_thread(self.faults)]
        return "\n".join(lines)


def _crashed_thread(faults: str, limit: int = 40) -> list[str]:
    """faulthandler's header and the traceback of the thread that crashed (the other threads left out)."""
    lines = faults.strip().splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("Current thread")), 0)
    block: list[str] = []
    for line in lines[start:]:
        if not line.strip() and block:
            break
        block.append(line)
    return [line for line in lines[:start] if line.strip()] + block[:limit]


@dataclass
class WorkerDeathWatch:
    """On the flow's client: registers the plugins and hands each worker death to ``on_death``."""

    client: object
    on_death: Callable[[WorkerDeath], None]
    last_lines: int = LAST_LINES
    deaths: list[WorkerDeath] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.client.register_plugin(WorkerLogTee(), name=WorkerLogTee.name)
        self.client.register_plugin(WorkerDeathReporter(), name=WorkerDeathReporter.name)
        self.client.subscribe_topic(DEATHS_TOPIC, self._on_event)

    async def _on_event(self, event: tuple[float, dict]) -> None:
        when, msg = event
        lines: tuple[str, ...] = ()
        if msg.get("worker"):
            try:
                events = await self.client.scheduler.events(topic=log_topic(msg["worker"]))
                lines = tuple(e[1]["line"] for e in events[-self.last_lines :] if isinstance(e[1], dict))
            except Exception as exc:  # noqa: BLE001 - the death is reported even without its lines
                logger.warning("could not read the log lines of worker %s: %s", msg["worker"], exc)
        death = WorkerDeath(msg.get("worker") or "?", int(msg.get("pid") or 0), msg.get("message", "died"), lines,
                            msg.get("faults", ""), when)
        self.deaths.append(death)
        try:
            self.on_death(death)
        except Exception:  # noqa: BLE001 - reporting must never take the client down
            logger.exception("could not report the death of worker %s", death.worker)

    def last_death_of(self, worker: str) -> WorkerDeath | None:
        """The latest death of the worker at address ``worker`` seen so far."""
        return next((d for d in reversed(self.deaths) if d.worker == worker), None)

    def close(self) -> None:
        """Stop listening (the plugins stay on the workers until the cluster closes)."""
        with contextlib.suppress(Exception):
            self.client.unsubscribe_topic(DEATHS_TOPIC)
