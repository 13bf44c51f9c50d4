"""Attention weights of the global token over the local tokens, per head and layer.

The weights are recomputed from each attention block's recorded input with its own
projections (``softmax(q k^T / sqrt(d))``), since the fused kernels the blocks run do
not return them. FusionReID: SEU self-attention (the global token's row) and MFU
cross-attention (one query token); HAResformer: each TE layer's class-token row.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hybreid.viz.gradcam import Recorder, resolve_grids
from hybreid.viz.layers import attention_taps, gradcam_taps


def _heads(x: torch.Tensor, num_heads: int) -> torch.Tensor:
    """[N, T, D] -> [N, heads, T, D / heads]."""
    return x.unflatten(-1, (num_heads, x.shape[-1] // num_heads)).transpose(1, 2)


def global_token_attention(attention: nn.Module, inputs: tuple) -> torch.Tensor:
    """Weights ``[N, heads, T]`` of the first (global/class) token over the other tokens.

    ``attention`` is timm's self-attention (input ``[N, 1 + T, D]``; the weights over
    the class token itself are dropped and the rest renormalised, so each row sums to
    1 over the local tokens) or FusionReID's cross-attention (inputs query ``[N, 1, D]``,
    key, value ``[N, T, D]``).
    """
    if hasattr(attention, "qkv"):  # timm Attention: one projection for q, k and v
        (x,) = inputs[:1]
        q, k, _ = attention.qkv(x).chunk(3, dim=-1)
        q, k = _heads(q, attention.num_heads), _heads(k, attention.num_heads)
        q, k = attention.q_norm(q), attention.k_norm(k)
        weights = (q[:, :, :1] * attention.scale @ k.transpose(-2, -1)).softmax(dim=-1)[:, :, 0]
        local = weights[:, :, 1:]
        return local / local.sum(dim=-1, keepdim=True)
    query, key = inputs[0], inputs[1]
    q = _heads(attention.q(query), attention.num_heads)
    k = _heads(attention.k(key), attention.num_heads)
    return (q * attention.scale @ k.transpose(-2, -1)).softmax(dim=-1)[:, :, 0]


@torch.no_grad()
def attention_maps(model: nn.Module, images: torch.Tensor) -> dict[str, dict]:
    """label -> ``{"weights": [N, heads, T], "maps": [N, heads, h, w], "grid": (h, w)}``."""
    model.eval()
    taps = attention_taps(model)
    map_taps = gradcam_taps(model)
    with Recorder(taps + map_taps) as recorder:
        model(images)
    grids = resolve_grids(model, recorder, map_taps)
    result = {}
    for tap in taps:
        weights = global_token_attention(tap.module, recorder.inputs(tap)).float()
        grid = grids[tap.grid_of]
        result[tap.label] = {"weights": weights.cpu().numpy(),
                             "maps": weights.reshape(*weights.shape[:2], *grid).cpu().numpy(), "grid": grid}
    return result


def upsample(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """[..., h, w] -> [..., H, W] (bilinear), for drawing over the image."""
    tensor = torch.from_numpy(np.ascontiguousarray(maps, dtype=np.float32))
    shape = tensor.shape
    out = F.interpolate(tensor.reshape(-1, 1, *shape[-2:]), size=size, mode="bilinear", align_corners=False)
    return out.reshape(*shape[:-2], *size).numpy()
