"""Safe loading of ONNX models and discovery of their unit layers.

A *unit layer* (DESIGN.md) is an affine op -- ``Gemm``, ``MatMul`` (+ ``Add``), or a 2-D
``Conv`` (optionally followed by ``BatchNormalization``) -- followed by an activation or by
nothing. Its *pre-activation* is the affine output (after batch norm), its
*post-activation* the activation's output. Discovery names what it could not interpret
(``LoadedModel.unsupported``) instead of guessing.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from .errors import ModelError, UnsafeModelError

#: Default largest model (graph file plus external data) that :func:`load_model` accepts.
DEFAULT_MAX_BYTES = 2 * 1024**3
MIN_OPSET = 13

#: ONNX activation ops recognised after an affine op, with the name recorded for them.
ACTIVATIONS = {
    "Relu": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "LeakyRelu": "leakyrelu",
    "Gelu": "gelu", "Elu": "elu", "Selu": "selu", "Softplus": "softplus",
    "HardSigmoid": "hardsigmoid", "HardSwish": "hardswish", "Mish": "mish", "Softsign": "softsign",
    "PRelu": "prelu", "Celu": "celu", "ThresholdedRelu": "thresholdedrelu",
}
#: Ops that carry weights but that infoprobe does not (yet) treat as unit layers.
_WEIGHTED_UNSUPPORTED = {"ConvTranspose", "LSTM", "GRU", "RNN", "QLinearConv", "QLinearMatMul",
                         "MatMulInteger", "ConvInteger", "Einsum", "Attention"}


@dataclass(frozen=True)
class UnitLayer:
    """One unit layer of a model.

    Attributes
    ----------
    name : str
        Unique, HDF5-safe layer name (from the affine node's name).
    kind : {"dense", "conv"}
    op : str
        Ops that make the layer, e.g. ``"Gemm"``, ``"MatMul+Add"``, ``"Conv+BatchNormalization"``.
    units : int
        Neurons of a dense layer, output channels (feature maps) of a conv layer.
    activation : str
        Lower-case activation name (``"sigmoid"``, ``"relu"``, ...) or ``"none"``.
    fan_in : int
        Inputs per unit (``C_in/groups * kh * kw`` for conv).
    depth : int
        1 for layers fed by the model input only, else 1 + the largest depth upstream.
    inputs : tuple of str
        Names of the unit layers upstream (empty when fed by the model input).
    is_output : bool
        No unit layer lies downstream (the classifier's logits layer).
    shape : tuple of int
        Per-sample shape of pre- and post-activation: ``(units,)`` or ``(C, H, W)``.
    pre_value, post_value : str
        Names of the ONNX values holding the pre- and post-activation.
    """

    name: str
    kind: str
    op: str
    units: int
    activation: str
    fan_in: int
    depth: int
    inputs: tuple
    is_output: bool
    shape: tuple
    pre_value: str
    post_value: str
    input_value: str
    nodes: tuple = field(repr=False, default=())

    def to_dict(self) -> dict:
        """JSON-serialisable description (ONNX node names omitted)."""
        d = asdict(self)
        d.pop("nodes")
        d["inputs"] = list(self.inputs)
        d["shape"] = list(self.shape)
        return d


@dataclass
class LoadedModel:
    """A validated ONNX model with its discovered unit layers.

    Use :func:`load_model` to create one. ``ir_model`` is an ``onnx_ir.Model`` (external
    weights memory-mapped); rewrites never modify it but work on :meth:`fresh_ir` copies.
    """

    path: Path
    sha256: str
    ir_model: ir.Model
    layers: list
    unsupported: list
    input_name: str
    input_shape: tuple
    output_name: str
    max_bytes: int = DEFAULT_MAX_BYTES

    def layer(self, name: str) -> UnitLayer:
        """The unit layer called ``name``; raises :class:`ModelError` listing the valid names."""
        for lay in self.layers:
            if lay.name == name:
                return lay
        raise ModelError(f"unknown layer {name!r}; the model's unit layers are: "
                         + ", ".join(lay.name for lay in self.layers))

    @property
    def hidden_layers(self) -> list:
        """Unit layers that are not the output layer."""
        return [lay for lay in self.layers if not lay.is_output]

    def fresh_ir(self) -> ir.Model:
        """A new ``onnx_ir.Model`` read from the (already validated) file, for rewriting."""
        return ir.load(self.path)

    def weights(self, layer: str | UnitLayer) -> tuple[np.ndarray, np.ndarray]:
        """Incoming weights and bias of a unit layer, in the store's convention.

        Returns
        -------
        weight : float32 [U, fan_in] (dense) or [C_out, C_in/groups, kh, kw] (conv)
            For ``Conv+BatchNormalization`` the batch norm is folded in, so that
            ``pre = weight * input + bias`` holds exactly.
        bias : float32 [U]
        """
        lay = layer if isinstance(layer, UnitLayer) else self.layer(layer)
        nodes = {n.name: n for n in self.ir_model.graph}
        return _layer_params([nodes[n] for n in lay.nodes], lay.units)

    def lesion_constants(self, layer: str | UnitLayer, *, keep_bias: bool = True) -> np.ndarray:
        """Post-activation of each unit when its incoming weights are zeroed: sigma(b_j), or
        sigma(0) when the bias is zeroed too (``keep_bias=False``).

        Returns
        -------
        float64 [U]
            The activation of the bias (batch norm folded in for conv layers) or of zero.

        Raises
        ------
        ModelError
            An activation infoprobe cannot evaluate in NumPy (e.g. PRelu).
        """
        lay = layer if isinstance(layer, UnitLayer) else self.layer(layer)
        nodes = {n.name: n for n in self.ir_model.graph}
        act = nodes[lay.nodes[-1]] if lay.activation != "none" else None
        z = self.weights(lay)[1].astype(np.float64) if keep_bias else np.zeros(lay.units)
        return np.asarray(activation_numpy(act, lay.activation)(z), np.float64)


#: Metadata key under which the adapters record {framework module name: unit-layer name}.
MODULE_MAP_KEY = "infoprobe.module_map"


def module_map(model) -> dict:
    """The {framework module name: unit-layer name} mapping an adapter's ONNX export wrote
    into the model's metadata (``infoprobe.module_map``); empty when there is none.

    Parameters
    ----------
    model : LoadedModel or path-like

    Raises
    ------
    ModelError
        The entry is there but is not a JSON object of strings.
    """
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    raw = lm.ir_model.metadata_props.get(MODULE_MAP_KEY)
    if raw is None:
        return {}
    try:
        mapping = json.loads(raw)
    except ValueError:
        mapping = None
    if not isinstance(mapping, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                for k, v in mapping.items()):
        raise ModelError(f"{lm.path}: metadata infoprobe.module_map is not a JSON object of names")
    return mapping


def activation_numpy(node, name: str):
    """NumPy version of an activation, for constants such as sigma(b).

    Parameters
    ----------
    node : onnx_ir.Node or None
        The activation node (its ``alpha`` attribute is used where the op has one).
    name : str
        Lower-case name from :data:`ACTIVATIONS` (or ``"none"``).

    Raises
    ------
    ModelError
        An activation without a NumPy version here (e.g. PRelu, whose slope is an input).
    """
    from scipy import special

    alpha = (node.attributes["alpha"].value if node is not None and "alpha" in node.attributes else None)
    table = {
        "none": lambda z: z,
        "relu": lambda z: np.maximum(z, 0.0),
        "sigmoid": special.expit,
        "tanh": np.tanh,
        "leakyrelu": lambda z: np.where(z >= 0, z, (0.01 if alpha is None else alpha) * z),
        "elu": lambda z: np.where(z >= 0, z, (1.0 if alpha is None else alpha) * np.expm1(z)),
        "softplus": lambda z: np.logaddexp(0.0, z),
        "gelu": lambda z: 0.5 * z * (1.0 + special.erf(z / np.sqrt(2.0))),
        "softsign": lambda z: z / (1.0 + np.abs(z)),
    }
    if name not in table:
        raise ModelError(f"infoprobe cannot evaluate the {name} activation outside onnxruntime")
    return table[name]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- safe loading

def _tensors_with_external_data(graph: onnx.GraphProto):
    """Every TensorProto of a graph (initializers, Constant attributes, subgraphs)."""
    yield from graph.initializer
    for sp in graph.sparse_initializer:
        yield sp.values
        yield sp.indices
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors_with_external_data(attr.g)
            for g in attr.graphs:
                yield from _tensors_with_external_data(g)


def _check_external_location(location: str, model_dir: Path) -> Path:
    """Resolve an external-data location, refusing anything that could escape ``model_dir``."""
    if not location:
        raise UnsafeModelError("external data entry has an empty location")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        raise UnsafeModelError(f"external data location {location!r} is absolute; "
                               "only paths inside the model's folder are allowed")
    parts = location.replace("\\", "/").split("/")
    if ".." in parts:
        raise UnsafeModelError(f"external data location {location!r} contains '..'; "
                               "only paths inside the model's folder are allowed")
    root = model_dir.resolve()
    cur = model_dir
    for part in parts:
        if part in ("", "."):
            continue
        cur = cur / part
        if cur.is_symlink():
            raise UnsafeModelError(f"external data location {location!r} passes through the "
                                   f"symbolic link {cur}; copy the data file instead")
    target = (model_dir / location).resolve()
    try:
        target.relative_to(root)
    except ValueError:
        raise UnsafeModelError(f"external data location {location!r} resolves outside the "
                               f"model's folder {root}") from None
    if not target.is_file():
        raise ModelError(f"external data file {location!r} is missing next to the model")
    if os.stat(target).st_nlink > 1:
        raise UnsafeModelError(f"external data file {location!r} is a hard link "
                               f"({os.stat(target).st_nlink} links); copy the data file instead")
    return target


def load_onnx(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES,
              check: bool = True) -> tuple[ir.Model, str]:
    """Load an untrusted ONNX file safely, without looking for unit layers.

    The graph is parsed without weights first; every external-data location must be a
    relative path inside the model's folder, without ``..``, symbolic links or hard links;
    the graph file plus its external data must not exceed ``max_bytes``; the default-domain
    opset must be at least 13; and the model must pass ``onnx.checker.check_model(...,
    full_check=True)``. Only then are the weights read (memory-mapped by ``onnx_ir``).

    Parameters
    ----------
    path : path-like
        The ``.onnx`` file.
    max_bytes : int, default 2 GiB
        Largest accepted total size in bytes (``--max-model-size`` on the command line).
    check : bool, default True
        Run ``onnx.checker`` with ``full_check=True``.

    Returns
    -------
    (onnx_ir.Model, str)
        The model and the SHA-256 of the ``.onnx`` file.

    Raises
    ------
    ModelError
        Missing, truncated or invalid file; opset below 13.
    UnsafeModelError
        External data outside the folder, through a link, or a model over ``max_bytes``.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {path} does not exist or is not a file")
    size = path.stat().st_size
    if size > max_bytes:
        raise UnsafeModelError(f"model file {path} is {size / 2**20:.1f} MiB, over the limit of "
                               f"{max_bytes / 2**20:.1f} MiB; raise it with --max-model-size")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # DecodeError and friends: the file is not a complete ModelProto
        raise ModelError(f"cannot parse {path} as ONNX (truncated or not an ONNX file): "
                         f"{type(exc).__name__}") from None
    if not proto.HasField("graph") or not proto.graph.node:
        raise ModelError(f"{path} holds no graph (truncated or not an ONNX model)")
    total, external = size, False
    for tensor in _tensors_with_external_data(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            external = True
            entries = {e.key: e.value for e in tensor.external_data}
            total += _check_external_location(entries.get("location", ""), path.parent).stat().st_size
    if total > max_bytes:
        raise UnsafeModelError(f"model {path} with its external data is {total / 2**20:.1f} MiB, "
                               f"over the limit of {max_bytes / 2**20:.1f} MiB; raise it with "
                               "--max-model-size")
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None or opset < MIN_OPSET:
        raise ModelError(f"{path} uses default-domain opset {opset}; infoprobe needs opset "
                         f">= {MIN_OPSET} (convert with onnx.version_converter.convert_version)")
    if check:
        try:  # a model without external data is checked from memory instead of re-reading the file
            onnx.checker.check_model(str(path) if external else proto, full_check=True)
        except Exception as exc:
            msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"{path} fails onnx.checker: {msg}") from None
    try:  # external weights are memory-mapped by ir.load; otherwise the parsed proto is reused
        model = ir.load(path) if external else ir.from_proto(proto)
    except Exception as exc:
        raise ModelError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    return model, sha256_file(path)


def load_model(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES,
               check: bool = True) -> LoadedModel:
    """Load an untrusted ONNX model safely (:func:`load_onnx`) and discover its unit layers.

    Parameters are those of :func:`load_onnx`.

    Returns
    -------
    LoadedModel

    Raises
    ------
    ModelError
        As :func:`load_onnx`; also when no unit layer is found.
    UnsafeModelError
        As :func:`load_onnx`.
    """
    model, sha = load_onnx(path, max_bytes=max_bytes, check=check)
    return _discover(model, Path(path), sha, max_bytes)


# ----------------------------------------------------------------------------- discovery

def _const(value) -> np.ndarray | None:
    """Constant content of an ONNX value (initializer or Constant node), else None."""
    if value is None:
        return None
    if value.const_value is not None and not value.is_graph_input():
        return np.asarray(value.const_value.numpy())
    prod = value.producer()
    if prod is not None and prod.op_type == "Constant" and "value" in prod.attributes:
        return np.asarray(prod.attributes["value"].as_tensor().numpy())
    return None


def _attr(node, name, default):
    a = node.attributes.get(name)
    return default if a is None else a.value


def _bias_vector(c, units, what):
    if c is None:
        return np.zeros(units, np.float32)
    c = np.asarray(c, np.float32)
    if c.size == 1:
        return np.full(units, float(c.reshape(-1)[0]), np.float32)
    if c.size == units:
        return c.reshape(units)
    raise _Unsupported(f"{what} bias of shape {list(c.shape)} does not broadcast per unit")


class _Unsupported(Exception):
    pass


def _layer_params(nodes, units) -> tuple[np.ndarray, np.ndarray]:
    """Weight and bias of a unit layer from its ONNX nodes (see LoadedModel.weights)."""
    first = nodes[0]
    if first.op_type == "Gemm":
        b = _const(first.inputs[1]).astype(np.float32)
        w = b if _attr(first, "transB", 0) else b.T
        w = w * np.float32(_attr(first, "alpha", 1.0))
        c = _const(first.inputs[2]) if len(first.inputs) > 2 and first.inputs[2] is not None else None
        bias = _bias_vector(c, units, "Gemm") * np.float32(_attr(first, "beta", 1.0))
        return np.ascontiguousarray(w, np.float32), bias
    if first.op_type == "MatMul":
        w = np.ascontiguousarray(_const(first.inputs[1]).T, np.float32)
        bias = np.zeros(units, np.float32)
        if len(nodes) > 1 and nodes[1].op_type == "Add":
            add = nodes[1]
            other = add.inputs[1] if add.inputs[0] is first.outputs[0] else add.inputs[0]
            bias = _bias_vector(_const(other), units, "Add")
        return w, bias
    # Conv (+ BatchNormalization)
    w = _const(first.inputs[1]).astype(np.float32)
    bias = _bias_vector(_const(first.inputs[2]) if len(first.inputs) > 2 and first.inputs[2] is not None else None,
                        units, "Conv")
    if len(nodes) > 1 and nodes[1].op_type == "BatchNormalization":
        bn = nodes[1]
        scale, beta, mean, var = (_const(v).astype(np.float64) for v in bn.inputs[1:5])
        k = scale / np.sqrt(var + float(_attr(bn, "epsilon", 1e-5)))
        w = (w * k[:, None, None, None]).astype(np.float32)
        bias = ((bias - mean) * k + beta).astype(np.float32)
    return np.ascontiguousarray(w), bias


def _sanitize(name: str, used: set) -> str:
    base = name.strip("/").replace("/", ".").replace(" ", "_") or "layer"
    out, k = base, 1
    while out in used:
        k += 1
        out = f"{base}_{k}"
    used.add(out)
    return out


def _dims(value) -> tuple | None:
    shape = value.shape
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) else None for d in shape.dims[1:])


def _discover(model: ir.Model, path: Path, sha: str, max_bytes: int) -> LoadedModel:
    graph = model.graph
    try:
        model = ir_passes.ShapeInferencePass()(model).model
    except Exception:  # shapes are a convenience for discovery; layers without one are reported
        pass
    graph_outputs = {v.name for v in graph.outputs}
    found, unsupported, used_names, claimed = [], [], set(), set()

    for node in graph:
        if id(node) in claimed:
            continue
        op = node.op_type
        label = node.name or f"{op}_{len(found)}"
        try:
            if node.domain not in ("", "ai.onnx"):
                if op in _WEIGHTED_UNSUPPORTED:
                    raise _Unsupported(f"{op} is not a unit layer infoprobe can analyse")
                continue
            if op == "Gemm":
                if _const(node.inputs[1]) is None:
                    raise _Unsupported("Gemm with non-constant weights")
                if _attr(node, "transA", 0):
                    raise _Unsupported("Gemm with transA=1")
                wb = _const(node.inputs[1])
                units = wb.shape[0] if _attr(node, "transB", 0) else wb.shape[1]
                fan_in = wb.shape[1] if _attr(node, "transB", 0) else wb.shape[0]
                members, kind, opname = [node], "dense", "Gemm"
            elif op == "MatMul":
                w = _const(node.inputs[1])
                if w is None or _const(node.inputs[0]) is not None:
                    continue  # a product of two activations (e.g. attention): not a unit layer
                if w.ndim != 2:
                    raise _Unsupported(f"MatMul with a weight of rank {w.ndim}")
                units, fan_in = w.shape[1], w.shape[0]
                members, kind, opname = [node], "dense", "MatMul"
                uses = list(node.outputs[0].uses())
                if len(uses) == 1 and uses[0][0].op_type == "Add" and not node.outputs[0].is_graph_output():
                    add = uses[0][0]
                    other = add.inputs[1 - uses[0][1]]
                    c = _const(other)
                    if c is not None and c.size in (1, units):
                        members.append(add)
                        opname = "MatMul+Add"
            elif op == "Conv":
                w = _const(node.inputs[1])
                if w is None:
                    raise _Unsupported("Conv with non-constant weights")
                if w.ndim != 4:
                    raise _Unsupported(f"Conv with a {w.ndim - 2}-D kernel (only 2-D is supported)")
                units = w.shape[0]
                fan_in = int(np.prod(w.shape[1:]))
                members, kind, opname = [node], "conv", "Conv"
                uses = list(node.outputs[0].uses())
                if (len(uses) == 1 and uses[0][0].op_type == "BatchNormalization"
                        and uses[0][1] == 0 and not node.outputs[0].is_graph_output()):
                    bn = uses[0][0]
                    if len([o for o in bn.outputs if o is not None and o.uses()]) <= 1 and all(
                            _const(v) is not None for v in bn.inputs[1:5]):
                        members.append(bn)
                        opname = "Conv+BatchNormalization"
            elif op in _WEIGHTED_UNSUPPORTED:
                raise _Unsupported(f"{op} is not a unit layer infoprobe can analyse")
            else:
                continue
            _layer_params(members, units)  # validates bias shapes
        except _Unsupported as exc:
            unsupported.append({"node": label, "op": op, "reason": str(exc)})
            continue

        pre = members[-1].outputs[0]
        post, activation = pre, "none"
        uses = list(pre.uses())
        if len(uses) == 1 and uses[0][0].op_type in ACTIVATIONS and pre.name not in graph_outputs:
            act = uses[0][0]
            members.append(act)
            post, activation = act.outputs[0], ACTIVATIONS[act.op_type]
        for m in members:
            claimed.add(id(m))
        for m in members:
            if not m.name:
                m.name = f"infoprobe_{m.op_type}_{id(m)}"
        dims = _dims(pre)
        if dims is None or any(d is None for d in dims):
            dims = (units,) if kind == "dense" else None
        if kind == "dense" and dims is not None and len(dims) != 1:
            unsupported.append({"node": label, "op": op,
                                "reason": f"dense output of per-sample shape {list(dims)} (expected [units])"})
            continue
        if kind == "conv" and dims is None:
            unsupported.append({"node": label, "op": op, "reason": "output shape could not be inferred"})
            continue
        found.append(dict(name=_sanitize(node.name or label, used_names), kind=kind, op=opname,
                          units=int(units), activation=activation, fan_in=int(fan_in),
                          shape=tuple(int(d) for d in dims), pre=pre, post=post,
                          input=node.inputs[0], nodes=tuple(m.name for m in members)))

    if not found:
        detail = "; ".join(f"{u['node']} ({u['op']}): {u['reason']}" for u in unsupported)
        raise ModelError(f"{path} has no unit layer infoprobe can analyse (Gemm, MatMul+Add or "
                         f"Conv followed by an activation)" + (f"; not interpreted: {detail}" if detail else ""))

    # upstream layers and depth: walk back from each layer's input to other layers' values
    owner = {}
    for f in found:
        owner[id(f["pre"])] = f["name"]
        owner[id(f["post"])] = f["name"]
    upstream = {}
    for f in found:
        ups, stack, seen = set(), [f["input"]], set()
        while stack:
            v = stack.pop()
            if v is None or id(v) in seen:
                continue
            seen.add(id(v))
            if id(v) in owner:
                ups.add(owner[id(v)])
                continue
            prod = v.producer()
            if prod is not None:
                stack.extend(prod.inputs)
        upstream[f["name"]] = ups
    depth = {}

    def _depth(name):
        if name not in depth:
            depth[name] = 1 + max((_depth(u) for u in upstream[name]), default=0)
        return depth[name]

    downstream = {u for ups in upstream.values() for u in ups}
    layers = [UnitLayer(name=f["name"], kind=f["kind"], op=f["op"], units=f["units"],
                        activation=f["activation"], fan_in=f["fan_in"], depth=_depth(f["name"]),
                        inputs=tuple(sorted(upstream[f["name"]], key=lambda n: [g["name"] for g in found].index(n))),
                        is_output=f["name"] not in downstream, shape=f["shape"],
                        pre_value=f["pre"].name, post_value=f["post"].name,
                        input_value=f["input"].name, nodes=f["nodes"]) for f in found]

    inputs = [v for v in graph.inputs if not v.is_initializer()]
    if len(inputs) != 1:
        raise ModelError(f"{path} has {len(inputs)} data inputs; infoprobe analyses classifiers "
                         "with exactly one input")
    if not graph.outputs:
        raise ModelError(f"{path} has no graph output")
    in_shape = tuple(d if isinstance(d, int) else None for d in (inputs[0].shape.dims if inputs[0].shape else ()))
    return LoadedModel(path=path, sha256=sha, ir_model=model, layers=layers, unsupported=unsupported,
                       input_name=inputs[0].name, input_shape=in_shape,
                       output_name=graph.outputs[0].name, max_bytes=max_bytes)
