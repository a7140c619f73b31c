"""Progress off a terminal: periodic log lines instead of tqdm's carriage-return frames."""

from __future__ import annotations

import io
import logging

import pytest

from clothret.progress import LogProgress, progress, progress_mode


def test_off_a_terminal_progress_logs_lines_not_frames(caplog, capsys, monkeypatch):
    monkeypatch.delenv("CLOTHRET_PROGRESS", raising=False)
    assert progress_mode(io.StringIO()) == "log"
    caplog.set_level(logging.INFO, logger="clothret.progress")
    bar = progress(range(5), desc="train embedder", unit="step", log_every_s=3600)
    assert isinstance(bar, LogProgress)
    assert list(bar) == [0, 1, 2, 3, 4]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and lines[0].startswith("train embedder: 5/5 step (100%)") and "done in" in lines[0]
    assert "\r" not in capsys.readouterr().err


def test_log_progress_logs_every_interval_with_postfix_and_eta(caplog):
    caplog.set_level(logging.INFO, logger="clothret.progress")
    bar = LogProgress(total=4, initial=1, desc="train detector", log_every_s=0.0, unit="step")
    bar.set_postfix(loss="0.123")
    bar.update(1)
    bar.close()
    bar.close()  # closing twice logs once
    first, last = (r.getMessage() for r in caplog.records)
    assert first.startswith("train detector: 2/4 step (50%), loss=0.123") and "eta" in first
    assert last.startswith("train detector: 2/4 step (50%)") and "done in" in last


def test_progress_mode_follows_the_environment(monkeypatch):
    monkeypatch.setenv("CLOTHRET_PROGRESS", "off")
    silent = progress([1, 2], desc="x")
    assert list(silent) == [1, 2] and not isinstance(silent, LogProgress)
    monkeypatch.setenv("CLOTHRET_PROGRESS", "fancy")
    with pytest.raises(ValueError, match="bar, log, off"):
        progress_mode()
