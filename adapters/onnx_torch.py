"""Run an ONNX classifier as a differentiable PyTorch module, for the gradient-based methods.

``onnx2torch`` would be the library for this, but it cannot be installed beside the CPU
build of PyTorch: it requires ``torchvision``, whose PyPI wheels are CUDA builds that fail to
load against CPU torch. infoprobe's models are feed-forward classifiers made of a small set
of ops, so this module interprets the graph op by op with ``torch.nn.functional``; any op
outside that set is refused by name.
"""
from __future__ import annotations

import numpy as np

from infoprobe.errors import ModelError


def _attrs(node) -> dict:
    return {name: attr.value for name, attr in node.attributes.items()}


def _pads(a, nd=2):
    p = list(a.get("pads", [0] * 2 * nd))
    if a.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise ModelError("auto_pad SAME_* is not supported; re-export the model with explicit pads")
    return p[:nd], p[nd:]


def _make_ops(torch):
    F = torch.nn.functional

    def conv(x, w, b=None, **a):
        begin, end = _pads(a)
        if begin != end:
            x = F.pad(x, [begin[1], end[1], begin[0], end[0]])
            begin = [0, 0]
        return F.conv2d(x, w, b, stride=tuple(a.get("strides", [1, 1])), padding=tuple(begin),
                        dilation=tuple(a.get("dilations", [1, 1])), groups=int(a.get("group", 1)))

    def pool(kind):
        def run(x, **a):
            begin, end = _pads(a)
            if begin != end:
                x = F.pad(x, [begin[1], end[1], begin[0], end[0]],
                          value=float("-inf") if kind == "max" else 0.0)
                begin = [0, 0]
            args = dict(kernel_size=tuple(a["kernel_shape"]), stride=tuple(a.get("strides", a["kernel_shape"])),
                        padding=tuple(begin), ceil_mode=bool(a.get("ceil_mode", 0)))
            if kind == "max":
                return F.max_pool2d(x, dilation=tuple(a.get("dilations", [1, 1])), **args)
            return F.avg_pool2d(x, count_include_pad=bool(a.get("count_include_pad", 0)), **args)
        return run

    def gemm(x, w, c=None, **a):
        x = x.t() if a.get("transA", 0) else x
        w = w.t() if a.get("transB", 0) else w
        y = a.get("alpha", 1.0) * (x @ w)
        return y if c is None else y + a.get("beta", 1.0) * c

    def batchnorm(x, scale, bias, mean, var, **a):
        return F.batch_norm(x, mean, var, scale, bias, False, 0.0, a.get("epsilon", 1e-5))

    def reshape(x, shape, **a):
        shape = [int(s) for s in shape.tolist()]
        if not a.get("allowzero", 0):
            shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
        return x.reshape(shape)

    def flatten(x, **a):
        axis = a.get("axis", 1)
        return x.reshape(int(np.prod(x.shape[:axis])), -1)

    def axes_of(axes, a):
        return [int(v) for v in (axes.tolist() if axes is not None else a.get("axes", []))]

    def squeeze(x, axes=None, **a):
        for ax in sorted(axes_of(axes, a), reverse=True):
            x = x.squeeze(ax)
        return x

    def unsqueeze(x, axes=None, **a):
        for ax in sorted(axes_of(axes, a)):
            x = x.unsqueeze(ax)
        return x

    return {
        "Gemm": gemm, "MatMul": lambda a, b: a @ b, "Add": lambda a, b: a + b,
        "Sub": lambda a, b: a - b, "Mul": lambda a, b: a * b, "Div": lambda a, b: a / b,
        "Conv": conv, "BatchNormalization": batchnorm, "MaxPool": pool("max"), "AveragePool": pool("avg"),
        "GlobalAveragePool": lambda x: x.mean(dim=(2, 3), keepdim=True),
        "Relu": lambda x: F.relu(x), "Sigmoid": lambda x: torch.sigmoid(x), "Tanh": lambda x: torch.tanh(x),
        "LeakyRelu": lambda x, **a: F.leaky_relu(x, a.get("alpha", 0.01)),
        "Elu": lambda x, **a: F.elu(x, a.get("alpha", 1.0)), "Selu": lambda x, **a: F.selu(x),
        "Softplus": lambda x: F.softplus(x),
        "Gelu": lambda x, **a: F.gelu(x, approximate=a.get("approximate", "none")),
        "Softmax": lambda x, **a: torch.softmax(x, a.get("axis", -1)),
        "Flatten": flatten, "Reshape": reshape, "Identity": lambda x: x,
        "Dropout": lambda x, *r, **a: x,
        "Transpose": lambda x, **a: x.permute(*a["perm"]) if "perm" in a else x.permute(*reversed(range(x.dim()))),
        "Squeeze": squeeze, "Unsqueeze": unsqueeze,
        "Concat": lambda *xs, **a: torch.cat(xs, a["axis"]),
    }


def from_onnx(model):
    """A ``torch.nn.Module`` that evaluates an ONNX model, differentiably.

    ``module(x)`` returns the graph's first output; ``module(x, outputs=[names])`` returns a
    dict of the named ONNX values (e.g. a unit layer's ``post_value``). Initialisers become
    buffers (not parameters): gradients flow to the input only.

    Parameters
    ----------
    model : LoadedModel or path-like
        Loaded with infoprobe's safe loader.

    Returns
    -------
    torch.nn.Module (with ``.loaded``, the :class:`~infoprobe.model.LoadedModel`)

    Raises
    ------
    ModelError
        An op outside the supported set (named), or a non-constant shape input.
    ConfigError
        PyTorch is missing.
    """
    from infoprobe.model import LoadedModel, load_model

    from .torch_runtime import require_torch

    torch = require_torch()
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    ops = _make_ops(torch)
    graph = lm.ir_model.graph
    unknown = sorted({n.op_type for n in graph if n.op_type not in ops and n.op_type != "Constant"})
    if unknown:
        raise ModelError(f"{lm.path}: ops {unknown} cannot be run in PyTorch by infoprobe "
                         f"(supported: {', '.join(sorted(ops))})")

    class OnnxModule(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.loaded = lm
            self._names = {}
            self._consts = {}
            for k, v in enumerate(list(graph.initializers.values())):
                key = f"c{k}"
                self.register_buffer(key, torch.as_tensor(np.array(v.const_value.numpy(), dtype=None, copy=True)))
                self._names[v.name] = key
            self.steps = []
            for node in graph:
                a = _attrs(node)
                if node.op_type == "Constant":
                    val = node.attributes["value"].value.numpy()
                    key = f"c{len(self._names)}"
                    self.register_buffer(key, torch.as_tensor(np.array(val, copy=True)))
                    self._names[node.outputs[0].name] = key
                    continue
                ins = [None if v is None else v.name for v in node.inputs]
                # shape-like inputs stay numpy constants
                self.steps.append((node.op_type, ins, [o.name for o in node.outputs], a))

        def forward(self, x, outputs=None):
            env = {lm.input_name: x}
            for name, key in self._names.items():
                env[name] = getattr(self, key)
            for op, ins, outs, a in self.steps:
                args = [None if n is None else env[n] for n in ins]
                if op in ("Reshape", "Squeeze", "Unsqueeze") and len(args) > 1 and args[1] is not None:
                    args[1] = args[1].detach().cpu().numpy()
                if op == "Dropout":
                    args = args[:1]
                while args and args[-1] is None:
                    args.pop()
                res = ops[op](*args, **a)
                env[outs[0]] = res
            if outputs is None:
                return env[graph.outputs[0].name]
            missing = [n for n in outputs if n not in env]
            if missing:
                raise ModelError(f"the model has no values {missing}")
            return {n: env[n] for n in outputs}

    return OnnxModule()
