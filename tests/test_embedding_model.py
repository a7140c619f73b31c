import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from clothret.datasets.synthetic import SyntheticSizes, generate_dataset
from clothret.embedding import (
    AugmentConfig,
    ColourHistogramEmbedder,
    Embedder,
    EmbedderConfig,
    EmbedderTrainConfig,
    EmbeddingNet,
    crop_retrieval_accuracy,
    train_embedder,
)
from clothret.embedding.crops import crop_box, gt_crops
from clothret.embedding.evaluate_crops import _chance
from clothret.embedding.training import CropBank, augment_batch, pk_batches
from clothret.weights import save_weights

TINY_KW = {"channels": [8, 16, 32, 64], "stem_width": 8}
TINY = EmbedderConfig(backbone="resnet10t", backbone_kwargs=TINY_KW, descriptors="GM", dim=32, input_size=32)


@pytest.fixture(scope="module")
def tiny_split(tmp_path_factory):
    root = tmp_path_factory.mktemp("syn")
    sizes = SyntheticSizes(n_pairs=10, street_per_pair=2, shop_size=64, street_size=96)
    return generate_dataset(str(root), seed=3, splits={"train": sizes})["train"]


def _crops(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=(int(rng.integers(10, 80)), int(rng.integers(10, 80)), 3), dtype=np.uint8) for _ in range(n)]


@pytest.mark.parametrize("descriptors", ["G", "GM", "GMS"])
def test_net_output_shape_and_unit_norm(descriptors):
    config = TINY.model_copy(update={"descriptors": descriptors, "dim": 30})
    net = EmbeddingNet(config).eval()
    with torch.no_grad():
        out = net(torch.randn(3, 3, 32, 32))
    assert out.shape == (3, 30)
    assert torch.allclose(out.norm(dim=1), torch.ones(3), atol=1e-5)


def test_default_config_builds():
    config = EmbedderConfig()
    emb = Embedder(EmbeddingNet(config)).embed(_crops(2))
    assert emb.shape == (2, config.dim)


def test_embedder_embed():
    embedder = Embedder(EmbeddingNet(TINY), name="tiny", batch_size=4)
    out = embedder.embed(_crops(9))
    assert out.shape == (9, 32) and out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    assert embedder.name == "tiny" and embedder.dim == 32 and embedder.config == TINY
    assert embedder.embed([]).shape == (0, 32)
    with pytest.raises(ValueError, match="crop 1 must be"):
        embedder.embed([_crops(1)[0], np.zeros((5, 5), np.uint8)])


def test_save_from_weights_round_trip(tmp_path):
    embedder = Embedder(EmbeddingNet(TINY), name="tiny")
    url = str(tmp_path / "emb" / "tiny.safetensors")
    embedder.save(url, note="test")
    again = Embedder.from_weights(url)
    crops = _crops(5, seed=1)
    assert np.array_equal(embedder.embed(crops), again.embed(crops))
    assert again.name == "tiny" and again.config == TINY
    assert Embedder.from_weights(url, name="other").name == "other"


def test_from_weights_rejects_other_cards(tmp_path):
    url = str(tmp_path / "other.safetensors")
    save_weights({"w": torch.zeros(1)}, url, {"kind": "torchvision-detector"})
    with pytest.raises(ValueError, match="expected 'timm-embedder'"):
        Embedder.from_weights(url)
    bad = str(tmp_path / "bad.safetensors")
    save_weights({"w": torch.zeros(1)}, bad, {"kind": "timm-embedder", "config": TINY.model_dump(mode="json")})
    with pytest.raises(ValueError, match="do not fit"):
        Embedder.from_weights(bad)


def test_config_errors():
    with pytest.raises(ValueError, match="unknown timm backbone 'resnet18x'"):
        EmbedderConfig(backbone="resnet18x")
    with pytest.raises(ValueError, match=r"valid letters: \['G', 'M', 'S'\]"):
        EmbedderConfig(descriptors="GQ")
    with pytest.raises(ValueError, match="divisible"):
        EmbedderConfig(descriptors="GMS", dim=128)
    with pytest.raises(ValueError, match="pretrained is False"):
        EmbedderConfig(pretrained_file="/x.safetensors")
    with pytest.raises(ValueError, match="rejected backbone_kwargs"):
        EmbeddingNet(TINY.model_copy(update={"backbone_kwargs": {"no_such_arg": 1}}))


def test_pretrained_file_goes_through_timm(tmp_path):
    source = timm.create_model("resnet10t", num_classes=1000, **TINY_KW)
    path = str(tmp_path / "imagenet.safetensors")
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    config = TINY.model_copy(update={"pretrained": True, "pretrained_file": path})
    net = EmbeddingNet(config)
    assert torch.equal(net.backbone.conv1[0].weight, source.conv1[0].weight)
    rebuilt = EmbeddingNet(config, pretrained=False)  # from_weights never reads the pretrained file
    assert not torch.equal(rebuilt.backbone.conv1[0].weight, source.conv1[0].weight)


def test_crop_box_context_and_clipping():
    image = np.arange(20 * 30 * 3, dtype=np.uint8).reshape(20, 30, 3)
    crop, box = crop_box(image, (10, 5, 20, 15), context=0.5)
    assert crop.shape == (20, 20, 3) and box == (5.0, 5.0, 15.0, 15.0)
    crop, box = crop_box(image, (-4, 0, 8, 30))
    assert crop.shape == (20, 8, 3) and box == (0.0, 0.0, 8.0, 20.0)
    with pytest.raises(ValueError, match="empty"):
        crop_box(image, (40, 0, 50, 10))


def test_pk_batches_and_augment(tiny_split):
    crops = gt_crops(tiny_split, context=0.2)
    bank = CropBank(crops, canvas_size=45)
    batches = pk_batches(bank.labels.numpy(), bank.is_shop, 4, 3, np.random.default_rng(0))
    batch = next(batches)
    labels = bank.labels[torch.from_numpy(batch)].view(4, 3)
    assert (labels == labels[:, :1]).all() and len(set(labels[:, 0].tolist())) == 4
    assert bank.is_shop[batch.reshape(4, 3)[:, 0]].all()  # every identity brings its shop crop
    a = augment_batch(bank, batch, TINY, AugmentConfig(), torch.Generator().manual_seed(1))
    b = augment_batch(bank, batch, TINY, AugmentConfig(), torch.Generator().manual_seed(1))
    assert a.shape == (12, 3, 32, 32) and torch.equal(a, b)
    with pytest.raises(ValueError, match="only"):
        next(pk_batches(bank.labels.numpy(), bank.is_shop, 1000, 2, np.random.default_rng(0)))


def test_colour_histogram_and_accuracy(tiny_split):
    hist = ColourHistogramEmbedder(bins=4)
    out = hist.embed([np.full((4, 4, 3), 200, np.uint8), np.zeros((3, 5, 3), np.uint8)])
    assert out.shape == (2, 64) and np.allclose(np.linalg.norm(out, axis=1), 1.0)
    assert out[0] @ out[1] == 0.0
    result = crop_retrieval_accuracy(hist, tiny_split, ks=(1, 5))
    assert result["num_gallery"] == sum(r.source == "shop" for r in tiny_split)
    assert 0.0 <= result["acc@1"] <= result["acc@5"] <= 1.0
    assert result["chance@1"] == pytest.approx(1 / result["num_gallery"])
    assert _chance(10, np.array([1, 2]), 3) == pytest.approx(1 - (0.7 + (8 * 7 * 6) / (10 * 9 * 8)) / 2)
    with pytest.raises(ValueError, match="bins"):
        ColourHistogramEmbedder(bins=1)


def test_short_training_reduces_loss(tiny_split, tmp_path):
    url = str(tmp_path / "trained.safetensors")
    train = EmbedderTrainConfig(steps=40, p_identities=6, k_instances=3, lr=3e-3, warmup_steps=5, seed=0, num_threads=1)
    metrics = train_embedder(tiny_split, model_config=TINY, train_config=train, weights_url=url, progress=False)
    assert metrics["steps"] == 40 and metrics["num_identities"] == sum(r.source == "shop" for r in tiny_split)
    assert metrics["loss_final"] < metrics["loss_first"]
    embedder = Embedder.from_weights(url)
    assert embedder.config == TINY
    result = crop_retrieval_accuracy(embedder, tiny_split)
    assert result["acc@10"] >= result["chance@10"]
