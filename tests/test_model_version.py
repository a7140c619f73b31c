"""A model version hashes what the models are (settings, architectures, weights' sha256), never where their
files lie; the serving bundle install copies a build's models under content-addressed names."""

from __future__ import annotations

import json
import shutil

import fsspec
import pytest
import yaml

from clothret.models import ModelBundle, load_bundle
from clothret.serving_bundle import install_bundle, installed_name
from clothret.weights import card_url


def _copy_models(src_dir, dest_url: str) -> str:
    """The bundle and every file beside it copied to ``dest_url`` (any fsspec URL); returns the bundle URL."""
    fs, dest = fsspec.core.url_to_fs(dest_url)
    fs.makedirs(dest, exist_ok=True)
    for path in sorted(src_dir.iterdir()):
        if path.suffix in (".yaml", ".safetensors", ".json"):
            fs.put_file(str(path), f"{dest}/{path.name}")
    return f"{dest_url.rstrip('/')}/bundle.yaml"


@pytest.fixture
def models_dir(tiny_workdir, tmp_path):
    """A private copy of the tiny trained models (bundle.yaml, weights, cards)."""
    target = tmp_path / "models"
    shutil.copytree(tiny_workdir / "models", target, ignore=shutil.ignore_patterns("*-work", "*.ckpt"))
    return target


def _edit_card(weights_path, **changes) -> None:
    card_path = card_url(str(weights_path))
    card = json.loads(open(card_path).read())
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            card[section][field] = value
        else:
            card[key] = value
    open(card_path, "w").write(json.dumps(card))


def test_version_is_the_same_wherever_the_files_are(models_dir, tmp_path, monkeypatch, s3_bucket):
    bundle = models_dir / "bundle.yaml"
    version = load_bundle(str(bundle)).version()

    monkeypatch.chdir(models_dir.parent)
    assert load_bundle("models/bundle.yaml").version() == version  # relative path
    assert load_bundle(f"file://{bundle}").version() == version
    assert load_bundle(_copy_models(models_dir, str(tmp_path / "elsewhere" / "current"))).version() == version
    assert load_bundle(_copy_models(models_dir, f"{s3_bucket}/models/current")).version() == version
    assert load_bundle(_copy_models(models_dir, f"{s3_bucket}/models/next")).version() == version
    # names are labels, not models
    raw = yaml.safe_load(bundle.read_text())
    raw["detectors"][0]["name"] = "renamed"
    (models_dir / "renamed.yaml").write_text(yaml.safe_dump(raw))
    assert load_bundle(str(models_dir / "renamed.yaml")).version() == version


def test_resolved_weights_are_absolute(models_dir, monkeypatch):
    monkeypatch.chdir(models_dir.parent)
    bundle = load_bundle("models/bundle.yaml")
    assert all(e.weights.startswith("/") for e in [*bundle.detectors, *bundle.embedders])


@pytest.mark.parametrize(
    "change, same",
    [
        ({"seconds": 1.0, "name": "other", "train_config": {"steps": 1}}, True),  # provenance only
        ({"sha256": "0" * 64}, False),  # other weights
        ({"config__min_size": 999}, False),  # other preprocessing
    ],
)
def test_version_follows_the_inference_fields_of_the_cards(models_dir, change, same):
    bundle = str(models_dir / "bundle.yaml")
    before = load_bundle(bundle).version()
    _edit_card(models_dir / "detector.safetensors", **change)
    assert (load_bundle(bundle).version() == before) is same


@pytest.mark.parametrize("edit", ["fusion", "wbf_weight"])
def test_version_follows_the_bundle_settings(models_dir, edit):
    bundle = models_dir / "bundle.yaml"
    before = load_bundle(str(bundle)).version()
    raw = yaml.safe_load(bundle.read_text())
    if edit == "fusion":
        raw["fusion"]["iou_thr"] = 0.61
    else:
        raw["detectors"][0]["wbf_weight"] = 2.0
    bundle.write_text(yaml.safe_dump(raw))
    assert load_bundle(str(bundle)).version() != before


def test_install_copies_models_under_content_addressed_names(models_dir, s3_bucket):
    source = load_bundle(str(models_dir / "bundle.yaml"))
    target = f"{s3_bucket}/models/current/bundle.yaml"
    version = install_bundle(source, target, expected_version=source.version())
    installed = load_bundle(target)
    assert installed.version() == version == source.version()
    fs = fsspec.filesystem("s3")
    names = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{s3_bucket}/models/current".removeprefix("s3://")))
    sha = json.loads(open(card_url(str(models_dir / "detector.safetensors"))).read())["sha256"]
    assert installed_name(str(models_dir / "detector.safetensors"), sha) in names
    assert installed.detectors[0].weights.endswith(f"detector-{sha[:12]}.safetensors")

    # a second model version installed at the same URL leaves the first one's files in place (rollback)
    raw = yaml.safe_load((models_dir / "bundle.yaml").read_text())
    raw["fusion"]["iou_thr"] = 0.61
    other = ModelBundle.model_validate(raw).resolved(str(models_dir))
    assert install_bundle(other, target) == other.version() != version
    assert load_bundle(target).version() == other.version()
    assert install_bundle(source, target) == version  # back: the weights are found, nothing is copied
    assert load_bundle(target).version() == version


def test_install_refuses_models_that_changed_since_the_build(models_dir, tmp_path):
    source = load_bundle(str(models_dir / "bundle.yaml"))
    built_with = source.version()
    _edit_card(models_dir / "detector.safetensors", config__min_size=999)  # retrained / overwritten since
    target = str(tmp_path / "current" / "bundle.yaml")
    with pytest.raises(ValueError, match="changed|retrained|overwritten"):
        install_bundle(load_bundle(str(models_dir / "bundle.yaml")), target, expected_version=built_with)
    assert not (tmp_path / "current" / "bundle.yaml").exists()
