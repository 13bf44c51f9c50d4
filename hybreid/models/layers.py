"""Blocks shared by both model families: pooling, BNNeck heads, timm backbones.

Backbones come from timm by name (both papers note the backbone is replaceable), with
random weights unless a local weights file is given: nothing is fetched from a hub.
"""

from __future__ import annotations

import math
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed, trunc_normal_
from torch import nn

from hybreid.errors import UserError


class GeneralizedMeanPooling(nn.Module):
    """GeM pooling (Radenović et al.), ``(mean(x^p))^(1/p)`` with a learnable ``p``.

    FusionReID uses it on the ResNet map and on both LRU outputs (Sec. III-A/B,
    Table V); ``p`` starts at 3 with ``eps`` 1e-6 as in the authors' code. With
    ``learnable=False`` and ``p=1`` it is global average pooling (Table V's GAP row).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6, learnable: bool = True):
        super().__init__()
        self.eps = eps
        if learnable:
            self.p = nn.Parameter(torch.tensor(float(p)))
        else:
            self.register_buffer("p", torch.tensor(float(p)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, C]."""
        pooled = x.clamp(min=self.eps).pow(self.p).mean(dim=(2, 3))
        return pooled.pow(1.0 / self.p)


def make_pooling(kind: str) -> nn.Module:
    """``gem`` (learnable p=3) or ``avg`` (global average pooling)."""
    if kind == "gem":
        return GeneralizedMeanPooling()
    if kind == "avg":
        return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    raise UserError(f"pooling must be 'gem' or 'avg', got {kind!r}")


class BNNeck(nn.Module):
    """BatchNorm1d with a frozen bias, then a bias-free classifier (Luo et al. BoT).

    The triplet loss sees the feature before the BN, the cross-entropy the logits
    after it. ``num_classes=0`` builds the neck without a classifier.
    """

    def __init__(self, dim: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm1d(dim)
        self.bn.bias.requires_grad_(False)
        nn.init.ones_(self.bn.weight)
        nn.init.zeros_(self.bn.bias)
        self.classifier = nn.Linear(dim, num_classes, bias=False) if num_classes > 0 else None
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        """Logits of ``feature`` ([N, dim] -> [N, num_classes])."""
        if self.classifier is None:
            raise RuntimeError("this BNNeck was built without a classifier (num_classes=0)")
        return self.classifier(self.bn(feature))


def load_local_weights(module: nn.Module, path: str | Path, what: str) -> None:
    """Load a local ``state_dict`` file (``.pth``/``.pt``/``.safetensors``) into ``module``.

    Keys the module does not have (a classifier of the pretraining task, say) are
    ignored; keys the module has but the file lacks are an error, since a half-loaded
    backbone trains silently worse.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} weights file {path} does not exist; give the path of a local file")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch and safetensors raise many types for a bad file
        raise UserError(f"cannot read {what} weights file {path} ({exc}); is it a PyTorch state_dict?") from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys:
        shown = ", ".join(result.missing_keys[:5])
        raise UserError(
            f"{what} weights file {path} lacks {len(result.missing_keys)} of the model's "
            f"tensors (e.g. {shown}); is it a checkpoint of the same architecture?"
        )


def set_last_stride_one(resnet: nn.Module) -> None:
    """Make the first block of ``layer4`` keep resolution (the ReID "last stride 1").

    Both papers use it: FusionReID through TransReID's ResNet50, HAResformer in
    Sec. IV-A ("the stride of the last convolutional block is set to 1").
    """
    if not hasattr(resnet, "layer4"):
        raise UserError("last_stride=1 needs a ResNet-style backbone with a 'layer4' stage")
    first_block = resnet.layer4[0]
    for name, child in list(first_block.named_modules()):
        if isinstance(child, nn.Conv2d) and child.stride == (2, 2):
            child.stride = (1, 1)
        elif isinstance(child, nn.AvgPool2d) and child.stride in (2, (2, 2)):
            # ResNet-D downsamples its shortcut by pooling: drop the pooling.
            parent = first_block.get_submodule(name.rsplit(".", 1)[0]) if "." in name else first_block
            setattr(parent, name.rsplit(".", 1)[-1], nn.Identity())


def create_resnet(name: str, weights: str | None = None, last_stride_one: bool = True) -> nn.Module:
    """A timm ResNet without its classifier and pooling; ``forward_features`` -> [N, C, h, w]."""
    model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="")
    if weights:
        load_local_weights(model, weights, f"CNN backbone {name!r}")
    if last_stride_one:
        set_last_stride_one(model)
    return model


class TokenGrid(nn.Module):
    """Patch embedding with its own stride, class token and position embedding.

    Used for FusionReID's overlapping ViT embedding (kernel 16, stride 12: the paper's
    "*") and for HAResformer's per-stage TE embedding (Eq. 2, kernel = stride = P).
    """

    def __init__(self, in_chans: int, dim: int, kernel: int, stride: int, grid: tuple[int, int]):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, kernel_size=kernel, stride=stride)
        self.grid = grid
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid[0] * grid[1], dim))
        trunc_normal_(self.pos_embed, std=0.02)
        trunc_normal_(self.cls_token, std=0.02)

    @staticmethod
    def grid_size(height: int, width: int, kernel: int, stride: int) -> tuple[int, int]:
        """Output grid of a kernel/stride embedding: ``floor((H - P) / S) + 1`` per side."""
        return ((height - kernel) // stride + 1, (width - kernel) // stride + 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[N, C, H, W] -> [N, 1 + h*w, dim] (class token first)."""
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1) + self.pos_embed

    def load_pretrained_pos_embed(self, pos_embed: torch.Tensor, num_prefix_tokens: int = 1) -> None:
        """Resample a pretrained ViT position embedding to this grid (bicubic)."""
        side = int(math.sqrt(pos_embed.shape[1] - num_prefix_tokens))
        resampled = resample_abs_pos_embed(
            pos_embed, new_size=list(self.grid), old_size=[side, side], num_prefix_tokens=num_prefix_tokens
        )
        with torch.no_grad():
            self.pos_embed.copy_(resampled)


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """Row-wise L2 normalisation (the retrieval embedding)."""
    return F.normalize(x, p=2, dim=1)
