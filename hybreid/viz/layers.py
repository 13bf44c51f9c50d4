"""Where the papers look inside each model: the layers of their Grad-CAM figures and the
attention blocks of their attention figures, as (label, module, call) taps.

FusionReID shares one SEU between the branches (Table IV), so a module can run twice in
one forward pass; ``call`` says which run a tap means (0 = CNN branch, 1 = ViT branch).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Tap:
    label: str
    module: nn.Module
    call: int = 0
    tokens: bool = False  # output is [N, 1 + h*w, D] (class token first) rather than [N, C, h, w]
    grid_of: str | None = None  # label of the map tap whose grid the tokens lie on


def gradcam_taps(model: nn.Module) -> list[Tap]:
    """FusionReID Fig. 7: CNN and ViT features raw, after LRU, after each HTM (its SEU's
    local tokens). HAResformer Fig. 2: each stage's RE map and its CFFM (fused) map."""
    family = type(model).__name__
    if family == "FusionReID":
        taps = [Tap("CNN", model.cnn.backbone.layer4), Tap("ViT", model.vit.norm, tokens=True, grid_of="ViT grid"),
                Tap("CNN after LRU", model.dmf.lru_cnn), Tap("ViT after LRU", model.dmf.lru_vit)]
        for index, htm in enumerate(model.dmf.htms, start=1):
            if not hasattr(htm, "seu_cnn"):
                continue
            shared = htm.seu_cnn is htm.seu_vit
            taps.append(Tap(f"CNN after HTM{index}", htm.seu_cnn.norm, 0, True, "CNN after LRU"))
            taps.append(Tap(f"ViT after HTM{index}", htm.seu_vit.norm, 1 if shared else 0, True, "ViT after LRU"))
        return taps
    if family == "HAResformer":
        taps = []
        for stage in range(4):
            taps.append(Tap(f"RE stage {stage + 1}", model.re.stages[stage]))
            if model.use_cffm:
                taps.append(Tap(f"CFFM stage {stage + 1}", model.cffm[stage]))
        return taps
    raise ValueError(f"no visualisation taps for {family}")


def attention_taps(model: nn.Module) -> list[Tap]:
    """FusionReID Fig. 8-9: the SEU self-attention and the MFU cross-attention of each HTM
    (the global token attending to local tokens); HAResformer: each TE layer's class token."""
    family = type(model).__name__
    taps = []
    if family == "FusionReID":
        for index, htm in enumerate(model.dmf.htms, start=1):
            if hasattr(htm, "seu_cnn"):
                shared = htm.seu_cnn is htm.seu_vit
                taps.append(Tap(f"HTM{index} SEU (CNN)", htm.seu_cnn.block.attn, 0, grid_of="CNN after LRU"))
                taps.append(Tap(f"HTM{index} SEU (ViT)", htm.seu_vit.block.attn, 1 if shared else 0,
                                grid_of="ViT after LRU"))
            if hasattr(htm, "mfu_cnn"):
                # The CNN's global token queries the ViT's local tokens, and the other way round.
                taps.append(Tap(f"HTM{index} MFU (CNN->ViT)", htm.mfu_cnn.attn, 0, grid_of="ViT after LRU"))
                taps.append(Tap(f"HTM{index} MFU (ViT->CNN)", htm.mfu_vit.attn, 1 if htm.mfu_cnn is htm.mfu_vit else 0,
                                grid_of="CNN after LRU"))
        return taps
    if family == "HAResformer":
        for stage, encoder in enumerate(model.te, start=1):
            for layer, block in enumerate(encoder.blocks, start=1):
                taps.append(Tap(f"TE{stage} layer {layer}", block.attn, grid_of=f"TE{stage}"))
        return taps
    raise ValueError(f"no visualisation taps for {family}")


def token_grids(model: nn.Module) -> dict[str, tuple[int, int]]:
    """Grids of the token sequences, keyed by the names taps refer to."""
    family = type(model).__name__
    if family == "FusionReID":
        return {"ViT grid": tuple(model.vit.grid)}
    if family == "HAResformer":
        return {f"TE{i}": tuple(encoder.grid) for i, encoder in enumerate(model.te, start=1)}
    return {}
