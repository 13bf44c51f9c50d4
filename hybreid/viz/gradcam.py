"""Grad-CAM for ReID embeddings: the target is the cosine similarity of each image's
embedding to a reference embedding (there is no class to explain).

Two weightings of a layer's activations ``A`` by the target's gradient ``G``:

- ``hirescam`` (default; Draelos & Carin, 2020): ``ReLU(sum_c G_c * A_c)`` per location,
  the layer's first-order contribution to the target at each place. Measured on the
  tiny models, blanking the region it ranks highest lowers the similarity more often
  than blanking the lowest-ranked region, which the original weighting did not achieve.
- ``gradcam`` (Selvaraju et al., 2017, the papers' figures): ``ReLU(sum_c mean(G_c) A_c)``,
  one weight per channel; it misplaces evidence when the gradient changes over space,
  as it does behind GeM pooling and attention.

Written here rather than taken from the grad-cam package: that package hooks a module
once per forward pass, and FusionReID's SEU is one module run by both branches, so a
module hook cannot tell the CNN run from the ViT run. :class:`Recorder` keeps every run.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from hybreid.viz.layers import Tap, gradcam_taps, token_grids


class Recorder:
    """Forward hooks that keep each tap's inputs and output, per run of its module."""

    def __init__(self, taps: list[Tap]):
        self.modules = {id(t.module): t.module for t in taps}
        self.runs: dict[int, list[tuple[tuple, torch.Tensor]]] = {key: [] for key in self.modules}
        self.handles = []

    def __enter__(self) -> Recorder:
        for key, module in self.modules.items():
            self.handles.append(module.register_forward_hook(
                lambda _module, args, output, key=key: self.runs[key].append((args, output))))
        return self

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            handle.remove()

    def output(self, tap: Tap) -> torch.Tensor:
        return self.runs[id(tap.module)][tap.call][1]

    def inputs(self, tap: Tap) -> tuple:
        return self.runs[id(tap.module)][tap.call][0]


def tokens_to_map(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[N, 1 + h*w, D] (class token first) -> [N, D, h, w]."""
    return tokens[:, 1:].transpose(1, 2).reshape(tokens.shape[0], tokens.shape[2], *grid)


def resolve_grids(model: nn.Module, recorder: Recorder, taps: list[Tap]) -> dict[str, tuple[int, int]]:
    """Grid of every name a token tap refers to: static ones and recorded map shapes."""
    grids = dict(token_grids(model))
    for tap in taps:
        if not tap.tokens:
            output = recorder.output(tap)
            grids[tap.label] = tuple(output.shape[-2:])
    return grids


def normalize_maps(maps: torch.Tensor) -> torch.Tensor:
    """Per image, scale to [0, 1] (a flat map stays 0)."""
    flat = maps.flatten(1)
    low, high = flat.min(1).values[:, None, None], flat.max(1).values[:, None, None]
    return (maps - low) / (high - low).clamp(min=1e-12)


def similarity_gradcam(model: nn.Module, images: torch.Tensor, reference: torch.Tensor,
                       taps: list[Tap] | None = None, method: str = "hirescam") -> dict[str, np.ndarray]:
    """Grad-CAM of ``cos(embedding(images[i]), reference[i])`` for every tap.

    ``images`` are preprocessed ``[N, 3, H, W]``; ``reference`` is ``[N, D]`` (or ``[D]``).
    Returns label -> ``[N, H, W]`` heatmaps in [0, 1] at the input's size.
    """
    if method not in ("hirescam", "gradcam"):
        raise ValueError(f"method must be 'hirescam' or 'gradcam', got {method!r}")
    model.eval()
    taps = taps or gradcam_taps(model)
    with Recorder(taps) as recorder, torch.enable_grad():
        embedding = model(images)
        target = F.cosine_similarity(embedding, reference.expand_as(embedding).to(embedding), dim=1)
        activations = [recorder.output(tap) for tap in taps]
        gradients = torch.autograd.grad(target.sum(), activations, allow_unused=True)
    grids = resolve_grids(model, recorder, taps)
    heatmaps = {}
    for tap, activation, gradient in zip(taps, activations, gradients, strict=True):
        if gradient is None:  # the layer does not reach the embedding (e.g. a switched-off branch)
            gradient = torch.zeros_like(activation)
        if tap.tokens:
            grid = grids[tap.grid_of]
            activation, gradient = tokens_to_map(activation, grid), tokens_to_map(gradient, grid)
        weights = gradient.mean(dim=(2, 3), keepdim=True) if method == "gradcam" else gradient
        cam = F.relu((weights * activation).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        heatmaps[tap.label] = normalize_maps(cam).detach().cpu().numpy()
    return heatmaps
