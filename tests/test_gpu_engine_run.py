"""infra/gpu/engine_run.sh runs through on the CPU (small models, ENGINE_RUN_ARGS), so that a GPU session's
few minutes are never spent on a broken script: every step exits 0 and the summary holds their tables."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_engine_run_script_runs_each_step_and_writes_its_summary(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_WAIT_POLICY": "PASSIVE",
           "ENGINE_RUN_ARGS": "--small --device cpu --images 24 --threads 1"}
    done = subprocess.run([str(ROOT / "infra" / "gpu" / "engine_run.sh"), str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = (tmp_path / "summary.txt").read_text()
    steps = [line for line in summary.splitlines() if ": exit " in line]
    assert [line.split(":")[0] for line in steps] == ["main", "batch32x", "mixed", "tests"], summary
    assert all(": exit 0 in " in line for line in steps), summary
    assert summary.count("engine (run_segment)") == 3 and "passed" in summary
    assert "cuda_graphs=true" in summary  # the variants' rows
    for name in ("main", "batch32x", "mixed"):
        assert (tmp_path / name / "gpu_throughput.json").is_file() and not (tmp_path / name / "images").exists()
    assert sorted(p.name for p in (tmp_path / "main").glob("profile_*.txt")) == [
        "profile_faster_rcnn.txt", "profile_fcos.txt", "profile_retinanet.txt"]
