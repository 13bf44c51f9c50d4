"""This machine's float32 matrix-multiply rates: the reference of every roofline ratio.

A roofline means "fraction of what this CPU's own GEMMs reach", so the reference is the
fastest of the runtimes' square 2048 matmuls measured in the same run: torch's (MKL or
OpenBLAS) and ONNX Runtime's CPU MatMul times a weight (packed once, as in every linear
layer). Which of them is faster depends on the CPU: on an AVX2 Intel machine torch led,
on an AMD EPYC (Zen 4) ONNX Runtime's own kernel ran at up to 1.6 times torch's, and a
torch-only reference printed rooflines above 1. ONNX Runtime times another activation
(packed on every call, as in attention scores) is measured for ``bench profile`` only.

An INT8 model's roofline takes the int8 matmuls as its reference (:data:`INT8_KINDS`): the
same square product as a Q/DQ graph (uint8 activations times int8 weights, the ``cpu``
form), run by ONNX Runtime's int8 kernels and, where installed, OpenVINO's.
"""

from __future__ import annotations

import time

import numpy as np

# A runtime's threads spin for a while after a run (OpenMP, ONNX Runtime's pool): let them
# fall asleep before a GEMM, or they take its cores.
IDLE_BEFORE_GEMM_S = 0.2
REFERENCE_KINDS = ("torch", "onnxruntime_weights")  # what a roofline is measured against
INT8_KINDS = ("onnxruntime_int8", "openvino_int8")  # an INT8 model's reference (integer operations)
ALL_KINDS = (*REFERENCE_KINDS, "onnxruntime_activations")


class GemmRates:
    """Square float32 GEMMs of each kind, built once and timed on demand."""

    def __init__(self, threads: int, kinds: tuple[str, ...] = REFERENCE_KINDS, size: int = 2048):
        import onnx
        import onnxruntime as ort
        import torch
        from onnx import TensorProto, helper

        self.size = size
        rng = np.random.default_rng(0)
        left, right = (rng.standard_normal((size, size)).astype(np.float32) for _ in range(2))
        square = [size, size]
        torch.set_num_threads(threads)
        torch_left, torch_right = torch.from_numpy(left), torch.from_numpy(right)
        self.candidates = {}
        for kind in kinds:
            if kind == "torch":
                self.candidates[kind] = lambda: torch_left @ torch_right
                continue
            if kind in INT8_KINDS:
                run = _int8_matmul(kind, left, right, threads)
                if run is not None:
                    self.candidates[kind] = run
                continue
            inputs = [helper.make_tensor_value_info("a", TensorProto.FLOAT, square)]
            initializers, feed = [], {"a": left}
            if kind == "onnxruntime_weights":
                initializers.append(onnx.numpy_helper.from_array(right, "b"))
            else:
                inputs.append(helper.make_tensor_value_info("b", TensorProto.FLOAT, square))
                feed["b"] = right
            graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["c"])], "matmul", inputs,
                                      [helper.make_tensor_value_info("c", TensorProto.FLOAT, square)], initializers)
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            self.candidates[kind] = lambda session=session, feed=feed: session.run(None, feed)

    def measure(self, repeats: int = 2) -> dict[str, float]:
        """GFLOP/s of each kind, median of ``repeats``.

        The kinds are timed in turn within each repeat, so that a change in the machine's
        speed (other tenants) reaches all of them rather than one. Each waits for the threads
        of the one before to fall asleep, and runs once untimed to wake its own.
        """
        seconds: dict[str, list[float]] = {name: [] for name in self.candidates}
        for _ in range(repeats):
            for name, multiply in self.candidates.items():
                time.sleep(IDLE_BEFORE_GEMM_S)
                multiply()
                start = time.perf_counter()
                multiply()
                seconds[name].append(time.perf_counter() - start)
        return {name: 2 * self.size**3 / float(np.median(times)) / 1e9 for name, times in seconds.items()}


def reference_rate(rates: dict[str, float], int8: bool = False) -> float:
    """The roofline's reference: the fastest of the runtimes' own GEMMs (their int8 ones for
    an INT8 model)."""
    return max(rates[kind] for kind in (INT8_KINDS if int8 else REFERENCE_KINDS) if kind in rates)


def _int8_matmul(kind: str, left: np.ndarray, right: np.ndarray, threads: int):
    """``left @ right`` as a Q/DQ graph on ``kind``'s int8 kernels (None where the runtime is
    not installed)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    size = left.shape[0]
    weight_scale = float(np.abs(right).max() / 127)
    nodes = [helper.make_node("QuantizeLinear", ["a", "a_scale", "a_zero"], ["a_q"]),
             helper.make_node("DequantizeLinear", ["a_q", "a_scale", "a_zero"], ["a_dq"]),
             helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zero"], ["b_dq"]),
             helper.make_node("MatMul", ["a_dq", "b_dq"], ["c"])]
    initializers = [numpy_helper.from_array(np.array(float(np.ptp(left)) / 255, np.float32), "a_scale"),
                    numpy_helper.from_array(np.array(128, np.uint8), "a_zero"),
                    numpy_helper.from_array(np.clip(np.round(right / weight_scale), -127, 127).astype(np.int8),
                                            "b_q"),
                    numpy_helper.from_array(np.array(weight_scale, np.float32), "b_scale"),
                    numpy_helper.from_array(np.array(0, np.int8), "b_zero")]
    graph = helper.make_graph(nodes, "int8_matmul", [helper.make_tensor_value_info("a", TensorProto.FLOAT,
                                                                                    [size, size])],
                              [helper.make_tensor_value_info("c", TensorProto.FLOAT, [size, size])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    if kind == "onnxruntime_int8":
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return lambda: session.run(None, {"a": left})
    try:
        import openvino
    except ImportError:
        return None
    import tempfile
    from pathlib import Path

    core = openvino.Core()
    with tempfile.TemporaryDirectory() as work:
        path = Path(work) / "int8_matmul.onnx"
        onnx.save(model, str(path))
        compiled = core.compile_model(core.read_model(str(path)), "CPU", {
            "INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"})
    request = compiled.create_infer_request()
    return lambda: request.infer({0: left})
