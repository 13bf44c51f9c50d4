"""The papers' losses on cases small enough to work out by hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hybreid.models.output import TrainOutput
from hybreid.train.losses import (
    FusionReIDLoss,
    HAResformerLoss,
    HAResformerWeights,
    HeteroCenterTripletLoss,
    MarginMMDLoss,
    SoftMarginTripletLoss,
)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def test_soft_margin_triplet_batch_hard_by_hand():
    # 1-D features 0, 1 (label 0) and 3, 5 (label 1); squared distances (Eq. 11):
    # anchor 0: pos 1, hardest neg 9; anchor 1: pos 1, neg 4; anchor 3: pos 4, neg 4;
    # anchor 5: pos 4, neg 16.
    features = torch.tensor([[0.0], [1.0], [3.0], [5.0]])
    labels = torch.tensor([0, 0, 1, 1])
    expected = (softplus(1 - 9) + softplus(1 - 4) + softplus(4 - 4) + softplus(4 - 16)) / 4
    assert SoftMarginTripletLoss()(features, labels).item() == pytest.approx(expected, rel=1e-6)
    # Plain distances (the authors' code): 1-3, 1-2, 2-2, 2-4.
    plain = (softplus(1 - 3) + softplus(1 - 2) + softplus(0) + softplus(2 - 4)) / 4
    assert SoftMarginTripletLoss(squared=False)(features, labels).item() == pytest.approx(plain, rel=1e-5)


def test_fusionreid_loss_sums_six_features():
    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 1])
    names = ("cnn", "vit", "cnn_lru", "vit_lru", "cnn_htm", "vit_htm")
    features = {n: torch.randn(4, 8) for n in names}
    logits = {n: torch.randn(4, 3) for n in names}
    total, terms = FusionReIDLoss()(TrainOutput(features, logits), labels)
    expected = sum(F.cross_entropy(logits[n], labels, label_smoothing=0.1)
                   + SoftMarginTripletLoss()(features[n], labels) for n in names)
    assert len(terms) == 12
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)


def test_hetero_center_triplet_by_hand():
    # Centres: pid 0 visible (0,0), infrared (0,1); pid 1 visible (1,0), infrared (1,1).
    # Each centre: positive distance 1, nearest other-identity centre 1 ->
    # [0.3 + 1 - 1]_+ = 0.3; four centres: summed as printed in Eq. 9 -> 1.2, averaged
    # as the reference implementation does -> 0.3.
    features = torch.tensor([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    modalities = torch.tensor([0, 1, 0, 1])
    assert HeteroCenterTripletLoss(0.3, "sum")(features, labels, modalities).item() == pytest.approx(1.2, rel=1e-5)
    assert HeteroCenterTripletLoss(0.3)(features, labels, modalities).item() == pytest.approx(0.3, rel=1e-5)
    # Far-apart identities: no violation at all.
    far = features * torch.tensor([10.0, 1.0])
    assert HeteroCenterTripletLoss(0.3)(far, labels, modalities).item() == 0.0


def test_margin_mmd_is_zero_below_the_margin_and_mmd_above():
    torch.manual_seed(0)
    labels = torch.tensor([0] * 8)
    modalities = torch.tensor([0, 1] * 4)
    same = torch.randn(1, 4).repeat(8, 1)
    assert MarginMMDLoss()(same, labels, modalities).item() == 0.0
    # Visible at +5, infrared at -5 in 4-D: same-modality squared distances 0, cross 400;
    # the bandwidth scale is the batch mean, 32 * 400 / 64 = 200. Within-modality kernels
    # sum five exp(0) = 5; the cross kernel is sum_f exp(-400 / (200 f)) over
    # f = 1/4 .. 4. MMD^2 = 5 + 5 - 2 * cross, well above the margin 1.4.
    apart = torch.where(modalities[:, None] == 0, torch.full((8, 4), 5.0), torch.full((8, 4), -5.0))
    cross = sum(math.exp(-2.0 / f) for f in (0.25, 0.5, 1.0, 2.0, 4.0))
    assert MarginMMDLoss()(apart, labels, modalities).item() == pytest.approx(10 - 2 * cross, rel=1e-5)


def test_haresformer_weights_per_dataset():
    sysu = HAResformerWeights.for_dataset("sysu_mm01")
    regdb = HAResformerWeights.for_dataset("regdb")
    assert (sysu.hc_tri, sysu.mmd, sysu.auxiliary, sysu.auxiliary_stages) == (2.0, 0.25, 0.5, (4,))
    assert (regdb.hc_tri, regdb.mmd, regdb.auxiliary, regdb.auxiliary_stages) == (2.0, 0.25, 0.25, (3, 4))
    assert HAResformerWeights.for_dataset("llcm") == sysu


def test_haresformer_loss_is_eq13():
    torch.manual_seed(1)
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    modalities = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    features = {name: torch.randn(8, 6) for name in ("final", "hgae", "stage3", "stage4")}
    logits = {"final": torch.randn(8, 2)}
    total, terms = HAResformerLoss(HAResformerWeights.for_dataset("regdb"))(
        TrainOutput(features, logits), labels, modalities)
    hc, mmd = HeteroCenterTripletLoss(0.3), MarginMMDLoss(1.4)
    expected = (F.cross_entropy(logits["final"], labels) + 2.0 * hc(features["final"], labels, modalities)
                + 0.25 * mmd(features["final"], labels, modalities)
                + 0.25 * sum(hc(features[n], labels, modalities) for n in ("stage3", "stage4", "hgae")))
    assert set(terms) == {"id", "hc_tri", "mmd", "al/stage3", "al/stage4", "al/hgae"}
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
