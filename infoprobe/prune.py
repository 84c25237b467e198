"""Physical pruning: apply a pruning plan to an ONNX model by graph surgery with ``onnx-ir``.

Every removed unit j of a layer is replaced by ``t_j = sum_k a_jk t_k + c_j`` (see
:mod:`infoprobe.plan`) and folded into the layers that read it, by one rule::

    W_next <- W_next[:, kept] + W_next[:, removed] @ A
    b_next <- b_next + W_next[:, removed] @ c

after which the unit's row (output) is removed from its own layer's weights, bias and batch
norm, and its columns (input) from every consumer. The result computes exactly what the
original computes with the plan's replacements applied through the mask mechanism
(:meth:`infoprobe.runner.Runner.plan_feeds`).

Between a pruned layer and the unit layers that read it the graph may hold ``Identity``,
``Dropout``, ``Flatten``, ``Reshape`` (to ``[N, features]``), ``MaxPool``, ``AveragePool``,
``GlobalMaxPool``, ``GlobalAveragePool`` and elementwise ``Relu``, ``LeakyRelu``,
``Sigmoid``, ``Tanh``. A constant travels through them exactly (an elementwise op maps c to
f(c)); an affine term travels exactly only through linear ops, and a single non-negative term
also through max pooling and (without a constant) through ``Relu``/``LeakyRelu``. Element-wise
ops whose other inputs are scalar or per-unit constants (``Mul``, ``Add``, a standalone
``BatchNormalization``, ``PRelu``, ``Clip``, ...) carry a constant (computed by onnxruntime on
the constants) and lose their per-unit constants' removed entries. Anything else is refused
with a message naming the node -- never approximated.

Dependency groups (:func:`dependency_groups`): where a site's units are summed with another
branch's in a residual ``Add`` (a ``residual`` site) or read channel by channel by a depthwise
conv, those sites form a group that loses the same units: the sum needs no surgery (its
summands lose the units), a depthwise conv loses its filters and its ``group`` attribute
shrinks, and every member's replacement is folded into the members' consumers outside the
group. A plan that removes different units from members of one group is refused, and so is a
group that reaches an op normalising over its units (``LayerNormalization``, ``Softmax``).
Token-wise sites (a transformer MLP's hidden neurons, units last) are removed from the
``MatMul`` that makes them and the ``MatMul`` that reads them. An ``attention`` site loses
whole heads (:func:`_remove_heads`): the heads' columns of the query, key and value
projections, the head count in the ``Reshape`` that splits them and the width in the one that
merges them, and the heads' rows of the output projection.

``Concat`` along the units shifts a layer's units by the channels before it; ``Split`` along
the units sends a window of them to each output (its sizes are updated; a removed unit there
is replaced by a constant only). A grouped conv is handled as the block-diagonal dense conv it
computes and written back per group, which needs the same number of channels removed from
every group and no replacement mixing groups.

Flatten -> dense: a removed channel removes its block of H*W columns of the dense weight.
Zero padding: when the next conv zero-pads its input, a constant c_j contributes
``sum W[o, j] c_j`` in the interior but less at the borders, where padding supplies 0
instead of c_j. The interior value goes into the conv's bias and the exact border
correction (a [1, C_out, H_out, W_out] constant) into an ``Add`` after the conv.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from .errors import ModelError, PlanError
from .model import ACTIVATIONS, INTEGER_AFFINE, LoadedModel, activation_numpy
from .plan import LayerPlan, PruningPlan
from .results import atomic_write_bytes, check_outputs
from .rewrite import finalize

_LINEAR = {"Identity", "Dropout", "Flatten", "Reshape", "AveragePool", "GlobalAveragePool"}
_MAXPOOL = {"MaxPool", "GlobalMaxPool"}
_ELEMENTWISE = {"Relu", "LeakyRelu", "Sigmoid", "Tanh"}
#: Element-wise ops whose other inputs are constants, scalar or one per unit: a removed unit's
#: constant passes them exactly (computed by onnxruntime), their per-unit constants are sliced.
_CHANNELWISE = {"Mul", "Add", "Sub", "Div", "BatchNormalization", "PRelu", "Clip", "HardSigmoid", "HardSwish",
                "Elu", "Selu", "Softplus", "Softsign", "Mish", "Gelu", "Celu", "Neg", "Abs", "Max", "Min", "Pow"}


def _per_unit_shape(lay) -> tuple:
    """The shape a constant has when it holds one value per unit of ``lay`` (batch included)."""
    if lay.kind == "conv":
        return (1, lay.units) + (1,) * (len(lay.shape) - 1)
    return (1,) * len(lay.shape) + (lay.units,)


def _channelwise(node, lay) -> bool:
    """Whether ``node`` (reached by ``lay``'s units on input 0, no Concat or Split before) is
    element-wise with other inputs that are constants, scalar or one per unit."""
    if node.op_type not in _CHANNELWISE or node.domain not in ("", "ai.onnx"):
        return False
    want = _per_unit_shape(lay)
    for i in node.inputs[1:]:
        if i is None:
            continue
        c = i.const_value
        if c is None:
            return False
        shape = tuple(c.shape)
        if node.op_type == "BatchNormalization":
            ok = shape == (lay.units,) and lay.kind == "conv"
        else:
            try:
                ok = np.broadcast_shapes(shape, want) == want
            except ValueError:
                ok = False
        if not ok:
            return False
    return True


_AFFINE = {"Gemm", "MatMul", "Conv"}


@dataclass(frozen=True)
class _Layout:
    """Where a pruned layer's units are in a tensor its post-activation reaches."""

    kind: str            # "spatial" [N, C, H, W], "flat" [N, units * block], "token" [N, T, U]
    block: int = 1       # features per unit ("flat": H*W of a flattened conv output)
    offset: int = 0      # the channel of unit ``lo`` in this tensor (after a Concat)
    total: int = 0       # channels of this tensor
    lo: int = 0          # the layer's units [lo, hi) that are in this tensor (after a Split)
    hi: int = 0
    splits: tuple = ()   # (Split node, output index, lo, hi) on the way

    @property
    def whole(self) -> bool:
        """The tensor holds exactly the layer's units, in order, one feature each."""
        return self.block == 1 and self.offset == 0 and self.lo == 0 and self.total == self.hi and not self.splits


@dataclass
class _Route:
    """How a pruned layer's post-activation reaches one consumer unit layer."""

    consumer: ir.Node
    ops: list            # pass-through nodes on the way, in order
    reshapes: list       # Reshape nodes whose target shape holds the feature count
    at: _Layout          # the layer's units in the consumer's input


def _attr_int(node, name, default) -> int:
    a = node.attributes.get(name)
    return int(a.value) if a is not None else default


def _ints(node, name, default):
    a = node.attributes.get(name)
    return list(a.value) if a is not None else default


def _static_dims(value, what) -> list:
    dims = None if value.shape is None else list(value.shape.dims)
    if dims is None or any(not isinstance(d, int) for d in dims[1:]):
        raise PlanError(f"the shape of {what} ({value.name}) is not known statically; physical pruning "
                        "needs it")
    return dims


def _depthwise(node) -> bool:
    """A ``Conv`` whose every output channel reads its own input channel (group = C_in = C_out)."""
    g = _attr_int(node, "group", 1)
    w = node.inputs[1].const_value if len(node.inputs) > 1 and node.inputs[1] is not None else None
    return g > 1 and w is not None and w.shape[1] == 1 and w.shape[0] == g


#: Ops that normalise over (or mix) the unit axis: a unit removed there changes every other.
_NORMALISING = {"LayerNormalization", "Softmax", "LogSoftmax", "InstanceNormalization", "GroupNormalization",
                "LpNormalization", "MeanVarianceNormalization"}


def _routes(graph: ir.Graph, lay, firsts: dict, links: list | None = None) -> list:
    """Consumers of ``lay``'s post-activation and the pass-through ops before each.

    The walk tracks where the layer's units are (:class:`_Layout`): channels of a spatial
    tensor, blocks of features once flattened, the last axis of a token tensor, shifted by a
    ``Concat`` and windowed by a ``Split``. Where it reaches a site whose units are the same
    units -- the residual ``Add`` the post-activation is summed in, or a depthwise conv that
    reads it channel by channel -- it stops and appends ``(site name, how)`` to ``links``: those
    sites form one dependency group with ``lay`` (:func:`dependency_groups`). Refuses
    (:class:`PlanError`) every other op it cannot carry a removal through.
    """
    start = next(v for n in graph for v in n.outputs if v.name == lay.post_value)
    routes = []
    links = [] if links is None else links

    def refuse(msg):
        raise PlanError(f"cannot prune layer {lay.name!r}: {msg}")

    def walk(value, ops, at: _Layout):
        if value.is_graph_output():
            refuse(f"{value.name!r} is a graph output, whose shape pruning would change")
        for node, idx in list(value.uses()):
            op = node.op_type
            where = f"{node.name or op} ({op})"
            site = firsts.get(node.name)
            if site is not None and site.found_by == "residual":
                links.append((site.name, f"residual {op} {node.name}"))
                continue
            if op in ("Add", "QLinearAdd", "Sum") and site is None and all(
                    i is not None and i.const_value is None for i in node.inputs):
                refuse(f"it is summed with another branch in {where}, which is not a site (left out by --sites?); "
                       "the branches' units can only be removed together")
            if op == "Conv" and idx == 0 and site is not None and _depthwise(node):
                if at.kind != "spatial":
                    refuse(f"it reaches the depthwise convolution {where} flattened")
                links.append((site.name, f"depthwise Conv {node.name}"))
                continue
            if op in _AFFINE and idx == 0:
                if site is None:
                    refuse(f"it feeds {where}, which is not a unit layer infoprobe can rewrite")
                if op == "Conv" and at.kind != "spatial":
                    refuse(f"it reaches the convolution {where} flattened")
                if op != "Conv" and at.kind == "spatial":
                    refuse(f"it reaches {where} without being flattened to [N, features]")
                if op not in ("Conv", "MatMul") and at.kind == "token":
                    refuse(f"it reaches {where} with positions")
                routes.append(_Route(node, ops, [n for n in ops if n.op_type == "Reshape"], at))
                continue
            if op == "Split" and idx == 0:
                in_dims = _static_dims(value, f"the input of {where}")
                axis = _attr_int(node, "axis", 0) % len(in_dims)
                if axis != (len(in_dims) - 1 if at.kind == "token" else 1) or at.kind == "flat":
                    refuse(f"{where} splits along axis {axis}, not along the units")
                sizes = [_static_dims(o, f"an output of {where}")[axis] for o in node.outputs]
                if len(node.inputs) < 2 or node.inputs[1] is None or node.inputs[1].const_value is None:
                    refuse(f"{where} has no constant split sizes that pruning could update")
                first = 0
                for k, (o, size) in enumerate(zip(node.outputs, sizes)):
                    # the layer's units [lo, hi) are channels [offset, offset + hi - lo) here; output k
                    # takes channels [first, first + size)
                    a, b = max(at.offset, first), min(at.offset + at.hi - at.lo, first + size)
                    if b > a and o is not None and (o.uses() or o.is_graph_output()):
                        lo, hi = at.lo + a - at.offset, at.lo + b - at.offset
                        walk(o, ops + [node], replace(at, offset=a - first, total=size, lo=lo, hi=hi,
                                                      splits=(*at.splits, (node, k, lo, hi))))
                    first += size
                continue
            if op == "Concat":
                dims = _static_dims(node.outputs[0], f"the output of {where}")
                axis = _attr_int(node, "axis", 1) % len(dims)
                if axis != (len(dims) - 1 if at.kind == "token" else 1):
                    refuse(f"{where} concatenates along axis {axis}, not along the units")
                before = sum(_static_dims(i, f"an input of {where}")[axis] for i in node.inputs[:idx])
                if before % at.block or dims[axis] % at.block:
                    refuse(f"{where} does not keep each unit's features together")
                walk(node.outputs[0], ops + [node], replace(at, offset=at.offset + before // at.block,
                                                            total=dims[axis] // at.block))
                continue
            if op in _NORMALISING:
                refuse(f"it reaches {where}, which normalises over the units: removing one changes the others")
            if idx == 0 and op not in _ELEMENTWISE and _channelwise(node, lay):
                if not at.whole:
                    refuse(f"it reaches {where} after a Concat, Split or Flatten; infoprobe slices per-unit "
                           "constants only before those")
                walk(node.outputs[0], ops + [node], at)
                continue
            if idx != 0 or (op not in _LINEAR and op not in _MAXPOOL and op not in _ELEMENTWISE):
                refuse(f"its output reaches {where}, which physical pruning cannot rewrite exactly "
                       "(supported between unit layers: Identity, Dropout, Flatten, Reshape, pooling, "
                       "Concat, Split, element-wise ops with scalar or per-unit constants; residual sums and "
                       "depthwise convs join a dependency group)")
            out = node.outputs[0]
            if any(o is not None and (o.uses() or o.is_graph_output()) for o in node.outputs[1:]):
                refuse(f"{where} has a second output in use")
            nxt = at
            if at.kind == "token" and op not in ("Identity", "Dropout") and op not in _ELEMENTWISE:
                refuse(f"{where} reshapes or pools a token-wise site")
            if op in ("Flatten", "Reshape"):
                dims = _static_dims(out, f"the output of {where}")
                in_dims = _static_dims(value, f"the input of {where}")
                axis = node.attributes["axis"].value if op == "Flatten" and "axis" in node.attributes else 1
                if len(dims) != 2 or axis != 1 or in_dims[1] != at.total * at.block:
                    refuse(f"{where} does not flatten [N, units, ...] to [N, features]")
                block = int(np.prod(in_dims[2:])) if at.kind == "spatial" else at.block
                if dims[1] != at.total * block:
                    refuse(f"{where} does not keep each unit's features together")
                nxt = replace(at, kind="flat", block=block)
            elif op in _LINEAR | _MAXPOOL and op not in ("Identity", "Dropout") and at.kind != "spatial":
                refuse(f"{where} pools a flattened tensor")
            walk(out, ops + [node], nxt)

    kind = {"token": "token", "dense": "flat"}.get(lay.kind, "spatial")
    walk(start, [], _Layout(kind, total=lay.units, hi=lay.units))
    if not routes and not links:
        raise PlanError(f"cannot prune layer {lay.name!r}: no unit layer reads it")
    return routes


@dataclass(frozen=True)
class DependencyGroup:
    """Sites whose units must be removed together, unit j of one with unit j of every other.

    Attributes
    ----------
    sites : tuple of str
        The members, in model order: the branches of a residual sum and the sum itself (every
        producer and consumer of a residual stream), a depthwise conv and the site it reads.
    units : int
        Units of each member (the same for all).
    links : tuple of str
        Why they are coupled, one line per link (``"stem -> residual Add block1_add"``).
    refused : str or None
        Why the group cannot be pruned (a member reaches an op that normalises over the
        units, a grouped conv, a graph output, ...); None when it can.
    """

    sites: tuple
    units: int
    links: tuple = ()
    refused: str | None = None

    def to_dict(self) -> dict:
        return {"sites": list(self.sites), "units": self.units, "links": list(self.links), "refused": self.refused}


def dependency_groups(lm: LoadedModel) -> list:
    """The dependency groups of a model's hidden sites (singletons included), in model order.

    A hidden site's post-activation is followed forward (as :func:`apply_plan` does): a
    residual ``Add`` (a ``residual`` site) it is summed in and a depthwise ``Conv`` that reads
    it join its group, by union over all sites. A group is refused with the first reason any
    of its members gives (an op the removal cannot pass, an op that normalises over the
    units, a member without weights and without links: a LayerNorm output, attention heads).

    Returns
    -------
    list of DependencyGroup
    """
    graph = lm.ir_model.graph
    firsts = {lay.nodes[0]: lay for lay in lm.layers if lay.nodes}
    hidden = [lay.name for lay in lm.hidden_layers]
    parent = {n: n for n in hidden}

    def find(n):
        while parent[n] != n:
            parent[n] = parent[parent[n]]
            n = parent[n]
        return n

    why, refused = {}, {}
    for lay in lm.hidden_layers:
        links = []
        try:
            if lay.found_by not in ("affine", "residual", "attention"):
                raise PlanError(f"site {lay.name!r} ({lay.found_by}) has no units of its own to remove")
            _routes(graph, lay, firsts, links)
        except PlanError as exc:
            refused[lay.name] = str(exc)
        for site, how in links:
            if site in parent:
                ra, rb = find(lay.name), find(site)
                if ra != rb:
                    parent[rb] = ra
                why.setdefault(lay.name, []).append(f"{lay.name} -> {how}")
            else:
                refused[lay.name] = f"cannot prune layer {lay.name!r}: it reaches {site!r}, the output layer"
    groups = {}
    for n in hidden:
        groups.setdefault(find(n), []).append(n)
    out = []
    for members in groups.values():
        units = {lm.layer(m).units for m in members}
        reason = next((refused[m] for m in members if m in refused), None)
        if reason is None and len(units) > 1:
            reason = f"sites {', '.join(members)} are coupled but have different unit counts"
        out.append(DependencyGroup(tuple(members), min(units), tuple(x for m in members for x in why.get(m, [])),
                                   reason))
    order = {n: i for i, n in enumerate(hidden)}
    return sorted(out, key=lambda g: order[g.sites[0]])


def _through_node(node, lay, units: np.ndarray, c: np.ndarray) -> np.ndarray:
    """What the element-wise ``node`` (:func:`_channelwise`) makes of the constants ``c`` of
    ``units``: onnxruntime runs it on a tensor holding them (one position per unit)."""
    import onnx
    import onnxruntime as ort

    x = np.zeros(_per_unit_shape(lay), np.float32)
    flat = x.reshape(-1)
    flat[units] = c
    proto = ir.serde.serialize_node(node)
    names = [proto.input[0]] + [i for i in proto.input[1:] if i]
    consts = [onnx.numpy_helper.from_array(np.asarray(i.const_value.numpy()), i.name)
              for i in node.inputs[1:] if i is not None]
    del proto.output[1:]
    g = onnx.helper.make_graph([proto], "unit_constants",
                               [onnx.helper.make_tensor_value_info(names[0], onnx.TensorProto.FLOAT, list(x.shape))],
                               [onnx.helper.make_tensor_value_info(proto.output[0], onnx.TensorProto.FLOAT, None)],
                               consts)
    m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", 17)])
    m.ir_version = 8
    try:
        out = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {names[0]: x})[0]
    except Exception as exc:
        raise PlanError(f"cannot carry constants through {node.name} ({node.op_type}): {exc}") from None
    return np.asarray(out, np.float64).reshape(-1)[units]


def _slice_channelwise(arrays, node, lay, kept: np.ndarray) -> None:
    """Keep the per-unit constants of an element-wise ``node`` for the ``kept`` units."""
    want = _per_unit_shape(lay)
    for i in node.inputs[1:]:
        if i is None or i.const_value is None or int(np.prod(i.const_value.shape)) <= 1:
            continue
        c = arrays.get(i, f"a constant of {node.name}")
        if node.op_type == "BatchNormalization":
            arrays.set(i, c[kept])
            continue
        shape = (1,) * (len(want) - c.ndim) + c.shape     # aligned from the right with [1, C, ...]
        axis = [k for k, (d, w) in enumerate(zip(shape, want)) if w == lay.units and d == lay.units][0]
        arrays.set(i, np.take(c.reshape(shape), kept, axis=axis).reshape(
            c.shape[:axis - (len(want) - c.ndim)] + (len(kept),) + c.shape[axis - (len(want) - c.ndim) + 1:]))


def _transport(route: _Route, lp: LayerPlan, layer: str, lay=None) -> np.ndarray:
    """Constants as the consumer sees them, after the route's ops; checks that the affine
    terms pass the route exactly."""
    c = lp.constant.copy()
    nterms = (lp.coef != 0).sum(axis=1)
    for node in route.ops:
        op = node.op_type
        where = f"{node.name or op} ({op})"
        if op in ("Concat", "Split"):       # a unit's values pass unchanged
            if op == "Split" and not lp.is_constant:
                raise PlanError(f"cannot prune layer {layer!r}: {where} sends its units to different consumers, so "
                                "a removed unit can only be replaced by a constant there, not by other units")
            continue
        if op in _LINEAR:
            if op == "AveragePool" and any(_ints(node, "pads", [0])) and \
                    (node.attributes["count_include_pad"].value if "count_include_pad" in node.attributes else 0) \
                    and c.any():
                raise PlanError(f"cannot prune layer {layer!r} with non-zero constants: {where} averages "
                                "zero padding, so a constant is not preserved at the borders")
            continue
        if op in _MAXPOOL:
            bad = (nterms > 1) | ((lp.coef < 0).any(axis=1))
            if bad.any():
                raise PlanError(f"cannot prune layer {layer!r}: unit {int(lp.remove[bad][0])} is replaced by "
                                f"a combination of units that {where} does not preserve (only one "
                                "non-negative term passes a max pooling exactly)")
            continue
        if op in _CHANNELWISE:
            if nterms.any():
                raise PlanError(f"cannot prune layer {layer!r}: {where} changes each unit differently, so a removed "
                                "unit can only be replaced by a constant there, not by other units")
            c = _through_node(node, lay, lp.remove, c)
            continue
        # elementwise activation
        with_terms = nterms > 0
        bad = with_terms & ((nterms > 1) | (lp.coef < 0).any(axis=1) | (c != 0) | (op not in ("Relu", "LeakyRelu")))
        if bad.any():
            raise PlanError(f"cannot prune layer {layer!r}: unit {int(lp.remove[bad][0])} is replaced by an "
                            f"affine function that {where} does not preserve")
        c = np.where(with_terms, 0.0, activation_numpy(node, ACTIVATIONS[op])(c))
    return c


class _Arrays:
    """Initializer arrays edited in memory and written back once."""

    def __init__(self, graph: ir.Graph):
        self.graph = graph
        self.arrays: dict = {}
        self.values: dict = {}

    def get(self, value: ir.Value, what: str) -> np.ndarray:
        if value is None or value.const_value is None or value.is_graph_input():
            raise PlanError(f"{what} is not a constant initializer; physical pruning needs it")
        key = id(value)
        if key not in self.arrays:
            if len(value.uses()) != 1:
                raise PlanError(f"{what} ({value.name}) is shared by {len(value.uses())} nodes; "
                                "infoprobe cannot prune a shared initializer")
            self.arrays[key] = np.array(value.const_value.numpy(), dtype=np.float64)
            self.values[key] = value
        return self.arrays[key]

    def set(self, value: ir.Value, arr: np.ndarray) -> None:
        self.arrays[id(value)] = arr
        self.values[id(value)] = value

    def new(self, name: str, arr: np.ndarray) -> ir.Value:
        v = ir.Value(name=_unique(self.graph, name), const_value=ir.tensor(np.asarray(arr, np.float32)))
        self.graph.register_initializer(v)
        self.set(v, np.asarray(arr, np.float64))
        return v

    def write_back(self) -> None:
        for key, arr in self.arrays.items():
            v = self.values[key]
            dtype = v.const_value.dtype.numpy() if v.const_value is not None else np.float32
            v.const_value = ir.tensor(np.ascontiguousarray(arr.astype(dtype)), name=v.name)
            v.shape = ir.Shape(arr.shape)


def _unique(graph: ir.Graph, base: str) -> str:
    taken = set(graph.initializers) | {v.name for v in graph.inputs} | \
        {o.name for n in graph for o in n.outputs}
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    return name


def _insert_add(graph: ir.Graph, value: ir.Value, const: ir.Value, name: str) -> ir.Node:
    """Insert ``value + const`` before every consumer of ``value`` (graph outputs keep their names)."""
    uses = list(value.uses())
    add = ir.Node("", "Add", [value, const], name=name)
    graph.append(add)
    new = add.outputs[0]
    for node, idx in uses:
        node.replace_input_with(idx, new)
    if value.is_graph_output():
        for i, v in enumerate(graph.outputs):
            if v is value:
                graph.outputs[i] = new
        out_name = value.name
        value.name = _unique(graph, f"{out_name}__pruned_raw")
        new.name = out_name
        new.type, new.shape = value.type, value.shape
    else:
        new.name = _unique(graph, f"{name}_out")
    return add


def _conv_pads(node, in_hw, k_hw, strides, dilations) -> list:
    auto = node.attributes["auto_pad"].value if "auto_pad" in node.attributes else "NOTSET"
    if auto in ("NOTSET", b"NOTSET"):
        return _ints(node, "pads", [0, 0, 0, 0])
    if auto in ("VALID", b"VALID"):
        return [0, 0, 0, 0]
    begin, end = [], []
    for size, k, s, d in zip(in_hw, k_hw, strides, dilations):
        out = -(-size // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
        small, large = total // 2, total - total // 2
        if auto in ("SAME_UPPER", b"SAME_UPPER"):
            begin.append(small), end.append(large)
        else:
            begin.append(large), end.append(small)
    return begin + end


def _border_map(node, wc: np.ndarray, in_hw, out_hw) -> np.ndarray:
    """Exact response of a conv to a per-channel constant input under its zero padding.

    ``wc`` is ``sum_j W[o, j, kh, kw] c_j`` of shape [O, kh, kw]; returns [O, H_out, W_out].
    """
    k_hw = wc.shape[1:]
    strides = _ints(node, "strides", [1, 1])
    dil = _ints(node, "dilations", [1, 1])
    pads = _conv_pads(node, in_hw, k_hw, strides, dil)
    valid = []
    for ax in range(2):
        pos = np.arange(out_hw[ax])[None, :] * strides[ax] - pads[ax] + np.arange(k_hw[ax])[:, None] * dil[ax]
        valid.append(((pos >= 0) & (pos < in_hw[ax])).astype(np.float64))  # [k, out]
    return np.einsum("okl,kh,lw->ohw", wc, valid[0], valid[1])


def _consumer_weight(arrays: _Arrays, node) -> tuple:
    """Weight of a consumer as [out, in, ...] (a view convention) and a function storing it back."""
    op = node.op_type
    w_val = node.inputs[1]
    w = arrays.get(w_val, f"the weight of {node.name}")
    if op == "Gemm":
        if node.attributes["transB"].value if "transB" in node.attributes else 0:
            return w, lambda a: arrays.set(w_val, a)
        return w.T, lambda a: arrays.set(w_val, a.T)
    if op == "MatMul":
        return w.T, lambda a: arrays.set(w_val, a.T)
    g = _attr_int(node, "group", 1)
    if g > 1:   # a grouped conv: the block-diagonal [C_out, C_in, kh, kw] it computes
        return _expand_groups(w, g), lambda a: arrays.set(w_val, _compress_groups(a, g, node))
    return w, lambda a: arrays.set(w_val, a)


def _expand_groups(w: np.ndarray, g: int) -> np.ndarray:
    """The weight [C_out, C_in/g, ...] of a conv of ``g`` groups as the dense block-diagonal
    weight [C_out, C_in, ...] it applies."""
    out, per = w.shape[0], w.shape[1]
    full = np.zeros((out, per * g, *w.shape[2:]))
    for k in range(g):
        rows = slice(k * out // g, (k + 1) * out // g)
        full[rows, k * per:(k + 1) * per] = w[rows]
    return full


def _compress_groups(full: np.ndarray, g: int, node, col_groups: np.ndarray | None = None) -> np.ndarray:
    """The inverse of :func:`_expand_groups` (``col_groups``: the group of each input column
    left, when columns were removed). Refuses weights outside the diagonal blocks (a
    replacement that mixes groups) and groups of unequal size (a removal that is not the same
    number of channels in every group)."""
    out, cin = full.shape[:2]
    cols = np.repeat(np.arange(g), cin // g) if col_groups is None else col_groups
    rows = np.repeat(np.arange(g), out // g)
    counts = np.bincount(cols, minlength=g)
    if out % g or len(set(counts.tolist())) != 1:
        raise PlanError(f"the plan removes {np.bincount(rows, minlength=g).tolist()} output and leaves "
                        f"{counts.tolist()} input channels in the groups of the grouped convolution {node.name}; "
                        "remove the same number of channels from every group")
    if np.abs(full[rows[:, None] != cols[None, :]]).max(initial=0.0) > 0:
        raise PlanError(f"a replacement in the plan mixes channels of different groups of the grouped convolution "
                        f"{node.name}, which it cannot hold")
    return np.stack([full[o, cols == rows[o]] for o in range(out)])


def _add_to_bias(graph, arrays: _Arrays, node, members, delta: np.ndarray) -> None:
    """Add ``delta`` [out] to the effective bias of consumer ``node`` (first node of a layer)."""
    op = node.op_type
    if op == "Gemm":
        alpha = node.attributes["alpha"].value if "alpha" in node.attributes else 1.0
        beta = node.attributes["beta"].value if "beta" in node.attributes else 1.0
        delta = alpha * delta
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            c = arrays.get(node.inputs[2], f"the bias of {node.name}")
            eff = beta * np.broadcast_to(c.reshape(-1) if c.size in (1, len(delta)) else c, delta.shape)
            if c.size not in (1, len(delta)):
                raise PlanError(f"the bias of {node.name} has shape {list(c.shape)}, not per unit")
            arrays.set(node.inputs[2], eff + delta)
        else:
            node.resize_inputs(3)
            node.replace_input_with(2, arrays.new(f"{node.name}.bias", delta))
        node.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
    elif op == "MatMul":
        add = members[1] if len(members) > 1 and members[1].op_type == "Add" else None
        if add is None:
            _insert_add(graph, node.outputs[0], arrays.new(f"{node.name}.bias", delta), f"{node.name}/bias")
            return
        idx = 1 if add.inputs[0] is node.outputs[0] else 0
        b = arrays.get(add.inputs[idx], f"the bias of {add.name}")
        arrays.set(add.inputs[idx], np.broadcast_to(b.reshape(-1), delta.shape) + delta)
    else:  # Conv
        if len(node.inputs) > 2 and node.inputs[2] is not None:
            b = arrays.get(node.inputs[2], f"the bias of {node.name}")
            arrays.set(node.inputs[2], b + delta)
        else:
            node.resize_inputs(3)
            node.replace_input_with(2, arrays.new(f"{node.name}.bias", delta))


def _remove_rows(arrays: _Arrays, lay, members, kept: np.ndarray) -> None:
    """Remove the pruned units from their own layer: weight rows, bias, batch norm (nothing for
    a residual sum: its summands lose the same units)."""
    if lay.found_by in ("residual", "attention"):   # attention: see _remove_heads
        return
    first = members[0]
    op = first.op_type
    if op == "Gemm":
        w = arrays.get(first.inputs[1], f"the weight of {first.name}")
        trans = first.attributes["transB"].value if "transB" in first.attributes else 0
        arrays.set(first.inputs[1], w[kept] if trans else w[:, kept])
        if len(first.inputs) > 2 and first.inputs[2] is not None:
            c = arrays.get(first.inputs[2], f"the bias of {first.name}")
            if c.size == lay.units:
                arrays.set(first.inputs[2], c.reshape(-1)[kept].reshape(c.shape[:-1] + (len(kept),)))
            elif c.size != 1:
                raise PlanError(f"the bias of {first.name} has shape {list(c.shape)}, not per unit")
    elif op == "MatMul":
        w = arrays.get(first.inputs[1], f"the weight of {first.name}")
        arrays.set(first.inputs[1], w[:, kept])
        if len(members) > 1 and members[1].op_type == "Add":
            add = members[1]
            idx = 1 if add.inputs[0] is first.outputs[0] else 0
            b = arrays.get(add.inputs[idx], f"the bias of {add.name}")
            if b.size == lay.units:
                arrays.set(add.inputs[idx], b.reshape(-1)[kept].reshape(b.shape[:-1] + (len(kept),)))
    else:
        w = arrays.get(first.inputs[1], f"the weight of {first.name}")
        arrays.set(first.inputs[1], w[kept])
        if len(first.inputs) > 2 and first.inputs[2] is not None:
            arrays.set(first.inputs[2], arrays.get(first.inputs[2], f"the bias of {first.name}")[kept])
        for node in members[1:]:
            if node.op_type == "BatchNormalization":
                for v in node.inputs[1:5]:
                    arrays.set(v, arrays.get(v, f"a batch-norm parameter of {node.name}")[kept])
            elif node.op_type == "Add" and node is members[1]:   # a bias after the conv, per channel (and position)
                c = _conv_add_constant(node, first)
                b = arrays.get(c, f"the bias of {node.name}")
                if b.size > 1:
                    axis = 1 if b.ndim == len(lay.shape) + 1 else 0    # [1, C, ...] or [C, ...]
                    arrays.set(c, np.take(b, kept, axis=axis))


def _conv_add_constant(add, conv) -> ir.Value:
    """The constant input of the ``Add`` after a conv (its other input is the conv's output)."""
    return add.inputs[1] if add.inputs[0] is conv.outputs[0] else add.inputs[0]


def _remove_heads(graph: ir.Graph, arrays: _Arrays, merge: ir.Node, lay, lp: LayerPlan) -> None:
    """Remove whole attention heads of an ``attention`` site (``merge``: the ``Reshape`` that
    concatenates the heads): their columns of the query, key and value projections and of
    those projections' biases, and the head count and width in every ``Reshape`` between the
    projections and the site. (The output projection loses the heads' inputs as any
    consumer.)"""
    heads, units = lay.heads, lay.units
    if heads < 2:
        raise PlanError(f"cannot prune layer {lay.name!r}: its head count is not known")
    hd = units // heads
    gone = sorted({int(u) // hd for u in lp.remove})
    cols = np.concatenate([np.arange(h * hd, (h + 1) * hd) for h in gone])
    if not np.array_equal(np.sort(lp.remove), cols):
        raise PlanError(f"cannot prune layer {lay.name!r}: the plan removes part of a head (units come in {heads} "
                        f"heads of {hd}); remove whole heads")
    keep = np.setdiff1d(np.arange(units), cols)
    projections, splits, seen = [], [], set()
    stack = [merge.inputs[0]]
    while stack:                                   # up to the projections, through attention's own ops
        v = stack.pop()
        node = v.producer() if v is not None else None
        if node is None or id(node) in seen or v.const_value is not None:
            continue
        seen.add(id(node))
        if node.op_type == "MatMul" and node.inputs[1] is not None and node.inputs[1].const_value is not None:
            projections.append(node)
            continue
        if node.op_type == "Reshape":
            splits.append(node)
        if node.op_type in ("LayerNormalization", "Gemm", "Conv") or node.op_type in ACTIVATIONS:
            continue                               # the block's input: beyond the projections
        stack.extend(node.inputs)
    if len(projections) != 3:
        raise PlanError(f"cannot prune layer {lay.name!r}: found {len(projections)} query, key and value "
                        "projections (MatMul with constant weights) instead of 3")
    for proj in projections:
        out = proj.outputs[0]
        uses = list(out.uses())
        if len(uses) != 1:
            raise PlanError(f"cannot prune layer {lay.name!r}: the projection {proj.name} has several consumers")
        w = arrays.get(proj.inputs[1], f"the weight of {proj.name}")
        arrays.set(proj.inputs[1], w[:, keep])
        add = uses[0][0]
        if add.op_type == "Add":
            other = add.inputs[1 - uses[0][1]]
            if other is not None and other.const_value is not None:
                b = arrays.get(other, f"the bias of {add.name}")
                if b.size == units:
                    arrays.set(other, b.reshape(-1)[keep])

    def reshape_to(node, fix):
        shape = np.array(node.inputs[1].const_value.numpy()) if node.inputs[1] is not None and \
            node.inputs[1].const_value is not None else None
        if shape is None:
            raise PlanError(f"cannot prune layer {lay.name!r}: {node.name} has no constant target shape")
        new = fix(shape.astype(np.int64))
        v = ir.Value(name=_unique(graph, f"{node.name}.shape"), const_value=ir.tensor(new))
        graph.register_initializer(v)              # its own copy: shape constants are often shared
        node.replace_input_with(1, v)

    def split_heads(shape):
        if shape[-2] not in (heads, -1) or shape[-1] not in (hd, -1):
            raise PlanError(f"cannot prune layer {lay.name!r}: a Reshape to {shape.tolist()} does not split "
                            f"{heads} heads of {hd}")
        if shape[-2] == heads:
            shape[-2] = heads - len(gone)
        return shape

    def merge_heads(shape):
        if shape[-1] not in (units, -1):
            raise PlanError(f"cannot prune layer {lay.name!r}: {merge.name} reshapes to {shape.tolist()}")
        if shape[-1] == units:
            shape[-1] = units - len(cols)
        return shape

    for node in splits:
        reshape_to(node, split_heads)
    reshape_to(merge, merge_heads)


def outgoing_weights(lm: LoadedModel, layer: str) -> np.ndarray:
    """Every weight of the next unit layers that reads each unit of ``layer``.

    Returns
    -------
    float64 [U, F]
        Row j: the consumer weights of unit j (dense consumer after a flattened conv: its
        block of H*W columns; conv consumer: the kernel slices ``W[:, j]``), concatenated
        over consumers, as :meth:`~infoprobe.model.LoadedModel.weights` gives them (Gemm's
        ``alpha`` and a consumer's batch norm folded in).

    Raises
    ------
    PlanError
        As :func:`apply_plan` for layers whose consumers cannot be rewritten.
    """
    lay = lm.layer(layer)
    if lay.is_output:
        raise PlanError(f"layer {layer!r} is the output layer; it has no outgoing weights")
    firsts = {lay2.nodes[0]: lay2 for lay2 in lm.layers}
    parts = []
    for route in _routes(lm.ir_model.graph, lay, firsts):
        at, node = route.at, route.consumer
        w = lm.weights(firsts[node.name])[0].astype(np.float64)   # [out, in] or [out, C/g, kh, kw]
        if node.op_type == "Conv" and _attr_int(node, "group", 1) > 1:
            w = _expand_groups(w, _attr_int(node, "group", 1))
        w = w.reshape(w.shape[0], at.total, -1)[:, at.offset:at.offset + at.hi - at.lo]   # this layer's inputs
        rows = np.zeros((lay.units, w.shape[0] * w.shape[2]))
        rows[at.lo:at.hi] = np.moveaxis(w, 1, 0).reshape(at.hi - at.lo, -1)   # units a Split did not send: 0
        parts.append(rows)
    return np.concatenate(parts, axis=1)


def apply_plan(lm: LoadedModel, plan: PruningPlan) -> ir.Model:
    """Prune ``lm`` physically by ``plan`` and return the new, checked ``onnx_ir.Model``.

    Parameters
    ----------
    lm : LoadedModel
        The model to prune (not modified).
    plan : PruningPlan
        Removals and affine replacements per unit layer (:mod:`infoprobe.plan`).

    Returns
    -------
    onnx_ir.Model
        A model whose outputs equal the original's with the plan's replacements applied
        (:meth:`infoprobe.runner.Runner.plan_feeds`) up to float32 rounding. It passes
        ``onnx.checker.check_model(full_check=True)``, its shapes are re-inferred, its nodes
        sorted and its IR version accepted by the installed onnxruntime.

    Raises
    ------
    PlanError
        The plan does not fit the model, or a replacement cannot be folded exactly (an op
        between layers that does not preserve it, shared initializers, unknown shapes).
    """
    plan.check_model(lm)
    quantized = [lay.name for lay in lm.layers if lay.op.split("+")[0] in INTEGER_AFFINE]
    if quantized:
        raise PlanError(f"{lm.path.name} is quantized (integer ops at {', '.join(quantized[:3])}"
                        f"{', ...' if len(quantized) > 3 else ''}): infoprobe prunes float and QDQ models; prune the "
                        "float model, then quantize it again")
    model = lm.fresh_ir()
    model = ir_passes.ShapeInferencePass()(model).model
    graph = model.graph
    arrays = _Arrays(graph)
    firsts = {lay.nodes[0]: lay for lay in lm.layers}
    by_name = {n.name: n for n in graph}
    members_of = {lay.name: [by_name[n] for n in lay.nodes] for lay in lm.layers}
    consumer_cols = {}   # consumer node name -> kept column mask (input side)
    reshaped = set()     # (Reshape, layer) whose target shape was shrunk
    sliced = {}          # layer -> element-wise nodes whose per-unit constants lose its removed units
    border = {}          # consumer node name -> border correction [O, H, W]

    active = {n: lp for n, lp in plan.layers.items() if len(lp.remove)}
    _check_groups(lm, active)
    for name in active:
        first = members_of[name][0]
        g = _attr_int(first, "group", 1) if first.op_type == "Conv" else 1
        if g > 1 and not _depthwise(first):     # a grouped conv loses the same number of filters per group
            lp = active[name]
            per = np.bincount(lp.remove // (lp.units // g), minlength=g)
            if len(set(per.tolist())) != 1:
                raise PlanError(f"cannot prune layer {name!r}: it is a convolution of {g} groups and the plan "
                                f"removes {per.tolist()} of its channels per group; remove the same number from "
                                "every group")
    # phase 1: fold each removed unit into the layers that read it (full-size arrays)
    for name, lp in active.items():
        lay = lm.layer(name)
        for route in _routes(graph, lay, firsts):
            node = route.consumer
            c = _transport(route, lp, name, lay)
            for op_node in route.ops:
                if op_node.op_type in _CHANNELWISE:
                    sliced.setdefault(name, {})[id(op_node)] = op_node
            w, store = _consumer_weight(arrays, node)
            at = route.at
            out, total = w.shape[0], at.total
            seen = (lp.remove >= at.lo) & (lp.remove < at.hi)     # the removed units this consumer reads
            off = at.offset - at.lo                               # unit u is the consumer's input u + off
            wr = w.reshape(out, total, at.block, *w.shape[2:]) if node.op_type != "Conv" else w
            wr = wr.copy()
            removed_cols = wr[:, off + lp.remove[seen]]           # [O, R, ...]
            if not lp.is_constant:                                # (no Split on the way: lo, hi = 0, U)
                wr[:, off + lp.kept] += np.einsum("rk,or...->ok...", lp.coef, removed_cols)
            c = c[seen]
            wc = np.einsum("or...,r->o...", removed_cols, c)      # conv: [O, kh, kw]; dense: [O, block]
            delta = wc.reshape(out, -1).sum(axis=1)
            if node.op_type == "Conv" and c.any():
                in_hw = _static_dims(node.inputs[0], f"the input of {node.name}")[2:]
                out_hw = _static_dims(node.outputs[0], f"the output of {node.name}")[2:]
                corr = _border_map(node, wc, in_hw, out_hw) - delta[:, None, None]
                if np.abs(corr).max() > 1e-9 * max(1.0, np.abs(delta).max()):  # zero padding reached
                    border[node.name] = border.get(node.name, 0.0) + corr
            if delta.any():
                _add_to_bias(graph, arrays, node, members_of[firsts[node.name].name], delta)
            store(wr.reshape(w.shape))
            mask = consumer_cols.setdefault(node.name, np.ones(total, bool))
            mask[off + lp.remove[seen]] = False
            for split, k, a, b in at.splits:                     # each Split's output k loses its removed units
                if (split.name, k, name) not in reshaped:
                    reshaped.add((split.name, k, name))
                    sizes = arrays.get(split.inputs[1], f"the split sizes of {split.name}").copy()
                    sizes[k] -= int(((lp.remove >= a) & (lp.remove < b)).sum())
                    arrays.set(split.inputs[1], sizes)
            for rs in route.reshapes:
                shape = arrays.get(rs.inputs[1], f"the target shape of {rs.name}")
                if shape[-1] > 0 and (rs.name, name) not in reshaped:   # each layer shrinks it once
                    reshaped.add((rs.name, name))
                    shape = shape.copy()
                    shape[-1] -= len(lp.remove) * at.block
                    arrays.set(rs.inputs[1], shape)

    # phase 2: remove input columns of consumers and output rows of pruned layers
    for cname, keep_units in consumer_cols.items():
        node = by_name[cname]
        w, store = _consumer_weight(arrays, node)
        units = len(keep_units)
        g = _attr_int(node, "group", 1) if node.op_type == "Conv" else 1
        if g > 1:      # columns of the block-diagonal weight, then back to the groups
            groups = np.repeat(np.arange(g), units // g)[keep_units]
            arrays.set(node.inputs[1], _compress_groups(w[:, keep_units], g, node, groups))
        elif node.op_type == "Conv":
            store(w[:, keep_units])
        else:
            block = w.shape[1] // units
            store(w.reshape(w.shape[0], units, block)[:, keep_units].reshape(w.shape[0], -1))
    for name, lp in active.items():
        _remove_rows(arrays, lm.layer(name), members_of[name], lp.kept)
        if lm.layer(name).found_by == "attention":
            _remove_heads(graph, arrays, members_of[name][0], lm.layer(name), lp)
        for op_node in sliced.get(name, {}).values():
            _slice_channelwise(arrays, op_node, lm.layer(name), lp.kept)
        first = members_of[name][0]
        if first.op_type == "Conv" and _depthwise(first):        # one group per channel left
            first.attributes["group"] = ir.AttrInt64("group", len(lp.kept))
    for cname, corr in border.items():
        node = by_name[cname]
        lay = firsts[cname]
        if lay.name in active:
            corr = corr[active[lay.name].kept]
        members = members_of[lay.name]
        if len(members) > 1 and members[1].op_type == "Add":     # the conv has a bias Add: add to it
            c = _conv_add_constant(members[1], node)
            b = arrays.get(c, f"the bias of {members[1].name}")
            arrays.set(c, (b.reshape(b.shape[-3:]) if b.ndim >= 3 else b.reshape(-1, 1, 1)) + corr)
            if b.ndim == 4 or b.ndim < 3:
                arrays.set(c, arrays.arrays[id(c)][None])
            continue
        _insert_add(graph, node.outputs[0], arrays.new(f"{cname}.border_correction", corr[None]),
                    f"infoprobe/{cname}/border_correction")
    arrays.write_back()
    model = ir_passes.RemoveUnusedNodesPass()(model).model
    model.metadata_props["infoprobe.pruned_from_sha256"] = lm.sha256
    model.metadata_props["infoprobe.plan_sha256"] = plan.sha256()
    origin, kept = kept_units(lm)
    for name, lp in active.items():
        kept[name] = (np.asarray(kept[name])[lp.kept] if name in kept else lp.kept).tolist()
    model.metadata_props[KEPT_UNITS_KEY] = json.dumps(kept, separators=(",", ":"))
    model.metadata_props[KEPT_FROM_KEY] = origin or lm.sha256
    try:
        return finalize(model)
    except ModelError as exc:
        raise PlanError(f"the pruned model is invalid: {exc}") from None


#: Metadata of a pruned model: {site: indices of the units kept, in the original's numbering}
#: and the SHA-256 of that original (a model pruned twice records its first original).
KEPT_UNITS_KEY, KEPT_FROM_KEY = "infoprobe.kept_units", "infoprobe.kept_units_from_sha256"


#: Longest ``infoprobe.kept_units`` value read (characters); a longer one is ignored.
MAX_KEPT_UNITS_CHARS = 16 << 20


def _kept_units_problem(lm, raw, origin, original) -> tuple[str | None, dict]:
    """(why the kept-units metadata of ``lm`` does not follow its schema, or None; the record)."""
    if raw is None or origin is None:
        present, absent = (KEPT_UNITS_KEY, KEPT_FROM_KEY) if origin is None else (KEPT_FROM_KEY, KEPT_UNITS_KEY)
        return f"{present} is there without {absent}", {}
    if not (len(origin) == 64 and all(ch in "0123456789abcdefABCDEF" for ch in origin)):
        return f"{KEPT_FROM_KEY} is not a SHA-256 (64 hexadecimal digits)", {}
    if len(raw) > MAX_KEPT_UNITS_CHARS:
        return f"{KEPT_UNITS_KEY} has {len(raw):,} characters, over {MAX_KEPT_UNITS_CHARS:,}", {}
    try:
        kept = json.loads(raw)
    except RecursionError:
        return f"{KEPT_UNITS_KEY} is nested too deeply to be a record of units", {}
    except ValueError:
        return f"{KEPT_UNITS_KEY} is not valid JSON", {}
    if not isinstance(kept, dict):
        return f"{KEPT_UNITS_KEY} is not a JSON object of sites", {}
    widths = {lay.name: lay.units for lay in lm.layers}
    same = original is not None and origin.lower() == original.sha256
    full = {lay.name: lay.units for lay in original.layers} if same else {}
    for site, units in kept.items():
        if not isinstance(units, list) or not all(type(u) is int for u in units):
            return f"the units of site {site[:80]!r} are not a list of integers", {}
        if any(u < 0 for u in units):
            return f"site {site[:80]!r} lists a negative unit", {}
        if any(b <= a for a, b in zip(units, units[1:])):
            dup = len(set(units)) < len(units)
            return f"the units of site {site[:80]!r} are {'listed twice' if dup else 'not in increasing order'}", {}
        if site in widths and len(units) != widths[site]:
            return f"site {site[:80]!r} lists {len(units):,} units but has {widths[site]:,}", {}
        if site in full and units and units[-1] >= full[site]:
            return f"site {site[:80]!r} lists unit {units[-1]:,}, beyond the {full[site]:,} units of the original", {}
    return None, kept


def kept_units(lm, *, original=None, notes: list | None = None) -> tuple[str | None, dict]:
    """The units a pruned model kept of its original, from the metadata :func:`apply_plan`
    writes: ``(sha256 of the original, {site: list of unit indices})``; ``(None, {})`` for a
    model infoprobe did not prune.

    The metadata comes with the model, from anyone, so it is read against its schema:
    ``infoprobe.kept_units`` a JSON object mapping each site name to the increasing list of
    unique non-negative integer indices of the units kept (as many as the site of ``lm``
    has, each below the width of the original's site when ``original`` is that original),
    and ``infoprobe.kept_units_from_sha256`` the original's SHA-256 (64 hexadecimal digits);
    both or neither. Metadata that does not follow it is ignored, as if ``lm`` had none: a
    warning (:func:`warnings.warn`) says so and why, and the same sentence is appended to
    ``notes``.

    Parameters
    ----------
    lm : LoadedModel
        The (pruned) model whose metadata is read.
    original : LoadedModel, optional
        The model ``lm`` may have been pruned from; when its SHA-256 is the recorded one, the
        indices are checked against its sites' widths.
    notes : list, optional
        Receives the sentence saying why malformed metadata was ignored.

    Returns
    -------
    (str or None, dict)
        Nothing is raised for malformed metadata.
    """
    props = lm.ir_model.metadata_props
    raw, origin = props.get(KEPT_UNITS_KEY), props.get(KEPT_FROM_KEY)
    if raw is None and origin is None:
        return None, {}
    why, kept = _kept_units_problem(lm, raw, origin, original)
    if why is None:
        return origin.lower(), kept
    note = (f"{Path(str(lm.path)).name}: its metadata of the units it kept was ignored ({why}); "
            "it is compared as a model infoprobe did not prune")
    warnings.warn(note, stacklevel=2)
    if notes is not None:
        notes.append(note)
    return None, {}


def _check_groups(lm: LoadedModel, active: dict) -> None:
    """Every pruned site's dependency group is prunable and removes the same units from every
    member (:func:`dependency_groups`); raises :class:`PlanError` naming the group."""
    for g in dependency_groups(lm):
        touched = [m for m in g.sites if m in active]
        if not touched:
            continue
        if g.refused:
            raise PlanError(g.refused if len(g.sites) == 1 else
                            f"{g.refused} (dependency group {', '.join(g.sites)})")
        ref = active[touched[0]].remove
        for m in g.sites:
            got = active[m].remove if m in active else np.zeros(0, np.int64)
            if not np.array_equal(got, ref):
                raise PlanError(f"sites {', '.join(g.sites)} form a dependency group (their units are summed or "
                                f"read channel by channel); the plan removes units {ref.tolist()[:8]} from "
                                f"{touched[0]!r} but {got.tolist()[:8]} from {m!r}: remove the same units from "
                                "every member (infoprobe plan does; plan --groups lists the groups)")


def save_model(model: ir.Model, path, *, overwrite: bool = False) -> Path:
    """Write an ``onnx_ir.Model`` to ``path`` atomically (a temporary file, then a rename).

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.
    ModelError
        The model is over the 2 GB protobuf limit (external data is not written here).
    """
    path = Path(path)
    check_outputs([path], overwrite)
    proto = ir.to_proto(model)
    if proto.ByteSize() > 2**31 - 1:
        raise ModelError("the pruned model is over 2 GB; infoprobe does not write external data yet")
    atomic_write_bytes(path, proto.SerializeToString())
    return path
