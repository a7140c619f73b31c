"""bench/gpu_throughput.py --small on the CPU: it runs, writes its table, and its last line is the JSON it promises."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_throughput_small_prints_the_table_and_the_json_line(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_throughput.py"), "--small", "--images", "24", "--threads", "1",
         "--device", "cpu", "--out", str(tmp_path), "--profile", "--mixed-orientation", "--variants",
         "fold_norms=false;batch_size=8;cuda_graphs=true"],
        cwd=ROOT, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()
    summary = json.loads(lines[-1])
    for key in ("e2e_images_per_s", "old_e2e_images_per_s", "ceiling_fp32_images_per_s", "ceiling_bf16_images_per_s",
                "embed_path_crops_per_s", "embed_ceiling_crops_per_s"):
        assert summary[key] > 0, key
    assert summary["device"] == "cpu" and summary["peak_gpu_memory_gb"] == summary["peak_gpu_allocated_gb"] == 0.0
    assert summary["images"] == 24 and summary["failed"] == 0 and summary["boxes"] > 0
    assert summary["e2e_over_fp32_ceiling"] > 0 and summary["embed_path_over_ceiling"] > 0
    assert any(line.strip().startswith("engine (run_segment)") for line in lines)
    assert any(line.strip().startswith("all detectors") for line in lines)
    assert json.loads((tmp_path / "gpu_throughput.json").read_text()) == summary
    assert "engine (run_segment)" in (tmp_path / "gpu_throughput.txt").read_text()
    assert summary["stages_per_s"]["detect, all detectors, norms not folded"] > 0
    assert set(summary["host_ops_per_batch"]) == {"fcos", "retinanet", "faster_rcnn"}
    assert all(count > 100 for count in summary["host_ops_per_batch"].values())  # eager on the CPU
    assert set(summary["torchvision_host_ops_per_batch"]) == set(summary["host_ops_per_batch"])
    assert all(summary["host_waits_per_batch"][name] < summary["torchvision_host_waits_per_batch"][name]
               for name in summary["host_ops_per_batch"])
    assert set(summary["variants"]) == {"fold_norms=false", "batch_size=8", "cuda_graphs=true"}
    assert all(v["e2e_images_per_s"] > 0 and v["failed"] == 0 for v in summary["variants"].values())
    assert summary["cuda_graphs"] == {} and "cuda_graphs" not in summary["variants"]["batch_size=8"]
    graphs = summary["variants"]["cuda_graphs=true"]["cuda_graphs"]  # each network's counts; on the CPU none
    assert set(graphs) == {"fcos", "retinanet", "faster_rcnn", "embedder cgd"}, graphs
    assert all(g == {"captures": 0, "replays": 0, "held": 0} for g in graphs.values()), graphs
    assert set(summary["profiles"]) == {"fcos", "retinanet", "faster_rcnn"}
    for name, profile in summary["profiles"].items():
        assert profile["images"] > 0 and profile["wall_ms"] > 0 and profile["top_ms"], name
        assert "Self CPU" in (tmp_path / f"profile_{name}.txt").read_text()
    assert summary["mixed_orientation"] is True


def test_gpu_throughput_refuses_an_unknown_variant_setting(tmp_path):
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "gpu_throughput.py"), "--small", "--device", "cpu", "--out",
         str(tmp_path), "--variants", "batch_sise=8"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode != 0 and "batch_sise=8" in done.stderr and "batch_size" in done.stderr
