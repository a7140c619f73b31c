"""Embedders: timm backbones with GeM/MAC/SPoC descriptors combined as in CGD, metric-learning losses, training.

``Embedder.embed(crops)`` turns (H, W, 3) uint8 RGB crops into (n, dim) l2-normalised float32 features.
"""

from clothret.embedding.config import EmbedderConfig, get_config, list_configs, register_config
from clothret.embedding.evaluate_crops import ColourHistogramEmbedder, crop_retrieval_accuracy
from clothret.embedding.model import Embedder, EmbeddingNet
from clothret.embedding.training import AugmentConfig, EmbedderTrainConfig, train_embedder

__all__ = [
    "AugmentConfig",
    "ColourHistogramEmbedder",
    "Embedder",
    "EmbedderConfig",
    "EmbedderTrainConfig",
    "EmbeddingNet",
    "crop_retrieval_accuracy",
    "get_config",
    "list_configs",
    "register_config",
    "train_embedder",
]
