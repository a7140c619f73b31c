"""The ``gpu`` extra resolves to a current dask-cuda (with the dask and distributed it pins) and a GPU FAISS,
checked against the package index with pip's resolver (no GPU needed); no extra mixes two FAISS builds."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FAISS_BUILDS = ("faiss-cpu", "faiss-gpu")


def _extras() -> dict[str, set[str]]:
    """Each extra's requirement names, with ``clothret[...]`` references expanded."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    raw = project["optional-dependencies"]

    def names(extra: str) -> set[str]:
        out: set[str] = set()
        for requirement in raw[extra]:
            name = re.match(r"[A-Za-z0-9_.-]+", requirement)[0].lower()
            if name == project["name"]:
                for inner in re.search(r"\[(.*)\]", requirement)[1].split(","):
                    out |= names(inner.strip())
            else:
                out.add(name)
        return out

    base = {re.match(r"[A-Za-z0-9_.-]+", r)[0].lower() for r in project["dependencies"]}
    return {extra: base | names(extra) for extra in raw}


def test_each_install_gets_exactly_one_faiss_build():
    extras = _extras()
    assert "faiss-cpu" in extras["dev"] and "faiss-cpu" in extras["cpu"]  # `make setup` installs .[dev]
    assert "faiss-gpu" in extras["gpu"] and "dask-cuda" in extras["gpu"]
    for extra, names in extras.items():
        assert len(names & set(FAISS_BUILDS)) <= 1, f"extra {extra} installs {names & set(FAISS_BUILDS)}"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


@pytest.mark.slow
def test_the_gpu_extra_resolves_to_a_current_dask_cuda_and_a_gpu_faiss():
    pip = [sys.executable, "-m", "pip"]
    try:
        probe = subprocess.run([*pip, "index", "versions", "dask-cuda"], capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip("the package index did not answer within 120 s")
    if probe.returncode != 0 or "dask-cuda" not in probe.stdout:
        pytest.skip(f"the package index cannot be reached: {probe.stderr.strip()[-300:]}")

    run = subprocess.run([*pip, "install", "--dry-run", "--ignore-installed", "--quiet", "--report", "-", ".[gpu]"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout)
    resolved = {item["metadata"]["name"].lower(): item["metadata"]["version"] for item in report["install"]}
    assert _version(resolved["dask-cuda"]) >= (25,), resolved["dask-cuda"]
    assert "faiss-gpu" in resolved and "faiss-cpu" not in resolved
    assert "rapids-dask-dependency" in resolved
    assert resolved["dask"] == resolved["distributed"]  # the release rapids-dask-dependency pins
