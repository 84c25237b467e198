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


#: Ops whose multiply-accumulates are counted: op -> index of the weight input. The integer
#: ops of quantized models (ONNX's ``QLinearConv``, ``QLinearMatMul``, ``ConvInteger``,
#: ``MatMulInteger``; onnxruntime's ``QGemm``) count as their float counterparts do; a QDQ
#: model's weights (``DequantizeLinear`` of constants) are read through the dequantization.
_COUNTED = {"Gemm": 1, "MatMul": 1, "Conv": 1, "QGemm": 3, "QLinearMatMul": 3, "QLinearConv": 3,
            "MatMulInteger": 1, "ConvInteger": 1}
_CONV_OPS = {"Conv", "QLinearConv", "ConvInteger"}


def _weight_shape(w) -> list | None:
    if w is None:
        return None
    if w.const_value is not None:
        return list(w.const_value.shape)
    from .model import _const          # a QDQ weight: DequantizeLinear of a constant

    c = _const(w)
    return list(c.shape) if c is not None else _static(w)


def model_cost(model: ir.Model, nbytes: int | None = None) -> dict:
    """Parameters, size and per-sample multiply-accumulates of a model.

    Parameters
    ----------
    model : onnx_ir.Model
        Shapes are inferred on it (in place) when missing: by ONNX shape inference, then, for
        values it cannot follow (onnxruntime's ``com.microsoft`` ops of QOperator models), by
        one onnxruntime run on zero-valued inputs when the inputs' shapes are static.
    nbytes : int, optional
        The model's size on disk (graph file plus external data files, as
        :attr:`infoprobe.model.OnnxFile.bytes`); otherwise the size of the serialised model.

    Returns
    -------
    dict
        ``parameters`` (elements of all initializers), ``bytes``, ``parameter_bytes`` (of the
        initializers) and ``bytes_by_dtype`` (``{"int8": ..., "float32": ...}``), ``macs`` (per
        sample: the multiply-accumulates of ``Gemm``, ``MatMul``, ``Conv`` and their integer
        forms ``QGemm``, ``QLinearMatMul``, ``QLinearConv``, ``MatMulInteger``,
        ``ConvInteger``, whatever the precision; other ops are not counted) and
        ``macs_unknown`` (nodes whose shapes were not static).
    """
    from .model import shapes_by_running

    def needs_shapes(node):  # Gemm's cost is its weight's size; Conv and MatMul need output shapes
        return node.op_type in _COUNTED and "Gemm" not in node.op_type and _static(node.outputs[0]) is None

    if any(needs_shapes(n) for n in model.graph):
        try:
            model = ir_passes.ShapeInferencePass()(model).model
        except Exception:  # cost is informative; unknown shapes are reported below
            pass
    if any(needs_shapes(n) for n in model.graph):
        shapes_by_running(model)
    graph = model.graph
    by_dtype = {}
    params = 0
    for v in graph.initializers.values():
        if v.const_value is not None:
            params += int(v.const_value.size)
            try:
                key = v.const_value.dtype.numpy().name
            except Exception:            # a type NumPy has no name for (float8, int4, ...)
                key = str(v.const_value.dtype).lower()
            by_dtype[key] = by_dtype.get(key, 0) + int(v.const_value.nbytes)
    macs, unknown = 0, []
    for node in graph:
        op = node.op_type
        if op not in _COUNTED or node.domain not in ("", "ai.onnx", "com.microsoft"):
            continue
        i = _COUNTED[op]
        w = node.inputs[i] if len(node.inputs) > i else None
        out = _static(node.outputs[0]) if "Gemm" not in op else [None]
        w_shape = _weight_shape(w)
        if out is None or w_shape is None:
            unknown.append(node.name)
            continue
        if op in _CONV_OPS:
            macs += int(np.prod(w_shape)) * int(np.prod(out[2:]))
        elif "Gemm" in op:
            macs += int(np.prod(w_shape))
        else:  # MatMul: rows per sample x K x N
            rows = int(np.prod(out[1:-1])) if len(out) > 2 else 1
            macs += rows * int(np.prod(w_shape[-2:]))
    size = nbytes if nbytes is not None else ir.to_proto(model).ByteSize()
    return {"parameters": params, "bytes": int(size), "parameter_bytes": sum(by_dtype.values()),
            "bytes_by_dtype": dict(sorted(by_dtype.items())), "macs": macs, "macs_unknown": unknown}


def measure_latency(session, input_name: str, x, *, repeats: int = 30, warmup: int = 3) -> dict:
    """Median wall-clock time of ``session.run`` on the batch ``x`` (onnxruntime, this machine).

    Parameters
    ----------
    x : array [B, ...] or :class:`infoprobe.data.Inputs`
        The batch (several named inputs as an ``Inputs``).

    Returns
    -------
    dict
        ``batch`` (rows of ``x``), ``median_ms`` and ``p90_ms`` per run, ``repeats``.
    """
    return compare_latency({"model": session}, input_name, x, batches=(len(x),), repeats=repeats,
                           warmup=warmup)["model"][0]


def compare_latency(sessions: dict, input_name: str, x, *, batches=(1, 256), repeats: int = 30,
                    warmup: int = 3) -> dict:
    """Latency of several onnxruntime sessions measured the same way, side by side.

    For each batch size (rows of ``x``, at most ``len(x)``), every session is warmed up
    ``warmup`` times, then the sessions run in turn ``repeats`` times (interleaved, the order
    reversed every round, so that a slow spell of the machine touches all of them alike).

    Parameters
    ----------
    sessions : dict
        Name -> ``onnxruntime.InferenceSession``, all taking the same inputs.
    input_name : str
        The input of a single-input model (ignored for ``Inputs``).
    x : array [B, ...], Inputs, or dict
        Inputs (a dict: onnxruntime feeds, used as they are); each batch is its first rows.
    batches : sequence of int
        Batch sizes (default 1, the latency of one request, and 256, throughput).

    Returns
    -------
    dict
        Name -> list, one dict per batch: ``batch``, ``median_ms``, ``p10_ms``, ``p90_ms`` (the
        spread) per run, ``per_sample_ms`` (median / batch) and ``repeats``.
    """
    from .data import feeds

    out = {k: [] for k in sessions}
    names = list(sessions)
    rows = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
    for b in dict.fromkeys(max(1, min(int(b), rows)) for b in batches):
        feed = {k: v[:b] for k, v in x.items()} if isinstance(x, dict) else feeds(input_name, x[:b])
        for k in names:
            for _ in range(warmup):
                sessions[k].run(None, feed)
        times = {k: [] for k in names}
        for r in range(max(1, repeats)):
            for k in (names if r % 2 == 0 else names[::-1]):
                t0 = time.perf_counter()
                sessions[k].run(None, feed)
                times[k].append(time.perf_counter() - t0)
        for k in names:
            t = np.array(times[k]) * 1e3
            med = float(np.median(t))
            out[k].append({"batch": b, "median_ms": med, "p10_ms": float(np.percentile(t, 10)),
                           "p90_ms": float(np.percentile(t, 90)), "per_sample_ms": med / b, "repeats": len(t)})
    return out
