"""infra/gpu/engine_run.sh runs through on the CPU (small models, ENGINE_RUN_ARGS), so that a GPU session's
few minutes are never spent on a broken script: every step exits 0 and the summary holds their tables."""

from __future__ import annotations

import os
import re
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
    assert summary.count("engine (run_segment)") == 3
    assert re.search(r"\b\d+ skipped\b", summary) and "deselected" in summary  # only the tests marked gpu
    assert "cuda_graphs=true" in summary  # the variants' rows
    for name in ("main", "batch32x", "mixed"):
        assert (tmp_path / name / "gpu_throughput.json").is_file() and not (tmp_path / name / "images").exists()
    assert sorted(p.name for p in (tmp_path / "main").glob("profile_*.txt")) == [
        "profile_faster_rcnn.txt", "profile_fcos.txt", "profile_retinanet.txt"]


def test_the_steps_end_within_their_budget(tmp_path):
    """With STEPS_BUDGET_S, a step's limit is cut to what is left and a step left under 15 s is skipped, so that
    the summary is written before the device tool's own limit ends the command."""
    script = tmp_path / "run.sh"
    script.write_text(f'''. "{ROOT / "infra" / "gpu" / "steps.sh"}" "$@"
step quick 100 "$out/quick.log" sleep 1
step long 100 "$out/long.log" sleep 60
step last 100 "$out/last.log" echo ran
echo "last returned $?" >> "$out/summary.txt"
''')
    env = {**os.environ, "STEPS_BUDGET_S": "20"}
    done = subprocess.run(["bash", str(script), str(tmp_path / "out")], env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    lines = (tmp_path / "out" / "summary.txt").read_text().splitlines()
    assert re.fullmatch(r"quick: exit 0 in [12] s", lines[0]), lines
    assert re.fullmatch(r"long: exit 124 in 1[89] s \(time limit 1[89] s\)", lines[1]), lines  # cut from 100 s
    assert lines[2:] == ["last: skipped, the run's budget (STEPS_BUDGET_S=20) is spent", "last returned 124"]
    assert not (tmp_path / "out" / "last.log").exists()
