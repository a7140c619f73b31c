import math

import pytest
import torch
import torch.nn.functional as F

from clothret.embedding.losses import (
    CenterLoss,
    CombinedLoss,
    LossWeights,
    batch_hard_triplet_loss,
    center_loss,
    multi_similarity_loss,
    softmax_loss,
)


def _unit(*angles_deg: float) -> torch.Tensor:
    a = torch.deg2rad(torch.tensor(angles_deg))
    return torch.stack([torch.cos(a), torch.sin(a)], dim=1)


LABELS = torch.tensor([0, 0, 1, 1])


def test_triplet_zero_when_positives_closer_by_more_than_margin():
    emb = _unit(0, 5, 90, 95)  # positives ~0.09 apart, negatives >= 1.3 apart
    assert float(batch_hard_triplet_loss(emb, LABELS, margin=0.3)) == 0.0


def test_triplet_matches_hand_computation_when_violated():
    emb = _unit(0, 90, 10, 100)  # each positive is 90 degrees away, a negative only 10
    d_pos = math.sqrt(2.0)
    d_neg = 2 * math.sin(math.radians(5))
    loss = batch_hard_triplet_loss(emb, LABELS, margin=0.3)
    assert float(loss) == pytest.approx(d_pos - d_neg + 0.3, rel=1e-4)


def test_triplet_and_ms_zero_without_pairs():
    emb = _unit(0, 90)
    lab = torch.tensor([0, 1])
    assert float(batch_hard_triplet_loss(emb, lab)) == 0.0
    assert float(multi_similarity_loss(emb, lab)) == 0.0


def test_multi_similarity_decreases_when_positives_get_closer():
    far = multi_similarity_loss(_unit(0, 60, 120, 180), LABELS)
    near = multi_similarity_loss(_unit(0, 20, 120, 140), LABELS)
    assert float(near) < float(far)
    assert float(far) > 0


def test_multi_similarity_hand_value_without_mining():
    emb = _unit(0, 60, 90, 150)  # pos sim 0.5, negatives: anchor 0 -> cos90=0, cos150
    loss = multi_similarity_loss(emb, LABELS, alpha=2.0, beta=50.0, base=0.5, mining_margin=10.0)
    sim = emb @ emb.t()
    expected = []
    for i in range(4):
        pos = [j for j in range(4) if j != i and LABELS[j] == LABELS[i]]
        neg = [j for j in range(4) if LABELS[j] != LABELS[i]]
        p = math.log(1 + sum(math.exp(-2.0 * (float(sim[i, j]) - 0.5)) for j in pos)) / 2.0
        n = math.log(1 + sum(math.exp(50.0 * (float(sim[i, j]) - 0.5)) for j in neg)) / 50.0
        expected.append(p + n)
    assert float(loss) == pytest.approx(sum(expected) / 4, rel=1e-5)


def test_center_loss():
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    centers = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert float(center_loss(feats, torch.tensor([0, 1]), centers)) == pytest.approx(0.25)
    module = CenterLoss(3, 2)
    value = module(feats, torch.tensor([0, 2]))
    value.backward()
    assert module.centers.grad[1].abs().sum() == 0 and module.centers.grad[0].abs().sum() > 0


def test_softmax_with_label_smoothing():
    logits = torch.tensor([[2.0, 0.0, 0.0]])
    labels = torch.tensor([0])
    logp = F.log_softmax(logits, dim=1)[0]
    expected = -(0.9 + 0.1 / 3) * logp[0] - (0.1 / 3) * (logp[1] + logp[2])
    assert float(softmax_loss(logits, labels, label_smoothing=0.1)) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ValueError, match="label_smoothing"):
        softmax_loss(logits, labels, label_smoothing=1.5)


def test_combined_loss_is_the_weighted_sum():
    torch.manual_seed(0)
    emb = F.normalize(torch.randn(8, 4), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    logits = torch.randn(8, 4)
    w = LossWeights(softmax=0.5, center=0.1, triplet=2.0, multi_similarity=0.3)
    crit = CombinedLoss(4, 4, w)
    total, parts = crit(emb, labels, logits)
    assert set(parts) == {"softmax", "center", "triplet", "multi_similarity"}
    expected = 0.5 * parts["softmax"] + 0.1 * parts["center"] + 2.0 * parts["triplet"] + 0.3 * parts["multi_similarity"]
    assert float(total.detach()) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="no logits"):
        crit(emb, labels)
    only_metric = CombinedLoss(4, 4, LossWeights(softmax=0, center=0))
    assert set(only_metric(emb, labels)[1]) == {"triplet", "multi_similarity"}
    with pytest.raises(ValueError, match="labels must be"):
        batch_hard_triplet_loss(emb, labels[:3])
