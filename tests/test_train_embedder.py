"""Embedder training as its own step: the CLI, a new bundle for a backfill, the flow and its deployment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from clothret.cli import main
from clothret.embedding.model import Embedder
from clothret.embedding.train_job import TrainEmbedderJob
from clothret.models import load_bundle, load_models
from clothret.weights import load_card

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--steps", "3", "--set", "train.p_identities=4", "--set", "train.warmup_steps=1", "--set", "model.input_size=32",
        "--threads", "1", "--no-progress"]


def _cli(*args: str, capsys) -> dict:
    assert main(["train-embedder", *args]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_cli_trains_an_embedder_and_writes_a_bundle_beside_the_old_one(tiny_workdir, tmp_path, capsys):
    base = tiny_workdir / "models" / "bundle.yaml"
    out = tmp_path / "next" / "embedder-gms.safetensors"
    metrics = _cli("--data", str(tiny_workdir / "data"), "--out", str(out), "--descriptors", "GMS", "--dim", "48",
                   "--name", "narrow-gms", "--base-bundle", str(base), "--bundle-out", str(tmp_path / "next" / "bundle.yaml"),
                   "--bundle-mode", "add", *TINY, capsys=capsys)
    assert metrics["steps"] == 3 and metrics["split_url"].endswith("/train") and metrics["name"] == "narrow-gms"
    card = load_card(str(out))
    assert card["config"]["descriptors"] == "GMS" and card["config"]["dim"] == 48 and card["name"] == "narrow-gms"
    assert Embedder.from_weights(str(out)).dim == 48

    old, new = load_bundle(str(base)), load_bundle(metrics["bundle_url"])
    assert [e.name for e in new.embedders] == [*(e.name for e in old.embedders), "narrow-gms"]
    assert new.detectors == old.detectors and new.fusion == old.fusion
    assert metrics["model_version"] == new.version() != old.version()
    models = load_models(new)
    assert models.dim == sum(e.dim for e in models.embedders) == 48 + load_models(old).dim

    replaced = _cli("--data", str(tiny_workdir / "data" / "train"), "--out", str(tmp_path / "e2.safetensors"),
                    "--base-bundle", str(base), "--bundle-out", str(tmp_path / "replaced.yaml"), *TINY, capsys=capsys)
    assert [e.weights for e in load_bundle(replaced["bundle_url"]).embedders] == [str(tmp_path / "e2.safetensors")]


def test_job_errors_name_the_problem(tmp_path, capsys):
    with pytest.raises(ValueError, match="needs base_bundle_url"):
        TrainEmbedderJob(data_url="x", weights_url="w.safetensors", bundle_url="b.yaml")
    with pytest.raises(ValueError, match=r"\.safetensors"):
        TrainEmbedderJob(data_url="x", weights_url="w.pt")
    assert main(["train-embedder", "--data", str(tmp_path), "--out", str(tmp_path / "e.safetensors")]) == 2
    assert "neither a DeepFashion2 split" in capsys.readouterr().err


def test_prefect_yaml_deploys_the_embedder_training_flow():
    spec = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    deployment = next(d for d in spec["deployments"] if d["name"] == "train-embedder")
    assert deployment["entrypoint"] == "flows/train_embedder.py:train_embedder"
    job = TrainEmbedderJob.model_validate(deployment["parameters"]["config"])
    assert job.model.descriptors == "GMS" and job.bundle_url.endswith("next/bundle.yaml")
    assert job.base_bundle_url.endswith("current/bundle.yaml")


@pytest.mark.slow
def test_training_flow_writes_weights_and_card(tiny_workdir, tmp_path, prefect_server):
    from clothret.embedding.config import EmbedderConfig
    from clothret.embedding.training import EmbedderTrainConfig
    from flows.train_embedder import train_embedder as flow

    job = TrainEmbedderJob(
        data_url=str(tiny_workdir / "data"), weights_url=str(tmp_path / "flow.safetensors"),
        model=EmbedderConfig(descriptors="G", dim=32, input_size=32),
        train=EmbedderTrainConfig(steps=2, p_identities=4, warmup_steps=1, num_threads=1),
    )
    metrics = flow(job)
    assert metrics["steps"] == 2 and metrics["weights_url"] == job.weights_url
    assert load_card(job.weights_url)["config"]["descriptors"] == "G"
