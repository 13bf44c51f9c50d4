"""Run a TensorRT engine with pycuda (TensorRT 10+ tensor-address API).

Never executed in this project's CI (no GPU there): written against NVIDIA's
documented Python API and kept thin; what surrounds it (contract, compatibility check,
batching) is shared with the tested ONNX Runtime path.

- ``context.set_input_shape`` per batch, ``set_tensor_address`` for every I/O tensor,
  ``execute_async_v3(stream.handle)``.
- Pinned host buffers sized for the profile's maximum batch.
- One CUDA context, created here and pushed/popped around every call, so the embedder
  can be used from the edge runtime's worker thread (``pycuda.autoinit`` would bind
  the context to the importing thread).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hybreid.contract import ModelContract
from hybreid.errors import UserError
from hybreid.inference.embedder import Embedder
from hybreid.inference.engine_cache import DeviceInfo, check_compatible, read_sidecar


def import_tensorrt():
    """``(tensorrt, pycuda.driver)`` or one clear error saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise UserError("TensorRT is not installed: on a Jetson it comes with JetPack (python3-libnvinfer); "
                        "on an x86_64 GPU host `pip install 'hybreid[tensorrt]'`; or use the ONNX file with "
                        "ONNX Runtime") from exc
    try:
        import pycuda.driver as cuda
    except ImportError as exc:
        raise UserError("pycuda is not installed: `pip install pycuda` (it needs the CUDA toolkit's headers)") \
            from exc
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            raise UserError("no CUDA GPU is visible: TensorRT engines need one; use the ONNX file instead")
    except cuda.Error as exc:
        raise UserError(f"CUDA cannot start ({exc}): is the NVIDIA driver loaded?") from exc
    return trt, cuda


def device_info(trt, cuda, device: int = 0) -> DeviceInfo:
    gpu = cuda.Device(device)
    major, minor = gpu.compute_capability()
    return DeviceInfo(tensorrt_version=trt.__version__, gpu_name=gpu.name(), compute_capability=f"{major}.{minor}")


class TensorRTEmbedder(Embedder):
    def __init__(self, path: str | Path, device: int = 0):
        path = Path(path)
        if not path.is_file():
            raise UserError(f"engine file {path} does not exist")
        sidecar = read_sidecar(path)
        trt, cuda = import_tensorrt()
        check_compatible(sidecar["device"], device_info(trt, cuda, device), path)
        self.contract = ModelContract.from_metadata(sidecar["contract"], str(path))
        self._cuda = cuda
        self._context = cuda.Device(device).make_context()
        try:
            logger = trt.Logger(trt.Logger.WARNING)
            engine = trt.Runtime(logger).deserialize_cuda_engine(path.read_bytes())
            if engine is None:
                raise UserError(f"TensorRT could not load {path}: the file is damaged or was built elsewhere; "
                                "rebuild it with `hybreid export engine`")
            self._engine = engine
            self._execution = engine.create_execution_context()
            _, _, max_shape = engine.get_tensor_profile_shape(self.contract.input_name, 0)
            self.max_batch = int(max_shape[0])
            in_dtype = np.uint8 if self.contract.preprocess_in_graph else np.float32
            self._host_in = cuda.pagelocked_empty(int(np.prod(max_shape)), in_dtype)
            self._host_out = cuda.pagelocked_empty(self.max_batch * self.dim, np.float32)
            self._device_in = cuda.mem_alloc(self._host_in.nbytes)
            self._device_out = cuda.mem_alloc(self._host_out.nbytes)
            self._stream = cuda.Stream()
        finally:
            self._context.pop()
        self.backend = f"tensorrt:{trt.__version__}"

    def run(self, batch: np.ndarray) -> np.ndarray:
        cuda = self._cuda
        count = len(batch)
        self._context.push()
        try:
            self._execution.set_input_shape(self.contract.input_name, batch.shape)
            flat = batch.reshape(-1)
            self._host_in[: flat.size] = flat
            cuda.memcpy_htod_async(self._device_in, self._host_in, self._stream)
            self._execution.set_tensor_address(self.contract.input_name, int(self._device_in))
            self._execution.set_tensor_address(self.contract.output_name, int(self._device_out))
            if not self._execution.execute_async_v3(self._stream.handle):
                raise RuntimeError("TensorRT execution failed")
            cuda.memcpy_dtoh_async(self._host_out, self._device_out, self._stream)
            self._stream.synchronize()
            return self._host_out[: count * self.dim].reshape(count, self.dim).copy()
        finally:
            self._context.pop()

    def __del__(self):
        context = getattr(self, "_context", None)
        if context is not None:
            try:
                context.detach()
            except Exception:  # interpreter shutdown: the driver may already be gone
                pass
