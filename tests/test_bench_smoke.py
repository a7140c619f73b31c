"""Each bench script at its smallest size: it runs to the end and its last line is the JSON it promises.

(bench/embedders.py, bench/gpu_throughput.py and bench/scale.py have their own smoke tests beside the code
they measure.) Figures are not checked: a few training steps give models that find nothing yet.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SMALLEST = {
    "detector_quality.py": (["--quick", "--set", "train.steps=3", "--threads", "1"],
                            {"steps": 3, "keys": ("train_images_per_s", "recall_shop", "ap", "ap50")}),
    "embedder_quality.py": (["--quick", "--steps", "3", "--threads", "1", "--no-progress"],
                            {"steps": 3, "keys": ("embedder_acc@1", "embedder_acc@10", "colour_hist_acc@10")}),
    "detection.py": (["--quick", "--steps", "2", "--threads", "1", "--architectures", "fcos,retinanet"],
                     {"keys": ("detectors",)}),
    "throughput.py": (["--images", "40", "--segment-size", "20", "--steps", "2"],
                      {"images": 40, "keys": ("flow_images_per_s", "bare_images_per_s", "bare_engine_images_per_s", "ratio")}),
    "incremental.py": (["--images", "40", "--segment-size", "20", "--steps", "2"],
                       {"images": 40, "keys": ("full_seconds", "incremental_seconds", "noop_seconds")}),
}


@pytest.mark.parametrize("script", list(SMALLEST))
def test_bench_script_at_its_smallest_size_ends_with_its_json_line(script, tmp_path):
    args, expected = SMALLEST[script]
    done = subprocess.run([sys.executable, str(ROOT / "bench" / script), *args], cwd=tmp_path, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    assert len(lines) > 1, "a table comes before the JSON line"
    summary = json.loads(lines[-1])
    for key in expected["keys"]:
        assert key in summary, f"{script}: {key!r} missing from {sorted(summary)}"
    for key in ("steps", "images"):
        if key in expected:
            assert summary[key] == expected[key]
    if script == "detection.py":
        assert set(summary["detectors"]) == {"fcos-mobilenet_v3_small", "retinanet-mobilenet_v3_small"}
