"""Graph rewrites with ``onnx-ir``: the one intervention mechanism of DESIGN.md.

:func:`instrument` gives every unit layer two extra graph inputs, a ``mask`` m and an
``offset`` c, and replaces its post-activation t by ``t' = m * t + c`` for all consumers
(m = 1, c = 0 is the identity). It can also expose each layer's pre- and post-activation
(before the mask) as graph outputs. A site of a QOperator model (``UnitLayer.quantized``) holds
integers: it is dequantized before it is exposed or masked, and the masked value quantized
again with the same scale and zero point (so m = 1, c = 0 leaves it bit for bit unchanged).
:func:`suffix` cuts an instrumented model after a unit layer, so that a sweep over that layer
starts from its stored post-activation.

Value names used by the rewritten graphs (``L`` is the layer name): ``L:pre``, ``L:post``
(outputs), ``L:mask``, ``L:offset``, ``L:mix``, ``L:noise`` (inputs), ``L:post_in`` (suffix input).
"""
from __future__ import annotations

import functools

import onnx
import onnx_ir as ir
import onnx_ir.passes as ir_passes
import onnx_ir.passes.common as ir_passes_common

from .errors import InfoprobeError, ModelError, NoSuffixError, one_line
from .model import LoadedModel, UnitLayer


def io_name(layer: str, role: str) -> str:
    """Graph input/output name for ``role`` in {"pre", "post", "mask", "offset", "mix", "noise", "post_in"}."""
    return f"{layer}:{role}"


def mask_shape(layer: UnitLayer, positions: bool = False) -> tuple:
    """Per-sample shape of a mask or offset array of ``layer`` (the one place it is derived).

    The site's shape with 1 on every position axis: dense ``(U,)``, conv ``(C, 1, 1)``, token
    ``(1, U)``; or the whole shape (``(C, H, W)``, ``(T, U)``) per unit x position
    (``positions=True``). A feed has a batch dimension first: 1 (the same intervention for
    every sample) or the batch size (one per sample).
    """
    if positions:
        return tuple(layer.shape)
    return tuple(d if i == layer.unit_axis else 1 for i, d in enumerate(layer.shape))


def mix_shape(layer: UnitLayer) -> tuple:
    """Shape of a site's ``L:mix`` input: ``(U, U)`` where the units are the last axis (a
    ``MatMul``), ``(U, U, 1, ...)`` where they come first (a 1x1 ``Conv``)."""
    if layer.unit_axis == len(layer.shape) - 1:
        return (layer.units, layer.units)
    return (layer.units, layer.units, *[1] * (len(layer.shape) - 1))


def mix_feed(layer: UnitLayer, p):
    """The ``L:mix`` feed that computes ``t_j <- sum_k P[j, k] t_k`` on the unit axis, from
    ``P`` [U, U] (shape :func:`mix_shape`)."""
    if layer.unit_axis == len(layer.shape) - 1:
        return p.T.copy()
    return p.reshape(mix_shape(layer))


def _value_by_name(graph: ir.Graph, name: str) -> ir.Value:
    for v in graph.inputs:
        if v.name == name:
            return v
    if name in graph.initializers:
        return graph.initializers[name]
    for node in graph:
        for v in node.outputs:
            if v.name == name:
                return v
    raise ModelError(f"value {name!r} not found in the graph")


def _float_value(name: str, dims) -> ir.Value:
    return ir.Value(name=name, type=ir.TensorType(ir.DataType.FLOAT), shape=ir.Shape(dims))


def _requantize(graph: ir.Graph, lay: UnitLayer, value: ir.Value, name: str, op: str) -> ir.Value:
    """``value`` itself for a float site; for a site of a quantized model (``lay.quantized``) a
    new ``op`` of it with the site's scale and zero point: ``DequantizeLinear`` to read or
    mask it, ``QuantizeLinear`` back to its integer type (exact for dequantized integers,
    saturating outside the type's range)."""
    if not lay.quantized:
        return value
    scale, zp = (_value_by_name(graph, n) for n in lay.quantized)
    node = ir.Node("", op, [value, scale, zp], name=name)
    graph.append(node)
    return node.outputs[0]


def instrument(lm: LoadedModel, *, expose: bool = True, mix: bool = False, noise: bool = False) -> ir.Model:
    """Rewrite a model so that unit layers can be read and ablated through graph I/O.

    Every unit layer gets graph inputs ``L:mask`` and ``L:offset`` (float32, broadcastable to
    ``[N, *layer.shape]``: ``[B, U]`` dense, ``[B, C, 1, 1]`` or ``[B, C, H, W]`` conv,
    ``[B, 1, U]`` or ``[B, T, U]`` token, B = 1 or N, see :func:`mask_shape`), and every consumer of the post-activation reads
    ``m * t + c`` instead.

    Parameters
    ----------
    lm : LoadedModel
        From :func:`infoprobe.model.load_model`; it is not modified.
    expose : bool
        Add graph outputs ``L:pre`` and ``L:post`` (float32 ``[N, *layer.shape]``), the
        activations before any mask.
    mix : bool
        Also add ``L:mix`` (float32, :func:`mix_shape`)
        and compute ``t' = m * t + c + mix(t)``, where ``mix(t)_j = sum_k P[j, k] t_k`` (units
        last: ``t @ mix`` with ``mix = P.T``; units first: a 1x1 convolution with weight ``mix``). This is
        the affine replacement of a pruning plan applied without removing anything
        (:meth:`infoprobe.runner.Runner.plan_feeds`); zeros leave the model unchanged.
    noise : bool
        Also add ``L:noise`` (float32 ``[N, *layer.shape]``, or ``[1, ...]``
        broadcast) to every *hidden* layer (not the output layer) and add it last:
        ``t' = m * t + c (+ mix(t)) + z``. Fed with N(0, beta^2) draws this is the noisy
        network T_l = f_l(T_{l-1}) + Z_l of Goldfeld et al. (2019, Section 2); the exposed
        ``L:post`` is then S_l = f_l(T_{l-1}), before the noise.

    Returns
    -------
    onnx_ir.Model
        A checked model (``onnx.checker`` with ``full_check=True``) whose original outputs
        are unchanged when m = 1 and c = 0.
    """
    passes = [InterventionPass(lm, mix=mix, noise=noise)] + ([ExposurePass(lm)] if expose else [])
    return apply_passes(lm.fresh_ir(), *passes, FinalizePass())


def apply_passes(model: ir.Model, *passes) -> ir.Model:
    """Run ``passes`` (``onnx_ir`` passes) in sequence, each with its pre- and post-conditions.

    Raises
    ------
    ModelError
        A pass's condition failed (its own infoprobe error is raised as is, e.g.
        :class:`~infoprobe.errors.NoSuffixError`).
    """
    for p in passes:
        try:
            model = p(model).model
        except (ir_passes.PreconditionError, ir_passes.PostconditionError) as exc:
            if isinstance(exc.__cause__, InfoprobeError):
                raise exc.__cause__ from None
            raise ModelError(f"{type(p).__name__}: {one_line(exc)}") from None
    return model


class InterventionPass(ir_passes.InPlacePass):
    """Route every consumer of each unit layer's post-activation t through ``m * t + c``, with
    ``L:mask`` and ``L:offset`` new graph inputs (and ``+ mix(t)`` with ``L:mix``, ``+ z`` with
    ``L:noise``, as :func:`instrument` describes). A post-activation that is a graph output keeps
    its name on the intervened value; the raw one is renamed ``<name>__infoprobe_raw``."""

    def __init__(self, lm: LoadedModel, *, mix: bool = False, noise: bool = False):
        super().__init__()
        self.lm, self.mix, self.noise = lm, mix, noise

    def call(self, model: ir.Model) -> ir_passes.PassResult:
        graph = model.graph
        for lay in self.lm.layers:
            name = lay.name
            batch_dim = ir.SymbolicDim(f"{name}_B")
            t = _value_by_name(graph, lay.post_value)
            mdims = [batch_dim] + [lay.units if i == lay.unit_axis else ir.SymbolicDim(f"{name}_P{i}")
                                   for i in range(len(lay.shape))]
            mask = _float_value(io_name(name, "mask"), mdims)
            offset = _float_value(io_name(name, "offset"), mdims)
            graph.inputs.extend([mask, offset])
            uses = list(t.uses())
            was_output = t.is_graph_output()
            tf = _requantize(graph, lay, t, f"infoprobe/{name}/dequantize", "DequantizeLinear")
            mul = ir.Node("", "Mul", [tf, mask], name=f"infoprobe/{name}/mask_mul")
            add = ir.Node("", "Add", [mul.outputs[0], offset], name=f"infoprobe/{name}/offset_add")
            graph.extend([mul, add])  # placed by the topological sort of FinalizePass
            if self.mix:
                mdims = list(mix_shape(lay))
                mixer = _float_value(io_name(name, "mix"), mdims)
                graph.inputs.append(mixer)
                prod = ir.Node("", "MatMul" if len(mdims) == 2 else "Conv", [tf, mixer], name=f"infoprobe/{name}/mix")
                add2 = ir.Node("", "Add", [add.outputs[0], prod.outputs[0]], name=f"infoprobe/{name}/mix_add")
                graph.extend([prod, add2])
                add = add2
            if self.noise and not lay.is_output:
                z = _float_value(io_name(name, "noise"), [batch_dim, *lay.shape])
                graph.inputs.append(z)
                add3 = ir.Node("", "Add", [add.outputs[0], z], name=f"infoprobe/{name}/noise_add")
                graph.append(add3)
                add = add3
            new = _requantize(graph, lay, add.outputs[0], f"infoprobe/{name}/quantize", "QuantizeLinear")
            new.type, new.shape = t.type, t.shape
            for node, idx in uses:
                node.replace_input_with(idx, new)
            if was_output:
                out_name = t.name
                for i, v in enumerate(graph.outputs):
                    if v is t:
                        graph.outputs[i] = new
                t.name = _raw_name(out_name)
                new.name = out_name
            else:
                new.name = f"{name}:post_masked"
        return ir_passes.PassResult(model, modified=True)


def _raw_name(name: str) -> str:
    return f"{name}__infoprobe_raw"


class ExposurePass(ir_passes.InPlacePass):
    """Add graph outputs ``L:pre`` and ``L:post`` (float32 ``[N, *layer.shape]``) for every
    unit layer: the activations before any intervention (after :class:`InterventionPass`, the
    raw values it renamed)."""

    def __init__(self, lm: LoadedModel):
        super().__init__()
        self.lm = lm

    def call(self, model: ir.Model) -> ir_passes.PassResult:
        graph = model.graph
        names = {v.name for v in graph.inputs} | {v.name for node in graph for v in node.outputs}
        raw = lambda n: _raw_name(n) if _raw_name(n) in names else n  # noqa: E731
        for lay in self.lm.layers:
            dims = [ir.SymbolicDim("N"), *lay.shape]
            for role, value in (("pre", lay.pre_value), ("post", lay.post_value)):
                v = _value_by_name(graph, raw(value))
                if lay.quantized:
                    out = _requantize(graph, lay, v, f"infoprobe/{lay.name}/{role}", "DequantizeLinear")
                else:
                    node = ir.Node("", "Identity", [v], name=f"infoprobe/{lay.name}/{role}")
                    graph.append(node)
                    out = node.outputs[0]
                out.name = io_name(lay.name, role)
                out.type, out.shape = ir.TensorType(ir.DataType.FLOAT), ir.Shape(dims)
                graph.outputs.append(out)
        return ir_passes.PassResult(model, modified=True)


def suffix(lm: LoadedModel, layer: str) -> ir.Model:
    """The part of the (instrumented) model after unit layer ``layer``, as its own graph.

    Its inputs are ``L:post_in`` (the layer's post-activation before the mask, float32
    ``[N, *shape]``) and the masks and offsets of ``layer`` and of every layer after it; its
    outputs are the model's outputs. Running it on stored post-activations gives exactly what the whole
    instrumented model gives.

    Raises
    ------
    ModelError
        ``layer`` is the output layer.
    NoSuffixError
        The rest of the model also reads values computed before ``layer`` (a skip connection
        around it), so no suffix exists.
    """
    return apply_passes(lm.fresh_ir(), InterventionPass(lm), SuffixPass(lm, layer), FinalizePass())


class SuffixPass(ir_passes.InPlacePass):
    """Cut an intervened graph (:class:`InterventionPass`) after unit layer ``layer``: its
    post-activation becomes the graph input ``L:post_in``; the model's input, the nodes before
    the layer and the masks and offsets of earlier layers are removed (see :func:`suffix`)."""

    def __init__(self, lm: LoadedModel, layer: str):
        super().__init__()
        self.lm, self.layer = lm, layer

    def requires(self, model: ir.Model) -> None:
        if self.lm.layer(self.layer).is_output:
            raise ModelError(f"layer {self.layer!r} is the output layer: there is nothing after it")

    def call(self, model: ir.Model) -> ir_passes.PassResult:
        lm, layer = self.lm, self.layer
        lay = lm.layer(layer)
        keep = set(_downstream(lm, layer)) | {layer}
        model = ir_passes_common.TopologicalSortPass()(model).model   # unused nodes are found in order
        graph = model.graph
        t = _value_by_name(graph, lay.post_value)
        new_in = _float_value(io_name(layer, "post_in"), [ir.SymbolicDim("N"), *lay.shape])
        graph.inputs.append(new_in)
        fed = _requantize(graph, lay, new_in, f"infoprobe/{layer}/quantize_in", "QuantizeLinear")
        for node, idx in list(t.uses()):
            if node.outputs[0] is not fed:
                node.replace_input_with(idx, fed)
        model = ir_passes_common.RemoveUnusedNodesPass()(model).model
        graph = model.graph
        data_inputs = set(lm.input_names)
        if any(v.uses() for v in graph.inputs if v.name in data_inputs):
            raise NoSuffixError(f"the model after layer {layer!r} also reads values computed before it "
                                "(a skip connection, or another model input); run the whole model instead")
        dead = [v for v in graph.inputs if v.name in data_inputs
                or (v.name.endswith((":mask", ":offset")) and v.name.rsplit(":", 1)[0] not in keep)]
        for v in dead:
            graph.inputs.remove(v)
        return ir_passes.PassResult(model, modified=True)


def _downstream(lm: LoadedModel, layer: str) -> list:
    out, frontier = [], {layer}
    changed = True
    while changed:
        changed = False
        for lay in lm.layers:
            if lay.name not in out and frontier.intersection(lay.inputs):
                out.append(lay.name)
                frontier.add(lay.name)
                changed = True
    return out


@functools.lru_cache(maxsize=1)
def max_ort_ir_version() -> int:
    """Highest ONNX IR version the installed onnxruntime accepts (probed once)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    for version in range(onnx.IR_VERSION, 6, -1):
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        m.ir_version = version
        try:
            ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            return version
        except Exception:
            continue
    return 7


def _min_ir_for_opset(opset: int) -> int:
    for _, ir_version, ai_onnx, *_ in onnx.helper.VERSION_TABLE:
        if ai_onnx >= opset:
            return ir_version
    return onnx.IR_VERSION


def finalize(model: ir.Model) -> ir.Model:
    """Make a rewritten model valid: clear stale shapes, sort, re-infer, IR version, check
    (:class:`FinalizePass`).

    Raises
    ------
    ModelError
        The rewritten model fails the checker (a bug or an unsupported graph pattern).
    """
    return apply_passes(model, FinalizePass())


class FinalizePass(ir_passes.InPlacePass):
    """The last pass of every rewrite. Shapes of intermediate values are cleared and
    re-inferred, nodes are topologically sorted, the IR version is lowered to one the
    installed onnxruntime accepts (never below what the opset needs); its post-condition is
    ``onnx.checker.check_model(full_check=True)``, raised as :class:`~infoprobe.errors.ModelError`."""

    def call(self, model: ir.Model) -> ir_passes.PassResult:
        graph = model.graph
        keep = {id(v) for v in graph.inputs} | {id(v) for v in graph.outputs}
        for node in graph:
            for v in node.outputs:
                if id(v) not in keep:
                    v.type, v.shape = None, None
        model = ir_passes_common.TopologicalSortPass()(model).model
        model = ir_passes_common.ShapeInferencePass()(model).model
        opset = model.opset_imports.get("", 13)
        model.ir_version = max(min(model.ir_version, max_ort_ir_version()), _min_ir_for_opset(opset))
        return ir_passes.PassResult(model, modified=True)

    def ensures(self, model: ir.Model) -> None:
        try:
            onnx.checker.check_model(ir.to_proto(model), full_check=True)
        except Exception as exc:
            raise ModelError(f"the rewritten model fails onnx.checker: {str(exc).splitlines()[0]}") from None
