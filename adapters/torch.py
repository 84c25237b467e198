"""PyTorch adapter: activations into a store, models into ONNX, and the gradient-based methods.

Install with ``pip install 'infoprobe[torch]'``. PyTorch is imported when a function here is
first called, never by ``import infoprobe``.

- :func:`export_activations` -- pre- and post-activations of every ``nn.Linear`` and
  ``nn.Conv2d`` over a data set, in the store schema of DESIGN.md;
- :func:`export_onnx` -- the model as ONNX, each unit layer's node named after its module,
  with the module -> unit-layer mapping in the model's metadata;
- :func:`retrain_subnetwork` -- the lottery-ticket retraining of a sub-network
  (O-information paper, Section 4.2);
- :func:`visualise` and :func:`coherence` -- feature visualisation by input optimisation and
  the input-/output-coherence tests (importance-and-coherence paper, Section 3.1.2 and A.8).
"""
from __future__ import annotations

import json
import logging
import weakref
from pathlib import Path

import numpy as np

from infoprobe.errors import ConfigError, DataError, ModelError, OutputExistsError
from infoprobe.model import MODULE_MAP_KEY

from .export_store import depths, layer_spec, write_batches, write_mapped_onnx
from .torch_runtime import require_torch


#: torch functions (by ``__name__``) recognised as the activation after a unit layer.
_ACTIVATIONS = {
    "relu": "relu", "relu_": "relu", "sigmoid": "sigmoid", "sigmoid_": "sigmoid",
    "tanh": "tanh", "tanh_": "tanh", "leaky_relu": "leakyrelu", "leaky_relu_": "leakyrelu",
    "gelu": "gelu", "elu": "elu", "elu_": "elu", "selu": "selu", "selu_": "selu",
    "softplus": "softplus",
}


def _flat_tensors(obj, torch):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _flat_tensors(o, torch)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _flat_tensors(o, torch)


def _host(t):
    """A float32 CPU copy that later in-place ops on ``t`` cannot change."""
    t = t.detach()
    return (t.clone() if t.device.type == "cpu" else t.cpu()).float()


class _Recorder:
    """Records the unit layers of one forward pass.

    Forward hooks on ``nn.Linear``/``nn.Conv2d`` give the affine output; a
    ``TorchFunctionMode`` sees the functions applied to it, whether called by a module
    (``nn.ReLU``, ``nn.BatchNorm2d``) or in ``forward`` (``F.relu``, ``x.sigmoid()``): a batch
    norm of a conv output becomes the pre-activation, an activation applied to the
    pre-activation gives the post-activation. With ``flow=True`` it also tracks which unit
    layers every tensor derives from, which gives each layer's upstream layers.
    """

    def __init__(self, model, torch, flow: bool):
        from torch.overrides import TorchFunctionMode

        self.torch, self.flow = torch, flow
        self.modules = {name: m for name, m in model.named_modules()
                        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
        self.handles = []
        rec = self

        class Mode(TorchFunctionMode):
            def __torch_function__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                rec._seen(func, args, kwargs or {}, out)
                return out

        self.mode = Mode()
        self.reset()
        for name, m in self.modules.items():
            self.handles.append(m.register_forward_hook(self._hook(name)))

    def reset(self):
        self.pre, self.post, self.activation, self.bn, self.inputs = {}, {}, {}, {}, {}
        self.order, self.pending, self.prov = [], {}, {}

    def close(self):
        for h in self.handles:
            h.remove()

    # provenance: id(tensor) -> (weakref, set of layer names), checked against id reuse
    def _get(self, t):
        entry = self.prov.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else set()

    def _set(self, t, layers):
        self.prov[id(t)] = (weakref.ref(t), layers)

    def _pending(self, t):
        entry = self.pending.get(id(t))
        return entry[1] if entry is not None and entry[0]() is t else None

    def _hook(self, name):
        def hook(module, inputs, output):
            if name in self.pre:
                raise ModelError(f"module {name!r} runs twice in one forward pass; infoprobe stores "
                                 "one unit layer per module (shared weights are not supported)")
            self.order.append(name)
            self.activation[name] = "none"
            self.pending[id(output)] = (weakref.ref(output), name)
            if self.flow:
                ups = set()
                for t in _flat_tensors(inputs, self.torch):
                    ups |= self._get(t)
                self.inputs[name] = ups
                self._set(output, {name})
            self.pre[name] = _host(output)
        return hook

    def _seen(self, func, args, kwargs, out):
        torch = self.torch
        fname = getattr(func, "__name__", "")
        x = args[0] if args else kwargs.get("input")
        name = self._pending(x) if isinstance(x, torch.Tensor) else None
        if name is not None and isinstance(out, torch.Tensor):
            if fname == "batch_norm" and isinstance(self.modules[name], torch.nn.Conv2d) and name not in self.bn:
                a = list(args) + [None] * 8
                get = lambda i, k: kwargs.get(k, a[i])  # noqa: E731
                self.bn[name] = dict(mean=get(1, "running_mean"), var=get(2, "running_var"),
                                     weight=get(3, "weight"), bias=get(4, "bias"),
                                     training=get(5, "training"), eps=get(7, "eps"))
                self.pre[name] = _host(out)
                self.pending[id(out)] = (weakref.ref(out), name)
                if self.flow:
                    self._set(out, {name})
                return
            if fname in _ACTIVATIONS:
                self.activation[name] = _ACTIVATIONS[fname]
                self.post[name] = _host(out)
                self.pending.pop(id(x), None)
                if self.flow:
                    self._set(out, {name})
                return
        if self.flow:
            ups = set()
            for t in _flat_tensors((args, kwargs), torch):
                ups |= self._get(t)
            if ups:
                for t in _flat_tensors(out, torch):
                    if id(t) not in self.prov or self.prov[id(t)][0]() is not t:
                        self._set(t, set(ups))

    def posts(self) -> dict:
        return {n: self.post.get(n, self.pre[n]) for n in self.order}


def _params(module, bn, torch) -> tuple[np.ndarray, np.ndarray, str]:
    """Incoming weight and bias in the store's convention, batch norm folded in."""
    w = module.weight.detach().cpu().double().numpy()
    b = (module.bias.detach().cpu().double().numpy() if module.bias is not None
         else np.zeros(w.shape[0]))
    op = "Linear" if isinstance(module, torch.nn.Linear) else "Conv2d"
    if bn is not None:
        if bn["training"]:
            raise ModelError("batch norm in training mode uses batch statistics; export in eval mode")
        mean, var = (bn[k].detach().cpu().double().numpy() for k in ("mean", "var"))
        gamma = bn["weight"].detach().cpu().double().numpy() if bn["weight"] is not None else 1.0
        beta = bn["bias"].detach().cpu().double().numpy() if bn["bias"] is not None else 0.0
        k = gamma / np.sqrt(var + float(bn["eps"]))
        w = w * np.reshape(k, (-1,) + (1,) * (w.ndim - 1))
        b = (b - mean) * k + beta
        op += "+BatchNorm2d"
    return w.astype(np.float32), b.astype(np.float32), op


def _batches(data, batch_size: int, labels, torch):
    """(n_rows, iterator of (x, y or None)) for a tensor/array, (x, y), or a DataLoader."""
    if isinstance(data, torch.utils.data.DataLoader):
        try:
            n = len(data.dataset)
        except TypeError:
            raise DataError("the DataLoader's dataset has no length; infoprobe needs N up front") from None
        if labels is not None:
            raise ConfigError("labels come from the DataLoader's batches; do not pass labels=")

        def loader():
            for batch in data:
                if isinstance(batch, (list, tuple)):
                    yield batch[0], (batch[1] if len(batch) > 1 else None)
                else:
                    yield batch, None
        return n, loader()
    if isinstance(data, (list, tuple)):
        if len(data) != 2:
            raise DataError("data must be x, (x, y) or a DataLoader")
        if labels is not None:
            raise ConfigError("pass labels either in data=(x, y) or as labels=, not both")
        data, labels = data
    x = data if isinstance(data, torch.Tensor) else torch.as_tensor(np.asarray(data))
    n = len(x)
    y = None if labels is None else np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if y is not None and len(y) != n:
        raise DataError(f"{len(y)} labels for {n} samples")
    if batch_size < 1:
        raise ConfigError("batch_size must be at least 1")
    return n, ((x[i:i + batch_size], None if y is None else y[i:i + batch_size])
               for i in range(0, n, batch_size))


def export_activations(model, data, out="acts.h5", *, layers=None, labels=None, batch_size: int = 256,
                       device=None, eval_mode: bool = True, overwrite: bool = False,
                       progress: bool = True) -> Path:
    """Write the activations of a PyTorch model's unit layers over a data set to a store.

    Every ``nn.Linear`` and ``nn.Conv2d`` that runs in the forward pass is a unit layer named
    by its module name (``"fc1"``, ``"features.0"``). Its pre-activation is the module's
    output, after a ``BatchNorm2d`` that directly follows a conv (folded into the stored
    weight and bias, as infoprobe does for ONNX); its post-activation is the output of the
    activation applied to it -- a module (``nn.ReLU``, ``nn.Sigmoid``, ``nn.Tanh``,
    ``nn.LeakyReLU``, ``nn.GELU``, ...) or a functional (``F.relu``, ``torch.tanh``,
    ``x.sigmoid()``) -- or the pre-activation when none follows. Upstream layers and depths
    come from the data flow of the first batch. The store equals, to float32 rounding, what
    ``infoprobe capture`` writes from :func:`export_onnx`'s file.

    Parameters
    ----------
    model : torch.nn.Module
        Feed-forward classifier returning logits [n, classes] (or a tuple whose first item is).
    data : tensor or array [N, ...], (x, y), or torch.utils.data.DataLoader
        Inputs as the model takes them; a DataLoader yields ``x`` or ``(x, y, ...)`` batches
        and its dataset must have a length.
    out : path-like
        Store to write (``.partial`` until complete; removed if the export fails).
    layers : list of str, optional
        Module names to store (default: every Linear and Conv2d that runs).
    labels : int array [N], optional
        Class labels, when ``data`` is a bare tensor.
    batch_size : int
        Rows per forward pass (tensor and array data).
    device : str or torch.device, optional
        Where the model runs (default: the device of its first parameter); inputs are moved
        there, activations copied back to the host.
    eval_mode : bool
        Run in ``model.eval()`` (batch norm with running statistics, no dropout). Each
        module's training flag is restored afterwards either way.

    Returns
    -------
    Path of the complete store (``source="torch"``).

    Raises
    ------
    ConfigError
        PyTorch is missing, or contradictory options.
    ModelError
        No Linear/Conv2d runs, an unknown layer name, or a module that runs twice per pass.
    DataError
        Shapes or counts that disagree, labels missing in some batches, NaN/inf activations.
    OutputExistsError, StoreError
        ``out`` exists and ``overwrite`` is false.
    """
    torch = require_torch()
    out = Path(out)
    if out.exists() and not overwrite:
        raise OutputExistsError(f"{out} already exists; pass overwrite=True to replace it")
    n_rows, batches = _batches(data, batch_size, labels, torch)
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    modes = {m: m.training for m in model.modules()}
    rec = _Recorder(model, torch, flow=True)
    try:
        if eval_mode:
            model.eval()

        def run(x):
            rec.reset()
            with torch.no_grad(), rec.mode:
                y = model(x.to(device))
            y = y[0] if isinstance(y, (list, tuple)) else y
            return _host(y).reshape(len(x), -1).numpy()

        batches = iter(batches)
        try:
            x0, y0 = next(batches)
        except StopIteration:
            raise DataError("the data yielded no samples") from None
        logits0 = run(x0)
        if not rec.order:
            raise ModelError("no nn.Linear or nn.Conv2d ran in the forward pass")
        names = rec.order if layers is None else list(layers)
        unknown = [n for n in names if n not in rec.order]
        if unknown:
            raise ModelError(f"unknown layers {unknown}; the model's unit layers are: " + ", ".join(rec.order))
        inputs = {n: sorted(rec.inputs[n], key=rec.order.index) for n in rec.order}
        depth = depths(inputs)
        downstream = {u for ups in inputs.values() for u in ups}
        specs = []
        for n in names:
            w, b, op = _params(rec.modules[n], rec.bn.get(n), torch)
            specs.append(layer_spec(n, kind="dense" if w.ndim == 2 else "conv", op=op,
                                    activation=rec.activation[n], weight=w, bias=b,
                                    shape=rec.pre[n].shape[1:], inputs=inputs[n], depth=depth[n],
                                    is_output=n not in downstream))
        rec.flow = False

        def blocks(y, logits):
            posts = rec.posts()
            res = {"outputs/logits": logits}
            for n in names:
                for which, t in (("pre", rec.pre[n]), ("post", posts[n])):
                    a = t.numpy()
                    if not np.isfinite(a).all():
                        raise DataError(f"layer {n!r} has NaN or inf {which}-activations")
                    res[f"layers/{n}/{which}"] = a
            return res, y

        def all_batches():
            yield blocks(y0, logits0)
            for x, y in batches:
                logits = run(x)
                yield blocks(y, logits)

        return write_batches(out, n_rows=n_rows, specs=specs, batches=all_batches(),
                             has_labels=y0 is not None, source="torch", overwrite=overwrite,
                             progress=progress, attrs=dict(model_class=type(model).__name__,
                                                           torch_version=str(torch.__version__)))
    finally:
        rec.close()
        for m, training in modes.items():
            m.train(training)


def _module_of(node, modules: dict) -> str | None:
    """The Linear/Conv2d module an exported affine node comes from: its weight initialiser's
    name (``"fc1.weight"``), else the exporter's name scopes."""
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        name = node.inputs[1].name or ""
        if name.endswith(".weight") and name[:-len(".weight")] in modules:
            return name[:-len(".weight")]
    scopes = node.metadata_props.get("pkg.torch.onnx.name_scopes")
    if scopes:
        try:
            parts = [s for s in json.loads(scopes.replace("'", '"')) if s]
        except ValueError:
            return None
        for k in range(len(parts), 0, -1):
            if ".".join(parts[:k]) in modules:
                return ".".join(parts[:k])
    return None


def export_onnx(model, example_input, path, *, input_name: str = "input", output_name: str = "logits",
                opset: int | None = None, overwrite: bool = False):
    """Export a PyTorch model to ONNX with ``torch.onnx.export`` (the ``torch.export``-based
    exporter) and keep the way back from infoprobe's layers to the user's modules.

    Each ``Gemm``/``MatMul``/``Conv`` node that comes from an ``nn.Linear`` or ``nn.Conv2d`` is
    renamed after its module, so infoprobe's unit layers carry the module names (``"fc1"``,
    ``"features.0"``), and the model's metadata gets ``infoprobe.module_map``: a JSON object
    {module name: unit-layer name} (read it back with :func:`infoprobe.model.module_map`).
    The batch dimension is dynamic.

    Parameters
    ----------
    model : torch.nn.Module
        Exported in eval mode; each module's training flag is restored afterwards.
    example_input : tensor [n, ...]
        One batch (a batch of 1 is repeated to 2, so that the batch dimension stays dynamic).
    path : path-like
        ONNX file to write (atomically).
    input_name, output_name : str
    opset : int, optional
        ONNX opset (default: the exporter's).

    Returns
    -------
    dict
        The module map that was written.

    Raises
    ------
    ConfigError
        PyTorch or onnxscript (the exporter's dependency) is missing.
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.
    ModelError
        The exported model has no unit layer infoprobe can analyse.
    """
    torch = require_torch()
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} already exists; pass overwrite=True to replace it")
    import importlib.util

    if importlib.util.find_spec("onnxscript") is None:  # the exporter needs it
        raise ConfigError("torch.onnx.export needs onnxscript: pip install 'infoprobe[torch]'")
    x = example_input if isinstance(example_input, torch.Tensor) else torch.as_tensor(np.asarray(example_input))
    if len(x) < 2:
        x = torch.cat([x, x])
    modules = {name: m for name, m in model.named_modules()
               if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    modes = {m: m.training for m in model.modules()}
    p = next(iter(model.parameters()), None)
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    try:
        model.eval()
        quiet.setLevel(logging.ERROR)  # the exporter warns about every torchvision op it skips
        batch = torch.export.Dim("batch")
        with torch.no_grad():
            program = torch.onnx.export(model, (x.to(p.device if p is not None else "cpu"),), dynamo=True,
                                        input_names=[input_name], output_names=[output_name],
                                        dynamic_shapes=({0: batch},), opset_version=opset,
                                        verbose=False)
    finally:
        quiet.setLevel(level)
        for m, training in modes.items():
            m.train(training)
    irm = program.model
    used = {n.name for n in irm.graph}
    renamed = {}
    for node in irm.graph:
        if node.op_type not in ("Gemm", "MatMul", "Conv"):
            continue
        mod = _module_of(node, modules)
        if mod is None:
            continue
        name, k = mod, 1
        while name in used and name != node.name:
            k += 1
            name = f"{mod}_{k}"
        used.discard(node.name)
        used.add(name)
        node.name = name
        renamed[name] = mod
    return write_mapped_onnx(irm, path, renamed)


# ---------------------------------------------------------------------------------------------
# Retraining a selected sub-network (O-information paper, Section 4.2)


def _xy(data, torch, what):
    if isinstance(data, torch.utils.data.DataLoader):
        xs, ys = zip(*[(b[0], b[1]) for b in data])
        return torch.cat(xs), torch.cat([torch.as_tensor(y) for y in ys])
    if not isinstance(data, (list, tuple)) or len(data) != 2:
        raise DataError(f"{what} must be (x, y) or a DataLoader yielding (x, y)")
    x, y = data
    x = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    y = torch.as_tensor(np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y), dtype=torch.long)
    if len(x) != len(y):
        raise DataError(f"{what}: {len(y)} labels for {len(x)} samples")
    return x, y


def accuracy(model, data, *, batch_size: int = 1024, device=None) -> float:
    """Top-1 accuracy of ``model`` on ``data`` ((x, y) or a DataLoader), in eval mode, with
    each module's training flag restored afterwards.

    Raises
    ------
    DataError
        Malformed data.
    """
    torch = require_torch()
    x, y = _xy(data, torch, "data")
    p = next(iter(model.parameters()), None)
    device = device or (p.device if p is not None else "cpu")
    modes = {m: m.training for m in model.modules()}
    try:
        model.eval()
        hits = 0
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                out = model(x[i:i + batch_size].to(device))
                out = out[0] if isinstance(out, (list, tuple)) else out
                hits += int((out.argmax(-1).cpu() == y[i:i + batch_size]).sum())
        return hits / max(1, len(x))
    finally:
        for m, training in modes.items():
            m.train(training)


def retrain_subnetwork(model, initial_state: dict, keep: dict, train_data, test_data, *, epochs: int = 5,
                       lr: float = 1e-3, batch_size: int = 64, weight_decay: float = 0.0, seed: int = 0,
                       device=None, progress: bool = True) -> dict:
    """Reset a selected sub-network to its initial weights, freeze the rest, retrain, and
    report test accuracy (O-information paper, Section 4.2: importance evaluated by
    retraining, after the lottery-ticket hypothesis).

    The units kept in each layer have their *incoming* weights and bias (one row of a
    ``Linear`` weight, one output filter of a ``Conv2d``) set back to their values in
    ``initial_state``; only those entries are trained, with Adam on the cross-entropy; every
    other parameter keeps its trained value exactly (gradients are masked and frozen entries
    restored after each step, so weight decay cannot move them). Batch-norm layers stay in
    eval mode, so their running statistics are not retrained either. The paper's criterion:
    the more important the kept units, the smaller the drop from the trained accuracy.

    Parameters
    ----------
    model : torch.nn.Module
        The trained network; it is not modified (a deep copy is retrained).
    initial_state : dict
        ``model.state_dict()`` at initialisation (same keys and shapes).
    keep : dict of str -> sequence of int
        Module name (``nn.Linear`` or ``nn.Conv2d``) -> indices of the units to reset and
        retrain (an infoprobe unit-layer name works when it equals the module name, as with
        :func:`export_onnx` and :func:`export_activations`).
    train_data, test_data : (x, y) or DataLoader
    epochs, lr, batch_size, weight_decay : training hyper-parameters (Adam)
    seed : int
        Seeds the batch order.
    device : str or torch.device, optional

    Returns
    -------
    dict
        ``accuracy_trained`` (the model as given), ``accuracy_reset`` (kept units at their
        initial weights, before retraining), ``accuracy_retrained``, ``drop``
        (trained - retrained), ``history`` (test accuracy after each epoch), ``n_units``
        (kept units per layer), ``n_trainable`` (trainable weights and biases), and the
        retrained ``model``.

    Raises
    ------
    ConfigError
        Unknown module, a module that is not Linear/Conv2d, a unit index out of range, an
        ``initial_state`` without the kept modules' weights, or bad hyper-parameters.
    DataError
        Malformed data.
    """
    import copy

    torch = require_torch()
    if epochs < 0 or batch_size < 1 or lr <= 0:
        raise ConfigError("need epochs >= 0, batch_size >= 1 and lr > 0")
    xtr, ytr = _xy(train_data, torch, "train_data")
    test = _xy(test_data, torch, "test_data")
    net = copy.deepcopy(model)
    p = next(iter(net.parameters()), None)
    device = device or (p.device if p is not None else "cpu")
    mods = dict(net.named_modules())
    for prm in net.parameters():
        prm.requires_grad_(False)
    masks, frozen = [], []
    n_units, n_trainable = {}, 0
    for name, units in keep.items():
        mod = mods.get(name)
        if not isinstance(mod, (torch.nn.Linear, torch.nn.Conv2d)):
            raise ConfigError(f"{name!r} is not an nn.Linear or nn.Conv2d of the model")
        idx = np.unique(np.asarray(list(units), np.int64))
        if idx.size and (idx.min() < 0 or idx.max() >= mod.weight.shape[0]):
            raise ConfigError(f"{name!r} has {mod.weight.shape[0]} units; got indices {idx.tolist()}")
        n_units[name] = int(idx.size)
        sel = torch.as_tensor(idx, device=mod.weight.device)
        for pname in ("weight", "bias"):
            prm = getattr(mod, pname)
            if prm is None:
                continue
            key = f"{name}.{pname}"
            if key not in initial_state or tuple(initial_state[key].shape) != tuple(prm.shape):
                raise ConfigError(f"initial_state has no {key} of shape {tuple(prm.shape)}")
            mask = torch.zeros_like(prm)
            mask[sel] = 1.0
            with torch.no_grad():
                prm[sel] = initial_state[key].to(prm.device, prm.dtype)[sel]
            prm.requires_grad_(True)
            masks.append((prm, mask))
            frozen.append((prm, prm.detach().clone(), mask == 0))
            n_trainable += int(mask.sum())
    params = [prm for prm, _ in masks]
    result = dict(accuracy_trained=accuracy(model, test, device=device),
                  accuracy_reset=accuracy(net, test, device=device), n_units=n_units,
                  n_trainable=n_trainable, history=[])
    if params and epochs:
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        gen = torch.Generator().manual_seed(seed)
        net.train()
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()
        from tqdm.auto import tqdm

        for _ in tqdm(range(epochs), desc="retrain", unit="epoch", disable=not progress):
            order = torch.randperm(len(xtr), generator=gen)
            for i in range(0, len(xtr), batch_size):
                b = order[i:i + batch_size]
                out = net(xtr[b].to(device))
                out = out[0] if isinstance(out, (list, tuple)) else out
                loss = torch.nn.functional.cross_entropy(out, ytr[b].to(device))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                for prm, mask in masks:
                    prm.grad.mul_(mask)
                opt.step()
                with torch.no_grad():
                    for prm, value, fixed in frozen:
                        prm[fixed] = value[fixed]
            result["history"].append(accuracy(net, test, device=device))
    result["accuracy_retrained"] = accuracy(net, test, device=device)
    result["drop"] = result["accuracy_trained"] - result["accuracy_retrained"]
    net.eval()
    result["model"] = net
    return result


from .featurevis import CoherenceResult, coherence, visualise  # noqa: E402  (re-exported)
from .onnx_torch import from_onnx  # noqa: E402

__all__ = ["export_activations", "export_onnx", "retrain_subnetwork", "accuracy", "visualise",
           "coherence", "CoherenceResult", "from_onnx", "MODULE_MAP_KEY"]
