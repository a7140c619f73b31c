"""Model weights on any fsspec URL: a safetensors file plus a JSON model card beside it.

``save_weights(state, "s3://b/m.safetensors", card)`` writes ``m.safetensors`` and ``m.json``.
Loading never unpickles: safetensors holds tensors only.
"""

from __future__ import annotations

import hashlib
import json
import logging

import fsspec
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

logger = logging.getLogger(__name__)


def card_url(weights_url: str) -> str:
    """The model card's URL beside a ``.safetensors`` file."""
    if not weights_url.endswith(".safetensors"):
        raise ValueError(f"weights URL must end with .safetensors, got {weights_url!r}")
    return weights_url[: -len(".safetensors")] + ".json"


def save_weights(state_dict: dict[str, torch.Tensor], weights_url: str, card: dict) -> str:
    """Write the tensors and the card; the card is written last and holds the weights' sha256."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    blob = st_save(tensors)
    digest = hashlib.sha256(blob).hexdigest()
    fs, path = fsspec.core.url_to_fs(weights_url)
    parent = path.rsplit("/", 1)[0] if "/" in path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(path, "wb") as f:
        f.write(blob)
    full_card = {**card, "sha256": digest, "format": "safetensors"}
    with fsspec.open(card_url(weights_url), "w") as f:
        json.dump(full_card, f, indent=2, sort_keys=True)
    logger.info("saved weights to %s (sha256 %s)", weights_url, digest[:12])
    return digest


def load_card(weights_url: str) -> dict:
    """The model card of a weights file."""
    try:
        with fsspec.open(card_url(weights_url), "r") as f:
            return json.load(f)
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"no model card beside {weights_url} (expected {card_url(weights_url)})") from exc


def load_weights(weights_url: str, *, verify: bool = True) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and card of a weights file; with ``verify``, a sha256 mismatch raises ``ValueError``."""
    try:
        with fsspec.open(weights_url, "rb") as f:
            blob = f.read()
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"weights file not found: {weights_url}") from exc
    card = load_card(weights_url)
    if verify and card.get("sha256") and hashlib.sha256(blob).hexdigest() != card["sha256"]:
        raise ValueError(f"{weights_url}: content does not match the sha256 in its model card")
    return st_load(blob), card


def weights_digest(weights_url: str) -> str:
    """The sha256 recorded in the weights' model card (cheap: reads the card only)."""
    digest = load_card(weights_url).get("sha256")
    if not digest:
        raise ValueError(f"model card of {weights_url} has no sha256")
    return digest
