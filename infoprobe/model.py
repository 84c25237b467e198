"""Safe loading of ONNX models and discovery of their unit sites.

A *unit site* is a value in the graph with a unit axis and zero or more position axes:
dense units ``[B, U]``, conv channels ``[B, C, H, W]`` (or ``[B, C, L]``), token-wise units
``[B, T, U]``. Discovery finds (``UnitLayer.found_by``):

- ``affine``: a ``Gemm``, ``MatMul`` (+ ``Add``) or ``Conv`` (+ ``BatchNormalization``) -- the
  unit layers of DESIGN.md -- with constant (or dequantized constant) weights;
- ``residual``: the ``Add`` of two branches of the same shape (a residual block's output);
- ``layernorm``: a ``LayerNormalization`` output (the residual stream of a transformer);
- ``attention``: the concatenated heads before an attention block's output projection
  (units split by head, ``UnitLayer.heads``);
- ``user``: any value named with ``sites=`` (``--site NAME[:unit_axis]``).

Each is followed by an activation or by nothing; the *pre-activation* is the site's value,
the *post-activation* the activation's output. Activations are recognised in their exported
forms (``Clip`` for ReLU6, ``x * Sigmoid(x)`` for SiLU, ...). Discovery names what it could
not interpret (``LoadedModel.unsupported``) and what it deliberately leaves out
(``LoadedModel.skipped``) instead of guessing.
"""
from __future__ import annotations

import contextlib
import contextvars
import errno
import fnmatch
import functools
import hashlib
import json
import math
import os
import re
import stat
import tempfile
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as ir_passes

from .errors import BudgetError, ModelError, UnsafeModelError, one_line
from .limits import human, max_memory

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
_WEIGHTED_UNSUPPORTED = {"ConvTranspose", "LSTM", "GRU", "RNN", "Einsum", "Attention", "QAttention",
                         "DynamicQuantizeLSTM", "QLinearConvTranspose"}
#: Integer ops whose output is quantized: op -> input indices of its output's scale and zero
#: point (``QLinearAdd`` and ``QGemm`` are onnxruntime's ``com.microsoft`` ops of QOperator models).
_QUANTIZED_OUTPUT = {"QLinearConv": (6, 7), "QLinearMatMul": (6, 7), "QGemm": (7, 8), "QLinearAdd": (6, 7),
                     "QuantizeLinear": (1, 2)}


@dataclass(frozen=True)
class UnitLayer:
    """One unit site of a model (for the affine ones, DESIGN.md's *unit layer*).

    Attributes
    ----------
    name : str
        Unique, HDF5-safe site name (from the node's name).
    kind : {"dense", "conv", "token"}
        ``dense``: per-sample shape ``(U,)``; ``conv``: units first, then positions
        (``(C, H, W)`` or ``(C, L)``); ``token``: positions first, units last (``(T, U)``).
    op : str
        Ops that make the site, e.g. ``"Gemm"``, ``"MatMul+Add"``, ``"Conv+BatchNormalization"``,
        ``"Add"`` (residual), ``"LayerNormalization"``.
    units : int
        Neurons of a dense or token site, channels (feature maps) of a conv site.
    activation : str
        Lower-case activation name (``"sigmoid"``, ``"relu"``, ``"relu6"``, ...) or ``"none"``.
    fan_in : int
        Inputs per unit of an affine site (``C_in/groups * kh * kw`` for conv); 0 for the others.
    depth : int
        1 for sites fed by the model input only, else 1 + the largest depth upstream.
    inputs : tuple of str
        Names of the sites upstream (empty when fed by the model input).
    is_output : bool
        No site lies downstream (the classifier's logits).
    shape : tuple of int
        Per-sample shape of pre- and post-activation.
    pre_value, post_value : str
        Names of the ONNX values holding the pre- and post-activation.
    input_value : str
        The value the site reads (its first input).
    unit_axis : int
        Axis of ``shape`` that holds the units (0, or the last axis for ``token``).
    found_by : {"affine", "residual", "layernorm", "attention", "user"}
        How discovery found the site.
    heads : int
        Attention heads the units are split into (``attention`` sites; 0 otherwise or when
        unknown).
    quantized : tuple of str
        For a site whose value is an integer output of a QOperator model (``QLinearConv``,
        ``QLinearMatMul``, ``QGemm``, ``QLinearAdd``): the names of its scale and zero point.
        The site's activations are the dequantized values ``(q - zero_point) * scale``; the
        rewrites dequantize it to read or ablate it and quantize it again (see
        :mod:`infoprobe.rewrite`). Empty for float sites.
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
    unit_axis: int = 0
    found_by: str = "affine"
    heads: int = 0
    quantized: tuple = ()

    @property
    def positions(self) -> int:
        """Positions per unit and sample (1 for dense, H*W for conv, T for token)."""
        return int(np.prod(self.shape, dtype=np.int64)) // max(1, self.units)

    @property
    def has_weights(self) -> bool:
        """Whether the site is an affine op with incoming weights and a bias."""
        return self.found_by == "affine"

    def to_dict(self) -> dict:
        """JSON-serialisable description (ONNX node names omitted)."""
        d = asdict(self)
        d.pop("nodes")
        d["inputs"] = list(self.inputs)
        d["shape"] = list(self.shape)
        d["quantized"] = list(self.quantized)
        return d


@dataclass
class LoadedModel:
    """A validated ONNX model with its discovered unit sites (``layers``).

    Use :func:`load_model` to create one. ``ir_model`` is an ``onnx_ir.Model`` (external
    weights held in memory); rewrites never modify it but work on :meth:`fresh_ir` copies.
    ``inputs`` describes every data input (``{"name", "shape", "dtype"}``: a model may have
    several, e.g. ``input_ids`` and ``attention_mask``); ``input_name``/``input_shape`` are
    the first's. ``unsupported`` lists the nodes infoprobe could not interpret, ``skipped`` the values it
    found but does not take as sites (attention projections split into heads, sites left
    out by ``select``), ``notes`` what was done to the file on loading (opset conversion),
    each as ``{"node", "op", "reason"}`` (notes: strings).
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
    source: "OnnxFile" = field(default=None, repr=False)
    skipped: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    inputs: tuple = ()
    recipe: dict | None = field(default=None, repr=False, compare=False)
    output_choice: dict = field(default_factory=dict)
    padding: dict | None = None

    def __reduce_ex__(self, protocol):
        """Pickled (for a Dask worker: :mod:`infoprobe.parallel`) as the :func:`load_model` call
        that read it: the worker reads the file again, under the same size limit and site
        discovery, and checks its SHA-256. A model built otherwise pickles whole."""
        if self.recipe is not None:
            return (_reload_model, (self.recipe, self.sha256))
        return super().__reduce_ex__(protocol)

    @property
    def input_names(self) -> list:
        """Names of the model's data inputs (graph inputs that are not weights), in order."""
        return [i["name"] for i in self.inputs] or [self.input_name]

    def layer(self, name: str) -> UnitLayer:
        """The unit site called ``name``; raises :class:`ModelError` listing the valid names."""
        for lay in self.layers:
            if lay.name == name:
                return lay
        raise ModelError(f"unknown layer {name!r}; the model's unit sites are: "
                         + ", ".join(lay.name for lay in self.layers))

    @property
    def hidden_layers(self) -> list:
        """Unit layers that are not the output layer."""
        return [lay for lay in self.layers if not lay.is_output]

    def fresh_ir(self) -> ir.Model:
        """A new ``onnx_ir.Model`` of the validated content, for rewriting (the file is never
        read again: see :func:`load_onnx`)."""
        return self.source.ir()

    def describe(self, name=None) -> dict:
        """The model's input, output, unit layers and the nodes infoprobe did not interpret, as
        plain JSON values (``name``: how to call the model, default its path)."""
        return {"model": str(name if name is not None else self.path), "sha256": self.sha256,
                "input": self.input_name, "input_shape": list(self.input_shape),
                "inputs": [dict(i, shape=list(i["shape"])) for i in self.inputs], "output": self.output_name,
                "output_choice": self.output_choice, "padding": self.padding,
                "layers": [lay.to_dict() for lay in self.layers], "unsupported": self.unsupported,
                "skipped": self.skipped, "notes": self.notes}

    def summary(self, name=None) -> str:
        """The table of the unit sites: kind, how found, op, shape, activation, fan-in, depth,
        inputs; then every node infoprobe did not interpret, with the reason, and the values
        it left out."""
        width = max([24] + [len(lay.name) for lay in self.layers])
        head = (f"{'site':<{width}} {'kind':<5} {'found by':<9} {'op':<24} {'shape':<14} {'activation':<11} "
                f"{'fan-in':>7} {'depth':>5}  inputs")
        ins = ", ".join(f"{i['name']} {list(i['shape'])}" + ("" if i["dtype"] == "float32" else f" {i['dtype']}")
                        for i in self.inputs)
        lines = [f"{name if name is not None else self.path}  input {ins}  output {self.output_name}",
                 self.output_line, *([padding_line(self.padding)] if self.padding else []), *self.notes,
                 head, "-" * len(head)]
        for lay in self.layers:
            shape = "x".join(f"[{d}]" if i == lay.unit_axis else str(d) for i, d in enumerate(lay.shape))
            lines.append(f"{lay.name:<{width}} {lay.kind:<5} {lay.found_by:<9} {lay.op:<24} {shape:<14} "
                         f"{lay.activation:<11} {lay.fan_in:>7} {lay.depth:>5}  {','.join(lay.inputs) or '(input)'}"
                         + (f"  [{lay.heads} heads]" if lay.heads else "") + ("  [output]" if lay.is_output else ""))
        lines.append("(the unit axis is in brackets)")
        lines += [f"not interpreted: {u['node']} ({u['op']}): {u['reason']}" for u in self.unsupported]
        lines += [f"not a site: {u['node']} ({u['op']}): {u['reason']}" for u in self.skipped]
        return "\n".join(lines)

    @functools.cached_property
    def label_threshold(self) -> float:
        """Threshold of a single-output classifier (:func:`output_threshold`)."""
        return output_threshold(self.ir_model, self.output_name)

    @property
    def output_line(self) -> str:
        """One line that says which output is taken as the class scores and why
        (:func:`class_output`), and what is wrong with it if anything."""
        c = self.output_choice or {"description": repr(self.output_name), "reason": "", "others": []}
        line = f"class scores: output {c['description']}" + (f" ({c['reason']})" if c.get("reason") else "")
        if c.get("others"):
            line += "; other outputs: " + ", ".join(c["others"]) + " (--output NAME to choose)"
        if c.get("problem"):
            line += f"; not class scores: {c['problem']}"
        return line

    @functools.cached_property
    def class_labels(self) -> np.ndarray | None:
        """The class label of each column of the scores, int64 [C], where the model's metadata
        records them (``infoprobe.class_labels``: a scikit-learn ``ZipMap``); None: column c is
        class c."""
        return class_labels(self.source.proto, self.path) if self.source is not None else None

    def is_class_logits(self, out: np.ndarray) -> bool:
        """Whether outputs [N, ...] are class logits: the chosen output is not known to be
        something else (:func:`class_output`'s ``problem``) and has their shape
        (:func:`class_score_shape`)."""
        return not (self.output_choice or {}).get("problem") and class_score_shape(out)

    def predicted_labels(self, out: np.ndarray) -> np.ndarray:
        """Labels from this model's outputs [N, ...] by :func:`predicted_labels` (column c is
        class :attr:`class_labels` [c] where they are recorded).

        Raises
        ------
        ModelError
            The output is not class logits: more than one per-sample axis longer than 1 (a
            detector's [N, 84, 8400], a segmenter's maps, token embeddings), or an output
            :func:`class_output` knows to be something else (an integer label tensor, an
            L2-normalised embedding).
        """
        problem = (self.output_choice or {}).get("problem")
        if problem or not self.is_class_logits(out):
            what = problem or (f"the output {self.output_name!r} of {self.path.name} has per-sample shape "
                               f"{list(np.shape(out)[1:])}, not class logits [N, classes]")
            raise ModelError(f"{what}; this analysis counts predicted labels (name the class scores with "
                             "--output; frivolous compares other outputs within --agreement; capture, importance, "
                             "synergy and redundancy work on any output)")
        return predicted_labels(out, self.label_threshold, self.class_labels)

    def check_labels(self, labels: np.ndarray, out: np.ndarray) -> None:
        """:func:`check_labels` for this model's output."""
        check_labels(labels, out, self.class_labels, output=self.output_name, path=self.path.name)

    @property
    def file_bytes(self) -> int:
        """Size on disk: the graph file plus each external data file once."""
        return self.source.bytes

    def weights(self, layer: str | UnitLayer) -> tuple[np.ndarray, np.ndarray]:
        """Incoming weights and bias of a unit layer, in the store's convention.

        Returns
        -------
        weight : float32 [U, fan_in] (dense) or [C_out, C_in/groups, kh, kw] (conv)
            For ``Conv+BatchNormalization`` the batch norm is folded in, so that
            ``pre = weight * input + bias`` holds exactly. For ``Conv+Add(positions)`` (a
            constant per channel and position added after the conv, as ``infoprobe prune``
            corrects a pruned padded conv's borders) the bias is each channel's median over
            positions (its interior value): the equation then holds away from the borders.
        bias : float32 [U]
        """
        lay = layer if isinstance(layer, UnitLayer) else self.layer(layer)
        if not lay.has_weights:
            raise ModelError(f"site {lay.name!r} ({lay.found_by}: {lay.op}) is not an affine layer; it has no "
                             "incoming weights or bias")
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
            An activation infoprobe cannot evaluate in NumPy (e.g. PRelu); ``keep_bias`` on a
            site that is not an affine layer (a residual sum has no bias).
        """
        lay = layer if isinstance(layer, UnitLayer) else self.layer(layer)
        nodes = {n.name: n for n in self.ir_model.graph}
        act = nodes[lay.nodes[-1]] if lay.activation != "none" else None
        if keep_bias and not lay.has_weights:
            raise ModelError(f"site {lay.name!r} ({lay.found_by}) has no bias, so it has no activation of the bias; "
                             "use the activation of zero, zero or the mean")
        z = self.weights(lay)[1].astype(np.float64) if keep_bias else np.zeros(lay.units)
        return np.asarray(activation_numpy(act, lay.activation)(z), np.float64)


#: Ops that pass a classifier's output through unchanged in value (for :func:`output_threshold`).
_PASS_THROUGH = {"Identity", "Reshape", "Flatten", "Squeeze", "Unsqueeze"}


def output_threshold(model: ir.Model, name: str | None = None) -> float:
    """Decision threshold of a classifier with a single output value (binary): 0.5 when the
    output ``name`` (default the first) comes from a ``Sigmoid`` (a probability), else 0 (a logit). See :func:`predicted_labels`."""
    if not model.graph.outputs:
        return 0.0
    out = next((v for v in model.graph.outputs if v.name == name), model.graph.outputs[0])
    node = out.producer()
    while node is not None and node.op_type in _PASS_THROUGH and node.inputs and node.inputs[0] is not None:
        node = node.inputs[0].producer()
    return 0.5 if node is not None and node.op_type == "Sigmoid" else 0.0


def class_labels(proto: onnx.ModelProto, path="the model") -> np.ndarray | None:
    """The class label of each column of a classifier's scores, int64 [C], from the metadata
    ``infoprobe.class_labels`` (written on loading a scikit-learn ``ZipMap``:
    :func:`load_onnx`); None when absent (column c is class c).

    Raises
    ------
    ModelError
        The metadata is not a list of integers.
    """
    raw = next((p.value for p in proto.metadata_props if p.key == CLASS_LABELS_KEY), None)
    if raw is None:
        return None
    try:
        return np.asarray(json.loads(raw), np.int64).ravel()
    except (ValueError, TypeError, OverflowError):
        raise ModelError(f"{path}: metadata {CLASS_LABELS_KEY} is not a list of integers") from None


def check_labels(labels: np.ndarray, out: np.ndarray, class_labels: np.ndarray | None = None, *,
                 output: str = "", path: str = "the model") -> None:
    """Refuse true labels [N] that scores [N, ...] cannot predict: a label outside the classes
    of the output (0 .. C - 1, ``class_labels`` (:func:`class_labels`) where given, or {0, 1}
    for one score), which would be counted wrong on every sample, silently.

    Raises
    ------
    ModelError
        Naming the labels out of range and the output's classes.
    """
    k = int(np.prod(np.shape(out)[1:], dtype=np.int64))
    if class_labels is not None and len(class_labels) == k:
        allowed, said = class_labels, "labels " + ", ".join(map(str, class_labels[:5].tolist())) + \
            (" …" if len(class_labels) > 5 else "")
    else:
        allowed, said = np.arange(max(k, 2)), f"0-{max(k, 2) - 1}"
    present = np.unique(np.asarray(labels))
    bad = present[~np.isin(present, allowed)]
    if len(bad):
        raise ModelError(f"the data's labels include {', '.join(map(str, bad[:5].tolist()))}"
                         f"{' …' if len(bad) > 5 else ''}, which output {output!r} of {path} cannot predict: it "
                         f"scores {k} class{'es' if k != 1 else ''} ({said}); another output holds the class scores "
                         "(--output NAME), or the labels belong to other data")


def class_score_shape(out: np.ndarray) -> bool:
    """Whether outputs [N, ...] have the shape of class scores: at most one per-sample axis
    longer than 1 (``[N, classes]``, ``[N, 1]``, ``[N]``), the form :func:`predicted_labels`
    accepts (not a detector's [N, 84, 8400], a segmenter's maps or token embeddings)."""
    return len([d for d in np.shape(out)[1:] if d != 1]) <= 1


def predicted_labels(out: np.ndarray, threshold: float = 0.0, class_labels: np.ndarray | None = None) -> np.ndarray:
    """The one rule by which every command turns a classifier's outputs into labels.

    Parameters
    ----------
    out : array [N, ...]
        The class scores (:func:`class_output`), per sample flattened to K values.
    threshold : float
        For K = 1 (a binary classifier with one logit or probability): label 1 where the
        output exceeds it (:func:`output_threshold`: 0 for a logit, 0.5 for a probability).
    class_labels : int array [K], optional
        The label of each column (:func:`class_labels`); ignored unless it has K entries.

    Returns
    -------
    int64 [N]
        The argmax over the K outputs (mapped through ``class_labels``), or for K = 1 the
        thresholded output.
    """
    out = np.asarray(out).reshape(len(out), -1)
    labels = (out[:, 0] > threshold).astype(np.int64) if out.shape[1] == 1 else out.argmax(1).astype(np.int64)
    return class_labels[labels] if class_labels is not None and len(class_labels) == out.shape[1] else labels


#: Metadata key under which the adapters record {framework module name: unit-layer name}.
MODULE_MAP_KEY = "infoprobe.module_map"
#: Metadata key of the class labels of a classifier's scores, a JSON list (column c of the
#: scores is class ``labels[c]``), where they are not 0 .. C - 1 (scikit-learn's ``ZipMap``).
CLASS_LABELS_KEY = "infoprobe.class_labels"


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
    if node is not None and node.op_type == "HardSigmoid":
        a, b = _attr(node, "alpha", 0.2), _attr(node, "beta", 0.5)
        table["hardsigmoid"] = lambda z: np.clip(a * z + b, 0.0, 1.0)
    table = {**_curves(), **table}
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

def _tensors(graph: onnx.GraphProto):
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
                yield from _tensors(attr.g)
            for g in attr.graphs:
                yield from _tensors(g)


#: Bits per element of the packed sub-byte element types.
_PACKED_BITS = {onnx.TensorProto.UINT4: 4, onnx.TensorProto.INT4: 4, onnx.TensorProto.FLOAT4E2M1: 4,
                getattr(onnx.TensorProto, "UINT2", -1): 2, getattr(onnx.TensorProto, "INT2", -1): 2,
                getattr(onnx.TensorProto, "FLOAT6E2M3", -1): 6, getattr(onnx.TensorProto, "FLOAT6E3M2", -1): 6}
#: Typed field and values per element, for the element types whose layout is unambiguous.
_TYPED_FIELDS = {
    onnx.TensorProto.FLOAT: ("float_data", 1), onnx.TensorProto.DOUBLE: ("double_data", 1),
    onnx.TensorProto.COMPLEX64: ("float_data", 2), onnx.TensorProto.COMPLEX128: ("double_data", 2),
    onnx.TensorProto.INT64: ("int64_data", 1), onnx.TensorProto.UINT32: ("uint64_data", 1),
    onnx.TensorProto.UINT64: ("uint64_data", 1), onnx.TensorProto.STRING: ("string_data", 1),
    **{t: ("int32_data", 1) for t in (onnx.TensorProto.INT32, onnx.TensorProto.INT16, onnx.TensorProto.INT8,
                                      onnx.TensorProto.UINT16, onnx.TensorProto.UINT8, onnx.TensorProto.BOOL,
                                      onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)},
}


def _tensor_nbytes(t: onnx.TensorProto, what: str) -> int:
    """Bytes of a tensor's raw data, from its dims and element type."""
    if any(d < 0 for d in t.dims):
        raise ModelError(f"{what} has negative dimensions {list(t.dims)}")
    n = math.prod(t.dims)
    if t.data_type in _PACKED_BITS:
        return -(-n * _PACKED_BITS[t.data_type] // 8)
    if t.data_type == onnx.TensorProto.STRING:
        raise ModelError(f"{what} holds strings, which cannot be stored as raw or external data")
    try:
        size = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    except Exception:
        raise ModelError(f"{what} has the unknown element type {t.data_type}") from None
    return n * size


def _check_inline(t: onnx.TensorProto, what: str) -> None:
    """A tensor stored in the file holds exactly as many values as its dims say."""
    if t.HasField("raw_data") and t.raw_data:
        need = _tensor_nbytes(t, what)
        if len(t.raw_data) != need:
            raise ModelError(f"{what} holds {len(t.raw_data)} bytes of data but its dims {list(t.dims)} "
                             f"need {need}")
        return
    field, per = _TYPED_FIELDS.get(t.data_type, (None, 1))
    if field is None:
        return
    n = math.prod(t.dims)
    have = len(getattr(t, field))
    if have != n * per:
        raise ModelError(f"{what} holds {have} values but its dims {list(t.dims)} need {n * per}")


def _nonnegative(value: str, key: str, what: str) -> int:
    try:
        v = int(value)
    except ValueError:
        raise ModelError(f"{what}: external-data {key} {value!r} is not a whole number") from None
    if v < 0:
        raise ModelError(f"{what}: external-data {key} {v} is negative")
    return v


def _split_location(location: str) -> list:
    """The path components of an external-data location, refusing anything that could
    name a file outside the model's folder."""
    if not location:
        raise UnsafeModelError("external data entry has an empty location")
    if "\0" in location:
        raise UnsafeModelError(f"external data location {location!r} contains a NUL byte")
    if os.path.isabs(location) or location.startswith(("/", "\\")) or (len(location) > 1 and location[1] == ":"):
        raise UnsafeModelError(f"external data location {location!r} is absolute; "
                               "only paths inside the model's folder are allowed")
    parts = [p for p in location.replace("\\", "/").split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeModelError(f"external data location {location!r} contains '..'; "
                               "only paths inside the model's folder are allowed")
    if not parts:
        raise UnsafeModelError(f"external data location {location!r} names no file")
    return parts


def _open_inside(folder: Path, location: str) -> int:
    """Open an external-data file inside ``folder`` for reading, component by component
    with ``O_NOFOLLOW``, so that no symbolic link, hard link or special file is followed.

    Returns an open file descriptor of a regular file with a single link.
    """
    parts = _split_location(location)
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | nofollow | (getattr(os, "O_NONBLOCK", 0) if last else getattr(os, "O_DIRECTORY", 0))
            try:
                nxt = os.open(part, flags, dir_fd=fd)
            except FileNotFoundError:
                raise ModelError(f"external data file {location!r} is missing next to the model") from None
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.EMLINK) or (exc.errno == errno.ENOTDIR and os.path.islink(
                        os.path.join(folder, *parts[:i + 1]))):
                    raise UnsafeModelError(f"external data location {location!r} passes through the symbolic "
                                           f"link {'/'.join(parts[:i + 1])}; copy the data file instead") from None
                raise ModelError(f"cannot open external data file {location!r}: {exc.strerror}") from None
            os.close(fd)
            fd = nxt
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeModelError(f"external data location {location!r} is not a regular file")
        if st.st_nlink > 1:
            raise UnsafeModelError(f"external data file {location!r} is a hard link ({st.st_nlink} links); "
                                   "copy the data file instead")
        return fd
    except BaseException:
        os.close(fd)
        raise


def _pread_exact(fd: int, n: int, offset: int) -> bytes:
    parts, got = [], 0
    while got < n:
        block = os.pread(fd, min(n - got, 1 << 26), offset + got)
        if not block:
            break
        parts.append(block)
        got += len(block)
    return b"".join(parts)


def _inline_external_data(proto: onnx.ModelProto, folder: Path, graph_bytes: int, max_bytes: int,
                          path: Path) -> int:
    """Read every external tensor of ``proto`` from ``folder`` into the proto itself.

    Each data file is opened once (:func:`_open_inside`), each tensor's offset and length
    are checked against the file and against the bytes its dims need, and the bytes read
    become the tensor's ``raw_data``: every later consumer (checker, rewrites, onnxruntime)
    sees exactly the validated bytes, whatever the working directory. A data file shared by
    many tensors counts once towards ``max_bytes``.

    Returns
    -------
    int
        Bytes on disk: the graph file plus each data file once.
    """
    files: dict = {}   # location parts -> (fd, size)
    total = graph_bytes
    try:
        for i, t in enumerate(_tensors(proto.graph)):
            what = f"tensor {t.name or i!r}"
            if t.data_location != onnx.TensorProto.EXTERNAL:
                _check_inline(t, what)
                continue
            entries = {}
            for e in t.external_data:
                if e.key in entries:
                    raise ModelError(f"{what}: external-data key {e.key!r} is given twice")
                if e.key not in ("location", "offset", "length", "checksum"):
                    raise ModelError(f"{what}: unknown external-data key {e.key!r}")
                entries[e.key] = e.value
            key = tuple(_split_location(entries.get("location", "")))
            if key not in files:
                fd = _open_inside(folder, entries["location"])
                files[key] = (fd, os.fstat(fd).st_size)
                total += files[key][1]
                if total > max_bytes:
                    raise UnsafeModelError(f"model {path} with its external data is over the limit of "
                                           f"{max_bytes / 2**20:.1f} MiB; raise it with max_bytes= (--max-model-size)")
            fd, size = files[key]
            need = _tensor_nbytes(t, what)
            offset = _nonnegative(entries.get("offset", "0"), "offset", what)
            length = _nonnegative(entries["length"], "length", what) if "length" in entries else need
            if length != need:
                raise ModelError(f"{what}: external-data length {length} disagrees with the {need} bytes "
                                 f"its dims {list(t.dims)} need")
            if offset + length > size:
                raise ModelError(f"{what}: bytes {offset}..{offset + length} lie beyond the end of "
                                 f"{entries['location']!r} ({size} bytes); the data file is truncated or "
                                 "the model is corrupt")
            data = _pread_exact(fd, length, offset)
            if len(data) != length:
                raise ModelError(f"{what}: {entries['location']!r} ended after {len(data)} of {length} bytes")
            t.raw_data = data
            del t.external_data[:]
            t.data_location = onnx.TensorProto.DEFAULT
    finally:
        for fd, _ in files.values():
            os.close(fd)
    return total


@dataclass
class OnnxFile:
    """A validated ONNX file, every external tensor already read into memory.

    Attributes
    ----------
    path : Path
        The file as given.
    proto : onnx.ModelProto
        The model with all weights inline (no external-data references left).
    sha256 : str
        Of the ``.onnx`` file's bytes (the bytes that were parsed).
    bytes : int
        Size on disk: the graph file plus each external data file once.
    notes : tuple of str
        What was done to the model on loading (an opset conversion).
    """

    path: Path
    proto: onnx.ModelProto
    sha256: str
    bytes: int
    notes: tuple = ()

    def ir(self) -> ir.Model:
        """A new ``onnx_ir.Model`` of the validated content (never re-read from disk)."""
        return ir.from_proto(self.proto)

    @functools.cached_property
    def runtime_sizes(self) -> dict:
        """The largest values the graph computes, as far as shape inference can tell (with
        data propagation, so that a shape computed from the input counts): ``per_sample`` --
        ``(bytes, name, op)`` of the largest growth of one value per sample of the batch --
        and ``static`` -- the largest value whose size does not depend on the batch (weights
        are left out: the model's size bounds them) -- and ``per_sample_total``, the bytes
        per sample of all the values that grow with the batch together (a bound on what one
        run holds at once). ``(0, None, None)`` and 0 where nothing is known. See
        :func:`runtime_rows`."""
        one, two = _value_sizes(self.proto, 1), _value_sizes(self.proto, 2)
        per_sample, static, total = (0, None, None), (0, None, None), 0
        for name, (size, op) in one.items():
            grown = two.get(name, (size, op))[0] - size
            total += max(grown, 0)
            if grown > per_sample[0]:
                per_sample = (grown, name, op)
            elif grown == 0 and size > static[0]:
                static = (size, name, op)
        return {"per_sample": per_sample, "static": static, "per_sample_total": total}


def _value_sizes(proto: onnx.ModelProto, batch: int) -> dict:
    """``{value name: (bytes, producing op)}`` of every non-weight value whose shape is known
    when the data inputs' first dimension is ``batch``."""
    graph = proto.graph
    light = onnx.ModelProto()
    light.opset_import.extend(proto.opset_import)
    light.ir_version = proto.ir_version
    g = light.graph
    g.node.extend(graph.node)
    g.output.extend(graph.output)
    weights = {t.name for t in graph.initializer}
    for vi in graph.input:
        if vi.name in weights:
            continue
        v = g.input.add()
        v.CopyFrom(vi)
        dims = v.type.tensor_type.shape.dim
        if len(dims):
            dims[0].Clear()
            dims[0].dim_value = batch
    for t in graph.initializer:            # weights become inputs of their shape; small constants
        if len(t.raw_data) <= 4096:        # (shapes, axes) stay, for data propagation
            g.initializer.add().CopyFrom(t)
        else:
            g.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    try:
        inferred = onnx.shape_inference.infer_shapes(light, data_prop=True)
    except Exception:
        return {}
    producer = {o: n.op_type for n in inferred.graph.node for o in n.output}
    sizes = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        tt = vi.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        if vi.name in weights or not tt.HasField("shape") or any(d is None for d in dims):
            continue
        try:
            itemsize = onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type).itemsize
        except Exception:
            continue
        sizes[vi.name] = (itemsize * math.prod(dims), producer.get(vi.name, "the input"))
    return sizes


def runtime_rows(source: OnnxFile, wanted: int) -> int:
    """How many samples one onnxruntime run of ``source`` may take: at most ``wanted``, and
    no more than keep the values that grow with the batch (:attr:`OnnxFile.runtime_sizes`)
    within a quarter of the memory budget.

    Raises
    ------
    BudgetError
        One sample alone makes a value over a quarter of :func:`infoprobe.limits.max_memory`,
        or a value that does not depend on the batch exceeds half of it (``ConstantOfShape``,
        ``Expand`` or ``Tile`` of a constant shape or of one computed from the input):
        refused before onnxruntime runs it.
    """
    sizes = source.runtime_sizes
    for (nbytes, name, op), share, what in ((sizes["static"], 2, "whatever the batch"),
                                            (sizes["per_sample"], 4, "for each sample")):
        if nbytes > max_memory() // share:
            raise BudgetError(f"{source.path.name}: {op or 'a node'} builds {name!r} of {human(nbytes)} {what}, over "
                              f"1/{share} of the memory budget of {human(max_memory())}; raise it with infoprobe.limits.budgets(memory=) (--max-memory) if "
                              "that is intended")
    return int(max(1, min(wanted, (max_memory() // 4) // max(1, sizes["per_sample"][0]))))


def _check_text(msg, where: str = "the model") -> None:
    """Refuse strings that are not UTF-8 text (protobuf returns them as bytes; onnx_ir and the
    checker then fail far from the cause). Tensor contents are not walked."""
    from google.protobuf.descriptor import FieldDescriptor as F

    if isinstance(msg, onnx.TensorProto):
        fields = [(msg.DESCRIPTOR.fields_by_name[k], getattr(msg, k)) for k in ("name", "doc_string")]
        fields += [(msg.DESCRIPTOR.fields_by_name["external_data"], msg.external_data)]
    else:
        fields = msg.ListFields()
    for fd, value in fields:
        repeated = fd.is_repeated if hasattr(fd, "is_repeated") else fd.label == F.LABEL_REPEATED
        values = value if repeated else [value]
        if fd.type == F.TYPE_STRING:
            bad = next((v for v in values if not isinstance(v, str)), None)
            if bad is not None:
                raise ModelError(f"{where}: field {fd.name} holds {bytes(bad)[:40]!r}, which is not UTF-8 text "
                                 "(a damaged or hostile model)")
        elif fd.type == F.TYPE_MESSAGE:
            for v in values:
                _check_text(v, where)


def _check_proto(proto: onnx.ModelProto) -> None:
    """``onnx.checker`` with ``full_check=True`` on an inline model, from memory (or, above the
    2 GB protobuf limit, from a private temporary copy)."""
    if proto.ByteSize() < 2**31 - 2**20:
        onnx.checker.check_model(proto, full_check=True)
        return
    with tempfile.TemporaryDirectory(prefix="infoprobe-check-") as tmp:
        onnx.save_model(proto, os.path.join(tmp, "model.onnx"), save_as_external_data=True,
                        location="model.onnx.data")
        onnx.checker.check_model(os.path.join(tmp, "model.onnx"), full_check=True)


def load_onnx(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES, check: bool = True) -> OnnxFile:
    """Load an untrusted ONNX file safely, without looking for unit layers.

    The file is read once (its SHA-256 is of those bytes) and parsed without weights; every
    external-data location must be a relative path inside the model's folder, reached
    without ``..``, symbolic links, hard links or special files (opened with ``O_NOFOLLOW``
    component by component), with an offset and length that lie inside the file and agree
    with the tensor's dims. Those bytes are read into the model, so nothing later reads a
    file again. The graph file plus each data file (counted once) must not exceed
    ``max_bytes``; every tensor must hold as many values as its dims say; the default-domain
    opset must be at least 13; and the model must pass ``onnx.checker.check_model(...,
    full_check=True)``.

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
    OnnxFile

    Raises
    ------
    ModelError
        Missing, truncated or invalid file; tensors whose data disagree with their dims;
        external data that is missing or shorter than declared; opset below 13.
    UnsafeModelError
        External data outside the folder, through a link, not a regular file, or a model
        over ``max_bytes``.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError:
        raise ModelError(f"model file {path} does not exist or cannot be opened") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise ModelError(f"model file {path} is not a regular file")
        if st.st_size > max_bytes:
            raise UnsafeModelError(f"model file {path} is {st.st_size / 2**20:.1f} MiB, over the limit of "
                                   f"{max_bytes / 2**20:.1f} MiB; raise it with max_bytes= (--max-model-size)")
        raw = _read_bounded(f, min(st.st_size, max_bytes) + 1)
    if len(raw) > max_bytes:
        raise UnsafeModelError(f"model file {path} grew over the limit of {max_bytes / 2**20:.1f} MiB while "
                               "it was read")
    sha = hashlib.sha256(raw).hexdigest()
    try:
        proto = onnx.ModelProto()
        proto.ParseFromString(raw)
    except Exception as exc:  # DecodeError, RecursionError: the bytes are not a complete ModelProto
        raise ModelError(f"cannot parse {path} as ONNX (truncated or not an ONNX file): "
                         f"{type(exc).__name__}") from None
    del raw
    if not proto.HasField("graph") or not proto.graph.node:
        raise ModelError(f"{path} holds no graph (truncated or not an ONNX model)")
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise ModelError(f"{path} imports no default-domain opset; infoprobe needs opset >= {MIN_OPSET}")
    _check_text(proto, str(path))
    folder = Path(os.path.abspath(path)).parent
    total = _inline_external_data(proto, folder, st.st_size, max_bytes, path)
    notes = _tensor_outputs(proto, path) + _fold_constants(proto.graph)
    _name_nodes(proto.graph)
    if opset < MIN_OPSET:
        proto = _convert_opset(proto, opset, path)
        notes += (f"converted from opset {opset} to {MIN_OPSET} with onnx.version_converter",)
        warnings.warn(f"{path} uses opset {opset}; infoprobe converted it to opset {MIN_OPSET} "
                      "(onnx.version_converter) and analyses the converted graph")
    if check:
        try:
            _check_proto(proto)
        except Exception as exc:
            raise ModelError(f"{path} fails onnx.checker: {one_line(exc)}") from None
    return OnnxFile(path=path, proto=proto, sha256=sha, bytes=int(total), notes=notes)


def _read_bounded(f, limit: int, chunk: int = 1 << 24) -> bytes:
    """At most ``limit`` bytes of the open file ``f``, read in chunks into one buffer of the
    size found (a buffered ``read(limit)`` would reserve ``limit`` bytes at once: 2 GiB for
    the default ``--max-model-size`` whatever the file's size)."""
    buf = bytearray()
    while len(buf) < limit:
        part = f.read(min(chunk, limit - len(buf)))
        if not part:
            break
        buf += part
    return buf


#: ``Constant`` attributes :func:`_fold_constants` turns into initializers, with the dtype of each.
_CONSTANT_ATTRS = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                   "value_ints": np.int64}
#: Ops of initializers that :func:`_fold_constants` evaluates into an initializer: they keep the
#: number of values (a weight reshaped to [1, C, 1, 1] for a bias, stored as float16 and cast).
_FOLDED_OPS = {"Cast", "Reshape", "Unsqueeze", "Squeeze", "Transpose", "Flatten"}
#: Element types of the initializers (and casts) folded.
_FOLDED_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                 onnx.TensorProto.INT32, onnx.TensorProto.INT64}


def _fold_constants(graph: onnx.GraphProto) -> tuple:
    """Hold every weight of the main graph in an initializer, in place, as discovery and pruning
    read them: ``Constant`` nodes become initializers under their output's name; an
    ``Identity`` of an initializer is bypassed (its consumers read the initializer); an op of
    :data:`_FOLDED_OPS` whose inputs are all initializers (of :data:`_FOLDED_TYPES`) -- a bias
    reshaped to [1, C, 1, 1], a weight stored as float16 and cast -- becomes the initializer it
    computes (``onnx.reference.ReferenceEvaluator``). Values the graph returns as outputs are left as they are, and an ``Identity``
    is kept in a graph with subgraphs (which may read it by name). Returns one note saying what
    was folded, or none."""
    inits = {t.name: t for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    counts = dict.fromkeys(["Constant", "Identity", *sorted(_FOLDED_OPS)], 0)
    # subgraphs (If, Loop) may read a value by name: an Identity is bypassed only without them
    nested = any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node
                 for a in n.attribute)
    keep = []
    rename = {}
    for node in graph.node:
        ins = [rename.get(i, i) for i in node.input]
        if list(node.input) != ins:
            del node.input[:]
            node.input.extend(ins)
        if node.domain not in ("", "ai.onnx") or len(node.output) != 1 or node.output[0] in outputs:
            keep.append(node)
            continue
        out = node.output[0]
        tensor = None
        if node.op_type == "Constant" and len(node.attribute) == 1:
            a = node.attribute[0]
            if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(a.t)
            elif a.name in _CONSTANT_ATTRS:
                v = onnx.helper.get_attribute_value(a)
                tensor = onnx.numpy_helper.from_array(np.asarray(v, _CONSTANT_ATTRS[a.name]))
        elif node.op_type == "Identity" and len(node.input) == 1 and node.input[0] in inits and not nested:
            rename[out] = node.input[0]
            counts["Identity"] += 1
            continue
        elif node.op_type in _FOLDED_OPS and node.input and all(i in inits for i in node.input if i) \
                and all(inits[i].data_type in _FOLDED_TYPES for i in node.input if i) \
                and all(a.name != "to" or a.i in _FOLDED_TYPES for a in node.attribute):
            try:
                from onnx.reference import ReferenceEvaluator

                feeds = {i: onnx.numpy_helper.to_array(inits[i]) for i in node.input if i}
                tensor = onnx.numpy_helper.from_array(np.asarray(ReferenceEvaluator(node).run(None, feeds)[0]))
            except Exception:               # left for discovery to report as it finds it
                tensor = None
        if tensor is None:
            keep.append(node)
            continue
        tensor.name = out
        graph.initializer.append(tensor)
        inits[out] = graph.initializer[-1]
        counts[node.op_type] += 1
    if not any(counts.values()):
        return ()
    del graph.node[:]
    graph.node.extend(keep)
    done = ", ".join(f"{n} {op} node{'s' if n > 1 else ''}" for op, n in counts.items() if n)
    return (f"weights held outside initializers read as initializers ({done} folded)",)


def _name_nodes(graph: onnx.GraphProto) -> None:
    """Give every unnamed node of the main graph a name, in place: ``<op>_<position>``
    (``_<k>`` added where taken), the same on every load, so that site names, stores and plans
    of a model whose exporter named no node agree between runs."""
    used = {n.name for n in graph.node if n.name}
    for i, node in enumerate(graph.node):
        if not node.name:
            name, k = f"{node.op_type}_{i}", 1
            while name in used:
                name, k = f"{node.op_type}_{i}_{k}", k + 1
            node.name = name
            used.add(name)


def _tensor_outputs(proto: onnx.ModelProto, path) -> tuple:
    """Make every graph output a tensor, in place; returns the notes that say what was done.

    A ``ZipMap`` output (scikit-learn classifiers converted by ``skl2onnx``: a sequence of
    maps {class: probability}) is replaced by the float tensor ``[N, classes]`` it is built
    from, under that tensor's name; its class labels are recorded in the model's metadata
    (``infoprobe.class_labels``) when they are not 0 .. classes - 1. Other outputs that are not
    tensors (sequences, maps, optionals) are left out of the graph; nothing infoprobe reads
    needs them.

    Raises
    ------
    ModelError
        No output is left that is a tensor.
    """
    graph, notes = proto.graph, []
    producer = {o: n for n in graph.node for o in n.output}
    keep = []
    for out in graph.output:
        if out.type.HasField("tensor_type"):
            keep.append(out)
            continue
        kind = out.type.WhichOneof("value") or "unknown"
        node = producer.get(out.name)
        if node is not None and node.op_type == "ZipMap" and node.input:
            src = node.input[0]
            n_classes = next((len(a.ints) or len(a.strings) for a in node.attribute
                              if a.name in ("classlabels_int64s", "classlabels_strings")), None)
            info = onnx.helper.make_tensor_value_info(src, onnx.TensorProto.FLOAT, [None, n_classes])
            for a in node.attribute:
                if a.name == "classlabels_int64s" and list(a.ints) != list(range(len(a.ints))):
                    entry = proto.metadata_props.add()
                    entry.key, entry.value = CLASS_LABELS_KEY, json.dumps([int(v) for v in a.ints])
            graph.node.remove(node)
            if all(o.name != src for o in keep) and all(o.name != src for o in graph.output):
                keep.append(info)
            notes.append(f"output {out.name!r} (ZipMap: a sequence of maps) is read as the tensor {src!r} it is "
                         "built from")
        else:
            notes.append(f"output {out.name!r} is a {kind.replace('_type', '')}, not a tensor: left out")
    if not keep:
        raise ModelError(f"{path} has no output that is a tensor")
    if len(keep) != len(graph.output) or any(a is not b for a, b in zip(keep, graph.output)):
        del graph.output[:]
        graph.output.extend(keep)
    return tuple(notes)


def _convert_opset(proto: onnx.ModelProto, opset: int, path) -> onnx.ModelProto:
    """``proto`` converted to opset :data:`MIN_OPSET` by ``onnx.version_converter``.

    Raises
    ------
    ModelError
        The converter fails (an op it cannot adapt), with its reason.
    """
    from onnx import version_converter

    try:
        converted = version_converter.convert_version(proto, MIN_OPSET)
    except Exception as exc:
        raise ModelError(f"{path} uses default-domain opset {opset}; infoprobe needs opset >= {MIN_OPSET} and "
                         f"onnx.version_converter could not convert it: {one_line(exc)}") from None
    return converted


def load_model(path: str | os.PathLike, *, max_bytes: int = DEFAULT_MAX_BYTES,
               check: bool = True, sites=None, select=None, input_shapes=None, output=None) -> LoadedModel:
    """Load an untrusted ONNX model safely (:func:`load_onnx`) and discover its unit sites.

    Parameters
    ----------
    path, max_bytes, check
        As :func:`load_onnx`.
    sites : list of str, optional
        Further values to take as sites, each ``NAME[:unit_axis]`` (unit axis of the
        per-sample shape: 0 for channels first, the last for tokens x units; required for a
        per-sample rank of 2). Default: those of the enclosing :func:`discovery`, else none.
    select : list of str, optional
        Glob patterns (``fnmatch``): keep only the sites whose name matches one (and the
        ``sites`` named); the others are listed in ``LoadedModel.skipped``. Default: those of
        :func:`discovery`, else all.
    input_shapes : dict, optional
        Per-sample shapes of the data (``{input name: shape}``, or ``{None: shape}`` for a
        model with one input): symbolic input dimensions (a CNN exported with dynamic H and
        W) are set from them, so that shape inference finds every site's shape; said in
        ``LoadedModel.notes``. Default: those of :func:`discovery` (the CLI records the
        data's shapes there), else none.
    output : str, optional
        The graph output whose values are the class logits (``--output``); default: that of
        :func:`discovery`, else the first output.

    Returns
    -------
    LoadedModel

    Raises
    ------
    ModelError
        As :func:`load_onnx`; also when no unit layer is found or the graph cannot be
        interpreted; a ``sites`` value that does not exist or has no unit axis; a ``select``
        that matches no site.
    UnsafeModelError
        As :func:`load_onnx`.
    """
    ctx = _DISCOVERY.get() or {"sites": (), "select": None, "input_shapes": {}}
    sites = ctx["sites"] if sites is None else sites
    select = ctx["select"] if select is None else select
    input_shapes = ctx["input_shapes"] if input_shapes is None else input_shapes
    output = ctx.get("output") if output is None else output
    f = load_onnx(path, max_bytes=max_bytes, check=check)
    if input_shapes:
        fixed = _fix_input_dims(f.proto, input_shapes)
        if fixed:
            f.notes = (*f.notes, *fixed)
            f.__dict__.pop("runtime_sizes", None)
    try:
        model = f.ir()
    except Exception as exc:
        raise ModelError(f"cannot read {path}: {type(exc).__name__}: {one_line(exc)}") from None
    try:
        lm = _discover(model, f, max_bytes, sites=sites, select=select, output=output)
        lm.recipe = {"path": str(Path(path).resolve()), "max_bytes": max_bytes, "check": check, "sites": tuple(sites),
                     "select": select, "input_shapes": dict(input_shapes), "output": output}
        if ctx.get("say") is not None and lm.sha256 not in ctx["said"]:
            ctx["said"].add(lm.sha256)
            if lm.output_choice["others"] and not lm.output_choice["problem"]:
                ctx["say"](f"{lm.path.name}: {lm.output_line}")
            if lm.padding is not None:      # which tokens every token mean leaves out
                ctx["say"](f"{lm.path.name}: {padding_line(lm.padding)}")
        return lm
    except ModelError:
        raise
    except Exception as exc:  # a graph the checker accepts but discovery cannot follow: one line
        raise ModelError(f"cannot interpret the graph of {path}: {type(exc).__name__}: {one_line(exc)}") from None


# ----------------------------------------------------------------------------- discovery

def _const(value) -> np.ndarray | None:
    """Constant content of an ONNX value (initializer, ``Constant`` node, or ``DequantizeLinear``
    of constants: the dequantized weights of a QDQ model), else None."""
    if value is None:
        return None
    if value.const_value is not None and not value.is_graph_input():
        return np.asarray(value.const_value.numpy())
    prod = value.producer()
    if prod is not None and prod.op_type == "Constant" and "value" in prod.attributes:
        return np.asarray(prod.attributes["value"].as_tensor().numpy())
    if prod is None or prod.domain not in ("", "ai.onnx"):
        return None
    if prod.op_type == "DequantizeLinear":
        return _dequantize(prod)
    if prod.op_type in _FOLDED and prod.inputs and all(i is None or _const(i) is not None for i in prod.inputs):
        return _fold(prod)
    return None


#: Shape-only ops whose output is computed from constant inputs by :func:`_const` (exporters
#: write a conv's bias as ``Reshape(bias, [1, C, 1, 1])``, weights as ``Cast`` of half floats).
_FOLDED = {"Reshape", "Unsqueeze", "Squeeze", "Cast", "Identity", "Flatten", "Transpose"}


def _fold(node) -> np.ndarray | None:
    """NumPy value of a :data:`_FOLDED` op of constants; None when it cannot be computed here."""
    x = _const(node.inputs[0])
    op = node.op_type
    try:
        if op == "Identity":
            return x
        if op == "Cast":
            return x.astype(ir.DataType(_attr(node, "to", 1)).numpy())
        if op == "Transpose":
            perm = _attr(node, "perm", None)
            return np.transpose(x, perm)
        if op == "Flatten":
            axis = int(_attr(node, "axis", 1)) % max(1, x.ndim)
            return x.reshape(int(np.prod(x.shape[:axis])), -1)
        axes = _const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] is not None else None
        axes = [int(a) for a in np.ravel(axes)] if axes is not None else list(_attr(node, "axes", []) or [])
        if op == "Reshape":
            shape = [int(d) for d in np.ravel(_const(node.inputs[1]))]
            shape = [x.shape[i] if d == 0 and not _attr(node, "allowzero", 0) else d for i, d in enumerate(shape)]
            return x.reshape(shape)
        if op == "Unsqueeze":
            for a in sorted(a % (x.ndim + len(axes)) for a in axes):
                x = np.expand_dims(x, a)
            return x
        if op == "Squeeze":
            return np.squeeze(x, axis=tuple(axes)) if axes else np.squeeze(x)
    except Exception:
        return None
    return None


def _dequantize(node) -> np.ndarray | None:
    """``(x - zero_point) * scale`` of a ``DequantizeLinear`` whose inputs are all constant
    (per-tensor, or per-axis along ``axis``); None otherwise (blocked quantization included)."""
    if "block_size" in node.attributes and _attr(node, "block_size", 0):
        return None
    x = _const(node.inputs[0])
    scale = _const(node.inputs[1]) if len(node.inputs) > 1 else None
    zp = _const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] is not None else None
    if x is None or scale is None or (len(node.inputs) > 2 and node.inputs[2] is not None and zp is None):
        return None
    return _dequantized(x, scale, zp, int(_attr(node, "axis", 1)))


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


def _dequantized(q, scale, zero_point, axis: int) -> np.ndarray:
    """``(q - zero_point) * scale`` of constant values (per tensor, or per slice along ``axis``)."""
    q = np.asarray(q).astype(np.float64)

    def per(v):
        v = np.asarray(0.0 if v is None else v, np.float64)
        if v.size == 1:
            return v.reshape(())
        shape = [1] * q.ndim
        shape[axis % q.ndim] = -1
        return v.reshape(shape)

    return ((q - per(zero_point)) * per(scale)).astype(np.float32)


def _const_input(node, i):
    return _const(node.inputs[i]) if len(node.inputs) > i and node.inputs[i] is not None else None


def _integer_scale(node):
    """The weight scale of a dynamically quantized ``MatMulInteger``/``ConvInteger``: its output
    is ``Cast`` to float and multiplied by ``input_scale * weight_scale``; ``(Cast, Mul, weight
    scale)``, or raises :class:`_Unsupported`."""
    uses = list(node.outputs[0].uses())
    cast = uses[0][0] if len(uses) == 1 and uses[0][0].op_type == "Cast" else None
    cuses = list(cast.outputs[0].uses()) if cast is not None else []
    mul = cuses[0][0] if len(cuses) == 1 and cuses[0][0].op_type == "Mul" else None
    if mul is None:
        raise _Unsupported(f"{node.op_type} not followed by Cast and Mul (its dequantization)")
    factor = mul.inputs[1 - cuses[0][1]]
    prod = factor.producer() if factor is not None else None
    consts = [_const(i) for i in prod.inputs] if prod is not None and prod.op_type == "Mul" else []
    scales = [c for c in consts if c is not None]
    if len(consts) != 2 or len(scales) != 1:
        raise _Unsupported(f"{node.op_type}'s output scale is not input scale x constant weight scale")
    return cast, mul, scales[0]


def _quantized_params(nodes, units) -> tuple[np.ndarray, np.ndarray]:
    """Float weight [U, fan_in] or [C_out, C_in/groups, kh, kw] and bias [U] of a site made by
    an integer op (``QLinearConv``, ``QLinearMatMul``, ``QGemm``, ``MatMulInteger``,
    ``ConvInteger``), dequantized: ``w = (w_q - w_zero_point) * w_scale`` (per output unit
    where the scale is per channel), the int32 bias times ``x_scale * w_scale`` (the
    quantization of ONNX's ``QLinearConv`` and onnxruntime's ``QGemm``)."""
    first = nodes[0]
    op = first.op_type
    if op in ("QLinearConv", "ConvInteger"):
        zp = 5 if op == "QLinearConv" else 3
        scale = _const_input(first, 4) if op == "QLinearConv" else _integer_scale(first)[2]
        w = _dequantized(_const_input(first, 3 if op == "QLinearConv" else 1), scale, _const_input(first, zp), 0)
    elif op == "QGemm":
        trans = _attr(first, "transB", 0)
        scale = _const_input(first, 4)
        w = _dequantized(_const_input(first, 3), scale, _const_input(first, 5), 0 if trans else 1)
        w = (w if trans else w.T) * np.float32(_attr(first, "alpha", 1.0))
    else:                                  # QLinearMatMul, MatMulInteger: [K, N] -> [N, K]
        scale = _const_input(first, 4) if op == "QLinearMatMul" else _integer_scale(first)[2]
        w = _dequantized(_const_input(first, 3 if op == "QLinearMatMul" else 1), scale,
                         _const_input(first, 5 if op == "QLinearMatMul" else 3), 1).T
    bias = np.zeros(units, np.float64)
    b = {"QLinearConv": 8, "QGemm": 6}.get(op)
    if b is not None and _const_input(first, b) is not None:
        x_scale = _const_input(first, 1)
        if x_scale is None:
            raise _Unsupported(f"{op} with a non-constant input scale")
        bias = _const_input(first, b).astype(np.float64).reshape(-1) * float(np.ravel(x_scale)[0]) * \
            np.broadcast_to(np.asarray(scale, np.float64).reshape(-1), (units,))
    if op in ("MatMulInteger", "ConvInteger") and len(nodes) > 3 and nodes[3].op_type == "Add" \
            and nodes[2].outputs[0] in nodes[3].inputs:   # the float bias after Cast and the scale Mul
        add, scaled = nodes[3], nodes[2].outputs[0]
        bias = bias + _bias_vector(_const(add.inputs[1] if add.inputs[0] is scaled else add.inputs[0]), units, "Add")
    return np.ascontiguousarray(w, np.float32), bias.astype(np.float32)


def _layer_params(nodes, units) -> tuple[np.ndarray, np.ndarray]:
    """Weight and bias of a unit layer from its ONNX nodes (see LoadedModel.weights)."""
    first = nodes[0]
    if first.op_type in INTEGER_AFFINE:
        return _quantized_params(nodes, units)
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
    # Conv (+ Add of a per-channel bias) (+ BatchNormalization)
    w = _const(first.inputs[1]).astype(np.float32)
    bias = _bias_vector(_const(first.inputs[2]) if len(first.inputs) > 2 and first.inputs[2] is not None else None,
                        units, "Conv")
    rest = list(nodes[1:])
    if rest and rest[0].op_type == "Add":
        add = rest.pop(0)
        other = _const(add.inputs[1] if add.inputs[0] is first.outputs[0] else add.inputs[0])
        if other is not None and other.size > units:   # per channel and position: the interior value
            other = np.median(np.asarray(other, np.float64).reshape(units, -1), axis=1)
        bias = bias + _bias_vector(other, units, "Add")
    if rest and rest[0].op_type == "BatchNormalization":
        bn = rest[0]
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


#: Element-wise ops that exported activations are built from (ReLU6 as ``Clip``, SiLU as
#: ``x * Sigmoid(x)``, GELU as ``0.5 x (1 + Erf(x / sqrt 2))``, HardSwish as ``x * HardSigmoid(x)``,
#: ...): a chain of them with scalar constants after an affine op is recognised by its values
#: (:func:`_recognise_activation`), not by its spelling.
_ELEMENTWISE = {"Mul", "Add", "Sub", "Div", "Erf", "Tanh", "Sigmoid", "Relu", "Clip", "Min", "Max", "Neg", "Exp",
                "Log", "Softplus", "HardSigmoid", "HardSwish", "Pow", "Sqrt", "Abs", "Elu", "Selu", "LeakyRelu",
                "Gelu", "Mish", "Softsign", "Celu", "Reciprocal"}


def _curves() -> dict:
    """Activations recognised by their values: name -> NumPy function (float64)."""
    from scipy import special

    hsig = lambda z: np.clip(z / 6.0 + 0.5, 0.0, 1.0)  # noqa: E731  (PyTorch's hardsigmoid)
    return {
        "relu": lambda z: np.maximum(z, 0.0), "relu6": lambda z: np.clip(z, 0.0, 6.0),
        "sigmoid": special.expit, "tanh": np.tanh, "silu": lambda z: z * special.expit(z),
        "gelu": lambda z: 0.5 * z * (1.0 + special.erf(z / np.sqrt(2.0))),
        "gelu_tanh": lambda z: 0.5 * z * (1.0 + np.tanh(np.sqrt(2.0 / np.pi) * (z + 0.044715 * z ** 3))),
        "hardsigmoid": hsig, "hardswish": lambda z: z * hsig(z),
        "mish": lambda z: z * np.tanh(np.logaddexp(0.0, z)), "softplus": lambda z: np.logaddexp(0.0, z),
        "elu": lambda z: np.where(z >= 0, z, np.expm1(z)), "softsign": lambda z: z / (1.0 + np.abs(z)),
        "selu": lambda z: 1.0507009873554805 * np.where(z >= 0, z, 1.6732632423543772 * np.expm1(z)),
        "leakyrelu": lambda z: np.where(z >= 0, z, 0.01 * z),
    }


def _recognise_activation(pre, graph_outputs: set, opset: int):
    """The activation built from element-wise ops after ``pre``: ``(nodes, post value, name)``,
    ``(nodes, None, description)`` when they form a non-linearity none of :func:`_curves`
    matches, or None when ``pre`` is not followed by such a chain.

    The chain is every element-wise consumer reachable from ``pre`` whose other inputs are
    scalar constants (at most 12 nodes). A candidate output is one through which every use of
    ``pre`` passes; each is evaluated with onnxruntime on 1,601 points of [-8, 8] and compared
    with every curve (within 2e-5 + 1e-5 |f|); the largest matching candidate is the site.
    """
    import onnxruntime as ort

    closure, values = [], {id(pre): pre}
    changed = True
    while changed and len(closure) < 12:
        changed = False
        for v in list(values.values()):
            for node, _ in v.uses():
                if node in closure or node.op_type not in _ELEMENTWISE or node.domain not in ("", "ai.onnx"):
                    continue
                ok = all(i is None or id(i) in values or getattr(_const(i), "size", 0) == 1 for i in node.inputs)
                if ok and len(node.outputs) == 1:
                    closure.append(node)
                    values[id(node.outputs[0])] = node.outputs[0]
                    changed = True
    if not closure:
        return None
    z = np.linspace(-8.0, 8.0, 1601)
    curves = {k: fn(z) for k, fn in _curves().items()}
    best, unrecognised = None, None
    for end in closure:
        v = end.outputs[0]
        members, stack = [], [end]            # the nodes v depends on within the chain
        while stack:
            n = stack.pop()
            if n in members:
                continue
            members.append(n)
            stack += [i.producer() for i in n.inputs if i is not None and i.producer() in closure]
        inner = [o for n in members for o in n.outputs if o is not v]
        if any(u not in members for u, _ in pre.uses()) or any(
                o.name in graph_outputs or any(u not in members for u, _ in o.uses()) for o in inner):
            continue                           # some use of pre, or of an inner value, bypasses v
        order = [n for n in closure if n in members]
        g = onnx.helper.make_graph(
            [ir.serde.serialize_node(n) for n in order], "activation",
            [onnx.helper.make_tensor_value_info(pre.name, onnx.TensorProto.FLOAT, [len(z)])],
            [onnx.helper.make_tensor_value_info(v.name, onnx.TensorProto.FLOAT, None)],
            [onnx.numpy_helper.from_array(_const(i), i.name)
             for n in order for i in n.inputs if i is not None and id(i) not in values])
        m = onnx.helper.make_model(g, opset_imports=[onnx.helper.make_opsetid("", opset)])
        m.ir_version = 8
        try:
            sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            f = sess.run(None, {pre.name: z.astype(np.float32)})[0].astype(np.float64)
        except Exception:
            continue
        if f.shape != z.shape:
            continue
        name = next((k for k, c in curves.items() if np.all(np.abs(f - c) <= 2e-5 + 1e-5 * np.abs(c))), None)
        if name is not None and (best is None or len(members) > len(best[0])):
            best = (order, v, name)
        elif name is None and unrecognised is None and any(n.op_type not in ("Mul", "Add", "Sub", "Div", "Neg")
                                                              for n in members):
            unrecognised = (order, None, "+".join(n.op_type for n in order))
    return best or unrecognised


#: Integer ops read as affine sites (dequantized weights, :func:`_quantized_params`).
INTEGER_AFFINE = {"QLinearConv", "QLinearMatMul", "QGemm", "MatMulInteger", "ConvInteger"}


def _integer_affine(node):
    """:func:`_affine` for the integer ops of quantized models: ``QLinearConv``,
    ``QLinearMatMul`` and onnxruntime's ``QGemm`` (static QOperator: the site is their
    quantized output), ``MatMulInteger`` and ``ConvInteger`` (dynamic quantization: the site is
    the float value after their ``Cast``, scale ``Mul`` and bias ``Add``)."""
    op = node.op_type
    w_index = 3 if op in ("QLinearConv", "QLinearMatMul", "QGemm") else 1
    w = _const_input(node, w_index)
    if w is None:
        raise _Unsupported(f"{op} with non-constant weights")
    members = [node]
    if op in ("MatMulInteger", "ConvInteger"):
        cast, mul, _ = _integer_scale(node)
        members += [cast, mul]
        uses = list(mul.outputs[0].uses())
        conv = op == "ConvInteger"
        if len(uses) == 1 and uses[0][0].op_type == "Add" and not mul.outputs[0].is_graph_output():
            c = _const(uses[0][0].inputs[1 - uses[0][1]])
            units = w.shape[0] if conv else w.shape[-1]
            lead = (1, units) + (1,) * (w.ndim - 2) if conv else (units,)
            if c is not None and c.size in (1, units) and (
                    c.size == 1 or (np.broadcast_shapes(c.shape, lead) == lead if conv else c.shape[-1] == units)):
                members.append(uses[0][0])
    name = op + ("+Add" if members[-1].op_type == "Add" else "")   # Cast and Mul dequantize
    if op in ("QLinearConv", "ConvInteger"):
        if w.ndim not in (3, 4):
            raise _Unsupported(f"{op} with a {w.ndim - 2}-D kernel (1-D and 2-D are supported)")
        return members, name, w.shape[0], int(np.prod(w.shape[1:]))
    if w.ndim != 2:
        raise _Unsupported(f"{op} with a weight of rank {w.ndim}")
    if op == "QGemm":
        if _attr(node, "transA", 0):
            raise _Unsupported("QGemm with transA=1")
        trans = _attr(node, "transB", 0)
        return members, op, w.shape[0] if trans else w.shape[1], w.shape[1] if trans else w.shape[0]
    return members, name, w.shape[1], w.shape[0]


def _quantization(value):
    """``(scale, zero point)`` values of an integer value made by a QOperator op
    (:data:`_QUANTIZED_OUTPUT`), else None."""
    prod = value.producer() if value is not None else None
    idx = _QUANTIZED_OUTPUT.get(prod.op_type) if prod is not None else None
    if idx is None or prod.domain not in ("", "ai.onnx", "com.microsoft") or len(prod.inputs) <= idx[0] \
            or prod.inputs[idx[0]] is None:
        return None
    zp = prod.inputs[idx[1]] if len(prod.inputs) > idx[1] else None
    return (prod.inputs[idx[0]], zp) if zp is not None else None


def _affine(node):
    """``(members, op, units, fan_in)`` of a unit layer starting at ``node`` (a ``Gemm``,
    ``MatMul`` or ``Conv`` with constant weights, taking a following bias ``Add`` or
    ``BatchNormalization``; or an integer op of a quantized model, :func:`_integer_affine`);
    None when ``node`` is no such op; raises :class:`_Unsupported` for a weighted op infoprobe
    cannot read."""
    op = node.op_type
    if op in INTEGER_AFFINE and node.domain in ("", "ai.onnx", "com.microsoft"):
        return _integer_affine(node)
    if node.domain not in ("", "ai.onnx"):
        if op in _WEIGHTED_UNSUPPORTED:
            raise _Unsupported(f"{op} is not a unit layer infoprobe can analyse")
        return None
    if op == "Gemm":
        wb = _const(node.inputs[1])
        if wb is None:
            raise _Unsupported("Gemm with non-constant weights")
        if _attr(node, "transA", 0):
            raise _Unsupported("Gemm with transA=1")
        units = wb.shape[0] if _attr(node, "transB", 0) else wb.shape[1]
        fan_in = wb.shape[1] if _attr(node, "transB", 0) else wb.shape[0]
        return [node], "Gemm", units, fan_in
    if op == "MatMul":
        w = _const(node.inputs[1])
        if w is None or _const(node.inputs[0]) is not None:
            return None  # a product of two activations (e.g. attention scores): not a unit layer
        if w.ndim != 2:
            raise _Unsupported(f"MatMul with a weight of rank {w.ndim}")
        units, fan_in = w.shape[1], w.shape[0]
        members, opname = [node], "MatMul"
        uses = list(node.outputs[0].uses())
        if len(uses) == 1 and uses[0][0].op_type == "Add" and not node.outputs[0].is_graph_output():
            add = uses[0][0]
            c = _const(add.inputs[1 - uses[0][1]])
            if c is not None and (c.size == 1 or (c.size == units and c.shape[-1] == units)):   # on the unit axis
                members.append(add)
                opname = "MatMul+Add"
        return members, opname, units, fan_in
    if op == "Conv":
        w = _const(node.inputs[1])
        if w is None:
            raise _Unsupported("Conv with non-constant weights")
        if w.ndim not in (3, 4):
            raise _Unsupported(f"Conv with a {w.ndim - 2}-D kernel (1-D and 2-D are supported)")
        members, opname = [node], "Conv"
        uses = list(node.outputs[0].uses())
        if len(uses) == 1 and uses[0][0].op_type == "Add" and not node.outputs[0].is_graph_output():
            add = uses[0][0]                   # a bias added after the conv (Paddle, some exporters)
            c = _const(add.inputs[1 - uses[0][1]])
            per_channel = (1, w.shape[0]) + (1,) * (w.ndim - 2)   # [1, C, 1, 1]: one value per channel
            out = _dims(node.outputs[0])
            per_position = (1, w.shape[0], *out[1:]) if out is not None and _known(out) else None
            try:
                fits = c is not None and c.size in (1, w.shape[0]) and c.ndim <= w.ndim and \
                    np.broadcast_shapes(c.shape, per_channel) == per_channel
            except ValueError:        # a constant that does not broadcast with the output: not a bias
                fits = False
            if fits:
                members.append(add)
                opname = "Conv+Add"
                uses = list(add.outputs[0].uses())
            elif c is not None and per_position is not None and c.shape in (per_position, per_position[1:]):
                members.append(add)     # a bias per channel and position (a pruned padded conv's border correction)
                opname = "Conv+Add(positions)"
                uses = list(add.outputs[0].uses())
        last = members[-1].outputs[0]
        if (len(uses) == 1 and uses[0][0].op_type == "BatchNormalization"
                and uses[0][1] == 0 and not last.is_graph_output()):
            bn = uses[0][0]
            if len([o for o in bn.outputs if o is not None and o.uses()]) <= 1 and all(
                    _const(v) is not None for v in bn.inputs[1:5]):
                members.append(bn)
                opname += "+BatchNormalization"
        return members, opname, w.shape[0], int(np.prod(w.shape[1:]))
    if op in _WEIGHTED_UNSUPPORTED:
        raise _Unsupported(f"{op} is not a unit layer infoprobe can analyse")
    return None


def _site_kind(dims: tuple, unit_axis: int) -> str:
    """``dense`` (rank 1), ``token`` (units on the last of 2+ axes) or ``conv`` (units first)."""
    if len(dims) == 1:
        return "dense"
    return "token" if unit_axis == len(dims) - 1 else "conv"


def _known(dims) -> bool:
    return dims is not None and len(dims) > 0 and all(isinstance(d, int) for d in dims)


def _heads_split(value, dims) -> bool:
    """Every use of ``value`` reshapes it to a higher rank (the query, key and value
    projections of attention, split into heads)."""
    uses = list(value.uses())
    if not uses or value.is_graph_output():
        return False
    for node, _ in uses:
        if node.op_type != "Reshape":
            return False
        out = _dims(node.outputs[0])
        shape = _const(node.inputs[1]) if len(node.inputs) > 1 else None
        rank = len(out) if out is not None else (len(shape) - 1 if shape is not None else None)
        if rank is None or rank <= len(dims):
            return False
    return True


def _attention_heads(value):
    """The head count when ``value`` is attention's heads concatenated (``Reshape`` of a
    ``Transpose`` of ``MatMul(probabilities, V)``), 0 when the count is unknown; None when
    ``value`` is not such a value."""
    r = value.producer()
    if r is None or r.op_type != "Reshape":
        return None
    t = r.inputs[0].producer() if r.inputs[0] is not None else None
    if t is None or t.op_type != "Transpose":
        return None
    m = t.inputs[0].producer() if t.inputs[0] is not None else None
    if m is None or m.op_type != "MatMul" or any(_const(i) is not None for i in m.inputs):
        return None
    dims = _dims(m.outputs[0])
    return int(dims[0]) if dims is not None and len(dims) == 3 and isinstance(dims[0], int) else 0


def _fake_quantized(value):
    """``(QuantizeLinear, DequantizeLinear)`` when ``value``'s only use is quantized and its
    only use dequantized again (the fake quantization between ops of a QDQ model), else None."""
    uses = list(value.uses())
    if len(uses) != 1 or uses[0][0].op_type != "QuantizeLinear" or uses[0][1] != 0 or value.is_graph_output():
        return None
    q = uses[0][0]
    quses = list(q.outputs[0].uses())
    if len(quses) != 1 or quses[0][0].op_type != "DequantizeLinear" or q.outputs[0].is_graph_output():
        return None
    return q, quses[0][0]


def _elementwise_of(value, source, steps: int = 8) -> bool:
    """Whether ``value`` is computed from ``source`` by element-wise ops alone (within ``steps``
    ops): the two inputs of such an ``Add`` are one value, not two branches."""
    frontier = [value]
    for _ in range(steps):
        nxt = []
        for v in frontier:
            if v is source:
                return True
            p = v.producer() if v is not None else None
            if p is not None and p.op_type in _ELEMENTWISE:
                nxt += [i for i in p.inputs if i is not None and _const(i) is None]
        if not nxt:
            return False
        frontier = nxt
    return any(v is source for v in frontier)


def _summands(node):
    """The two summands of an ``Add`` (or a QOperator model's ``QLinearAdd``), else None."""
    if node.op_type == "Add" and node.domain in ("", "ai.onnx") and len(node.inputs) == 2:
        summands = list(node.inputs)
    elif node.op_type == "QLinearAdd" and node.domain == "com.microsoft" and len(node.inputs) >= 6:
        summands = [node.inputs[0], node.inputs[3]]
    else:
        return None
    return summands if all(i is not None for i in summands) else None


def shapes_by_running(model: ir.Model) -> list:
    """Learn the shapes that shape inference could not (ops of other domains, such as the
    ``com.microsoft`` ops of onnxruntime's quantized models): run the model with onnxruntime on
    zero-valued inputs of batch 1 and 2, and set each unknown value's shape (the dims that
    change with the batch are symbolic) and type. Needs every input's per-sample shape; does
    nothing when it is unknown or the run fails. Memory: every unknown value for three samples
    (the model's per-sample values, as :attr:`OnnxFile.runtime_sizes` counts them, three
    times). Returns a note, or nothing."""
    import onnxruntime as ort

    missing = [v for n in model.graph for v in n.outputs if v is not None and v.name and v.shape is None]
    data = [v for v in model.graph.inputs if not v.is_initializer()]
    if not missing or any(v.shape is None or v.dtype is None or
                          not all(isinstance(d, int) for d in v.shape.dims[1:]) for v in data):
        return []
    proto = ir.to_proto(model)
    del proto.graph.output[:]
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(v.name) for v in missing)
    try:
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        runs = [sess.run(None, {v.name: np.zeros((b, *v.shape.dims[1:]), v.dtype.numpy()) for v in data})
                for b in (1, 2)]
    except Exception:          # shapes stay unknown; the sites that need them say so
        return []
    for v, a, b in zip(missing, *runs):
        a, b = np.asarray(a), np.asarray(b)
        if a.ndim != b.ndim:
            continue
        v.shape = ir.Shape([ir.SymbolicDim(f"{v.name}_d{i}") if x != y else int(x)
                            for i, (x, y) in enumerate(zip(a.shape, b.shape))])
        if v.dtype is None:
            v.dtype = ir.DataType.from_numpy(a.dtype)
    return [f"shapes of {len(missing)} values that shape inference could not follow were read from an "
            "onnxruntime run on zero-valued inputs"]


def _parse_site(spec: str) -> tuple:
    """``NAME[:unit_axis]`` -> ``(name, axis or None)``."""
    name, sep, axis = spec.rpartition(":")
    if sep and axis.lstrip("-").isdigit() and name:
        return name, int(axis)
    return spec, None


#: Sites named and selected, and per-sample input shapes, for every :func:`load_model` call of
#: a context (see :func:`discovery`).
_DISCOVERY = contextvars.ContextVar("infoprobe_discovery", default=None)


@contextlib.contextmanager
def discovery(sites=(), select=None, input_shapes=None, output=None, say=None):
    """Within the block, :func:`load_model` also takes the values ``sites`` as unit sites,
    keeps only the sites matching ``select`` (the CLI's ``--site`` and ``--sites``), takes the
    graph output ``output`` as the class logits (``--output``) and reads
    symbolic input dimensions from ``input_shapes`` (see :func:`load_model`; updated by
    :func:`hint_input_shapes`); the arguments of a :func:`load_model` call win over these.
    ``say`` (a callable taking one line) is told, once per model file, which output is taken
    as the class scores where that was a choice among several (:attr:`LoadedModel.output_line`;
    an output that is not class scores is refused, with its reason, by the analyses that need
    them), and which tokens are padding where the graph computes its own mask
    (:func:`padding_rule`)."""
    token = _DISCOVERY.set({"sites": tuple(sites or ()), "select": list(select) if select else None,
                            "input_shapes": dict(input_shapes or {}), "output": output, "say": say, "said": set()})
    try:
        yield
    finally:
        _DISCOVERY.reset(token)


def hint_input_shapes(shapes: dict) -> None:
    """Record per-sample shapes of the data (``{input name or None: shape}``, None for a
    single array) for the models loaded later in the enclosing :func:`discovery` block; no
    effect outside one."""
    ctx = _DISCOVERY.get()
    if ctx is not None:
        ctx["input_shapes"].update(shapes)


def _reload_model(recipe: dict, sha256: str) -> LoadedModel:
    """:func:`load_model` again from a recipe, checking the file is the one first read.

    Raises
    ------
    ModelError
        The file changed (another SHA-256); as :func:`load_model`.
    """
    lm = load_model(**recipe)
    if lm.sha256 != sha256:
        raise ModelError(f"{recipe['path']} changed since it was read (SHA-256 {sha256[:12]}… is now "
                         f"{lm.sha256[:12]}…); every worker must read the same model")
    return lm


def _fix_input_dims(proto: onnx.ModelProto, shapes: dict) -> list:
    """Set the symbolic non-batch dimensions of the data inputs from ``shapes`` (per-sample
    shapes by input name, or under None for a model with one input), aligned on the last
    axes (data ``[H, W]`` for an input ``[1, H, W]``, as the samples are reshaped), so that shape inference can follow a model exported with dynamic H and W. Returns what
    was fixed, one line each."""
    weights = {t.name for t in proto.graph.initializer}
    inputs = [v for v in proto.graph.input if v.name not in weights]
    fixed = []
    for v in inputs:
        shape = shapes.get(v.name, shapes.get(None) if len(inputs) == 1 else None)
        per = list(v.type.tensor_type.shape.dim)[1:]
        if shape is None or not per or len(shape) > len(per):
            continue
        extra = len(per) - len(shape)     # data [H, W] for an input [1, H, W]: leading dims must be static
        if any(not d.HasField("dim_value") for d in per[:extra]):
            continue
        if any(not d.HasField("dim_value") for d in per[extra:]):
            for d, n in zip(per[extra:], shape):
                if not d.HasField("dim_value"):
                    d.Clear()
                    d.dim_value = int(n)
            fixed.append(f"input {v.name!r}: symbolic dimensions read from the data, per-sample shape "
                         f"{[d.dim_value for d in per]}")
    return fixed


def _discover(model: ir.Model, source: OnnxFile, max_bytes: int, sites=(), select=None,
              output=None) -> LoadedModel:
    path, sha = source.path, source.sha256
    graph = model.graph
    try:
        model = ir_passes.ShapeInferencePass()(model).model
    except Exception:  # shapes are a convenience for discovery; layers without one are reported
        pass
    graph_outputs = {v.name for v in graph.outputs}
    opset = model.opset_imports.get("", MIN_OPSET)
    found, unsupported, skipped, used_names, claimed = [], [], [], set(), set()
    notes = list(source.notes) + shapes_by_running(model)
    quantized_sites, fused = [], []
    site_of = {}            # id(value) -> found site, for the unit axis of residual sums
    order = {id(n): i for i, n in enumerate(graph)}

    def upstream_axis(values, dims):
        stack, seen = list(values), set()
        while stack:
            v = stack.pop()
            if v is None or id(v) in seen:
                continue
            seen.add(id(v))
            if id(v) in site_of and len(site_of[id(v)]["shape"]) == len(dims):
                return site_of[id(v)]["unit_axis"]
            if v.producer() is not None:
                stack.extend(v.producer().inputs)
        return None

    def add_site(node, members, pre, *, op, units, fan_in, dims, unit_axis, found_by, inputs, heads=0,
                 name=None, recognise=True):
        label = node.name or f"{node.op_type}_{len(found)}"
        qdq = _fake_quantized(pre)
        if qdq is not None:       # a QDQ model: the value the next ops read is the dequantized one
            members, pre, op = [*members, *qdq], qdq[1].outputs[0], f"{op}+QDQ"
        post, activation = pre, "none"
        quant = _quantization(pre) if found_by != "user" else None
        if quant is not None:     # a QOperator model: the site's values are the dequantized ones
            zp = _const(quant[1])
            if zp is not None and zp.size == 1 and zp.dtype.kind in "iu" and \
                    int(zp.reshape(-1)[0]) == np.iinfo(zp.dtype).min:
                activation = "relu"   # the output range starts at 0: a ReLU fused into quantization
            uses = list(pre.uses())
            dq = uses[0][0] if len(uses) == 1 and uses[0][0].op_type == "DequantizeLinear" else None
            if dq is not None and not pre.is_graph_output() and list(dq.inputs[1:3]) == list(quant):
                members, pre, op, quant = [*members, dq], dq.outputs[0], f"{op}+DequantizeLinear", None
            post, recognise = pre, recognise and quant is None and activation == "none"
        uses = list(pre.uses())
        if recognise and len(uses) == 1 and uses[0][0].op_type in ACTIVATIONS and pre.name not in graph_outputs \
                and id(uses[0][0]) not in claimed:
            act = uses[0][0]
            members = [*members, act]
            post, activation = act.outputs[0], ACTIVATIONS[act.op_type]
        elif recognise and pre.name not in graph_outputs:
            found_act = _recognise_activation(pre, graph_outputs, opset)
            if found_act is not None and found_act[1] is not None:
                members = [*members, *found_act[0]]
                post, activation = found_act[1], found_act[2]
            elif found_act is not None:
                unsupported.append({"node": label, "op": found_act[2],
                                    "reason": f"a non-linearity ({found_act[2]}) infoprobe does not recognise follows "
                                              "this site; its site is the pre-activation"})
        for m in members:
            claimed.add(id(m))
        site = dict(name=_sanitize(name or node.name or label, used_names), kind=_site_kind(dims, unit_axis),
                    op=op, units=int(units), activation=activation, fan_in=int(fan_in),
                    shape=tuple(int(d) for d in dims), pre=pre, post=post, input=inputs[0], inputs=inputs,
                    nodes=tuple(m.name for m in members), unit_axis=unit_axis, found_by=found_by, heads=heads,
                    order=order.get(id(node), len(order)),
                    quantized=tuple(v.name for v in quant) if quant is not None else ())
        found.append(site)
        site_of[id(pre)] = site_of[id(post)] = site
        if quant is not None or site["op"].endswith("+DequantizeLinear"):
            quantized_sites.append(site["name"])
            if activation == "relu":
                fused.append(site["name"])
        return site

    for node in graph:
        if id(node) in claimed:
            continue
        op = node.op_type
        label = node.name or f"{op}_{len(found)}"
        try:
            summands = _summands(node)
            if summands is not None and all(_const(i) is None for i in summands):
                dims = _dims(node.outputs[0])
                if not (_known(dims) and all(_dims(i) == dims for i in summands) and len(dims) <= 3):
                    continue          # a broadcast sum (an attention mask), not a residual block
                if _elementwise_of(summands[0], summands[1]) or _elementwise_of(summands[1], summands[0]):
                    continue          # x + f(x) inside an activation (GELU's tanh form), not two branches
                axis = upstream_axis(summands, dims)
                axis = axis if axis is not None else (len(dims) - 1 if len(dims) == 2 else 0)
                add_site(node, [node], node.outputs[0], op=op, units=dims[axis], fan_in=0, dims=dims,
                         unit_axis=axis, found_by="residual", inputs=summands)
                continue
            if op == "LayerNormalization" and node.domain in ("", "ai.onnx"):
                dims = _dims(node.outputs[0])
                if not _known(dims):
                    raise _Unsupported("LayerNormalization output shape could not be inferred")
                axis = int(_attr(node, "axis", -1))
                if axis not in (-1, len(dims)):
                    continue          # normalised over several axes: no unit axis
                add_site(node, [node], node.outputs[0], op=op, units=dims[-1], fan_in=0, dims=dims,
                         unit_axis=len(dims) - 1, found_by="layernorm", inputs=[node.inputs[0]])
                continue
            aff = _affine(node)
            if aff is None:
                continue
            members, opname, units, fan_in = aff
            with np.errstate(all="ignore"):
                w_check, b_check = _layer_params(members, units)  # validates bias shapes
            if not (np.isfinite(w_check).all() and np.isfinite(b_check).all()):
                raise _Unsupported("weights or bias that are NaN or infinite (batch norm folded in)")
            pre = members[-1].outputs[0]
            dims = _dims(pre)
            if op in ("Conv", "QLinearConv", "ConvInteger"):
                if not _known(dims):
                    raise _Unsupported("output shape could not be inferred (symbolic input dimensions: "
                                      "--data or inspect --input-shape fixes them)")
                axis = 0
            elif dims is None or not _known(dims):
                if dims is not None and len(dims) > 1:
                    raise _Unsupported("output shape could not be inferred (symbolic input dimensions: "
                                      "--data or inspect --input-shape fixes them)")
                dims, axis = (units,), 0
            else:
                axis = len(dims) - 1
                if len(dims) > 2 or dims[-1] != units:
                    raise _Unsupported(f"output of per-sample shape {list(dims)} (expected [units] or "
                                       "[positions, units])")
            if len(dims) == 2 and axis != 0 and _heads_split(pre, dims):
                skipped.append({"node": label, "op": opname,
                                "reason": "attention projection (query, key or value), split into heads; the heads' "
                                          "output before the output projection is the site"})
                continue
        except _Unsupported as exc:
            unsupported.append({"node": label, "op": op, "reason": str(exc)})
            continue
        heads = _attention_heads(node.inputs[0]) if op == "MatMul" else None
        if heads is not None and id(node.inputs[0]) not in site_of:
            r = node.inputs[0].producer()
            add_site(r, [r], node.inputs[0], op="attention heads", units=fan_in,
                     fan_in=0, dims=dims[:-1] + (fan_in,), unit_axis=axis, found_by="attention",
                     inputs=[r.inputs[0]], heads=heads, name=f"{_sanitize(node.name or label, set())}_heads",
                     recognise=False)
        add_site(node, members, pre, op=opname, units=units, fan_in=fan_in, dims=dims, unit_axis=axis,
                 found_by="affine", inputs=[node.inputs[0]])

    for spec in sites:
        name, axis = _parse_site(spec)
        value = next((o for n in graph for o in n.outputs if o.name == name), None)
        if value is None:
            raise ModelError(f"--site {spec}: the model has no value named {name!r}")
        if id(value) in site_of:
            raise ModelError(f"--site {spec}: {name!r} is already the site {site_of[id(value)]['name']!r}")
        dims = _dims(value)
        if not _known(dims):
            raise ModelError(f"--site {spec}: the per-sample shape of {name!r} could not be inferred")
        if axis is None and len(dims) == 2:
            raise ModelError(f"--site {spec}: {name!r} has per-sample shape {list(dims)}; give its unit axis "
                             f"({name}:0 for channels first, {name}:1 for tokens x units)")
        axis = 0 if axis is None else axis
        if axis not in (0, len(dims) - 1, -1):
            raise ModelError(f"--site {spec}: infoprobe reads units on the first or last axis of {list(dims)}")
        axis %= len(dims)
        prod = value.producer()
        add_site(prod, [], value, op=prod.op_type, units=dims[axis], fan_in=0, dims=dims, unit_axis=axis,
                 found_by="user", inputs=[i for i in prod.inputs if i is not None] or [None], name=name,
                 recognise=False)

    if not found:
        detail = "; ".join(f"{u['node']} ({u['op']}): {u['reason']}" for u in unsupported)
        raise ModelError(f"{path} has no unit layer infoprobe can analyse (Gemm, MatMul+Add or "
                         f"Conv followed by an activation)" + (f"; not interpreted: {detail}" if detail else ""))
    found.sort(key=lambda f: f["order"])
    upstream = _upstream(found)
    downstream = {u for ups in upstream.values() for u in ups}
    outputs = {f["name"] for f in found if f["name"] not in downstream}
    if select:
        keep = [f for f in found if f["found_by"] == "user" or any(fnmatch.fnmatchcase(f["name"], p) for p in select)]
        if not keep:
            raise ModelError(f"--sites {','.join(select)} matches none of the sites: "
                             + ", ".join(f["name"] for f in found))
        left = [f["name"] for f in found if f not in keep]
        if left:
            skipped.append({"node": f"{len(left)} sites", "op": "--sites", "reason": "left out: " + ", ".join(left)})
        found = keep
        upstream = _upstream(found)
    depth = {}

    def _depth(name):
        if name not in depth:
            depth[name] = 1 + max((_depth(u) for u in upstream[name]), default=0)
        return depth[name]

    names = [g["name"] for g in found]
    layers = [UnitLayer(name=f["name"], kind=f["kind"], op=f["op"], units=f["units"],
                        activation=f["activation"], fan_in=f["fan_in"], depth=_depth(f["name"]),
                        inputs=tuple(sorted(upstream[f["name"]], key=names.index)),
                        is_output=f["name"] in outputs, shape=f["shape"],
                        pre_value=f["pre"].name, post_value=f["post"].name,
                        input_value=f["input"].name if f["input"] is not None else "", nodes=f["nodes"],
                        unit_axis=f["unit_axis"], found_by=f["found_by"], heads=f["heads"],
                        quantized=f["quantized"]) for f in found]
    if quantized_sites:
        notes.append(f"{len(quantized_sites)} sites are integer outputs of a quantized model, read dequantized: "
                     + ", ".join(quantized_sites))
    if fused:
        notes.append(f"a ReLU is fused into the output quantization (zero point at the type's minimum) of "
                     f"{', '.join(fused)}: their activation is relu and their pre-activation is not in the "
                     "model (pre = post)")

    inputs = [v for v in graph.inputs if not v.is_initializer()]
    if not inputs:
        raise ModelError(f"{path} has no data input")
    if not graph.outputs:
        raise ModelError(f"{path} has no graph output")
    described = []
    for v in inputs:
        dtype = v.dtype.numpy() if v.dtype is not None else np.dtype(np.float32)
        if dtype.kind not in "biuf":
            raise ModelError(f"{path}: input {v.name!r} is of type {v.dtype}; infoprobe feeds numbers only")
        described.append({"name": v.name, "dtype": dtype.name,
                          "shape": tuple(d if isinstance(d, int) else None for d in (v.shape.dims if v.shape else ()))})
    in_shape = described[0]["shape"]
    choice = class_output(model.graph, output, path)
    padding = None if any(i["name"] in _MASK_INPUT_NAMES for i in described) else padding_rule(model)
    return LoadedModel(path=path, sha256=sha, ir_model=model, layers=layers, unsupported=unsupported,
                       input_name=inputs[0].name, input_shape=in_shape, inputs=tuple(described),
                       output_name=choice["name"], output_choice=choice, padding=padding, max_bytes=max_bytes,
                       source=source,
                       skipped=skipped, notes=notes)


#: Model inputs that give the padding mask themselves (:data:`infoprobe.data.MASK_INPUTS`).
_MASK_INPUT_NAMES = ("attention_mask",)
#: Comparisons by which a graph marks padding tokens from their ids: the op, and which
#: positions are real tokens given the id ``x`` and the constant ``c`` compared with.
_PADDING_OPS = {"Equal": "!=", "Greater": ">"}


def padding_rule(model: ir.Model) -> dict | None:
    """The padding mask a graph computes from an integer input (``input_ids != 0``, as models
    exported without an ``attention_mask`` input do): a node ``Equal`` (padding where the id
    equals a constant) or ``Greater`` (real where the id exceeds it) between a data input of
    integer type (through ``Cast`` / ``Identity``) and a constant scalar.

    Returns
    -------
    dict or None
        ``{"input": name, "real": "!=" or ">", "value": int, "node": name}``: token t of a
        sample is real when ``ids[t] <real> value``; None when no such comparison is found.
    """
    data = {v.name for v in model.graph.inputs if not v.is_initializer()}
    for node in model.graph:
        if node.op_type not in _PADDING_OPS or len(node.inputs) != 2 or None in node.inputs:
            continue
        src, other = node.inputs
        while src.producer() is not None and src.producer().op_type in ("Cast", "Identity"):
            src = src.producer().inputs[0]
        c = _const(other)
        if src.name not in data or c is None or c.size != 1 or src.type is None \
                or not np.issubdtype(src.type.dtype.numpy(), np.integer):
            continue
        return {"input": src.name, "real": _PADDING_OPS[node.op_type], "value": int(c.ravel()[0]),
                "node": node.name}
    return None


def padding_line(padding: dict) -> str:
    """One line that says which tokens a :func:`padding_rule` takes as padding."""
    rule = "==" if padding["real"] == "!=" else "<="
    return (f"padding: tokens whose {padding['input']} {rule} {padding['value']} are padding "
            f"(a mask the graph computes, node {padding['node']}); they are left out of every token mean")


#: Output names that say "class scores" (:func:`class_output`), and "not class scores".
_SCORE_NAME = re.compile(r"logit|prob|score|softmax|class", re.IGNORECASE)
_EMBEDDING_NAME = re.compile(r"embed|hidden_state|pool|feature|encod|token", re.IGNORECASE)
_FLOAT_TYPES = {"FLOAT", "FLOAT16", "DOUBLE", "BFLOAT16"}


def _describe_value(v) -> str:
    dtype = v.type.dtype.name.lower() if v.type is not None and hasattr(v.type, "dtype") else "?"
    dims = "?" if v.shape is None else "[" + ", ".join(str(d) if isinstance(d, int) else "N" if i == 0 else "?"
                                                      for i, d in enumerate(v.shape.dims)) + "]"
    return f"{v.name!r} {dtype} {dims}"


def _normalised(value, steps: int = 6) -> str | None:
    """Why ``value`` is an embedding rather than class scores, from the op that makes it: an
    L2 normalisation (``LpNormalization``, or a ``Div`` by a norm computed with ``ReduceL2``
    / ``ReduceSumSquare`` / ``Sqrt``, as ``torch.nn.functional.normalize`` exports) or a
    ``LayerNormalization``; None when it is neither."""
    node = value.producer()
    while node is not None and node.op_type in _PASS_THROUGH and node.inputs and node.inputs[0] is not None:
        node = node.inputs[0].producer()
    if node is None:
        return None
    if node.op_type == "LpNormalization":
        return "is L2-normalised (LpNormalization)"
    if node.op_type == "LayerNormalization":
        return "comes from a LayerNormalization"
    if node.op_type == "Div" and len(node.inputs) == 2 and node.inputs[1] is not None:
        stack, seen = [(node.inputs[1], 0)], set()
        while stack:
            v, d = stack.pop()
            p = v.producer() if v is not None else None
            if p is None or id(p) in seen or d > steps:
                continue
            seen.add(id(p))
            if p.op_type in ("ReduceL2", "ReduceSumSquare", "Sqrt"):
                return f"is divided by its norm ({p.op_type}): an L2-normalised embedding"
            stack += [(i, d + 1) for i in p.inputs]
    return None


def class_output(graph: ir.Graph, output: str | None = None, path="the model") -> dict:
    """The one rule by which every command picks the output that holds a classifier's scores.

    ``output`` (``--output``) when given; else, of the graph outputs that are float tensors
    (integer label tensors such as ``skl2onnx``'s ``label``, sequences and maps never hold
    class scores), the first whose name says class scores (logit, prob, score, softmax,
    class), else the first whose name does not say embedding (embed, hidden_state, pool,
    feature, encod, token), else the first.

    Parameters
    ----------
    graph : onnx_ir.Graph
        With shapes inferred where possible.
    output : str, optional
        The output named by the user; trusted to hold class scores.

    Returns
    -------
    dict
        ``name``; ``reason`` (how it was chosen); ``problem``: None, or why the values are not
        class scores (no float output; an embedding by its name or its normalisation), which
        the analyses that count predicted labels refuse with; ``others``: the other outputs,
        described.

    Raises
    ------
    ModelError
        ``output`` is not an output of the graph, or is not a float tensor.
    """
    outs = list(graph.outputs)
    floats = [v for v in outs if v.type is not None and getattr(v.type, "dtype", None) is not None
              and v.type.dtype.name in _FLOAT_TYPES]
    described = ", ".join(_describe_value(v) for v in outs)
    if output is not None:
        chosen = next((v for v in outs if v.name == output), None)
        if chosen is None:
            raise ModelError(f"--output {output}: {path} has no output {output!r}; its outputs are {described}")
        if chosen not in floats:
            raise ModelError(f"--output {output}: {_describe_value(chosen)} of {path} is not a float tensor, so it "
                             f"cannot hold class scores; its outputs are {described}")
        reason, problem = "named by --output", None
    elif not floats:
        chosen, reason = outs[0], "the first output"
        problem = f"{path} has no float output that could hold class scores (its outputs: {described})"
    else:
        named = [v for v in floats if _SCORE_NAME.search(v.name) and not _EMBEDDING_NAME.search(v.name)]
        plain = [v for v in floats if not _EMBEDDING_NAME.search(v.name)]
        chosen = (named or plain or floats)[0]
        only = len(outs) == 1
        reason = ("the only output" if only else "the float output named like class scores" if named
                  else "the first float output" if plain else "the first float output (named like an embedding)")
        problem = None
        if not named and not plain:
            problem = f"output {_describe_value(chosen)} is named like an embedding, not class scores"
        else:
            why = _normalised(chosen)
            if why is not None:
                problem = f"output {_describe_value(chosen)} {why}, not class scores"
    return {"name": chosen.name, "description": _describe_value(chosen), "reason": reason, "problem": problem,
            "others": [_describe_value(v) for v in outs if v is not chosen]}


def _upstream(found: list) -> dict:
    """For each site, the sites it reads: walk back from its inputs to the other sites' values."""
    owner = {}
    for f in found:
        owner[id(f["pre"])] = f["name"]
        owner[id(f["post"])] = f["name"]
    upstream = {}
    for f in found:
        ups, stack, seen = set(), list(f["inputs"]), set()
        while stack:
            v = stack.pop()
            if v is None or id(v) in seen:
                continue
            seen.add(id(v))
            if id(v) in owner and owner[id(v)] != f["name"]:
                ups.add(owner[id(v)])
                continue
            prod = v.producer()
            if prod is not None:
                stack.extend(prod.inputs)
        upstream[f["name"]] = ups
    return upstream
