"""Retrieval on the synthetic data must be learned: a colour histogram scores clearly below a trained
embedder on the same split (ground-truth crops, item-level Acc@k)."""

import pytest

from clothret.datasets.synthetic import SyntheticSizes, generate_split
from clothret.embedding.config import EmbedderConfig
from clothret.embedding.evaluate_crops import ColourHistogramEmbedder, crop_retrieval_accuracy
from clothret.embedding.model import Embedder
from clothret.embedding.training import EmbedderTrainConfig, train_embedder

pytestmark = pytest.mark.slow


def test_trained_embedder_beats_colour_histogram(tmp_path):
    train = generate_split(str(tmp_path / "train"), SyntheticSizes(n_pairs=120, street_per_pair=3), seed=11)
    val = generate_split(str(tmp_path / "val"), SyntheticSizes(n_pairs=60, street_per_pair=2), seed=12,
                         first_pair_id=1000)
    weights = str(tmp_path / "embedder.safetensors")
    train_embedder(
        train,
        model_config=EmbedderConfig(backbone="resnet10t", backbone_kwargs={"channels": [32, 64, 128, 256], "stem_width": 16},
                                    input_size=48),
        train_config=EmbedderTrainConfig(steps=250, p_identities=16, k_instances=2, seed=0),
        weights_url=weights,
        progress=False,
    )
    learned = crop_retrieval_accuracy(Embedder.from_weights(weights), val)
    baseline = crop_retrieval_accuracy(ColourHistogramEmbedder(), val)
    assert learned["acc@10"] >= baseline["acc@10"] + 0.15, (learned, baseline)
    assert learned["acc@1"] > baseline["acc@1"], (learned, baseline)
