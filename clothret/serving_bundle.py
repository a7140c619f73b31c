"""The serving bundle: the models of the serving build, installed at the URL the nightly refresh reads.

A data engineer points the nightly refresh at one bundle URL (say ``s3://models/current/bundle.yaml``),
backfills a candidate bundle from another (``s3://models/next/bundle.yaml``) and promotes its build. A
promote with a serving bundle URL installs the promoted build's models there, so that "current" always
means "the models that serve"; a rollback installs the models of the build it returns to.

Installing copies each weights file and its model card into the serving bundle's folder under a
content-addressed name (``<stem>-<sha256[:12]>.safetensors``), so no file is ever overwritten and the
models of earlier builds stay there for a rollback; the bundle file itself is written last, in one atomic
step, and its model version is checked to equal the build's. Every build manifest records the bundle that
made it (``bundle``: the resolved bundle, ``bundle_url``: where it was read) for this purpose.
"""

from __future__ import annotations

import hashlib
import logging
import re

import fsspec
import yaml

from clothret.index.publish import read_build_manifest
from clothret.models import ModelBundle, load_bundle
from clothret.store.files import atomic_write, read_bytes
from clothret.weights import card_url, load_card

logger = logging.getLogger(__name__)

_HASHED_STEM = re.compile(r"^(?P<stem>.+)-(?P<sha>[0-9a-f]{12})$")


def installed_name(weights_url: str, sha256: str) -> str:
    """The content-addressed file name of a weights file: ``<stem>-<sha256[:12]>.safetensors``."""
    stem = weights_url.rstrip("/").rsplit("/", 1)[-1].removesuffix(".safetensors")
    match = _HASHED_STEM.match(stem)
    if match and match["sha"] == sha256[:12]:
        stem = match["stem"]
    return f"{stem}-{sha256[:12]}.safetensors"


def _installed_sha(weights_url: str) -> str | None:
    """The sha256 in the card of an installed weights file, or ``None`` when it is not there."""
    try:
        return load_card(weights_url).get("sha256")
    except FileNotFoundError:
        return None


def _copy_model(weights_url: str, folder_url: str) -> str:
    """Copy a weights file and its card into ``folder_url`` under its content-addressed name (skipped when
    that file is there already); returns the name."""
    card = load_card(weights_url)
    sha = card.get("sha256")
    if not sha:
        raise ValueError(f"the model card of {weights_url} has no sha256: it cannot be installed")
    name = installed_name(weights_url, sha)
    target = f"{folder_url.rstrip('/')}/{name}"
    if _installed_sha(target) == sha:
        return name
    fs, path = fsspec.core.url_to_fs(target)
    blob = read_bytes(weights_url)
    if hashlib.sha256(blob).hexdigest() != sha:
        raise ValueError(f"{weights_url} does not match the sha256 in its model card: not installed")
    fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
    fs.pipe_file(path, blob)
    atomic_write(card_url(target), read_bytes(card_url(weights_url)))  # the card last, as save_weights does
    logger.info("installed %s as %s", weights_url, target)
    return name


def _target_version(target_url: str) -> str | None:
    """The version of the bundle at ``target_url``, or ``None`` when there is none or it cannot be read."""
    fs, path = fsspec.core.url_to_fs(target_url)
    if not fs.exists(path):
        return None
    try:
        return load_bundle(target_url).version()
    except (OSError, ValueError) as exc:
        logger.warning("the bundle at %s cannot be read (%s): it will be replaced", target_url, exc)
        return None


def install_bundle(bundle: ModelBundle, target_url: str, *, expected_version: str | None = None) -> str:
    """Install a resolved bundle's models at ``target_url``; returns the model version installed.

    With ``expected_version``, models whose files changed since (another version now) are refused.
    Nothing is copied when ``target_url`` holds that version already.
    """
    version = bundle.version()
    if expected_version is not None and version != expected_version:
        raise ValueError(
            f"the models this build was made with are version {expected_version}, but the files its bundle "
            f"names are version {version} now (retrained or overwritten since): install a bundle by hand"
        )
    if _target_version(target_url) == version:
        logger.info("%s holds model version %s already", target_url, version)
        return version
    folder = target_url.rsplit("/", 1)[0]
    detectors = [d.model_copy(update={"weights": _copy_model(d.weights, folder)}) for d in bundle.detectors]
    embedders = [e.model_copy(update={"weights": _copy_model(e.weights, folder)}) for e in bundle.embedders]
    installed = bundle.model_copy(update={"detectors": detectors, "embedders": embedders})
    atomic_write(target_url, yaml.safe_dump(installed.model_dump(mode="json"), sort_keys=False).encode())
    got = load_bundle(target_url).version()
    if got != version:
        raise ValueError(f"the bundle installed at {target_url} is version {got}, expected {version}")
    logger.info("%s now holds model version %s", target_url, version)
    return version


def build_bundle(index_url: str, build_id: str) -> tuple[ModelBundle, str]:
    """The resolved bundle that made a build, and the build's model version."""
    manifest = read_build_manifest(index_url, build_id)
    version = manifest.get("model_version")
    if "bundle" in manifest:
        return ModelBundle.model_validate(manifest["bundle"]), version
    if manifest.get("bundle_url"):
        return load_bundle(manifest["bundle_url"]), version
    raise ValueError(f"build {build_id} under {index_url} does not record its bundle (an older build): "
                     f"install its models by hand")


def install_build_models(index_url: str, build_id: str, target_url: str) -> str:
    """Install the models of a build at ``target_url`` (see :func:`install_bundle`); returns their version."""
    bundle, version = build_bundle(index_url, build_id)
    return install_bundle(bundle, target_url, expected_version=version)
