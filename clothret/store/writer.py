"""Who writes: the identity recorded in commit markers, catalogs, the index pointer and leases."""

from __future__ import annotations

import datetime as dt
import os
import socket


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="microseconds")


def writer_info(run: str = "") -> dict:
    """``{run, host, pid, at}`` of this process now (``run``: a flow run id, ``"cli"``, or empty)."""
    return {"run": run, "host": socket.gethostname(), "pid": os.getpid(), "at": iso(utc_now())}


def describe(info: dict | None) -> str:
    """A writer for a message: "run R on host H (pid P) at T"."""
    if not info:
        return "an unknown writer"
    run = f"run {info['run']} " if info.get("run") else ""
    return f"{run}on host {info.get('host', '?')} (pid {info.get('pid', '?')}) at {info.get('at', '?')}"


def process_is_dead(host: str, pid: int) -> bool:
    """Whether ``pid`` on ``host`` has certainly ended: only answerable on this very host."""
    if host != socket.gethostname() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, owned by another user
        return False
    return False
