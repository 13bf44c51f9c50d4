"""The papers' losses.

FusionReID (Eq. 10-12): label-smoothing cross-entropy (epsilon 0.1) and the soft-margin
triplet loss with batch-hard mining, summed over the six supervised features.

HAResformer (Eq. 7-13): identity loss, hetero-center triplet loss (margin 0.3),
margin-based MMD (margin 1.4) and the auxiliary hetero-center losses on the stages
DSA supervises and on HGAE, weighted ``L_ID + l1 L_HC + l2 L_MMD + l3 sum L_AL``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from hybreid.models.output import TrainOutput


def pairwise_squared_distance(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x.pow(2).sum(1, keepdim=True) + y.pow(2).sum(1) - 2 * x @ y.T).clamp(min=0)


class SoftMarginTripletLoss(nn.Module):
    """Eq. 11 with batch-hard mining: ``log(1 + exp(||a - p||^2 - ||a - n||^2))`` for each
    anchor's hardest positive and hardest negative, averaged over anchors.

    ``squared=False`` uses plain Euclidean distances (the authors' code) instead of the
    squared ones printed in Eq. 11.
    """

    def __init__(self, squared: bool = True):
        super().__init__()
        self.squared = squared

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        distance = pairwise_squared_distance(features, features)
        if not self.squared:
            distance = distance.clamp(min=1e-12).sqrt()
        same = labels[:, None] == labels[None, :]
        hardest_positive = (distance * same).max(dim=1).values
        hardest_negative = distance.masked_fill(same, float("inf")).min(dim=1).values
        return F.softplus(hardest_positive - hardest_negative).mean()


class FusionReIDLoss(nn.Module):
    """Eq. 12: ``sum over the six features of (L_ce + L_tri)``."""

    def __init__(self, label_smoothing: float = 0.1, squared_triplet: bool = True):
        super().__init__()
        self.label_smoothing = label_smoothing
        self.triplet = SoftMarginTripletLoss(squared_triplet)

    def forward(self, output: TrainOutput, labels: torch.Tensor, modalities: torch.Tensor | None = None):
        terms = {}
        for name, feature in output.features.items():
            terms[f"ce/{name}"] = F.cross_entropy(output.logits[name].float(), labels,
                                                  label_smoothing=self.label_smoothing)
            terms[f"tri/{name}"] = self.triplet(feature.float(), labels)
        return sum(terms.values()), terms


class HeteroCenterTripletLoss(nn.Module):
    """Eq. 8-9: per identity the visible and infrared feature centres; each centre is
    pulled to its other-modality centre and pushed ``margin`` beyond the nearest centre
    of any other identity, in either modality.

    Eq. 9 is written as a sum over identities; the reference implementation of [12],
    whose lambda_1 = 2.0 the paper adopts, averages over centres (a margin ranking loss
    with mean reduction), and so does hybreid by default. ``reduction="sum"`` follows
    the printed equation (it scales the term by 2P and, from random weights, collapses
    the features before the identity loss can start).
    """

    def __init__(self, margin: float = 0.3, reduction: str = "mean"):
        super().__init__()
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be mean or sum, got {reduction!r}")
        self.margin, self.reduction = margin, reduction

    def forward(self, features: torch.Tensor, labels: torch.Tensor, modalities: torch.Tensor) -> torch.Tensor:
        pids = labels.unique()
        centres_v = torch.stack([features[(labels == p) & (modalities == 0)].mean(0) for p in pids])
        centres_i = torch.stack([features[(labels == p) & (modalities == 1)].mean(0) for p in pids])
        centres = torch.cat([centres_v, centres_i])  # [2P, D]: visible then infrared
        owner = torch.cat([pids, pids])
        distance = (pairwise_squared_distance(centres, centres).clamp(min=1e-12)).sqrt()
        positive = torch.cat([distance.diagonal(len(pids)), distance.diagonal(-len(pids))])
        negative = distance.masked_fill(owner[:, None] == owner[None, :], float("inf")).min(dim=1).values
        violations = F.relu(self.margin + positive - negative)
        return violations.mean() if self.reduction == "mean" else violations.sum()


class MarginMMDLoss(nn.Module):
    """Eq. 10-12: per identity the squared MMD between its visible and infrared features,
    counted only where it exceeds ``margin``, averaged over identities.

    The kernel is not given in the paper; this uses a sum of Gaussian kernels whose
    bandwidths are 1/4 .. 4 times the batch's mean squared distance (the multi-kernel
    form of the MMD literature), so MMD^2 ranges over [0, 2 x 5] and the margin 1.4
    bites only on clearly separated modalities.
    """

    def __init__(self, margin: float = 1.4, bandwidth_factors=(0.25, 0.5, 1.0, 2.0, 4.0)):
        super().__init__()
        self.margin = margin
        self.bandwidth_factors = bandwidth_factors

    def _kernel(self, x: torch.Tensor, y: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        distance = pairwise_squared_distance(x, y)
        return sum(torch.exp(-distance / (scale * f)) for f in self.bandwidth_factors)

    def forward(self, features: torch.Tensor, labels: torch.Tensor, modalities: torch.Tensor) -> torch.Tensor:
        scale = pairwise_squared_distance(features, features).mean().detach().clamp(min=1e-6)
        losses = []
        for pid in labels.unique():
            visible = features[(labels == pid) & (modalities == 0)]
            infrared = features[(labels == pid) & (modalities == 1)]
            mmd = (self._kernel(visible, visible, scale).mean() + self._kernel(infrared, infrared, scale).mean()
                   - 2 * self._kernel(visible, infrared, scale).mean())
            losses.append(torch.where(mmd - self.margin > 0, mmd, torch.zeros_like(mmd)))
        return torch.stack(losses).mean()


@dataclass(frozen=True)
class HAResformerWeights:
    """Eq. 13 trade-offs and the auxiliary-loss stages per dataset (Sec. IV-A, Table III)."""

    hc_tri: float = 2.0
    mmd: float = 0.25
    auxiliary: float = 0.5
    auxiliary_stages: tuple[int, ...] = (4,)

    @classmethod
    def for_dataset(cls, name: str) -> HAResformerWeights:
        if name == "regdb":
            return cls(auxiliary=0.25, auxiliary_stages=(3, 4))
        return cls()  # SYSU-MM01; LLCM uses SYSU's settings (Sec. IV-A)


class HAResformerLoss(nn.Module):
    """Eq. 13: ``L_ID + l1 L_HC-Tri + l2 L_MMD + l3 sum L_AL``, L_AL = HC-Tri on the
    supervised stages' class tokens and on the HGAE feature."""

    def __init__(self, weights: HAResformerWeights = HAResformerWeights(), hc_margin: float = 0.3,
                 mmd_margin: float = 1.4, use_hc_tri: bool = True, use_mmd: bool = True, use_auxiliary: bool = True,
                 hc_reduction: str = "mean"):
        super().__init__()
        self.weights = weights
        self.hc_tri = HeteroCenterTripletLoss(hc_margin, hc_reduction)
        self.mmd = MarginMMDLoss(mmd_margin)
        self.use_hc_tri, self.use_mmd, self.use_auxiliary = use_hc_tri, use_mmd, use_auxiliary

    def forward(self, output: TrainOutput, labels: torch.Tensor, modalities: torch.Tensor):
        final = output.features["final"].float()
        terms = {"id": F.cross_entropy(output.logits["final"].float(), labels)}
        if self.use_hc_tri:
            terms["hc_tri"] = self.weights.hc_tri * self.hc_tri(final, labels, modalities)
        if self.use_mmd:
            terms["mmd"] = self.weights.mmd * self.mmd(final, labels, modalities)
        if self.use_auxiliary:
            names = [f"stage{s}" for s in self.weights.auxiliary_stages] + ["hgae"]
            for name in names:
                if name in output.features:
                    terms[f"al/{name}"] = self.weights.auxiliary * self.hc_tri(
                        output.features[name].float(), labels, modalities)
        return sum(terms.values()), terms


def build_loss(family: str, dataset: str, **options) -> nn.Module:
    if family == "fusionreid":
        return FusionReIDLoss(**options)
    return HAResformerLoss(HAResformerWeights.for_dataset(dataset), **options)
