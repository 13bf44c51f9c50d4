"""HAResformer: hybrid ResNet-transformer hierarchical aggregation (Qian & Tang, 2025).

Paper: ``seeds/002_b1507fba1e96be17.txt``. Module names follow the paper:

- HFE, Hierarchical Feature Extraction (Sec. III-B): per stage ``i`` a ResNet-50
  stage (:class:`ResNetEncoder`, RE, Eq. 1, last stride 1), a
  :class:`TransformerEncoder` (TE, Eq. 2-3; patch size = stride 4, 2, 2, 1; class
  token + position embedding; ``H`` heads and ``L`` layers, Table I) whose input is
  the image (stage 1) or the previous fused map, and a
  :class:`CrossEncoderFeatureFusion` (CFFM, Eq. 4).
- DSA, Deeply Supervised Aggregation (Sec. III-C): each stage's class token is a
  supervised feature (the auxiliary loss of Eq. 13 is a hetero-center triplet loss,
  so these heads carry no classifier).
- HGAE, :class:`HierarchicalGlobalAggregateEncoder` (Sec. III-D, Eq. 5-6).
- ADD (Table IV): the RE's stage-4 map added to the CFFM's stage-4 output.

The paper does not say enough to place every operation. The readings chosen here
(reproducing Table V's parameters within 0.4% counted the authors' way):

- TE width of stage ``i`` = the ResNet stage width (256/512/1024/2048); MLP ratio 4,
  qkv bias, pre-LN blocks (Eq. 3) and a final LayerNorm; tokens at 288x144:
  2593 / 649 / 163 / 163.
- CFFM = one 1x1 convolution ``2C -> C`` with bias over ``[f_i ; reshape(f_i-p)]``.
- HGAE = ``GELU(Linear(256+512+1024+2048 -> 2048))``.
- The RE stage ``i+1`` reads the RE's own stage-``i`` map (Eq. 1); only the TE reads
  the fused map. Without CFFM (Table IV's "B"), the next TE reads the RE map and the
  final map is the RE's.
- Final feature: GeM pooling of the (ADD-ed) stage-4 map with a BNNeck and identity
  classifier (ID loss, Eq. 7). Test-time embedding: the BN-ed final feature and the
  HGAE feature, each L2-normalised, concatenated and scaled by ``1/sqrt(2)`` (so the
  whole has unit norm and neither part outweighs the other); the BN-ed final feature
  alone when HGAE is off.
"""

from __future__ import annotations

from functools import partial

import torch
from timm.models.vision_transformer import Block
from torch import nn

from .layers import BNNeck, TokenGrid, create_resnet, l2_normalize, make_pooling
from .output import TrainOutput

LayerNorm = partial(nn.LayerNorm, eps=1e-6)

PATCH_SIZES = (4, 2, 2, 1)
"""Table I: P_i = S_i per stage."""


class ResNetEncoder(nn.Module):
    """RE, Eq. 1: the four ResNet-50 stages, the stem folded into stage 1."""

    def __init__(self, name: str = "resnet50", weights: str | None = None):
        super().__init__()
        resnet = create_resnet(name, weights, last_stride_one=True)
        self.stem = nn.Sequential(resnet.conv1, resnet.bn1, resnet.act1, resnet.maxpool)
        self.stages = nn.ModuleList([resnet.layer1, resnet.layer2, resnet.layer3, resnet.layer4])
        self.widths = [_stage_width(stage) for stage in self.stages]

    def forward_stage(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """``f_i = F_i(x)`` for stage ``index`` (0-based); stage 0 takes the image."""
        if index == 0:
            x = self.stem(x)
        return self.stages[index](x)


def _stage_width(stage: nn.Sequential) -> int:
    """Output channels of a ResNet stage: those of the last BatchNorm in its last block."""
    norms = [m for m in stage[-1].modules() if isinstance(m, nn.BatchNorm2d)]
    return norms[-1].num_features


class TransformerEncoder(nn.Module):
    """TE, Eq. 2-3: patch embedding (P = S), class token, position embedding, L blocks.

    Returns the class token ``f_i-cls`` and the patch tokens ``f_i-p`` on their grid.
    """

    def __init__(self, in_chans: int, dim: int, patch: int, grid: tuple[int, int],
                 num_heads: int = 1, depth: int = 1, mlp_ratio: float = 4.0):
        super().__init__()
        self.grid = grid
        self.embed = TokenGrid(in_chans, dim, patch, patch, grid)
        self.blocks = nn.Sequential(
            *(Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm) for _ in range(depth))
        )
        self.norm = LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.norm(self.blocks(self.embed(x)))
        return tokens[:, 0], tokens[:, 1:].transpose(1, 2).reshape(-1, tokens.shape[-1], *self.grid)


class CrossEncoderFeatureFusion(nn.Module):
    """CFFM, Eq. 4: ``f^_i = PW(f_i || Reshape(f_i-p))``, a point-wise convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.pointwise = nn.Conv2d(2 * channels, channels, kernel_size=1, bias=True)

    def forward(self, local_map: torch.Tensor, patch_map: torch.Tensor) -> torch.Tensor:
        return self.pointwise(torch.cat([local_map, patch_map], dim=1))


class HierarchicalGlobalAggregateEncoder(nn.Module):
    """HGAE, Eq. 5-6: ``F_GA = GELU(FC(Concat(f_1-cls, ..., f_4-cls)))``."""

    def __init__(self, in_dims: list[int], out_dim: int):
        super().__init__()
        self.fc = nn.Linear(sum(in_dims), out_dim)
        self.act = nn.GELU()

    def forward(self, class_tokens: list[torch.Tensor]) -> torch.Tensor:
        return self.act(self.fc(torch.cat(class_tokens, dim=1)))


class HAResformer(nn.Module):
    """HAResformer = HFE (RE + TE + CFFM per stage) + DSA + HGAE (Fig. 3).

    Train mode returns a :class:`TrainOutput` with features ``final`` (pooled, before
    BN; ID + HC-Tri + MMD losses), ``hgae`` (when on) and ``stage1``..``stage4`` (the
    TE class tokens of the stages in ``dsa_stages``, when DSA is on), and logits for
    ``final``. Eval mode returns the test embedding described in the module docstring.
    """

    # ImageNet statistics, as the ResNet-50 encoder was pretrained with (RGB, [0, 1] scale).
    pixel_mean = (0.485, 0.456, 0.406)
    pixel_std = (0.229, 0.224, 0.225)

    def __init__(
        self,
        num_classes: int = 395,
        image_size: tuple[int, int] = (288, 144),
        cnn: str = "resnet50",
        num_heads: int = 1,
        depth: int = 1,
        cffm: bool = True,
        dsa: bool = True,
        dsa_stages: tuple[int, ...] = (1, 2, 3, 4),
        add: bool = True,
        hgae: bool = True,
        pooling: str = "gem",
        cnn_weights: str | None = None,
    ):
        super().__init__()
        self.image_size = tuple(image_size)
        self.use_cffm, self.use_dsa, self.use_add, self.use_hgae = cffm, dsa, add, hgae
        self.dsa_stages = tuple(dsa_stages)
        self.re = ResNetEncoder(cnn, cnn_weights)
        widths = self.re.widths
        height, width = self.image_size
        encoders, fusions = [], []
        in_chans = 3
        for channels, patch in zip(widths, PATCH_SIZES, strict=True):
            grid = TokenGrid.grid_size(height, width, patch, patch)
            encoders.append(TransformerEncoder(in_chans, channels, patch, grid, num_heads, depth))
            if cffm:
                fusions.append(CrossEncoderFeatureFusion(channels))
            height, width, in_chans = grid[0], grid[1], channels
        self.te = nn.ModuleList(encoders)
        self.cffm = nn.ModuleList(fusions)
        final_dim = widths[-1]
        self.hgae = HierarchicalGlobalAggregateEncoder(widths, final_dim) if hgae else None
        self.pool = make_pooling(pooling)
        self.neck = BNNeck(final_dim, num_classes)
        self.embedding_dim = final_dim * (2 if hgae else 1)

    def _forward_features(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        local_map, te_input = images, images
        class_tokens = []
        for stage in range(4):
            local_map = self.re.forward_stage(stage, local_map)
            class_token, patch_map = self.te[stage](te_input)
            class_tokens.append(class_token)
            te_input = self.cffm[stage](local_map, patch_map) if self.use_cffm else local_map
        final_map = te_input + local_map if (self.use_add and self.use_cffm) else te_input
        features = {"final": self.pool(final_map)}
        if self.use_hgae:
            features["hgae"] = self.hgae(class_tokens)
        if self.use_dsa:
            for stage in self.dsa_stages:
                features[f"stage{stage}"] = class_tokens[stage - 1]
        return features

    def forward(self, images: torch.Tensor, camids: torch.Tensor | None = None):
        """``camids`` is accepted for a uniform model interface and not used."""
        features = self._forward_features(images)
        if self.training:
            return TrainOutput(features=features, logits={"final": self.neck(features["final"])})
        parts = [self.neck.bn(features["final"])]
        if self.use_hgae:
            parts.append(features["hgae"])
        return l2_normalize(torch.cat([l2_normalize(part) for part in parts], dim=1))
