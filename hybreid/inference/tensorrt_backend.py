"""Run a TensorRT engine with NVIDIA's cuda-python (TensorRT 10+ tensor-address API).

No GPU ran this: every TensorRT and CUDA call is checked name by name and signature by
signature against NVIDIA's own bindings (TensorRT 10.3 and 11.4, cuda-bindings 12.9 and
13) by the conformance tests, which also check the buffer sizes, copy directions and
results against ONNX Runtime. What surrounds it (contract, compatibility check,
batching) is shared with the tested ONNX Runtime path.

- ``context.set_input_shape`` per batch, ``set_tensor_address`` for every I/O tensor,
  ``execute_async_v3`` on the embedder's own stream.
- Pinned host buffers (``cudaMallocHost``) sized for the profile's maximum batch; only
  the batch's bytes are copied.
- CUDA's runtime API binds the device per thread: every call first selects the
  embedder's device, so the edge runtime's worker thread can use it.
- cuda-python, not pycuda: a wheel on x86_64 and Jetson, no CUDA headers or compiler,
  the binding TensorRT's own samples use.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from hybreid.contract import ModelContract
from hybreid.errors import UserError
from hybreid.inference.embedder import Embedder
from hybreid.inference.engine_cache import DeviceInfo, check_compatible, read_sidecar


def import_tensorrt():
    """``(tensorrt, cuda.bindings.runtime)`` or one clear error saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise UserError("TensorRT is not installed: on a Jetson it comes with JetPack (python3-libnvinfer); "
                        "on an x86_64 GPU host `pip install 'hybreid[tensorrt]'`; or use the ONNX file with "
                        "ONNX Runtime") from exc
    try:
        from cuda.bindings import runtime as cudart
    except ImportError as exc:
        raise UserError("NVIDIA's cuda-python is not installed: `pip install 'cuda-python>=12.6'` (a wheel, no "
                        "compiler needed; on JetPack 6 take 12.6.x)") from exc
    error, count = cudart.cudaGetDeviceCount()
    if error != cudart.cudaError_t.cudaSuccess:
        raise UserError(f"CUDA cannot start ({_error_text(cudart, error)}): is the NVIDIA driver loaded?")
    if count == 0:
        raise UserError("no CUDA GPU is visible: TensorRT engines need one; use the ONNX file instead")
    return trt, cudart


def _error_text(cudart, error) -> str:
    _, name = cudart.cudaGetErrorName(error)
    _, text = cudart.cudaGetErrorString(error)
    return f"{name.decode()}: {text.decode()}"


def cuda_check(cudart, result):
    """cuda-python returns ``(error, *values)``: the values, or an error naming CUDA's code."""
    error, *values = result
    if error != cudart.cudaError_t.cudaSuccess:
        raise RuntimeError(f"CUDA failed with {_error_text(cudart, error)}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


def device_info(trt, cudart, device: int = 0) -> DeviceInfo:
    prop = cuda_check(cudart, cudart.cudaGetDeviceProperties(device))
    name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
    return DeviceInfo(tensorrt_version=trt.__version__, gpu_name=name,
                      compute_capability=f"{prop.major}.{prop.minor}")


def _pinned_array(cudart, count: int, dtype) -> np.ndarray:
    """``count`` elements of page-locked host memory, as numpy sees them."""
    nbytes = count * np.dtype(dtype).itemsize
    pointer = cuda_check(cudart, cudart.cudaMallocHost(nbytes))
    return np.frombuffer((ctypes.c_byte * nbytes).from_address(pointer), dtype=dtype, count=count)


class TensorRTEmbedder(Embedder):
    def __init__(self, path: str | Path, device: int = 0):
        path = Path(path)
        if not path.is_file():
            raise UserError(f"engine file {path} does not exist")
        sidecar = read_sidecar(path)
        trt, cudart = import_tensorrt()
        check_compatible(sidecar["device"], device_info(trt, cudart, device), path)
        self.contract = ModelContract.from_metadata(sidecar["contract"], str(path))
        self._cudart, self._device = cudart, device
        self._buffers: list[tuple[str, int]] = []
        cuda_check(cudart, cudart.cudaSetDevice(device))
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
        self._host_in = self._pinned(int(np.prod(max_shape)), in_dtype)
        self._host_out = self._pinned(self.max_batch * self.dim, np.float32)
        self._device_in = self._device_buffer(self._host_in.nbytes)
        self._device_out = self._device_buffer(self._host_out.nbytes)
        self._stream = cuda_check(cudart, cudart.cudaStreamCreate())
        self.backend = f"tensorrt:{trt.__version__}"

    def _pinned(self, count: int, dtype) -> np.ndarray:
        array = _pinned_array(self._cudart, count, dtype)
        self._buffers.append(("host", array.ctypes.data))
        return array

    def _device_buffer(self, nbytes: int) -> int:
        pointer = cuda_check(self._cudart, self._cudart.cudaMalloc(nbytes))
        self._buffers.append(("device", pointer))
        return pointer

    def run(self, batch: np.ndarray) -> np.ndarray:
        cudart = self._cudart
        count = len(batch)
        batch = np.ascontiguousarray(batch, dtype=self._host_in.dtype)
        out_bytes = count * self.dim * 4
        cuda_check(cudart, cudart.cudaSetDevice(self._device))
        if not self._execution.set_input_shape(self.contract.input_name, batch.shape):
            raise RuntimeError(f"TensorRT refused input shape {batch.shape}")
        self._host_in[: batch.size] = batch.reshape(-1)
        cuda_check(cudart, cudart.cudaMemcpyAsync(self._device_in, self._host_in.ctypes.data, batch.nbytes,
                                                  cudart.cudaMemcpyKind.cudaMemcpyHostToDevice, self._stream))
        self._execution.set_tensor_address(self.contract.input_name, self._device_in)
        self._execution.set_tensor_address(self.contract.output_name, self._device_out)
        if not self._execution.execute_async_v3(int(self._stream)):
            raise RuntimeError("TensorRT execution failed")
        cuda_check(cudart, cudart.cudaMemcpyAsync(self._host_out.ctypes.data, self._device_out, out_bytes,
                                                  cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._stream))
        cuda_check(cudart, cudart.cudaStreamSynchronize(self._stream))
        return self._host_out[: count * self.dim].reshape(count, self.dim).copy()

    def close(self) -> None:
        """Give the stream and the buffers back to CUDA (also at garbage collection)."""
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        self._cudart = None
        stream = getattr(self, "_stream", None)
        if stream is not None:
            cudart.cudaStreamDestroy(stream)
        free = {"host": cudart.cudaFreeHost, "device": cudart.cudaFree}
        for kind, pointer in self._buffers:
            free[kind](pointer)

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the driver may already be gone
            pass
