"""Size and cost of ONNX models: parameters, bytes, multiply-accumulates, measured latency."""
from __future__ import annotations

import time

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes


def _static(value) -> list | None:
    if value is None or value.shape is None:
        return None
    dims = list(value.shape.dims)
    return dims if all(isinstance(d, int) for d in dims[1:]) else None


def model_cost(model: ir.Model, nbytes: int | None = None) -> dict:
    """Parameters, size and per-sample multiply-accumulates of a model.

    Parameters
    ----------
    model : onnx_ir.Model
        Shapes are inferred on it (in place) when missing.
    nbytes : int, optional
        The model's size on disk (graph file plus external data files, as
        :attr:`infoprobe.model.OnnxFile.bytes`); otherwise the size of the serialised model.

    Returns
    -------
    dict
        ``parameters`` (elements of all initializers), ``bytes``, ``macs`` (per sample: the
        multiply-accumulates of ``Gemm``, ``MatMul`` and ``Conv``; other ops are not
        counted) and ``macs_unknown`` (nodes whose shapes were not static).
    """
    def needs_shapes(node):  # Gemm's cost is its weight's size; Conv and MatMul need output shapes
        return node.op_type in ("Conv", "MatMul") and _static(node.outputs[0]) is None

    if any(needs_shapes(n) for n in model.graph):
        try:
            model = ir_passes.ShapeInferencePass()(model).model
        except Exception:  # cost is informative; unknown shapes are reported below
            pass
    graph = model.graph
    params = sum(int(v.const_value.size) for v in graph.initializers.values() if v.const_value is not None)
    macs, unknown = 0, []
    for node in graph:
        op = node.op_type
        if op not in ("Gemm", "MatMul", "Conv"):
            continue
        w = node.inputs[1] if len(node.inputs) > 1 else None
        out = _static(node.outputs[0]) if op != "Gemm" else [None]
        w_shape = list(w.const_value.shape) if w is not None and w.const_value is not None else _static(w)
        if out is None or w_shape is None:
            unknown.append(node.name)
            continue
        if op == "Conv":
            macs += int(np.prod(w_shape)) * int(np.prod(out[2:]))
        elif op == "Gemm":
            macs += int(np.prod(w_shape))
        else:  # MatMul: rows per sample x K x N
            rows = int(np.prod(out[1:-1])) if len(out) > 2 else 1
            macs += rows * int(np.prod(w_shape[-2:]))
    size = nbytes if nbytes is not None else ir.to_proto(model).ByteSize()
    return {"parameters": params, "bytes": int(size), "macs": macs, "macs_unknown": unknown}


def measure_latency(session, input_name: str, x: np.ndarray, *, repeats: int = 30, warmup: int = 3) -> dict:
    """Median wall-clock time of ``session.run`` on the batch ``x`` (onnxruntime, this machine).

    Returns
    -------
    dict
        ``batch`` (rows of ``x``), ``median_ms`` and ``p90_ms`` per run, ``repeats``.
    """
    feed = {input_name: np.ascontiguousarray(x, np.float32)}
    for _ in range(warmup):
        session.run(None, feed)
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - t0)
    t = np.array(times) * 1e3
    return {"batch": int(len(x)), "median_ms": float(np.median(t)), "p90_ms": float(np.percentile(t, 90)),
            "repeats": len(times)}
