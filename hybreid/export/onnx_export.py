"""Export a model to one dynamic-batch ONNX file that carries its own contract.

- Attention is exported as explicit ``MatMul -> Softmax -> MatMul`` with ``1/sqrt(d)``
  folded onto Q (timm's non-fused path and hybreid's cross-attention), so TensorRT can
  fuse it, and every reshape reads the batch from the tensor, never a constant.
- Optionally the preprocessing goes into the graph: the input is then a batch of
  ``uint8`` RGB crops ``[N, H, W, 3]`` and the graph normalises and transposes them, so
  the edge only resizes.
- The ONNX metadata carries what the edge needs: preprocessing contract, embedding
  dimension, model name, config and a content hash of the weights (the model identity
  the matcher checks).
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import torch
from torch import nn

from hybreid import __version__
from hybreid.contract import ModelContract, set_metadata

INPUT_NAME, OUTPUT_NAME = "images", "embeddings"
DEFAULT_OPSET = 17  # LayerNormalization is a single op from opset 17; TensorRT 8.6+ parses it


def weights_hash(model: nn.Module) -> str:
    """SHA-256 of the model's weights (names, shapes and bytes), 16 hex digits.

    The identity of a trained model: the same weights exported twice, with or without
    in-graph preprocessing, hash the same; a retrained model never does.
    """
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(str(tuple(tensor.shape)).encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class PreprocessingWrapper(nn.Module):
    """``uint8 [N, H, W, 3]`` RGB -> normalised float ``[N, 3, H, W]`` -> the model."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model
        mean = torch.tensor(model.pixel_mean, dtype=torch.float32) * 255.0
        std = torch.tensor(model.pixel_std, dtype=torch.float32) * 255.0
        self.register_buffer("mean", mean.view(1, 3, 1, 1))
        self.register_buffer("inverse_std", (1.0 / std).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float()
        return self.model((x - self.mean) * self.inverse_std)


class EvalOnly(nn.Module):
    """The eval-mode embedding with no camera id (the edge never knows one)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


def use_explicit_attention(model: nn.Module) -> int:
    """Switch timm's fused attention (SDPA) to its explicit, scale-on-Q path; returns how many."""
    count = 0
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = False
            count += 1
    return count


def model_contract(model: nn.Module, name: str, config: dict, preprocess_in_graph: bool, opset: int) -> ModelContract:
    """The contract an exported file carries (:mod:`hybreid.contract` writes it)."""
    height, width = model.image_size
    return ModelContract(
        model=name, weights_sha256=weights_hash(model), embedding_dim=model.embedding_dim,
        input_name=INPUT_NAME, output_name=OUTPUT_NAME, layout="NHWC" if preprocess_in_graph else "NCHW",
        height=height, width=width, mean=tuple(model.pixel_mean), std=tuple(model.pixel_std),
        preprocess_in_graph=preprocess_in_graph, config=json.loads(json.dumps(config, default=list)),
        opset=opset, version=__version__)


def export_onnx(model: nn.Module, path: str | Path, name: str, config: dict | None = None,
                opset: int = DEFAULT_OPSET, preprocess_in_graph: bool = False, simplify: bool = True) -> Path:
    """Export ``model`` (eval mode, no camera id) to ``path`` with a dynamic batch."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    use_explicit_attention(model)
    wrapped = (PreprocessingWrapper(model) if preprocess_in_graph else EvalOnly(model)).eval()
    height, width = model.image_size
    example = (torch.randint(0, 256, (2, height, width, 3), dtype=torch.uint8) if preprocess_in_graph
               else torch.randn(2, 3, height, width))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        torch.onnx.export(
            wrapped, (example,), str(path), dynamo=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True,
        )
    graph = onnx.load(str(path))
    if simplify:
        import onnxslim

        graph = onnxslim.slim(graph)
    set_metadata(graph, model_contract(model, name, config or {}, preprocess_in_graph, opset))
    onnx.checker.check_model(graph, full_check=True)
    onnx.save(graph, str(path))
    return path
