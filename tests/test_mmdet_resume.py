"""Resuming an mmdetection run unpickles the run's own checkpoints and nothing else (no mmdetection needed:
the runner here is any object with a ``resume(filename)`` that calls ``torch.load``)."""

from __future__ import annotations

import os
import pickle
from datetime import date

import pytest
import torch

from clothret.detection.mmdet_training import unpickle_only_own_checkpoints


class _Runner:
    def resume(self, filename: str) -> dict:
        return torch.load(filename)


def _checkpoint(path) -> str:
    torch.save({"meta": {"saved": date(2026, 11, 28)}, "state_dict": {"w": torch.ones(2)}}, path)  # a pickled object
    return str(path)


@pytest.mark.filterwarnings("ignore:Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD:UserWarning")
def test_resume_unpickles_only_checkpoints_inside_the_work_folder(tmp_path):
    work, elsewhere = tmp_path / "work", tmp_path / "zoo"
    work.mkdir(), elsewhere.mkdir()
    own, foreign = _checkpoint(work / "iter_4.pth"), _checkpoint(elsewhere / "model.pth")
    runner = _Runner()
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        runner.resume(own)  # torch's default refuses the pickled object
    unpickle_only_own_checkpoints(runner, str(work))
    assert runner.resume(own)["meta"]["saved"] == date(2026, 11, 28)
    assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ  # only during the resume
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        runner.resume(foreign)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        torch.load(own)  # nor any other load of the run
