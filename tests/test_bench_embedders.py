"""bench/embedders.py at its smallest size: it runs, and its last line is the JSON it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_bench_embedders_tiny_prints_a_table_and_the_json_line(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "embedders.py"), "--size", "tiny", "--threads", "1", "--out", str(tmp_path)],
        cwd=ROOT, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    expected = {"gem", "cgd-gm", "cgd-gms", "cgd-gm-softmax", "r18d-cgd-gm", "concat-a-b"}
    assert set(summary["configs"]) == expected
    for row in summary["configs"].values():
        assert set(row) == {"acc@1", "acc@10"} and 0.0 <= row["acc@1"] <= row["acc@10"] <= 1.0
    assert summary["steps"] == 3 and summary["num_queries"] > 0
    assert any(line.startswith("concat-a-b") for line in lines)  # the table, one row per configuration
    assert (tmp_path / "weights" / "embedder-cgd-gm.safetensors").exists()
