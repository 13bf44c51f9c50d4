"""FusionReID: unifying convolutional and transformer features (Wang et al., 2024).

Paper: ``seeds/000_04c0cc0260ac5bf9.txt``. Module names follow the paper:

- DFE, Dual-branch Feature Extraction (Sec. III-A): :class:`ConvolutionalBranch`
  (ResNet50, last stride 1, GeM) and :class:`TransformerBranch` (ViT-B/16 with an
  overlapping stride-12 patch embedding, the paper's "*", and the camera embedding
  added to every token).
- DMF, Dual-attention Mutual Fusion (Sec. III-B): two :class:`LocalRefinementUnit`
  (Eq. 1-2) and ``L`` stacked :class:`HeterogenousTransmissionModule`, each one
  :class:`SharedEncodingUnit` (Eq. 3-5, weight-shared between the branches) and two
  :class:`MutualFusionUnit` (Eq. 6-9, unshared).
- Six supervised features with BNNeck classifiers (Eq. 12); at test time their
  concatenation ``f_a``.

Readings where the paper is silent follow the authors' public code (FIELD-NOTES):
LRU = depthwise conv (kernel 1) + BN + PReLU, then 1x1 conv + BN + PReLU; SEU =
pre-LN transformer block + final LN; MFU = query from LN(own global token), key from
LN(other branch's tokens), value from the tokens un-normed, then ``M + MLP(LN(M))``;
the next HTM re-reads the *original* LRU tokens with the carried global token
(Fig. 3a); the camera embedding (coefficient 3.0) is added to all tokens, CLS too.

Camera embedding at the edge: a deployed camera was never seen in training, so its
id indexes nothing. ``camids=None`` (what the exported model does) adds the *mean* of
the learned camera embeddings: every training token saw some camera embedding, and
the mean keeps token statistics where training left them, whereas dropping the term
would shift every token by ``-3 * e_cam``. A camera id outside the table is an error.
"""

from __future__ import annotations

from functools import partial

import timm
import torch
from timm.layers import Mlp, trunc_normal_
from timm.models.vision_transformer import Block
from torch import nn

from hybreid.errors import UserError

from .layers import BNNeck, TokenGrid, create_resnet, l2_normalize, load_local_weights, make_pooling
from .output import TrainOutput

LayerNorm = partial(nn.LayerNorm, eps=1e-6)

HTM_STRUCTURES = ("seu_mfu", "seu", "mfu_seu", "mfu")
"""Table III: SEU front / MFU back (default), only SEU, MFU front / SEU back, only MFU."""


class ConvolutionalBranch(nn.Module):
    """DFE's CNN branch: ``X_c`` (ResNet map, last stride 1) and ``f^_c = GeM(X_c)``."""

    def __init__(self, name: str = "resnet50", weights: str | None = None, pooling: str = "gem"):
        super().__init__()
        self.backbone = create_resnet(name, weights, last_stride_one=True)
        self.dim = self.backbone.num_features
        self.pool = make_pooling(pooling)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature_map = self.backbone.forward_features(images)
        return feature_map, self.pool(feature_map)


class TransformerBranch(nn.Module):
    """DFE's Transformer branch: ViT with its own patch stride and a camera embedding.

    ``Z = [f^_t; X_t]``: the class token is ``f^_t``, the patch tokens reshaped to
    their grid are ``X_t`` (Sec. III-A).
    """

    def __init__(
        self,
        name: str = "vit_base_patch16_224",
        image_size: tuple[int, int] = (256, 128),
        stride: int = 12,
        num_cameras: int = 15,
        camera_coefficient: float = 3.0,
        weights: str | None = None,
        **vit_overrides,
    ):
        super().__init__()
        vit = timm.create_model(name, pretrained=False, num_classes=0, **vit_overrides)
        if weights:
            load_local_weights(vit, weights, f"Transformer backbone {name!r}")
        kernel = vit.patch_embed.proj.kernel_size[0]
        self.dim = vit.embed_dim
        self.grid = TokenGrid.grid_size(*image_size, kernel, stride)
        self.embed = TokenGrid(3, self.dim, kernel, stride, self.grid)
        with torch.no_grad():
            # The patch projection's weights do not depend on the stride, so an
            # ImageNet ViT transfers to the overlapping embedding as it is.
            self.embed.proj.load_state_dict(vit.patch_embed.proj.state_dict())
            self.embed.cls_token.copy_(vit.cls_token)
        if weights:
            self.embed.load_pretrained_pos_embed(vit.pos_embed, vit.num_prefix_tokens)
        self.blocks = vit.blocks
        self.norm = vit.norm
        self.num_cameras = num_cameras
        self.camera_coefficient = camera_coefficient
        if num_cameras > 0:
            self.camera_embed = nn.Parameter(torch.zeros(num_cameras, 1, self.dim))
            trunc_normal_(self.camera_embed, std=0.02)
        else:
            self.camera_embed = None

    def camera_term(self, camids: torch.Tensor | None) -> torch.Tensor | float:
        """``3.0 * e_cam`` per image, or the mean embedding for an unknown camera."""
        if self.camera_embed is None:
            return 0.0
        if camids is None:
            return self.camera_coefficient * self.camera_embed.mean(dim=0, keepdim=True)
        if int(camids.min()) < 0 or int(camids.max()) >= self.num_cameras:
            raise UserError(
                f"camera ids must lie in [0, {self.num_cameras}); pass camids=None for a "
                "camera the model was not trained on"
            )
        return self.camera_coefficient * self.camera_embed[camids]

    def forward(self, images: torch.Tensor, camids: torch.Tensor | None = None):
        tokens = self.embed(images) + self.camera_term(camids)
        tokens = self.norm(self.blocks(tokens))
        cls_token = tokens[:, 0]
        patch_map = tokens[:, 1:].transpose(1, 2).reshape(-1, self.dim, *self.grid)
        return patch_map, cls_token


class LocalRefinementUnit(nn.Module):
    """LRU, Eq. 1-2: ``F = PReLU(BN(DWConv(F^)))``, ``F_out = PReLU(BN(PWConv(F)))``.

    The depthwise convolution sets the spatial size (kernel 1, stride 1 by default,
    as in the authors' code), the pointwise one maps the channels to ``D``.
    """

    def __init__(self, in_dim: int, out_dim: int, kernel_size: int = 1, stride: int = 1):
        super().__init__()
        self.depthwise = nn.Sequential(
            nn.Conv2d(in_dim, in_dim, kernel_size, stride, kernel_size // 2, groups=in_dim, bias=False),
            nn.BatchNorm2d(in_dim),
            nn.PReLU(),
        )
        self.pointwise = nn.Sequential(
            nn.Conv2d(in_dim, out_dim, 1, bias=False),
            nn.BatchNorm2d(out_dim),
            nn.PReLU(),
        )

    def forward(self, feature_map: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(feature_map))


class SharedEncodingUnit(nn.Module):
    """SEU, Eq. 3-5: pre-LN MHSA + FFN with residuals over ``[global; local]`` tokens."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.block = Block(dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=LayerNorm)
        self.norm = LayerNorm(dim)

    def forward(self, global_token: torch.Tensor, local_tokens: torch.Tensor):
        """Returns ``(S^g, S^l)``, the split of Eq. 5."""
        encoded = self.norm(self.block(torch.cat([global_token, local_tokens], dim=1)))
        return encoded[:, :1], encoded[:, 1:]


class MultiHeadCrossAttention(nn.Module):
    """MHCA of Eq. 6-7: ``softmax(Q K^T / sqrt(d)) V`` per head, heads concatenated.

    Written as explicit MatMul -> Softmax -> MatMul with the scale folded onto ``Q``
    and reshapes that never name the batch size, so an exported graph keeps a
    dynamic batch and TensorRT can fuse it; key and value come in separately because
    the MFU normalises only the key input.
    """

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise UserError(f"dimension {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.scale = self.head_dim**-0.5
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.k = nn.Linear(dim, dim, bias=qkv_bias)
        self.v = nn.Linear(dim, dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        q = self._heads(self.q(query) * self.scale)
        k = self._heads(self.k(key))
        v = self._heads(self.v(value))
        attention = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attention @ v).transpose(1, 2).flatten(2))


class MutualFusionUnit(nn.Module):
    """MFU, Eq. 6-9: one branch's global token queries the other branch's local tokens.

    ``M^ = MHCA(LN(g), LN(S^l_other), S^l_other)``; ``f' = FFN(LN(M^)) + M^`` (Eq. 8-9).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm_query = LayerNorm(dim)
        self.norm_key = LayerNorm(dim)
        self.attn = MultiHeadCrossAttention(dim, num_heads)
        self.norm_mlp = LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), act_layer=nn.GELU)

    def forward(self, global_token: torch.Tensor, other_tokens: torch.Tensor) -> torch.Tensor:
        fused = self.attn(self.norm_query(global_token), self.norm_key(other_tokens), other_tokens)
        return fused + self.mlp(self.norm_mlp(fused))


class HeterogenousTransmissionModule(nn.Module):
    """HTM: one SEU and two MFUs in the order of ``structure`` (Table III, Fig. 4).

    ``share_seu`` / ``share_mfu`` choose weight sharing between the branches (Table
    IV; the paper's choice is a shared SEU and unshared MFUs).
    """

    def __init__(self, dim: int, num_heads: int, structure: str = "seu_mfu",
                 share_seu: bool = True, share_mfu: bool = False):
        super().__init__()
        if structure not in HTM_STRUCTURES:
            raise UserError(f"HTM structure must be one of {HTM_STRUCTURES}, got {structure!r}")
        self.structure = structure
        if "seu" in structure:
            self.seu_cnn = SharedEncodingUnit(dim, num_heads)
            self.seu_vit = self.seu_cnn if share_seu else SharedEncodingUnit(dim, num_heads)
        if "mfu" in structure:
            self.mfu_cnn = MutualFusionUnit(dim, num_heads)
            self.mfu_vit = self.mfu_cnn if share_mfu else MutualFusionUnit(dim, num_heads)

    def forward(self, global_cnn, global_vit, local_cnn, local_vit):
        """Global tokens ``[N, 1, D]`` in and out; local tokens are the LRU tokens."""
        if self.structure == "seu_mfu":
            g_cnn, s_cnn = self.seu_cnn(global_cnn, local_cnn)
            g_vit, s_vit = self.seu_vit(global_vit, local_vit)
            return self.mfu_cnn(g_cnn, s_vit), self.mfu_vit(g_vit, s_cnn)
        if self.structure == "seu":
            return self.seu_cnn(global_cnn, local_cnn)[0], self.seu_vit(global_vit, local_vit)[0]
        fused_cnn = self.mfu_cnn(global_cnn, local_vit)
        fused_vit = self.mfu_vit(global_vit, local_cnn)
        if self.structure == "mfu":
            return fused_cnn, fused_vit
        return self.seu_cnn(fused_cnn, local_cnn)[0], self.seu_vit(fused_vit, local_vit)[0]


class DualAttentionMutualFusion(nn.Module):
    """DMF: LRUs, GeM on their outputs (``f'_(c,0)``, ``f'_(t,0)``), then stacked HTMs."""

    def __init__(self, cnn_dim: int, vit_dim: int, dim: int = 768, num_heads: int = 12, depth: int = 2,
                 structure: str = "seu_mfu", share_seu: bool = True, share_mfu: bool = False,
                 pooling: str = "gem", lru_kernel: int = 1, lru_stride: int = 1):
        super().__init__()
        self.lru_cnn = LocalRefinementUnit(cnn_dim, dim, lru_kernel, lru_stride)
        self.lru_vit = LocalRefinementUnit(vit_dim, dim, lru_kernel, lru_stride)
        self.pool_cnn = make_pooling(pooling)
        self.pool_vit = make_pooling(pooling)
        self.htms = nn.ModuleList(
            HeterogenousTransmissionModule(dim, num_heads, structure, share_seu, share_mfu)
            for _ in range(depth)
        )

    def forward(self, map_cnn: torch.Tensor, map_vit: torch.Tensor) -> dict[str, torch.Tensor]:
        refined_cnn = self.lru_cnn(map_cnn)
        refined_vit = self.lru_vit(map_vit)
        aligned_cnn = self.pool_cnn(refined_cnn)
        aligned_vit = self.pool_vit(refined_vit)
        local_cnn = refined_cnn.flatten(2).transpose(1, 2)
        local_vit = refined_vit.flatten(2).transpose(1, 2)
        global_cnn, global_vit = aligned_cnn.unsqueeze(1), aligned_vit.unsqueeze(1)
        for htm in self.htms:
            global_cnn, global_vit = htm(global_cnn, global_vit, local_cnn, local_vit)
        # [:, 0] rather than squeeze(): squeeze would also drop a batch of one.
        return {
            "cnn_lru": aligned_cnn,
            "vit_lru": aligned_vit,
            "cnn_htm": global_cnn[:, 0],
            "vit_htm": global_vit[:, 0],
        }


class FusionReID(nn.Module):
    """FusionReID = DFE + DMF + six BNNeck heads (Fig. 2, Eq. 12).

    Train mode returns a :class:`TrainOutput` with the six features (before BN, for
    the triplet loss) and their logits. Eval mode returns ``f_a``: the L2-normalised
    concatenation of the six features, ``[N, D_c + D_t + 4 D]`` (5888 for the paper).
    """

    feature_names = ("cnn", "vit", "cnn_lru", "vit_lru", "cnn_htm", "vit_htm")
    # Input normalisation of the authors' training recipe (RGB, [0, 1] scale).
    pixel_mean = (0.5, 0.5, 0.5)
    pixel_std = (0.5, 0.5, 0.5)

    def __init__(
        self,
        num_classes: int = 1041,
        image_size: tuple[int, int] = (256, 128),
        cnn: str = "resnet50",
        vit: str = "vit_base_patch16_224",
        vit_stride: int = 12,
        vit_overrides: dict | None = None,
        num_cameras: int = 15,
        camera_coefficient: float = 3.0,
        dim: int = 768,
        num_heads: int = 12,
        depth: int = 2,
        structure: str = "seu_mfu",
        share_seu: bool = True,
        share_mfu: bool = False,
        pooling: str = "gem",
        lru_kernel: int = 1,
        lru_stride: int = 1,
        cnn_weights: str | None = None,
        vit_weights: str | None = None,
    ):
        super().__init__()
        self.image_size = tuple(image_size)
        self.cnn = ConvolutionalBranch(cnn, cnn_weights, pooling)
        self.vit = TransformerBranch(vit, self.image_size, vit_stride, num_cameras, camera_coefficient,
                                     vit_weights, **(vit_overrides or {}))
        self.dmf = DualAttentionMutualFusion(self.cnn.dim, self.vit.dim, dim, num_heads, depth, structure,
                                             share_seu, share_mfu, pooling, lru_kernel, lru_stride)
        dims = (self.cnn.dim, self.vit.dim, dim, dim, dim, dim)
        self.feature_dims = dict(zip(self.feature_names, dims, strict=True))
        self.embedding_dim = sum(dims)
        self.heads = nn.ModuleDict({name: BNNeck(d, num_classes) for name, d in self.feature_dims.items()})

    def features(self, images: torch.Tensor, camids: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The six supervised features, by name, before their BNNecks."""
        map_cnn, pooled_cnn = self.cnn(images)
        map_vit, cls_vit = self.vit(images, camids)
        return {"cnn": pooled_cnn, "vit": cls_vit, **self.dmf(map_cnn, map_vit)}

    def forward(self, images: torch.Tensor, camids: torch.Tensor | None = None):
        features = self.features(images, camids)
        if self.training:
            logits = {name: self.heads[name](feature) for name, feature in features.items()}
            return TrainOutput(features=features, logits=logits)
        return l2_normalize(torch.cat([features[name] for name in self.feature_names], dim=1))
