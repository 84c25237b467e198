"""Keras 3 adapter (any backend): activations into a store, models into ONNX.

Install with ``pip install 'infoprobe[keras]'`` (plus the backend's own package; with the
PyTorch backend, ``infoprobe[torch]`` brings the ONNX exporter's dependencies). Keras is
imported when a function here is first called, never by ``import infoprobe``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from infoprobe.errors import ConfigError, DataError, ModelError, OutputExistsError
from infoprobe.model import ACTIVATIONS, MODULE_MAP_KEY  # noqa: F401  (re-exported)

from .export_store import depths, layer_spec, write_batches, write_mapped_onnx

#: Keras activation functions (by ``__name__``) and activation layers, as infoprobe names them.
_ACTIVATIONS = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh", "leaky_relu": "leakyrelu",
                "gelu": "gelu", "elu": "elu", "selu": "selu", "softplus": "softplus"}
_ACTIVATION_LAYERS = {"ReLU": "relu", "LeakyReLU": "leakyrelu", "ELU": "elu"}


def _keras():
    try:
        import keras
    except ImportError:
        raise ConfigError("the Keras adapter needs Keras 3: pip install 'infoprobe[keras]'") from None
    if not keras.__version__.startswith("3"):
        raise ConfigError(f"the Keras adapter needs Keras 3, found {keras.__version__}")
    return keras


def _consumer(layer):
    """The single layer that consumes ``layer``'s output, or None."""
    nodes = getattr(layer, "_outbound_nodes", [])
    return nodes[0].operation if len(nodes) == 1 else None


def _activation_name(fn) -> str:
    name = getattr(fn, "__name__", "linear")
    return "none" if name == "linear" else _ACTIVATIONS.get(name, "")


class _Unit:
    """A Dense/Conv2D layer with the batch norm and activation layer that may follow it."""

    def __init__(self, layer, keras):
        self.layer, self.keras = layer, keras
        self.bn = self.act_layer = None
        self.kind = "dense" if isinstance(layer, keras.layers.Dense) else "conv"
        self.channels_last = self.kind == "dense" or layer.data_format == "channels_last"
        self.activation = _activation_name(layer.activation)
        if self.activation == "":
            raise ModelError(f"layer {layer.name!r}: activation {layer.activation.__name__!r} is not "
                             "one infoprobe recognises")
        if self.activation == "none":
            nxt = _consumer(layer)
            if self.kind == "conv" and isinstance(nxt, keras.layers.BatchNormalization):
                self.bn, nxt = nxt, _consumer(nxt)
            if isinstance(nxt, keras.layers.Activation) and _activation_name(nxt.activation):
                self.act_layer, self.activation = nxt, _activation_name(nxt.activation)
            elif type(nxt).__name__ in _ACTIVATION_LAYERS:
                self.act_layer, self.activation = nxt, _ACTIVATION_LAYERS[type(nxt).__name__]
        self.members = [m for m in (layer, self.bn, self.act_layer) if m is not None]

    def pre_post(self, x):
        """Pre- and post-activation of this layer for its input ``x`` (backend tensors)."""
        ops, layer = self.keras.ops, self.layer
        if self.kind == "dense":
            pre = ops.matmul(x, layer.kernel)
        else:
            pre = layer.convolution_op(x, layer.kernel)
        if layer.use_bias:
            shape = (1, -1, 1, 1) if not self.channels_last else (-1,)
            pre = pre + ops.reshape(layer.bias, shape)
        if self.bn is not None:
            pre = self.bn(pre, training=False)
        if self.act_layer is not None:
            post = self.act_layer(pre)
        else:
            post = layer.activation(pre)
        return pre, post

    def params(self):
        """Weight and bias in the store's convention (channels first), batch norm folded in."""
        k = np.asarray(self.keras.ops.convert_to_numpy(self.layer.kernel), np.float64)
        w = k.T if self.kind == "dense" else k.transpose(3, 2, 0, 1)
        b = (np.asarray(self.keras.ops.convert_to_numpy(self.layer.bias), np.float64)
             if self.layer.use_bias else np.zeros(w.shape[0]))
        op = type(self.layer).__name__
        if self.bn is not None:
            bn = self.bn
            get = lambda v: np.asarray(self.keras.ops.convert_to_numpy(v), np.float64)  # noqa: E731
            gamma = get(bn.gamma) if bn.scale else 1.0
            beta = get(bn.beta) if bn.center else 0.0
            s = gamma / np.sqrt(get(bn.moving_variance) + bn.epsilon)
            w = w * s[:, None, None, None]
            b = (b - get(bn.moving_mean)) * s + beta
            op += "+BatchNormalization"
        return w.astype(np.float32), b.astype(np.float32), op


def _units(model, keras) -> list:
    units = [_Unit(layer, keras) for layer in model.layers
             if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D))]
    if not units:
        raise ModelError("the model has no Dense or Conv2D layer")
    for u in units:
        if len(getattr(u.layer, "_inbound_nodes", [])) > 1:
            raise ModelError(f"layer {u.layer.name!r} is called more than once; infoprobe stores one "
                             "unit layer per Keras layer (shared layers are not supported)")
    return units


def _upstream(units) -> dict:
    """Unit layers upstream of each unit layer, by walking the functional graph back."""
    owner = {id(m): u.layer.name for u in units for m in u.members}
    out = {}
    for u in units:
        ups, seen = set(), set()
        stack = list(u.layer._inbound_nodes[0].input_tensors)
        while stack:
            t = stack.pop()
            op = getattr(getattr(t, "_keras_history", None), "operation", None)
            if op is None or id(op) in seen:
                continue
            seen.add(id(op))
            if id(op) in owner:
                ups.add(owner[id(op)])
                continue
            for node in getattr(op, "_inbound_nodes", [])[:1]:
                stack.extend(node.input_tensors)
        out[u.layer.name] = ups
    return out


def _to_nchw(a: np.ndarray, unit: _Unit) -> np.ndarray:
    return a.transpose(0, 3, 1, 2) if unit.kind == "conv" and unit.channels_last else a


def export_activations(model, data, out="acts.h5", *, layers=None, labels=None, batch_size: int = 256,
                       overwrite: bool = False, progress: bool = True) -> Path:
    """Write the activations of a Keras 3 model's unit layers over a data set to a store.

    Every ``Dense`` and ``Conv2D`` layer is a unit layer named by its Keras name. Its
    pre-activation is the affine output (kernel and bias), after a ``BatchNormalization``
    layer that directly follows a conv without activation (in inference mode, folded into
    the stored weight and bias); its post-activation is the layer's own activation applied to
    that, or the output of an ``Activation``/``ReLU``/``LeakyReLU``/``ELU`` layer that directly
    follows, or the pre-activation. Conv activations are stored channels first
    ([N, C, H, W]) whatever the layer's ``data_format``, and conv weights as
    [C_out, C_in, kh, kw]: the store matches what ``infoprobe capture`` writes from
    :func:`export_onnx`'s file.

    Parameters
    ----------
    model : keras.Model
        A built functional or Sequential classifier returning logits [n, classes].
    data : array [N, ...] or (x, y)
        Inputs as the model takes them.
    out : path-like
    layers : list of str, optional
        Layer names to store (default: every Dense and Conv2D).
    labels : int array [N], optional
    batch_size : int

    Returns
    -------
    Path of the complete store (``source="keras"``).

    Raises
    ------
    ConfigError
        Keras 3 is missing, or contradictory options.
    ModelError
        No Dense/Conv2D layer, an unknown layer name, a shared layer, or an activation
        infoprobe does not recognise.
    DataError
        Counts that disagree, NaN/inf activations.
    OutputExistsError, StoreError
    """
    keras = _keras()
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; pass overwrite=True to replace it")
    if isinstance(data, (list, tuple)):
        if len(data) != 2 or labels is not None:
            raise ConfigError("pass data as x or (x, y), and labels either there or as labels=")
        data, labels = data
    x = np.asarray(data)
    y = None if labels is None else np.asarray(labels).reshape(-1)
    if y is not None and len(y) != len(x):
        raise DataError(f"{len(y)} labels for {len(x)} samples")
    if batch_size < 1:
        raise ConfigError("batch_size must be at least 1")
    units = _units(model, keras)
    names = [u.layer.name for u in units]
    wanted = names if layers is None else list(layers)
    unknown = [n for n in wanted if n not in names]
    if unknown:
        raise ModelError(f"unknown layers {unknown}; the model's unit layers are: " + ", ".join(names))
    chosen = [u for u in units if u.layer.name in wanted]
    ups = _upstream(units)
    inputs = {n: sorted(ups[n], key=names.index) for n in names}
    depth = depths(inputs)
    downstream = {u for v in inputs.values() for u in v}
    probe = keras.Model(model.inputs[0] if len(model.inputs) == 1 else model.inputs, [u.layer.input for u in chosen] + [model.outputs[0]])
    to_np = keras.ops.convert_to_numpy

    def run(xb):
        res = probe(xb, training=False)
        blocks = {"outputs/logits": np.asarray(to_np(res[-1]), np.float32).reshape(len(xb), -1)}
        for u, inp in zip(chosen, res[:-1]):
            pre, post = u.pre_post(inp)
            for which, t in (("pre", pre), ("post", post)):
                a = _to_nchw(np.asarray(to_np(t), np.float32), u)
                if not np.isfinite(a).all():
                    raise DataError(f"layer {u.layer.name!r} has NaN or inf {which}-activations")
                blocks[f"layers/{u.layer.name}/{which}"] = a
        return blocks

    first = run(x[:batch_size])
    specs = []
    for u in chosen:
        w, b, op = u.params()
        n = u.layer.name
        specs.append(layer_spec(n, kind=u.kind, op=op, activation=u.activation, weight=w, bias=b,
                                shape=first[f"layers/{n}/pre"].shape[1:], inputs=inputs[n],
                                depth=depth[n], is_output=n not in downstream))

    def batches():
        yield first, None if y is None else y[:batch_size]
        for i in range(batch_size, len(x), batch_size):
            yield run(x[i:i + batch_size]), None if y is None else y[i:i + batch_size]

    return write_batches(out, n_rows=len(x), specs=specs, batches=batches(), has_labels=y is not None,
                         source="keras", overwrite=overwrite, progress=progress,
                         attrs=dict(model_class=type(model).__name__, keras_version=keras.__version__,
                                    keras_backend=keras.backend.backend()))


# ---------------------------------------------------------------------------------------------
# ONNX export


def _const(value):
    if value is None or value.const_value is None:
        return None
    return value.const_value.numpy()


def _channel_vector(k: np.ndarray, channels: int) -> np.ndarray | None:
    """A constant broadcast along the last axis as a [C] vector, or None."""
    if k.size == 1:
        return np.full(channels, float(k.reshape(())))
    if k.size == channels and (k.ndim == 1 or all(d == 1 for d in k.shape[:-1])) and k.shape[-1] == channels:
        return k.reshape(-1).astype(np.float64)
    return None


def fold_channels_last(irm) -> int:
    """Fold ``Conv -> Transpose(NCHW->NHWC) -> per-channel Add/Sub/Mul/Div ... -> activation``
    back into one ``Conv`` (+ activation) followed by the transpose.

    Channels-last exporters (Keras on every backend) add the conv bias and apply inference
    batch norm after the layout transpose, so the ``Conv`` node alone is not the unit layer's
    pre-activation. Folding the per-channel affine map y = s*x + t into the conv's weight
    and bias (W' = s W, b' = s b + t) and moving the transpose after the elementwise
    activation computes the same function with the unit layer in infoprobe's form.

    Parameters
    ----------
    irm : onnx_ir.Model
        Edited in place.

    Returns
    -------
    int
        Convs folded.
    """
    import onnx_ir as ir

    graph, folded = irm.graph, 0
    for conv in list(graph):
        if conv.op_type != "Conv" or _const(conv.inputs[1]) is None:
            continue
        v = conv.outputs[0]
        uses = list(v.uses())
        if len(uses) != 1 or v.is_graph_output() or uses[0][0].op_type != "Transpose":
            continue
        tr = uses[0][0]
        if list(tr.attributes.get_ints("perm", [])) != [0, 2, 3, 1]:
            continue
        w = _const(conv.inputs[1]).astype(np.float64)
        c = w.shape[0]
        s, t = np.ones(c), np.zeros(c)
        chain, cur = [], tr.outputs[0]
        while True:
            uses = list(cur.uses())
            if len(uses) != 1 or cur.is_graph_output():
                break
            node, slot = uses[0]
            if node.op_type not in ("Add", "Sub", "Mul", "Div") or len(node.inputs) != 2:
                break
            k = _const(node.inputs[1 - slot])
            k = None if k is None else _channel_vector(np.asarray(k), c)
            if k is None:
                break
            if node.op_type == "Add":
                t = t + k
            elif node.op_type == "Mul":
                s, t = s * k, t * k
            elif node.op_type == "Div" and slot == 0:
                s, t = s / k, t / k
            elif node.op_type == "Sub" and slot == 0:
                t = t - k
            elif node.op_type == "Sub":
                s, t = -s, k - t
            else:
                break
            chain.append(node)
            cur = node.outputs[0]
        act = None
        uses = list(cur.uses())
        if len(uses) == 1 and not cur.is_graph_output() and uses[0][0].op_type in ACTIVATIONS \
                and uses[0][0].op_type != "PRelu":
            act = uses[0][0]
        if not chain and act is None:
            continue
        last = (act or chain[-1]).outputs[0]
        if last.is_graph_output():
            continue
        b0 = _const(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] is not None else np.zeros(c)
        w2 = (w * s[:, None, None, None]).astype(np.float32)
        b2 = (np.asarray(b0, np.float64) * s + t).astype(np.float32)
        wv = ir.Value(name=f"{conv.name or 'conv'}_folded_weight", const_value=ir.tensor(w2))
        bv = ir.Value(name=f"{conv.name or 'conv'}_folded_bias", const_value=ir.tensor(b2))
        graph.register_initializer(wv)
        graph.register_initializer(bv)
        conv.replace_input_with(1, wv)
        if len(conv.inputs) > 2:
            conv.replace_input_with(2, bv)
        else:
            conv.resize_inputs(3)
            conv.replace_input_with(2, bv)
        new_out = ir.Value(name=f"{tr.outputs[0].name}_nhwc")
        ir.convenience.replace_all_uses_with(last, new_out)
        # conv -> act -> transpose: the transpose now produces what the chain used to
        if act is not None:
            act.replace_input_with(0, conv.outputs[0])
            act.outputs[0].shape = None
            tr.replace_input_with(0, act.outputs[0])
        tr_new = ir.node("Transpose", [tr.inputs[0]], attributes={"perm": [0, 2, 3, 1]},
                         outputs=[new_out], name=f"{tr.name}_moved")
        graph.insert_after(act if act is not None else conv, tr_new)
        graph.remove([*chain, tr], safe=True)
        folded += 1
    graph.sort()
    return folded


def export_onnx(model, path, *, opset: int | None = None, overwrite: bool = False) -> dict:
    """Export a Keras 3 model to ONNX with ``model.export(format="onnx")`` and put its unit
    layers in infoprobe's form.

    After Keras's export: ``onnxscript.optimizer.optimize`` removes the exporter's redundant
    casts and folds constants; :func:`fold_channels_last` moves each conv's bias and batch
    norm back into the ``Conv``; each unit layer's affine node is renamed after its Keras
    layer (found by its weights, which must equal the layer's kernel); and the model's
    metadata gets ``infoprobe.module_map`` ({Keras layer name: unit-layer name}, read by
    :func:`infoprobe.model.module_map`). The batch dimension stays dynamic.

    Parameters
    ----------
    model : keras.Model
        Built (called once) functional or Sequential model.
    path : path-like
    opset : int, optional

    Returns
    -------
    dict
        The module map written.

    Raises
    ------
    ConfigError
        Keras 3 or onnxscript is missing.
    OutputExistsError
    ModelError
        The exported model has no unit layer, or a Keras layer's node cannot be found.
    """
    keras = _keras()
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass overwrite=True to replace it")
    try:
        from onnxscript import optimizer
    except ImportError:
        raise ConfigError("the Keras ONNX export needs onnxscript: pip install 'infoprobe[keras]'") from None
    import onnx
    import onnx_ir as ir

    units = _units(model, keras)
    raw = path.with_name(f".{path.name}.keras")
    try:
        model.export(str(raw), format="onnx", verbose=False, opset_version=opset)
        proto = optimizer.optimize(onnx.load(str(raw)))
    finally:
        raw.unlink(missing_ok=True)
    irm = ir.from_proto(proto)
    # name the affine nodes after their Keras layers, by their weights
    wanted = {}
    for u in units:
        k = np.asarray(keras.ops.convert_to_numpy(u.layer.kernel), np.float32)
        wanted[u.layer.name] = (u.kind, k if u.kind == "dense" else k.transpose(3, 2, 0, 1))
    found = {}
    for node in irm.graph:
        op = {"MatMul": "dense", "Gemm": "dense", "Conv": "conv"}.get(node.op_type)
        w = _const(node.inputs[1]) if op and len(node.inputs) > 1 else None
        if w is None:
            continue
        if node.op_type == "Gemm" and node.attributes.get_int("transB", 0):
            w = w.T
        for name, (kind, k) in wanted.items():
            if name not in found and kind == op and w.shape == k.shape and np.array_equal(w, k):
                found[name] = node
                break
    missing = [n for n in wanted if n not in found]
    if missing:
        raise ModelError(f"the exported graph has no node with the weights of layers {missing}")
    for name, node in found.items():
        node.name = name
    fold_channels_last(irm)
    return write_mapped_onnx(irm, path, {node.name: name for name, node in found.items()})
