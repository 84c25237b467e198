"""A corpus of hostile and malformed input files, generated at run time, and its judge.

Every hostile or malformed model, activation store or data file must be refused with one
line on stderr that starts with ``infoprobe: error:`` and exit status 2: never a traceback,
never a byte read from outside the input's folder, never more memory than a budget. Nothing
here is committed as a binary: each :class:`Case` writes its files into a fresh folder.

``Case.build(folder)`` returns a dict:

``argv``
    CLI arguments without the program name.
``cwd``
    Directory to run from.
``secret``
    Bytes that live outside the input's folder and must appear in no file the command
    writes, nor on stdout or stderr (or None).
``memory``
    True for bombs: the command's peak RSS must stay under :data:`RSS_BUDGET`.
``expect``
    Exit status (default 2); 0 for legitimate inputs that must work without leaking.
``outside``
    Files the command must never open (watched with inotify where available).
``must_not_exist``
    Paths that must not exist afterwards (e.g. a pruned model that cannot run).
``must_exist``
    Paths that must exist afterwards (e.g. the mark of a listener the command contacted).
``verify``
    Optional ``callable() -> str | None`` run after a successful command (any expected
    status but 2); a string is a failure reason.
``unchanged``
    Paths (files or folders, links not followed) whose every entry, byte and link target
    must be as before the command; entries under ``unchanged_except`` (paths inside them)
    are left out.
``stderr_has``, ``stdout_has``
    Strings that must appear on stderr or stdout (e.g. the reason of a refusal, a note).
``env``
    Environment variables set for the command (e.g. ``TMPDIR`` in the case's folder).
``file_size_limit``
    ``RLIMIT_FSIZE`` of the command in bytes, ``SIGXFSZ`` ignored (a full disk): child
    processes only, so such a case sets ``isolate``.
``timeout``
    Seconds the command may take (default :data:`TIMEOUT`).
``cleanup``
    Optional ``callable()`` the runners call once the command is judged (e.g. to stop a
    listener started by ``build``); see :func:`finish`.

``expect`` may be a tuple of statuses (e.g. ``(0, 1)`` for the verdict of ``check``);
``must_not_exist`` entries may be glob patterns (``*``, ``**``), which must match nothing.

Used by ``tests/test_hostile.py`` and ``benchmarks/hostile_corpus.py``.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import html
import io
import json
import mmap
import os
import pickle
import signal
import stat
import struct
import subprocess
import tempfile
import time
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import h5py
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

#: Largest peak resident set size of a command on a ``memory`` case.
RSS_BUDGET = 2 * 1024**3
#: Wall-clock limit of one command, seconds.
TIMEOUT = 60.0
ERROR_PREFIX = "infoprobe: error:"
OPSET = 17


@dataclass(frozen=True)
class Case:
    """One hostile input.

    Attributes
    ----------
    id : str
    cls : {"onnx", "store", "data", "results", "scratch", "workers", "control"}
        The hostile input's kind (controls are valid inputs that must work): a model, an
        activation store, a data file, a result folder (or a plan or candidate made by
        someone else), scratch space that fails, or a Dask scheduler address.
    description : str
    build : callable
        ``build(folder: Path) -> dict`` writes the files (see the module docstring).
    isolate : bool
        Run in a child process even in the in-process tests (the library may crash the
        interpreter on it, e.g. by a memory-mapped read past the end of a file).
    """

    id: str
    cls: str
    description: str
    build: Callable[[Path], dict]
    isolate: bool = False


CASES: list[Case] = []
CONTROLS: list[Case] = []


def case(id, cls, description, *, isolate=False):
    """Register ``build`` as a case of the corpus (or a control when ``cls="control"``)."""
    def deco(build):
        (CONTROLS if cls == "control" else CASES).append(Case(id, cls, description, build, isolate))
        return build
    return deco


# ----------------------------------------------------------------------------- building blocks

RNG = np.random.default_rng(20240611)
W1 = RNG.normal(size=(8, 4)).astype(np.float32)
B1 = RNG.normal(size=8).astype(np.float32)
W2 = RNG.normal(size=(3, 8)).astype(np.float32)
B2 = RNG.normal(size=3).astype(np.float32)
N_ROWS = 40
X = RNG.normal(size=(N_ROWS, 4)).astype(np.float32)
Y = (np.arange(N_ROWS) % 3).astype(np.int64)
SPLIT = np.r_[np.ones(N_ROWS // 2), np.full(N_ROWS // 2, 2)].astype(np.int64)


def secret_for(case_id: str, size: int = 32) -> bytes:
    """A distinctive ASCII string (its float32 reading is finite and positive)."""
    digest = hashlib.sha256(case_id.encode()).hexdigest()
    return (b"SECRET-" + digest.encode() * 2)[:size]


def _vi(name, dims, dtype=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, dtype, dims)


def mlp_proto(*, bias=None, inputs=None, outputs=None, extra_nodes=(), extra_inits=(),
              opset=OPSET, output="logits") -> onnx.ModelProto:
    """The 4-8-3 MLP (Gemm fc1, Relu, Gemm fc2), float32; ``bias`` replaces fc1.bias."""
    inits = [numpy_helper.from_array(W1, "fc1.weight"),
             bias if bias is not None else numpy_helper.from_array(B1, "fc1.bias"),
             numpy_helper.from_array(W2, "fc2.weight"), numpy_helper.from_array(B2, "fc2.bias"),
             *extra_inits]
    nodes = [helper.make_node("Gemm", ["input", "fc1.weight", "fc1.bias"], ["fc1.out"], name="fc1", transB=1),
             helper.make_node("Relu", ["fc1.out"], ["relu1.out"], name="relu1"),
             helper.make_node("Gemm", ["relu1.out", "fc2.weight", "fc2.bias"], [output], name="fc2", transB=1),
             *extra_nodes]
    graph = helper.make_graph(nodes, "mlp", inputs if inputs is not None else [_vi("input", ["N", 4])],
                              outputs if outputs is not None else [_vi("logits", ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def external_tensor(name, dims, location, *, offset=None, length=None) -> TensorProto:
    """A float32 tensor whose data is in an external file (entries written verbatim)."""
    t = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(dims),
                    data_location=TensorProto.EXTERNAL)
    for key, value in (("location", location), ("offset", offset), ("length", length)):
        if value is not None:
            entry = t.external_data.add()
            entry.key, entry.value = key, str(value)
    return t


def save_model(proto, path: Path) -> Path:
    """Serialise without onnx.save (which would touch external data)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(proto.SerializeToString())
    return path


def write_npz(path: Path, **arrays) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    return path


def valid_data(path: Path, **overrides) -> Path:
    """x float32 [40, 4], y in 0..2, split 1 then 2 (``overrides`` replace or drop arrays)."""
    arrays = dict(x=X, y=Y, split=SPLIT)
    arrays.update(overrides)
    return write_npz(path, **{k: v for k, v in arrays.items() if v is not None})


def valid_model(path: Path) -> Path:
    return save_model(mlp_proto(), path)


def outside_file(folder: Path, data: bytes, name: str = "secret.bin") -> Path:
    """A file in ``<folder>/outside``: never inside any input's folder."""
    p = folder / "outside" / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def forward(x):
    """NumPy forward pass of the MLP: (pre1, post1, pre2)."""
    pre1 = x @ W1.T + B1
    post1 = np.maximum(pre1, 0)
    return pre1, post1, post1 @ W2.T + B2


def write_store(path: Path, *, x=X, labels=Y, index=None) -> Path:
    """A valid activation store (schema version 1) of the MLP over ``x``, written by hand."""
    pre1, post1, pre2 = (a.astype(np.float32) for a in forward(x))
    n = len(x)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        f.attrs.update(format="infoprobe-activations", schema_version=1, created_by="hostile corpus",
                       source="onnx", complete=True, rows_written=n, n_rows=n)
        s = f.create_group("samples")
        if labels is not None:
            s.create_dataset("labels", data=labels)
        s.create_dataset("index", data=np.arange(n, dtype=np.int64) if index is None else index)
        layers = f.create_group("layers")
        for name, depth, act, pre, post, w, b, ins, out in (
                ("fc1", 1, "relu", pre1, post1, W1, B1, [], False),
                ("fc2", 2, "none", pre2, pre2, W2, B2, ["fc1"], True)):
            g = layers.create_group(name)
            g.attrs.update(kind="dense", activation=act, depth=depth, units=w.shape[0], op="Gemm",
                           fan_in=w.shape[1], is_output=out, inputs=json.dumps(ins))
            for key, arr in (("pre", pre), ("post", post)):
                g.create_dataset(key, data=arr, chunks=(min(n, 1024), arr.shape[1]) if n else None)
            g.create_dataset("weight", data=w)
            g.create_dataset("bias", data=b)
        f.create_group("outputs").create_dataset("logits", data=pre2, chunks=(min(n, 1024), 3) if n else None)
    return path


def store_case(folder: Path, verb: str, edit=None, **extra) -> dict:
    """A valid store at ``<folder>/in/acts.h5`` edited by ``edit(h5py.File)``, fed to ``verb``."""
    path = write_store(folder / "in" / "acts.h5")
    if edit is not None:
        with h5py.File(path, "r+") as f:
            edit(f)
    return dict(store_spec(folder, verb, path), **extra)


def store_spec(folder: Path, verb: str, path: Path) -> dict:
    """Arguments that feed a store to ``verb`` (importance, synergy, frivolous or ablate)."""
    out = folder / "results"
    if verb == "importance":
        argv = ["importance", str(path), "--out", str(out), "--no-plot", "--no-progress"]
    elif verb == "synergy":
        argv = ["synergy", str(path), "--out", str(out), "--max-size", "3", "--exhaustive-up-to", "2",
                "--no-plot", "--no-progress"]
    elif verb == "frivolous":
        argv = ["frivolous", str(path), "--out", str(out), "--no-plot", "--no-progress"]
    elif verb == "ablate":
        model = valid_model(folder / "model" / "mlp.onnx")
        data = valid_data(folder / "model" / "data.npz")
        argv = ["ablate", str(model), str(path), "--data", str(data), "--out", str(out),
                "--random-repeats", "1", "--no-plot", "--no-progress"]
    else:
        raise ValueError(verb)
    return dict(argv=argv, cwd=folder, secret=None, memory=False)


def capture_spec(folder: Path, model: Path, data: Path | None = None, **extra) -> dict:
    """``capture MODEL --data DATA --out <folder>/out/acts.h5``."""
    data = data or valid_data(folder / "data" / "data.npz")
    (folder / "out").mkdir(exist_ok=True)
    argv = ["capture", str(model), "--data", str(data), "--out", str(folder / "out" / "acts.h5"), "--no-progress"]
    return dict(dict(argv=argv, cwd=folder, secret=None, memory=False), **extra)


def _replace(group, name, make):
    """Delete dataset ``name`` of ``group`` and create it again with ``make(group, name)``."""
    del group[name]
    make(group, name)


# ----------------------------------------------------------------------------- ONNX cases

def _ext_case(folder, location, *, data: bytes | None = None, data_name="bias.bin", verb="capture",
              offset=None, length=None, outside=True):
    """MLP whose fc1.bias is external at ``location``; the secret in ``<folder>/outside``."""
    secret = secret_for(folder.name)
    src = outside_file(folder, secret)
    mdir = folder / "model"
    mdir.mkdir(parents=True, exist_ok=True)
    if data is not None:
        (mdir / data_name).write_bytes(data)
    model = save_model(mlp_proto(bias=external_tensor("fc1.bias", [8], location, offset=offset, length=length)),
                       mdir / "mlp.onnx")
    spec = (capture_spec(folder, model) if verb == "capture"
            else dict(argv=["inspect", str(model)], cwd=folder, memory=False))
    return dict(spec, secret=secret, outside=[src] if outside else [])


@case("onnx_ext_absolute", "onnx", "capture: fc1.bias external at an absolute path outside the folder")
def _(folder):
    return _ext_case(folder, str((folder / "outside" / "secret.bin").resolve()))


@case("onnx_ext_dotdot", "onnx", "capture: external location ../outside/secret.bin")
def _(folder):
    return _ext_case(folder, "../outside/secret.bin")


@case("onnx_ext_symlink_dir", "onnx", "capture: external location through a symlinked folder (lib -> ../outside)")
def _(folder):
    spec = _ext_case(folder, "lib/secret.bin")
    (folder / "model" / "lib").symlink_to("../outside", target_is_directory=True)
    return spec


@case("onnx_ext_symlink_file", "onnx", "inspect: external data file is a symlink to a file outside")
def _(folder):
    spec = _ext_case(folder, "bias.bin", verb="inspect")
    (folder / "model" / "bias.bin").symlink_to("../outside/secret.bin")
    return spec


@case("onnx_ext_hardlink", "onnx", "capture: external data file is a hard link to a file outside "
      "(not watched: the link shares the secret's inode)")
def _(folder):
    spec = _ext_case(folder, "bias.bin", outside=False)
    os.link(folder / "outside" / "secret.bin", folder / "model" / "bias.bin")
    return spec


@case("onnx_ext_missing", "onnx", "capture: external data file does not exist")
def _(folder):
    return _ext_case(folder, "bias.bin")


@case("onnx_ext_offset_beyond", "onnx", "capture: external offset 4096 in a 32-byte file", isolate=True)
def _(folder):
    return _ext_case(folder, "bias.bin", data=B1.tobytes(), offset=4096)


@case("onnx_ext_length_beyond", "onnx", "capture: external length 4096 in a 32-byte file", isolate=True)
def _(folder):
    return _ext_case(folder, "bias.bin", data=B1.tobytes(), length=4096)


@case("onnx_ext_short_file", "onnx", "capture: external file of 16 bytes for a 32-byte tensor", isolate=True)
def _(folder):
    return _ext_case(folder, "bias.bin", data=B1.tobytes()[:16])


@case("onnx_ext_offset_text", "onnx", "capture: external offset 'abc'")
def _(folder):
    return _ext_case(folder, "bias.bin", data=B1.tobytes(), offset="abc")


@case("onnx_ext_length_negative", "onnx", "capture: external length '-5'")
def _(folder):
    return _ext_case(folder, "bias.bin", data=B1.tobytes(), length="-5")


@case("onnx_ext_offset_negative", "onnx", "capture: external offset '-5'")
def _(folder):
    return _ext_case(folder, "bias.bin", data=B1.tobytes(), offset="-5")


@case("onnx_ext_location_nul", "onnx", "capture: external location 'bias.bin\\0../outside/secret.bin'")
def _(folder):
    return _ext_case(folder, "bias.bin\x00../outside/secret.bin", data=B1.tobytes())


@case("onnx_ext_backslash", "onnx", "capture: external location '..\\outside\\secret.bin'")
def _(folder):
    return _ext_case(folder, "..\\outside\\secret.bin")


@case("onnx_ext_constant_node", "onnx", "capture: a Constant node's tensor external at ../outside/secret.bin")
def _(folder):
    secret = secret_for(folder.name)
    src = outside_file(folder, secret)
    const = helper.make_node("Constant", [], ["fc1.bias"], name="bias_const",
                             value=external_tensor("value", [8], "../outside/secret.bin"))
    proto = mlp_proto()
    del proto.graph.initializer[1]
    proto.graph.node.insert(0, const)
    model = save_model(proto, folder / "model" / "mlp.onnx")
    return dict(capture_spec(folder, model), secret=secret, outside=[src])


def _decoy(folder, verb):
    """fc1.bias external at '.ssh/id_rsa': a decoy beside the model, the secret in the cwd."""
    secret = secret_for(folder.name)
    home = folder / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_rsa").write_bytes(secret)
    mdir = folder / "model"
    (mdir / ".ssh").mkdir(parents=True)
    (mdir / ".ssh" / "id_rsa").write_bytes(B1.tobytes())
    model = save_model(mlp_proto(bias=external_tensor("fc1.bias", [8], ".ssh/id_rsa", offset=0, length=32)),
                       mdir / "mlp.onnx")
    x = X.copy()
    x[:10] = 0.0   # rows whose pre-activation is the bias itself, byte for byte
    data = valid_data(mdir / "data.npz", x=x)
    store = folder / "out" / "acts.h5"
    store.parent.mkdir()

    def verify():
        if verb != "capture":
            return None
        with h5py.File(store, "r") as f:
            bias = f["layers/fc1/bias"][()]
            pre = f["layers/fc1/pre"][:10]
        if not np.array_equal(bias, B1):
            return "the store's fc1 bias is not the decoy beside the model"
        if not np.array_equal(pre, np.broadcast_to(B1, pre.shape)):
            return "fc1 pre-activations of zero inputs are not the decoy bias (read from the cwd?)"
        return None

    argv = (["capture", str(model), "--data", str(data), "--out", str(store), "--no-progress"]
            if verb == "capture" else ["inspect", str(model)])
    return dict(argv=argv, cwd=home, secret=secret, memory=False, expect=0,
                outside=[home / ".ssh" / "id_rsa"], verify=verify)


@case("onnx_decoy_capture", "onnx", "capture from another cwd: fc1.bias at .ssh/id_rsa, a decoy beside the "
      "model and the secret in cwd/.ssh/id_rsa; must succeed with the decoy")
def _(folder):
    return _decoy(folder, "capture")


@case("onnx_decoy_inspect", "onnx", "inspect from another cwd: the .ssh/id_rsa decoy model; must succeed")
def _(folder):
    return _decoy(folder, "inspect")


@case("onnx_ext_other_cwd", "onnx", "capture from another cwd: a legitimate model with all weights in "
      "mlp.onnx.data beside it; must succeed")
def _(folder):
    mdir = folder / "model"
    mdir.mkdir(parents=True)
    onnx.save_model(mlp_proto(), str(mdir / "mlp.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="mlp.onnx.data", size_threshold=0)
    elsewhere = folder / "elsewhere"
    elsewhere.mkdir()
    return dict(capture_spec(folder, mdir / "mlp.onnx"), cwd=elsewhere, expect=0)


@case("onnx_truncated", "onnx", "capture: the model file cut in half")
def _(folder):
    raw = mlp_proto().SerializeToString()
    p = folder / "model" / "mlp.onnx"
    p.parent.mkdir(parents=True)
    p.write_bytes(raw[: len(raw) // 2])
    return capture_spec(folder, p)


@case("onnx_random_bytes", "onnx", "inspect: 4 KiB of random bytes")
def _(folder):
    p = folder / "model.onnx"
    p.write_bytes(np.random.default_rng(1).bytes(4096))
    return dict(argv=["inspect", str(p)], cwd=folder, secret=None, memory=False)


@case("onnx_empty", "onnx", "inspect: an empty file")
def _(folder):
    p = folder / "model.onnx"
    p.write_bytes(b"")
    return dict(argv=["inspect", str(p)], cwd=folder, secret=None, memory=False)


@case("onnx_no_graph", "onnx", "inspect: a valid ModelProto with an opset and no graph")
def _(folder):
    m = onnx.ModelProto(ir_version=8, producer_name="x")
    m.opset_import.add(domain="", version=OPSET)
    p = save_model(m, folder / "model.onnx")
    return dict(argv=["inspect", str(p)], cwd=folder, secret=None, memory=False)


@case("onnx_opset9", "onnx", "capture: the MLP declared as opset 9 with an op the opset converter cannot adapt "
                             "(ImageScaler, dropped after opset 9)")
def _(folder):
    scaler = helper.make_node("ImageScaler", ["input"], ["scaled"], name="scaler", scale=2.0)
    return capture_spec(folder, save_model(mlp_proto(opset=9, extra_nodes=[scaler]), folder / "model" / "mlp.onnx"))


@case("onnx_raw_data_mismatch", "onnx", "capture: fc1.bias dims [8] with 12 bytes of raw_data")
def _(folder):
    t = TensorProto(name="fc1.bias", data_type=TensorProto.FLOAT, dims=[8], raw_data=B1.tobytes()[:12])
    return capture_spec(folder, save_model(mlp_proto(bias=t), folder / "model" / "mlp.onnx"))


@case("onnx_huge_dims", "onnx", "capture: an initializer of dims [2**40, 2**40] holding 32 bytes, fed to Gemm",
      isolate=True)
def _(folder):
    t = TensorProto(name="big", data_type=TensorProto.FLOAT, dims=[2**40, 2**40], raw_data=B1.tobytes())
    proto = mlp_proto(extra_inits=[t], extra_nodes=[
        helper.make_node("Gemm", ["input", "big"], ["big.out"], name="fc_big", transB=1)],
        outputs=[_vi("logits", ["N", 3]), _vi("big.out", ["N", 2**40])])
    return capture_spec(folder, save_model(proto, folder / "model" / "mlp.onnx"), memory=True)


@case("onnx_string_initializer", "onnx", "capture: fc1.weight of dtype string feeding Gemm")
def _(folder):
    t = helper.make_tensor("fc1.weight", TensorProto.STRING, [8, 4], [b"w"] * 32)
    proto = mlp_proto()
    proto.graph.initializer[0].CopyFrom(t)
    return capture_spec(folder, save_model(proto, folder / "model" / "mlp.onnx"))


@case("onnx_two_inputs", "onnx", "capture: a graph with a second data input")
def _(folder):
    proto = mlp_proto(inputs=[_vi("input", ["N", 4]), _vi("other", ["N", 4])])
    return capture_spec(folder, save_model(proto, folder / "model" / "mlp.onnx"))


@case("onnx_no_outputs", "onnx", "inspect: a graph without outputs")
def _(folder):
    p = save_model(mlp_proto(outputs=[]), folder / "model" / "mlp.onnx")
    return dict(argv=["inspect", str(p)], cwd=folder, secret=None, memory=False)


@case("onnx_unknown_op", "onnx", "capture: a node of the unknown default-domain op FrobnicateX")
def _(folder):
    proto = mlp_proto(output="fc2.out", extra_nodes=[
        helper.make_node("FrobnicateX", ["fc2.out"], ["logits"], name="frob")])
    return capture_spec(folder, save_model(proto, folder / "model" / "mlp.onnx"))


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field."""
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


@case("onnx_deep_if", "onnx", "inspect: 2000 nested If subgraphs (spliced protobuf bytes)", isolate=True)
def _(folder, depth=2000):
    leaf = helper.make_graph([helper.make_node("Constant", [], ["v"], value_float=0.0)], "leaf", [],
                             [_vi("v", [])]).SerializeToString()
    inner = leaf
    for k in range(depth):
        node = helper.make_node("If", ["cond"], ["v"], name=f"if{k}",
                                else_branch=helper.make_graph([helper.make_node("Constant", [], ["v"], value_float=1.0)],
                                                              "e", [], [_vi("v", [])]))
        then = _field(1, b"then_branch") + _varint(20 << 3) + _varint(5) + _field(6, inner)   # AttributeProto
        shell = helper.make_graph([], f"g{k}", [], [_vi("v", [])]).SerializeToString()
        inner = shell + _field(1, node.SerializeToString() + _field(5, then))                 # GraphProto.node
    proto = mlp_proto(extra_nodes=[helper.make_node("ReduceSum", ["input"], ["s"], keepdims=0),
                                   helper.make_node("Greater", ["s", "zero"], ["cond"])],
                      extra_inits=[numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    raw = proto.SerializeToString()
    p = folder / "model.onnx"
    p.write_bytes(raw + _field(7, inner))   # a second ModelProto.graph merges into the first
    return dict(argv=["inspect", str(p)], cwd=folder, secret=None, memory=False)


def _bomb_branch(op: str, width: int):
    """Nodes adding 0 * ReduceSum(<op> of shape [N, width]) to fc2's output."""
    shape = [helper.make_node("Shape", ["input"], ["in.shape"], end=1),
             helper.make_node("Concat", ["in.shape", "bomb.width"], ["bomb.shape"], axis=0)]
    if op == "ConstantOfShape":
        make = [helper.make_node("ConstantOfShape", ["bomb.shape"], ["bomb"],
                                 value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0]))]
    elif op == "Expand":
        make = [helper.make_node("Expand", ["bomb.one", "bomb.shape"], ["bomb"])]
    else:   # Tile of [N, 1] by [1, width]
        make = [helper.make_node("ReduceSum", ["input", "axis1"], ["in.col"], keepdims=1),
                helper.make_node("Tile", ["in.col", "bomb.reps"], ["bomb"])]
    tail = [helper.make_node("ReduceSum", ["bomb", "axis1"], ["bomb.sum"], keepdims=1),
            helper.make_node("Mul", ["bomb.sum", "zero1"], ["bomb.zero"]),
            helper.make_node("Add", ["fc2.out", "bomb.zero"], ["logits"], name="bomb_add")]
    inits = [numpy_helper.from_array(np.array([width], np.int64), "bomb.width"),
             numpy_helper.from_array(np.array([1, width], np.int64), "bomb.reps"),
             numpy_helper.from_array(np.array([1.0], np.float32), "bomb.one"),
             numpy_helper.from_array(np.array([1], np.int64), "axis1"),
             numpy_helper.from_array(np.array([0.0], np.float32), "zero1")]
    return mlp_proto(output="fc2.out", extra_nodes=shape + make + tail, extra_inits=inits)


def _plan(folder: Path, layer="fc1", units=8, remove=(0,)) -> Path:
    p = folder / "plan.json"
    p.write_text(json.dumps({"format": "infoprobe-pruning-plan", "version": 1, "model_sha256": None,
                             "generator": {"method": "hostile corpus"},
                             "layers": [{"layer": layer, "units": units,
                                         "remove": [{"unit": int(u), "constant": 0.0} for u in remove]}]}))
    return p


@case("onnx_shape_bomb_capture", "onnx", "capture: ConstantOfShape [N, 625e6] float32 computed at run "
      "time (100 GB for 40 rows)")
def _(folder):
    model = save_model(_bomb_branch("ConstantOfShape", 625_000_000), folder / "model" / "mlp.onnx")
    return capture_spec(folder, model, memory=True)


@case("onnx_shape_bomb_prune", "onnx", "prune (no --data): Expand to [N, 400e6] float32 at run time "
      "(102 GB for the latency batch of 64)")
def _(folder):
    model = save_model(_bomb_branch("Expand", 400_000_000), folder / "model" / "mlp.onnx")
    out = folder / "out" / "small.onnx"
    return dict(argv=["prune", str(model), str(_plan(folder)), "--out", str(out)], cwd=folder,
                secret=None, memory=True)


@case("onnx_tile_bomb_capture", "onnx", "capture: Tile of [N, 1] by [1, 625e6] at run time")
def _(folder):
    model = save_model(_bomb_branch("Tile", 625_000_000), folder / "model" / "mlp.onnx")
    return capture_spec(folder, model, memory=True)


def _grouped_conv_model(path: Path) -> Path:
    """input [N,4,5,5] -> conv c1 (4->8, 3x3) -> Relu -> depthwise dw (group 8) -> Relu -> Flatten -> fc."""
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(rng.normal(size=(8, 4, 3, 3)).astype(np.float32), "c1.w"),
             numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "c1.b"),
             numpy_helper.from_array(rng.normal(size=(8, 1, 3, 3)).astype(np.float32), "dw.w"),
             numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "dw.b"),
             numpy_helper.from_array(rng.normal(size=(3, 200)).astype(np.float32), "fc.w"),
             numpy_helper.from_array(rng.normal(size=3).astype(np.float32), "fc.b")]
    nodes = [helper.make_node("Conv", ["input", "c1.w", "c1.b"], ["c1.out"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1.out"], ["c1.post"], name="c1_relu"),
             helper.make_node("Conv", ["c1.post", "dw.w", "dw.b"], ["dw.out"], name="dw", pads=[1, 1, 1, 1], group=8),
             helper.make_node("Relu", ["dw.out"], ["dw.post"], name="dw_relu"),
             helper.make_node("Flatten", ["dw.post"], ["flat"], axis=1),
             helper.make_node("Gemm", ["flat", "fc.w", "fc.b"], ["logits"], name="fc", transB=1)]
    g = helper.make_graph(nodes, "dwnet", [_vi("input", ["N", 4, 5, 5])], [_vi("logits", ["N", 3])], inits)
    return save_model(helper.make_model(g, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=8), path)


def _grouped_prune(folder, layer):
    model = _grouped_conv_model(folder / "model" / "dw.onnx")
    out = folder / "out" / "small.onnx"
    return dict(argv=["prune", str(model), str(_plan(folder, layer, 8, (0, 1))), "--out", str(out)],
                cwd=folder, secret=None, memory=False, must_not_exist=[out])


@case("onnx_grouped_conv_prune", "onnx", "prune: remove 2 channels of a depthwise conv (group 8); "
      "no unrunnable model may be written")
def _(folder):
    return _grouped_prune(folder, "dw")


@case("onnx_grouped_conv_feeder_prune", "onnx", "prune: remove 2 channels of the conv feeding a depthwise "
      "conv; no unrunnable model may be written")
def _(folder):
    return _grouped_prune(folder, "c1")


@case("onnx_huge_input_prune", "onnx", "prune (no --data): declared input [N, 1e9] (a 238 GiB latency batch)")
def _(folder):
    proto = mlp_proto(inputs=[_vi("input.raw", ["N", 1_000_000_000])], extra_nodes=[
        helper.make_node("Slice", ["input.raw", "s0", "s4", "s1"], ["input"], name="slice")],
        extra_inits=[numpy_helper.from_array(np.array([v], np.int64), n) for n, v in (("s0", 0), ("s4", 4), ("s1", 1))])
    nodes = list(proto.graph.node)
    proto.graph.ClearField("node")
    proto.graph.node.extend([nodes[-1]] + nodes[:-1])
    model = save_model(proto, folder / "model" / "mlp.onnx")
    out = folder / "out" / "small.onnx"
    return dict(argv=["prune", str(model), str(_plan(folder)), "--out", str(out)], cwd=folder,
                secret=None, memory=True)


@case("onnx_check_candidate_dotdot", "onnx", "check: a candidate whose external data is ../outside/secret.bin")
def _(folder):
    spec = _ext_case(folder, "../outside/secret.bin")
    ref = valid_model(folder / "ref" / "mlp.onnx")
    data = valid_data(folder / "data" / "data.npz")
    return dict(spec, argv=["check", str(ref), str(folder / "model" / "mlp.onnx"), "--data", str(data),
                            "--no-progress"])


# ----------------------------------------------------------------------------- store cases

def _secret_h5(folder: Path, secret: bytes) -> Path:
    """``<folder>/outside/secret.h5`` with /pre float32 [40, 8] whose rows are the secret's bytes."""
    p = folder / "outside" / "secret.h5"
    p.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(p, "w") as f:
        f.create_dataset("pre", data=np.frombuffer(secret * N_ROWS, np.float32).reshape(N_ROWS, 8))
    return p


@case("store_external_link", "store", "importance: fc1/pre is an ExternalLink to an HDF5 file outside")
def _(folder):
    secret = secret_for(folder.name)
    src = _secret_h5(folder, secret)
    spec = store_case(folder, "importance", lambda f: _replace(
        f["layers/fc1"], "pre", lambda g, n: g.__setitem__(n, h5py.ExternalLink(str(src.resolve()), "/pre"))))
    return dict(spec, secret=secret, outside=[src])


@case("store_external_link_relative", "store", "synergy: fc1/pre is an ExternalLink to ../outside/secret.h5")
def _(folder):
    secret = secret_for(folder.name)
    src = _secret_h5(folder, secret)
    spec = store_case(folder, "synergy", lambda f: _replace(
        f["layers/fc1"], "pre", lambda g, n: g.__setitem__(n, h5py.ExternalLink("../outside/secret.h5", "/pre"))))
    return dict(spec, secret=secret, outside=[src])


@case("store_vds", "store", "frivolous: fc1/post is a virtual dataset mapping an HDF5 file outside")
def _(folder):
    secret = secret_for(folder.name)
    src = _secret_h5(folder, secret)

    def make(g, n):
        layout = h5py.VirtualLayout(shape=(N_ROWS, 8), dtype="f4")
        layout[...] = h5py.VirtualSource(str(src.resolve()), "pre", shape=(N_ROWS, 8))
        g.create_virtual_dataset(n, layout, fillvalue=0.0)

    spec = store_case(folder, "frivolous", lambda f: _replace(f["layers/fc1"], "post", make))
    return dict(spec, secret=secret, outside=[src])


def _external_raw(folder, verb, target):
    """fc1 pre and post stored as raw bytes in the external file ``target``."""
    def edit(f):
        for key in ("pre", "post"):
            _replace(f["layers/fc1"], key, lambda g, n: g.create_dataset(n, (N_ROWS, 8), "f4",
                                                                         external=[(target, 0, N_ROWS * 32)]))
    return store_case(folder, verb, edit)


@case("store_external_raw", "store", "importance: fc1 pre/post have external raw storage in a file outside")
def _(folder):
    secret = secret_for(folder.name)
    src = outside_file(folder, secret * N_ROWS)
    return dict(_external_raw(folder, "importance", str(src.resolve())), secret=secret, outside=[src])


@case("store_external_raw_passwd", "store", "synergy: fc1 pre/post have external raw storage in /etc/passwd")
def _(folder):
    spec = _external_raw(folder, "synergy", "/etc/passwd")
    head = Path("/etc/passwd").read_bytes()[:24] if Path("/etc/passwd").is_file() else None
    return dict(spec, secret=head if head and len(head) == 24 else None)


@case("store_external_raw_cwd", "store", "importance: fc1 pre/post have external raw storage 'secret.bin', "
      "run from the folder holding it (HDF5 resolves it against the cwd)")
def _(folder):
    secret = secret_for(folder.name)
    src = outside_file(folder, secret * N_ROWS)
    spec = _external_raw(folder, "importance", "secret.bin")
    return dict(spec, cwd=src.parent, secret=secret, outside=[src])


@case("store_unknown_filter", "store", "importance: fc1 pre/post chunks filtered by the unregistered filter "
      "id 300 (HDF5 then searches its plugin folder for a shared library to load)")
def _(folder):
    def make(g, n):
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((N_ROWS, 8))
        dcpl.set_filter(300, h5py.h5z.FLAG_OPTIONAL, ())
        ds = h5py.h5d.create(g.id, n.encode(), h5py.h5t.IEEE_F32LE, h5py.h5s.create_simple((N_ROWS, 8)), dcpl=dcpl)
        ds.write_direct_chunk((0, 0), np.ones((N_ROWS, 8), np.float32).tobytes(), filter_mask=0)

    def edit(f):
        for key in ("pre", "post"):
            _replace(f["layers/fc1"], key, make)
    return store_case(folder, "importance", edit)


def _bomb_store(path: Path, n: int, units: int, chunk_rows: int, fill_chunk: bytes | None = None) -> Path:
    """A store whose fc1 pre/post are [n, units] float32: unwritten (fill values) or every chunk
    written as the same gzip stream ``fill_chunk``. Index and labels are gzip-compressed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        f.attrs.update(format="infoprobe-activations", schema_version=1, created_by="hostile corpus",
                       source="onnx", complete=True, rows_written=n, n_rows=n)
        s = f.create_group("samples")
        s.create_dataset("index", data=np.arange(n, dtype=np.int64), compression="gzip", compression_opts=1)
        s.create_dataset("labels", data=np.arange(n, dtype=np.int64) % 3, compression="gzip", compression_opts=1)
        g = f.create_group("layers").create_group("fc1")
        g.attrs.update(kind="dense", activation="relu", depth=1, units=units, op="Gemm", fan_in=4,
                       is_output=False, inputs="[]")
        for key in ("pre", "post"):
            ds = g.create_dataset(key, (n, units), "f4", chunks=(chunk_rows, units),
                                  compression="gzip" if fill_chunk else None)
            if fill_chunk:
                for r in range(0, n, chunk_rows):
                    ds.id.write_direct_chunk((r, 0), fill_chunk)
        g.create_dataset("weight", data=rng.normal(size=(units, 4)).astype(np.float32))
        g.create_dataset("bias", data=np.zeros(units, np.float32))
        f.create_group("outputs").create_dataset("logits", (n, 3), "f4", chunks=(65536, 3))
    return path


def _fill_bomb(folder, verb):
    path = _bomb_store(folder / "in" / "acts.h5", 10**6, 4000, 64)
    return dict(store_spec(folder, verb, path), memory=True)


@case("store_fill_bomb_importance", "store", "importance: fc1 declared [1e6, 4000] float32 (16 GB) "
      "with no chunk written")
def _(folder):
    return _fill_bomb(folder, "importance")


@case("store_fill_bomb_synergy", "store", "synergy: fc1 declared [1e6, 4000] float32 (16 GB) with no chunk written")
def _(folder):
    return _fill_bomb(folder, "synergy")


@functools.lru_cache(maxsize=None)
def _zero_chunk_gzip(nbytes: int) -> bytes:
    return zlib.compress(bytes(nbytes), 9)


def _gzip_bomb(folder, verb):
    """fc1 [2**21, 1024] float32 (8 GiB) in 2048 chunks of 4 MiB, each ~4 KB of gzip."""
    path = _bomb_store(folder / "in" / "acts.h5", 2**21, 1024, 1024, _zero_chunk_gzip(1024 * 1024 * 4))
    return dict(store_spec(folder, verb, path), memory=True)


@case("store_gzip_bomb_importance", "store", "importance: 8 GiB of gzip-compressed chunks in a ~20 MB file")
def _(folder):
    return _gzip_bomb(folder, "importance")


@case("store_gzip_bomb_frivolous", "store", "frivolous: 8 GiB of gzip-compressed chunks in a ~20 MB file")
def _(folder):
    return _gzip_bomb(folder, "frivolous")


@case("store_inputs_not_json", "store", "synergy: fc2's 'inputs' attribute is not JSON")
def _(folder):
    return store_case(folder, "synergy", lambda f: f["layers/fc2"].attrs.__setitem__("inputs", "[fc1"))


@case("store_zero_rows", "store", "importance: every dataset has zero rows")
def _(folder):
    path = write_store(folder / "in" / "acts.h5", x=X[:0], labels=Y[:0])
    return store_spec(folder, "importance", path)


def _retype(folder, verb, dtype, values):
    def edit(f):
        for key in ("pre", "post"):
            _replace(f["layers/fc1"], key, lambda g, n: g.create_dataset(n, data=values.astype(dtype)))
    return store_case(folder, verb, edit)


@case("store_string_dtype", "store", "importance: fc1 pre/post are byte strings")
def _(folder):
    return _retype(folder, "importance", "S8", np.full((N_ROWS, 8), b"1.5"))


@case("store_complex_dtype", "store", "synergy: fc1 pre/post are complex64")
def _(folder):
    return _retype(folder, "synergy", np.complex64, forward(X)[0] + 1j)


@case("store_scalar_dataset", "store", "importance: fc1 pre/post are 0-d datasets")
def _(folder):
    def edit(f):
        for key in ("pre", "post"):
            _replace(f["layers/fc1"], key, lambda g, n: g.create_dataset(n, data=np.float32(1.0)))
    return store_case(folder, "importance", edit)


@case("store_complete_no", "store", "importance: root attribute complete = 'no' (a string)")
def _(folder):
    return store_case(folder, "importance", lambda f: f.attrs.__setitem__("complete", "no"))


def _labels(folder, verb, labels, **extra):
    return store_case(folder, verb, lambda f: _replace(f["samples"], "labels",
                                                       lambda g, n: g.create_dataset(n, data=labels)), **extra)


@case("store_labels_fractional", "store", "importance: labels are floats with fractions")
def _(folder):
    return _labels(folder, "importance", Y + 0.5)


@case("store_labels_negative", "store", "synergy: labels include -1")
def _(folder):
    return _labels(folder, "synergy", np.where(np.arange(N_ROWS) % 5 == 0, -1, Y))


@case("store_labels_huge", "store", "importance: a label of 10**12 (a huge class index)")
def _(folder):
    y = Y.copy()
    y[3] = 10**12
    return _labels(folder, "importance", y, memory=True)


@case("store_units_mismatch", "store", "frivolous: fc1 'units' says 5, the datasets hold 8")
def _(folder):
    return store_case(folder, "frivolous", lambda f: f["layers/fc1"].attrs.__setitem__("units", 5))


@case("store_conv_kind_2d", "store", "frivolous: fc1 kind 'conv' with 2-D activations")
def _(folder):
    return store_case(folder, "frivolous", lambda f: f["layers/fc1"].attrs.__setitem__("kind", "conv"))


@case("store_depth_text", "store", "importance: fc1 'depth' is the string 'deep'")
def _(folder):
    return store_case(folder, "importance", lambda f: f["layers/fc1"].attrs.__setitem__("depth", "deep"))


@case("store_no_index", "store", "importance: /samples/index is missing")
def _(folder):
    return store_case(folder, "importance", lambda f: f["samples"].__delitem__("index"))


@case("store_index_short", "store", "ablate: /samples/index has 10 rows, pre/post 40")
def _(folder):
    return store_case(folder, "ablate", lambda f: _replace(
        f["samples"], "index", lambda g, n: g.create_dataset(n, data=np.arange(10, dtype=np.int64))))


@case("store_truncated", "store", "importance: the store cut in half")
def _(folder):
    path = write_store(folder / "in" / "acts.h5")
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])
    return store_spec(folder, "importance", path)


@case("store_not_hdf5", "store", "importance: a text file named acts.h5")
def _(folder):
    path = folder / "in" / "acts.h5"
    path.parent.mkdir(parents=True)
    path.write_text("this is not an HDF5 file\n" * 20)
    return store_spec(folder, "importance", path)


@case("store_other_hdf5", "store", "importance: an HDF5 file of another format (Keras-like weights)")
def _(folder):
    path = folder / "in" / "acts.h5"
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = "2.15.0"
        f.create_group("model_weights").create_dataset("dense/kernel", data=W1)
    return store_spec(folder, "importance", path)


# ----------------------------------------------------------------------------- data cases

def _data_case(folder, data: Path, verb="capture", **extra):
    model = valid_model(folder / "model" / "mlp.onnx")
    if verb == "capture":
        return capture_spec(folder, model, data, **extra)
    argv = ["check", str(model), str(model), "--data", str(data), "--no-progress"]
    return dict(dict(argv=argv, cwd=folder, secret=None, memory=False), **extra)


def _crc32_zeros(n: int, crc: int, block: bytes) -> int:
    for _ in range(n):
        crc = zlib.crc32(block, crc)
    return crc


def _zip_bomb(path: Path, member: str, header: bytes, zero_mib: int) -> Path:
    """A zip with one deflated member: ``header`` then ``zero_mib`` MiB of zeros, written as
    one full-flushed deflate block repeated (no zeros are materialised beyond 1 MiB)."""
    block = bytes(1 << 20)
    co = zlib.compressobj(9, zlib.DEFLATED, -15)
    head = co.compress(header) + co.flush(zlib.Z_FULL_FLUSH)
    zeros = co.compress(block) + co.flush(zlib.Z_FULL_FLUSH)
    tail = co.flush(zlib.Z_FINISH)
    usize = len(header) + (zero_mib << 20)
    crc = _crc32_zeros(zero_mib, zlib.crc32(header), block)
    csize = len(head) + len(zeros) * zero_mib + len(tail)
    name = member.encode()
    local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 8, 0, 0x21, crc, csize, usize, len(name), 0) + name
    central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 8, 0, 0x21, crc, csize, usize,
                          len(name), 0, 0, 0, 0, 0, 0) + name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(local)
        f.write(head)
        for _ in range(zero_mib):
            f.write(zeros)
        f.write(tail)
        cd_offset = f.tell()
        f.write(central)
        f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, len(central), cd_offset, 0))
    return path


def _npy_header(shape, descr="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


@case("data_npz_zip_bomb", "data", "capture: .npz whose x.npy inflates to 3 GiB of zeros from ~3 MB")
def _(folder):
    mib = 3 * 1024
    path = _zip_bomb(folder / "data" / "data.npz", "x.npy", _npy_header(((mib << 20) // 16, 4)), mib)
    return _data_case(folder, path, memory=True)


@case("data_npy_huge_header", "data", "capture: .npy declaring [2**31, 4] float32 (32 GiB) with 64 bytes of data")
def _(folder):
    path = folder / "data" / "x.npy"
    path.parent.mkdir(parents=True)
    path.write_bytes(_npy_header((2**31, 4)) + bytes(64))
    return _data_case(folder, path, memory=True)


class Touch:
    """Pickles to a call that creates ``path`` (proof that the pickle was loaded)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@case("data_npz_pickle", "data", "capture: .npz with an object (pickled) x whose loading creates a marker file")
def _(folder):
    marker = folder / "pickle-was-loaded"
    header = _npy_header((1,), descr="|O")
    path = folder / "data" / "data.npz"
    path.parent.mkdir(parents=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("x.npy", header + pickle.dumps(np.array([Touch(marker)], dtype=object), protocol=2))
        with z.open("y.npy", "w") as m:
            np.save(m, Y[:1])
    return _data_case(folder, path, must_not_exist=[marker])


def _secret_x_h5(folder: Path, secret: bytes) -> Path:
    """An HDF5 file outside the input's folder whose dataset ``x`` [N_ROWS, 4] holds the secret."""
    src = folder / "outside" / "secret.h5"
    src.parent.mkdir(parents=True)
    with h5py.File(src, "w") as f:
        f.create_dataset("x", data=np.frombuffer(secret * N_ROWS, np.float32).reshape(N_ROWS, 4))
    return src


@case("data_h5_external_link", "data", "capture: .h5 data whose x is an ExternalLink to a file outside")
def _(folder):
    secret = secret_for(folder.name, 16)
    src = _secret_x_h5(folder, secret)
    path = folder / "data" / "data.h5"
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as f:
        f["x"] = h5py.ExternalLink(str(src.resolve()), "/x")
        f.create_dataset("y", data=Y)
    return dict(_data_case(folder, path), secret=secret, outside=[src])


@case("data_h5_external_raw", "data", "capture: .h5 data whose x has external raw storage outside")
def _(folder):
    secret = secret_for(folder.name, 16)
    src = outside_file(folder, secret * N_ROWS)
    path = folder / "data" / "data.h5"
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("x", (N_ROWS, 4), "f4", external=[(str(src.resolve()), 0, N_ROWS * 16)])
        f.create_dataset("y", data=Y)
    return dict(_data_case(folder, path), secret=secret, outside=[src])


@case("data_h5_vds", "data", "check: .h5 data whose x is a virtual dataset of a file outside")
def _(folder):
    secret = secret_for(folder.name, 16)
    src = _secret_x_h5(folder, secret)
    path = folder / "data" / "data.h5"
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as f:
        layout = h5py.VirtualLayout(shape=(N_ROWS, 4), dtype="f4")
        layout[...] = h5py.VirtualSource(str(src.resolve()), "x", shape=(N_ROWS, 4))
        f.create_virtual_dataset("x", layout, fillvalue=0.0)
        f.create_dataset("y", data=Y)
    return dict(_data_case(folder, path, verb="check"), secret=secret, outside=[src])


@case("data_h5_fill_bomb", "data", "capture: .h5 data whose x is declared [1e9, 4] float32 (16 GB), no chunk written")
def _(folder):
    path = folder / "data" / "data.h5"
    path.parent.mkdir(parents=True)
    with h5py.File(path, "w") as f:
        f.create_dataset("x", (10**9, 4), "f4", chunks=(65536, 4))
    return _data_case(folder, path, memory=True)


@case("data_string_x", "data", "capture: x is an array of unicode strings")
def _(folder):
    return _data_case(folder, valid_data(folder / "data" / "data.npz", x=X.astype("U8")))


@case("data_complex_x", "data", "capture: x is complex64")
def _(folder):
    return _data_case(folder, valid_data(folder / "data" / "data.npz", x=X + 1j))


@case("data_scalar_x", "data", "capture: x is a 0-d array")
def _(folder):
    return _data_case(folder, valid_data(folder / "data" / "data.npz", x=np.float32(1.0), y=None, split=None))


@case("data_empty_x", "data", "capture: x has zero samples")
def _(folder):
    return _data_case(folder, valid_data(folder / "data" / "data.npz", x=X[:0], y=Y[:0], split=SPLIT[:0]))


@case("data_labels_fractional", "data", "check: y holds floats with fractions")
def _(folder):
    return _data_case(folder, valid_data(folder / "data" / "data.npz", y=Y + 0.5), verb="check")


@case("data_labels_negative", "data", "capture: y holds -1")
def _(folder):
    return _data_case(folder, valid_data(folder / "data" / "data.npz", y=np.where(np.arange(N_ROWS) % 4 == 0, -1, Y)))


@case("data_labels_huge", "data", "check: y holds 10**12 (a huge class index)")
def _(folder):
    y = Y.copy()
    y[5] = 10**12
    return _data_case(folder, valid_data(folder / "data" / "data.npz", y=y), verb="check", memory=True)


@case("data_labels_wrong_length", "data", "capture: y has 39 entries for 40 samples")
def _(folder):
    return _data_case(folder, valid_data(folder / "data" / "data.npz", y=Y[:-1], split=None))


@case("data_npz_not_zip", "data", "capture: a .npz that is not a zip file")
def _(folder):
    path = folder / "data" / "data.npz"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 but not really a zip archive" * 8)
    return _data_case(folder, path)


@case("data_unknown_suffix", "data", "capture: data file data.csv")
def _(folder):
    path = folder / "data" / "data.csv"
    path.parent.mkdir(parents=True)
    path.write_text("1,2,3,4\n" * 40)
    return _data_case(folder, path)


@case("data_x_missing", "data", "capture: .npz without x")
def _(folder):
    return _data_case(folder, valid_data(folder / "data" / "data.npz", x=None, features=X))


# ----------------------------------------------------------------------------- result folder cases

@functools.lru_cache(maxsize=None)
def _importance_files() -> tuple:
    """(name, bytes) of the files ``infoprobe importance`` writes for the corpus's store: made
    once per process with the infoprobe library."""
    from infoprobe.analyses.importance import importance

    with tempfile.TemporaryDirectory(prefix="infoprobe-hostile-") as tmp:
        store = write_store(Path(tmp) / "acts.h5")
        importance(store, progress=False).save(Path(tmp) / "res")
        return tuple(sorted((p.name, p.read_bytes()) for p in (Path(tmp) / "res").iterdir()))


def results_folder(path: Path) -> Path:
    """A folder of genuine importance results (importance and specific_information, CSV and JSON)."""
    path.mkdir(parents=True, exist_ok=True)
    for name, data in _importance_files():
        (path / name).write_bytes(data)
    return path


def secret_table(path: Path, secret: bytes) -> Path:
    """A well-formed importance table whose layer name is the secret (it would be on the page)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": {}, "columns": ["layer", "unit", "mutual_information"],
                                "rows": [{"layer": secret.decode(), "unit": 0, "mutual_information": 0.5}]}))
    return path


def not_shown(page: Path) -> str:
    """The "Files not shown" section of a report page ('' when there is none)."""
    text = page.read_text(errors="replace")
    start = text.find('id="skipped"')
    return "" if start < 0 else html.unescape(text[start:text.index("</section>", start)])


def _listed(page: Path, name: str, why: str = "", *, shown: str = "importance"):
    """A ``verify``: the page lists ``name`` (and ``why``) under "Files not shown" and still
    shows the genuine ``shown`` section."""
    def verify():
        listed = not_shown(page)
        if f"{name}: {why}" not in listed:
            return f"{name}: {why!r} is not under 'Files not shown' ({listed[-200:]!r})"
        if shown and f'id="{shown}"' not in page.read_text(errors="replace"):
            return f"the genuine {shown} results are not on the page"
        return None
    return verify


def report_spec(folder: Path, res: Path, **extra) -> dict:
    """``report RES --out <folder>/page/report.html``."""
    page = folder / "page" / "report.html"
    page.parent.mkdir(parents=True, exist_ok=True)
    return dict(dict(argv=["report", str(res), "--out", str(page)], cwd=folder, secret=None, memory=False,
                     expect=0), **extra)


FORGED = (".infoprobe-staging-1-aaaa", ".infoprobe-staging-2-bbbb", ".infoprobe-staging-3-cccc")


def _forge(folder: Path, res: Path) -> bytes:
    """Forged staging folders in ``res`` aimed outside it (``<folder>/home``, holding the
    secret): 1 has a COMMIT naming ``x/../.bashrc`` (``res/x`` links to ``home/sub``, so
    ``x/..`` is ``home``), ``link.json`` and ``../escape.json``, its entries links to the
    secret; 2 is a link to ``home/victim``, which holds a COMMIT of its own; 3 carries marks
    with no valid seal. Returns the secret."""
    secret = secret_for(folder.name)
    home = folder / "home"
    (home / "sub").mkdir(parents=True)
    (home / ".bashrc").write_text("original bashrc\n")
    target = secret_table(home / "secret.json", secret)
    victim = home / "victim"
    victim.mkdir()
    (victim / "precious.txt").write_text("precious\n")
    (victim / ".lock").touch()
    (victim / "COMMIT").write_text(json.dumps(["precious.txt"]))
    res.mkdir(parents=True, exist_ok=True)
    (res / "x").symlink_to(home / "sub", target_is_directory=True)
    (res / "escape.json").write_text("{}")
    a = res / FORGED[0]
    (a / "x").mkdir(parents=True)
    (a / ".lock").touch()
    (a / ".bashrc").symlink_to(target)
    (a / "link.json").symlink_to(target)
    (a / "COMMIT").write_text(json.dumps(["x/../.bashrc", "link.json", "../escape.json"]))
    (res / FORGED[1]).symlink_to(victim, target_is_directory=True)
    c = res / FORGED[2]
    (c / "files").mkdir(parents=True)
    (c / ".lock").touch()
    (c / "MARK").write_text(json.dumps({"mac": "0" * 64}))
    (c / "files" / "importance.json").write_text("forged")
    (c / "COMMIT").write_text(json.dumps({"names": ["importance.json"], "mac": "0" * 64}))
    return secret


def _forged_spec(folder: Path, res: Path, spec: dict, secret: bytes) -> dict:
    """Nothing outside ``res`` changes, the forgeries stay as they were, nothing of them is
    renamed into ``res``, and the command says it left each alone."""
    state = folder / "state"

    def verify():
        moved = [n for n in (".bashrc", "link.json", "precious.txt") if os.path.lexists(res / n)]
        return f"{', '.join(moved)} renamed into the result folder" if moved else None

    return dict(spec, expect=0, secret=secret, env={"INFOPROBE_STATE_DIR": str(state)},
                unchanged=[folder, *(res / n for n in FORGED)], unchanged_except=[res, state],
                stderr_has=["left alone"], verify=verify)


@case("results_forged_staging_importance", "results", "importance --out R: R holds forged staging folders "
      "whose COMMIT climbs out (x/../.bashrc, ../escape.json, links to an outside secret) and one that is a "
      "link to an outside folder with a COMMIT; nothing outside R may change")
def _(folder):
    res = folder / "R"
    secret = _forge(folder, res)
    spec = store_case(folder, "importance")
    spec["argv"][spec["argv"].index("--out") + 1] = str(res)
    spec = _forged_spec(folder, res, spec, secret)
    genuine = json.loads(dict(_importance_files())["importance.json"])["rows"]
    forged_check = spec["verify"]

    def verify():
        if json.loads((res / "importance.json").read_text())["rows"] != genuine:
            return "importance.json is not the result of this run"
        return forged_check()
    return dict(spec, verify=verify)


@case("results_forged_staging_report", "results", "report R --out R/report.html: R holds genuine results "
      "and the forged staging folders; nothing outside R may change, no outside byte on the page")
def _(folder):
    res = results_folder(folder / "R")
    secret = _forge(folder, res)
    spec = dict(argv=["report", str(res), "--out", str(res / "report.html")], cwd=folder, memory=False, expect=0)
    spec = _forged_spec(folder, res, spec, secret)
    forged_check = spec["verify"]

    def verify():
        if 'id="importance"' not in (res / "report.html").read_text(errors="replace"):
            return "the genuine importance results are not on the page"
        return forged_check()
    return dict(spec, verify=verify)


@case("results_report_fifo", "results", "report: importance.json is a FIFO (a read blocks forever)", isolate=True)
def _(folder):
    res = results_folder(folder / "R")
    (res / "importance.json").unlink()
    os.mkfifo(res / "importance.json")
    spec = report_spec(folder, res, timeout=30.0)
    return dict(spec, verify=_listed(Path(spec["argv"][-1]), "importance.json", "a FIFO, not a regular file"))


@case("results_report_hardlink", "results", "report: importance.json is a hard link to a table outside "
      "the folder holding the secret (not watched: the link shares the secret's inode)")
def _(folder):
    secret = secret_for(folder.name)
    src = secret_table(folder / "outside" / "secret.json", secret)
    res = results_folder(folder / "R")
    (res / "importance.json").unlink()
    os.link(src, res / "importance.json")
    spec = report_spec(folder, res, secret=secret)
    return dict(spec, verify=_listed(Path(spec["argv"][-1]), "importance.json", "a hard link"))


@case("results_report_symlink", "results", "report: importance.json is a symbolic link to a table outside "
      "the folder holding the secret")
def _(folder):
    secret = secret_for(folder.name)
    src = secret_table(folder / "outside" / "secret.json", secret)
    res = results_folder(folder / "R")
    (res / "importance.json").unlink()
    (res / "importance.json").symlink_to(src)
    spec = report_spec(folder, res, secret=secret, outside=[src])
    return dict(spec, verify=_listed(Path(spec["argv"][-1]), "importance.json", "a symbolic link, not followed"))


#: (case id suffix, file, document (or raw text), the reason the page lists it with)
MALFORMED_TABLES = [
    ("rows_not_objects", "ablation.json", {"meta": {}, "columns": ["layer"], "rows": [1, 2, 3]},
     "rows[0] is a number, not an object"),
    ("meta_not_object", "synergy.json", {"meta": [1], "columns": ["layer"], "rows": [{"layer": "fc1"}]},
     "meta is a list, not an object"),
    ("deep_nesting", "ablation.json", "[" * 100_000 + "]" * 100_000, ""),
    ("deep_nesting_in_row", "synergy.json",
     '{"meta": {}, "columns": ["layer"], "rows": [{"layer": ' + "[" * 100_000 + "]" * 100_000 + "}]}", ""),
    ("columns_ints", "ablation.json", {"meta": {}, "columns": [1, 2], "rows": [{"1": 3}]},
     "columns is not a list of strings"),
    ("passed_string", "check.json", {"passed": "yes", "checks": [], "metrics": {}},
     "passed is a string, not a boolean"),
    ("checks_ints", "check.json", {"passed": True, "checks": [1, "x"], "metrics": {}},
     "checks[0] is a number, not an object"),
]

for _id, _name, _doc, _why in MALFORMED_TABLES:
    def _malformed(folder, name=_name, doc=_doc, why=_why):
        res = results_folder(folder / "R")
        (res / name).write_text(doc if isinstance(doc, str) else json.dumps(doc))
        spec = report_spec(folder, res)
        return dict(spec, verify=_listed(Path(spec["argv"][-1]), name, why))
    case(f"results_report_{_id}", "results", f"report: genuine results and a malformed {_name} "
         f"({_id.replace('_', ' ')}); listed under 'Files not shown'")(_malformed)


@case("results_report_nothing_to_show", "results", "report: a folder holding only malformed tables")
def _(folder):
    res = folder / "R"
    res.mkdir()
    (res / "ablation.json").write_text(json.dumps({"meta": {}, "columns": ["layer"], "rows": [1]}))
    (res / "importance.json").write_text("[" * 100_000)
    spec = report_spec(folder, res, expect=2, stderr_has=["ablation.json"])
    return dict(spec, must_not_exist=[spec["argv"][-1]])


# check: a candidate's record of the units it kept

KEPT = [1, 3, 4, 5, 6, 7]


def pruned_proto(kept=KEPT) -> onnx.ModelProto:
    """The MLP with fc1 cut to the units ``kept`` (as ``infoprobe prune`` with constant 0 makes it)."""
    proto = mlp_proto()
    for i, arr, name in ((0, W1[kept], "fc1.weight"), (1, B1[kept], "fc1.bias"), (2, W2[:, kept], "fc2.weight")):
        proto.graph.initializer[i].CopyFrom(numpy_helper.from_array(np.ascontiguousarray(arr), name))
    return proto


def _kept_case(folder: Path, kept_units: str | None, from_sha: bool = True) -> dict:
    """check REF CAND where CAND's ``infoprobe.kept_units`` metadata is ``kept_units``."""
    ref = valid_model(folder / "ref" / "mlp.onnx")
    proto = pruned_proto()
    if kept_units is not None:
        proto.metadata_props.add(key="infoprobe.kept_units", value=kept_units)
    if from_sha:
        proto.metadata_props.add(key="infoprobe.kept_units_from_sha256",
                                 value=hashlib.sha256(ref.read_bytes()).hexdigest())
    cand = save_model(proto, folder / "cand" / "pruned.onnx")
    data = valid_data(folder / "data" / "data.npz")
    return dict(argv=["check", str(ref), str(cand), "--data", str(data), "--no-progress"], cwd=folder, secret=None,
                memory=False, expect=(0, 1), stderr_has=["was ignored"], stdout_has=["was ignored"])


@case("results_check_kept_deep", "results", "check: the candidate's kept-units metadata nested 10^5 deep")
def _(folder):
    return _kept_case(folder, "[" * 100_000 + "]" * 100_000)


@case("results_check_kept_booleans", "results", "check: the candidate's kept units are booleans")
def _(folder):
    return _kept_case(folder, json.dumps({"fc1": [True] * len(KEPT)}))


@case("results_check_kept_unpaired", "results", "check: kept units without the reference's SHA-256 beside them")
def _(folder):
    return _kept_case(folder, json.dumps({"fc1": KEPT}), from_sha=False)


@case("results_check_kept_duplicates", "results", "check: a kept unit listed twice")
def _(folder):
    return _kept_case(folder, json.dumps({"fc1": [1, 1, 3, 4, 5, 6]}))


@case("results_check_kept_beyond", "results", "check: a kept unit beyond the reference's 8 units of fc1")
def _(folder):
    return _kept_case(folder, json.dumps({"fc1": [1, 3, 4, 5, 6, 80]}))


# analyze --plan: a plan from someone else

def analyze_plan(n_fit: int = N_ROWS, **changes) -> dict:
    """An analyze.json whose plan runs every analysis at a small setting on the corpus's MLP."""
    settings = {"importance": {"samples": n_fit, "quantizer": "threshold"},
                "ablation": {"n_steps": 3, "random_repeats": 1, "values": ["mean"]},
                "synergy": {"budget_s": 5.0, "exhaustive_sizes": {"fc1": 3}},
                "modules": {"n_random": 20, "n_shuffles": 2, "n_double": 0},
                "frivolous": {"n_permutations": 1}}
    for name, s in changes.items():
        settings[name].update(s)
    steps = [{"analysis": k, "share_s": 1.0, "estimate_s": 1.0, "cut": "", "settings": v, "skipped": ""}
             for k, v in settings.items()]
    return {"meta": {"plan": {"format": "infoprobe-analyze-plan", "version": 1, "n_fit": n_fit, "steps": steps}},
            "columns": [], "rows": []}


def analyze_spec(folder: Path, plan: Path, **extra) -> dict:
    """``analyze MLP --data DATA --plan PLAN --out <folder>/out``: nothing may appear under --out."""
    model = valid_model(folder / "model" / "mlp.onnx")
    data = valid_data(folder / "model" / "data.npz")
    out = folder / "out"
    return dict(dict(argv=["analyze", str(model), "--data", str(data), "--plan", str(plan), "--out", str(out),
                           "--no-progress"], cwd=folder, secret=None, memory=False,
                     must_not_exist=[out / "*", out / ".*"]), **extra)


def _plan_case(folder, doc, says, **extra):
    plan = folder / "plan" / "analyze.json"
    plan.parent.mkdir(parents=True)
    plan.write_bytes(doc if isinstance(doc, bytes) else json.dumps(doc).encode())
    return analyze_spec(folder, plan, stderr_has=[says], **extra)


@case("results_plan_not_json", "results", "analyze --plan: a plan that is not JSON")
def _(folder):
    return _plan_case(folder, b"not json {", "not JSON")


@case("results_plan_deep", "results", "analyze --plan: a plan of 10^5 nested lists")
def _(folder):
    return _plan_case(folder, b"[" * 100_000, "not JSON")


@case("results_plan_fifo", "results", "analyze --plan: the plan is a FIFO (a read blocks forever)", isolate=True)
def _(folder):
    plan = folder / "plan" / "analyze.json"
    plan.parent.mkdir(parents=True)
    os.mkfifo(plan)
    return analyze_spec(folder, plan, stderr_has=["not a regular file"], timeout=30.0)


@case("results_plan_booleans", "results", "analyze --plan: a count of true (a boolean)")
def _(folder):
    return _plan_case(folder, analyze_plan(modules={"n_random": True}), "modules.n_random")


@case("results_plan_unknown_setting", "results", "analyze --plan: an unknown setting of frivolous")
def _(folder):
    return _plan_case(folder, analyze_plan(frivolous={"evil": 1}), "unknown settings of frivolous")


@case("results_plan_over_ladder", "results", "analyze --plan: ablation steps 10^6, over the largest setting")
def _(folder):
    return _plan_case(folder, analyze_plan(ablation={"n_steps": 10**6}), "ablation.n_steps")


@case("results_plan_synergy_size", "results", "analyze --plan: an exhaustive synergy size of 10^9")
def _(folder):
    return _plan_case(folder, analyze_plan(synergy={"exhaustive_sizes": {"fc1": 10**9}}), "synergy.exhaustive_sizes")


# ----------------------------------------------------------------------------- scratch cases

def _tmpdir(folder: Path) -> tuple[dict, list]:
    """A TMPDIR in the case's folder: the ``env`` and the pattern of scratch folders left there."""
    tmp = folder / "tmp"
    tmp.mkdir(exist_ok=True)
    return {"TMPDIR": str(tmp)}, [tmp / "infoprobe-scratch-*"]


@case("scratch_synergy_spill_fsize", "scratch", "synergy --max-memory 8K spills fc1's values to TMPDIR under a "
      "file-size limit of 1 KiB (a full disk)", isolate=True)
def _(folder):
    env, left = _tmpdir(folder)
    spec = store_case(folder, "synergy")
    out = folder / "results"
    return dict(spec, argv=spec["argv"] + ["--max-memory", "8K"], env=env, file_size_limit=1024,
                stderr_has=["while spilling"], must_not_exist=[*left, out / "*", out / ".*"])


@case("scratch_analyze_fsize", "scratch", "analyze of a valid plan under a file-size limit of 20 kB: "
      "nothing under --out, no scratch or staging folder left", isolate=True)
def _(folder):
    env, left = _tmpdir(folder)
    plan = folder / "plan" / "analyze.json"
    plan.parent.mkdir(parents=True)
    plan.write_text(json.dumps(analyze_plan()))
    spec = analyze_spec(folder, plan, env=env, file_size_limit=20_000)
    return dict(spec, must_not_exist=[*spec["must_not_exist"], *left, folder / "**" / ".infoprobe-staging-*"])


# ----------------------------------------------------------------------------- worker cases

def workers_spec(folder: Path, address: str, *, security: bool = False, **extra) -> dict:
    """``synergy A B --scheduler ADDRESS``: two stores are two tasks, so a scheduler is used."""
    stores = [write_store(folder / "in" / name) for name in ("acts.h5", "acts2.h5")]
    out = folder / "results"
    argv = ["synergy", *map(str, stores), "--out", str(out), "--max-size", "3", "--exhaustive-up-to", "2",
            "--no-plot", "--no-progress", "--scheduler", address]
    if security:
        argv += ["--scheduler-security", str(security_file(folder / "tls"))]
    return dict(dict(argv=argv, cwd=folder, secret=None, memory=False, must_not_exist=[out]), **extra)


@functools.lru_cache(maxsize=None)
def _certificates() -> tuple:
    """PEM text of a certificate authority, certificate and key (Dask's ``Security.temporary``:
    one self-signed certificate for every role), and (certificate, key) of a stranger signed
    by nobody that authority vouches for. Made once per process."""
    from distributed.security import Security

    ours, stranger = Security.temporary(), Security.temporary()
    return ((ours.tls_ca_file, ours.tls_client_cert, ours.tls_client_key),
            (stranger.tls_client_cert, stranger.tls_client_key))


def security_file(folder: Path) -> Path:
    """``<folder>/tls.toml`` naming ca.pem, client.pem and client-key.pem beside it."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in zip(("ca.pem", "client.pem", "client-key.pem"), _certificates()[0]):
        (folder / name).write_text(text)
    path = folder / "tls.toml"
    path.write_text('ca_file = "ca.pem"\ncert = "client.pem"\nkey = "client-key.pem"\n')
    return path


def dask_message(payload) -> bytes:
    """A Dask comm message as a scheduler sends it on the wire, carrying ``payload`` pickled."""
    from distributed.protocol import dumps, to_serialize
    from distributed.protocol.utils import pack_frames

    body = pack_frames(dumps({"op": "stream-start", "payload": to_serialize(payload)}))
    return struct.pack("Q", len(body)) + body


class Listener:
    """A server on 127.0.0.1, in a daemon thread of the process that builds the case, for at
    most ``life`` seconds or until :meth:`close` (a case's ``cleanup``).

    ``"evil"`` sends ``data`` on every connection (after a TLS handshake of its own with
    ``tls``, a (cert, key) pair), reads, and sends it again; ``"silent"`` accepts and never
    answers. Every accepted connection creates ``contacted`` (when given) and is counted in
    ``accepted``."""

    def __init__(self, mode: str, *, data: bytes = b"", tls=None, contacted: Path | None = None,
                 life: float = TIMEOUT + 10):
        import socket
        import ssl
        import threading

        self.mode, self.data, self.contacted, self.conns, self.accepted = mode, data, contacted, [], 0
        self.ctx = None
        if tls is not None:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(*map(str, tls))
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.deadline = time.monotonic() + life
        self.thread = threading.Thread(target=self._serve, daemon=True, name=f"hostile-listener-{self.port}")
        self.thread.start()

    def _serve(self):
        while not self.stop.is_set() and time.monotonic() < self.deadline:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.conns.append(conn)
            self.accepted += 1
            if self.contacted is not None:
                self.contacted.touch()
            if self.mode == "silent":
                continue
            try:
                conn.settimeout(3)
                if self.ctx is not None:
                    conn = self.ctx.wrap_socket(conn, server_side=True)
                    self.conns.append(conn)
                conn.sendall(self.data)
                conn.recv(1 << 16)
                conn.sendall(self.data)
            except OSError:
                pass
        self._close_sockets()

    def _close_sockets(self):
        for c in [*self.conns, self.sock]:
            try:
                c.close()
            except OSError:
                pass

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self._close_sockets()


#: (case id suffix, address, needs a security file, what the one line says)
BAD_ADDRESSES = [
    ("foo_scheme", "foo://x", False, "foo:// is refused"),
    ("inproc", "inproc://x", False, "inproc:// is refused"),
    ("http", "http://127.0.0.1:1", False, "http:// is refused"),
    ("tcp_bad_port", "tcp://host:notaport", False, "tcp:// is refused"),
    ("plain_text", "just some text", False, "is not tls://HOST:PORT"),
    ("tls_no_certificates", "tls://127.0.0.1:1", False, "no certificates"),
    ("tls_bad_port", "tls://host:notaport", True, "the port must be a number"),
    ("tls_bad_ipv6", "tls://[::zz]:8786", True, "is not an IPv6 address"),
]

for _id, _address, _security, _says in BAD_ADDRESSES:
    case(f"workers_address_{_id}", "workers", f"synergy --scheduler {_address!r}")(
        functools.partial(lambda folder, address, security, says: workers_spec(
            folder, address, security=security, stderr_has=[says]), address=_address, security=_security, says=_says))


def _evil_case(folder: Path, scheme: str, tls=None) -> dict:
    """synergy against an evil listener at ``scheme``://127.0.0.1: its reply is a pickle whose
    loading creates a marker file."""
    marker = folder / "pickle-was-loaded"
    contacted = folder / "listener-was-contacted"
    server = Listener("evil", data=dask_message(Touch(marker)), tls=tls, contacted=contacted)
    spec = workers_spec(folder, f"{scheme}://127.0.0.1:{server.port}", security=scheme == "tls",
                        cleanup=server.close)
    spec["must_not_exist"] += [marker] + ([contacted] if scheme == "tcp" else [])
    return dict(spec, must_exist=[contacted] if scheme == "tls" else [])


@case("workers_evil_tcp", "workers", "synergy --scheduler tcp://127.0.0.1:PORT: a listener there answers with a "
      "pickle whose loading creates a marker; it must never even be contacted", isolate=True)
def _(folder):
    return dict(_evil_case(folder, "tcp"), stderr_has=["refused"])


@case("workers_evil_plain_under_tls", "workers", "synergy --scheduler tls://...: the evil listener speaks plain "
      "TCP; the TLS handshake fails before its pickle is read", isolate=True)
def _(folder):
    return dict(_evil_case(folder, "tls"), stderr_has=["Dask scheduler"])


@case("workers_evil_stranger_tls", "workers", "synergy --scheduler tls://...: the evil listener holds a TLS "
      "certificate of its own, which the security file's authority does not vouch for", isolate=True)
def _(folder):
    cert, key = (folder / "stranger" / n for n in ("cert.pem", "key.pem"))
    cert.parent.mkdir(parents=True)
    for path, text in zip((cert, key), _certificates()[1]):
        path.write_text(text)
    return dict(_evil_case(folder, "tls", tls=(cert, key)), stderr_has=["Dask scheduler"])


@case("workers_silent_tls", "workers", "synergy --scheduler tls://...: a listener that accepts and never answers; "
      "refused within infoprobe's stated deadline (parallel.SCHEDULER_TIMEOUT, 20 s) and the judge's 60 s",
      isolate=True)
def _(folder):
    contacted = folder / "listener-was-contacted"
    server = Listener("silent", contacted=contacted)
    return workers_spec(folder, f"tls://127.0.0.1:{server.port}", security=True, cleanup=server.close,
                        timeout=TIMEOUT, stderr_has=["Dask scheduler"], must_exist=[contacted])


# ----------------------------------------------------------------------------- controls

@case("control_capture", "control", "capture: the valid MLP and data")
def _(folder):
    return dict(capture_spec(folder, valid_model(folder / "model" / "mlp.onnx")), expect=0)


for _verb in ("importance", "synergy", "frivolous", "ablate"):
    case(f"control_{_verb}", "control", f"{_verb}: the valid store")(
        functools.partial(lambda folder, verb: dict(store_case(folder, verb), expect=0), verb=_verb))


@case("control_synergy_spill", "control", "synergy --max-memory 8K: fc1's values spill to TMPDIR and back")
def _(folder):
    env, left = _tmpdir(folder)
    spec = store_case(folder, "synergy")
    return dict(spec, argv=spec["argv"] + ["--max-memory", "8K"], env=env, expect=0, must_not_exist=left)


@case("control_analyze_plan", "control", "analyze --plan: the small plan of the plan and scratch cases runs")
def _(folder):
    plan = folder / "plan" / "analyze.json"
    plan.parent.mkdir(parents=True)
    plan.write_text(json.dumps(analyze_plan()))
    return dict(analyze_spec(folder, plan), expect=0, must_not_exist=[])


@case("control_prune", "control", "prune: the valid MLP, one fc1 unit removed")
def _(folder):
    model = valid_model(folder / "model" / "mlp.onnx")
    return dict(argv=["prune", str(model), str(_plan(folder)), "--out", str(folder / "out" / "small.onnx")],
                cwd=folder, secret=None, memory=False, expect=0)


# ----------------------------------------------------------------------------- judging

def snapshot(folder: Path) -> dict:
    """{path: (inode, size, mtime_ns)} of every regular file under ``folder`` (links not followed)."""
    out = {}
    for root, _dirs, files in os.walk(folder):
        for name in files:
            p = Path(root) / name
            try:
                st = p.lstat()
            except OSError:
                continue
            if not p.is_symlink():
                out[p] = (st.st_ino, st.st_size, st.st_mtime_ns)
    return out


def written_files(folder: Path, before: dict) -> list:
    """Regular files under ``folder`` that are new or changed since ``before``."""
    return [p for p, sig in snapshot(folder).items() if before.get(p) != sig]


def _contains(path: Path, needle: bytes) -> bool:
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                return False
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
                if m.find(needle) >= 0:
                    return True
    except (OSError, ValueError):
        return False
    if path.suffix in (".h5", ".hdf5", ".partial") or path.name.endswith(".h5.partial"):
        return _h5_contains(path, needle)
    return False


def _h5_contains(path: Path, needle: bytes, limit=64 * 2**20) -> bool:
    """Whether a dataset of an HDF5 output holds ``needle`` (catches compressed datasets)."""
    found = []

    def visit(_name, obj):
        if isinstance(obj, h5py.Dataset) and obj.size * obj.dtype.itemsize <= limit and not found:
            try:
                if obj.is_virtual or obj.external:
                    return
                if needle in np.ascontiguousarray(obj[()]).tobytes():
                    found.append(True)
            except Exception:
                pass
    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except Exception:
        return False
    return bool(found)


class OpenWatch:
    """Report which of ``paths`` were opened or read (Linux inotify; a no-op elsewhere)."""

    IN_ACCESS, IN_OPEN = 0x1, 0x20

    def __init__(self, paths):
        self.paths = [Path(p) for p in paths or []]
        self.fd, self.wds = -1, {}

    def __enter__(self):
        if not self.paths:
            return self
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            self.fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
            for p in self.paths:
                wd = libc.inotify_add_watch(self.fd, os.fsencode(p.resolve()), self.IN_ACCESS | self.IN_OPEN)
                if wd >= 0:
                    self.wds[wd] = p
        except (OSError, AttributeError):
            self.fd = -1
        return self

    def opened(self) -> list:
        """Watched paths opened or read since ``__enter__``."""
        hit = []
        while self.fd >= 0:
            try:
                buf = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            off = 0
            while off + 16 <= len(buf):
                wd, _mask, _cookie, size = struct.unpack_from("iIII", buf, off)
                off += 16 + size
                if wd in self.wds and self.wds[wd] not in hit:
                    hit.append(self.wds[wd])
        return hit

    def __exit__(self, *exc):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclass
class Outcome:
    """What a command did: exit status, output, peak RSS (MiB, None in-process), seconds."""

    rc: int
    stdout: bytes
    stderr: bytes
    peak_mib: float | None = None
    seconds: float = 0.0
    crash: str | None = None      # unhandled exception (in-process) or kill reason
    opened: list | None = None


def _file_size_limit(nbytes: int):
    """A ``preexec_fn``: writes past ``nbytes`` fail with ``EFBIG`` (``SIGXFSZ`` ignored)."""
    def apply():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


def run_subprocess(cmd: list, spec: dict, *, timeout: float | None = None, rss_kill: int = RSS_BUDGET) -> Outcome:
    """Run ``cmd + spec["argv"]`` in ``spec["cwd"]`` with the spec's ``env`` and
    ``file_size_limit``; kill it past ``timeout`` (default: the spec's ``timeout``, else
    :data:`TIMEOUT`) or at ``rss_kill`` bytes of RSS (so that a bomb cannot take the machine
    down); peak RSS from ``wait4``. A file-size limit applies to the captured stdout and
    stderr too (ample for one error line)."""
    timeout = timeout if timeout is not None else spec.get("timeout", TIMEOUT)
    env = dict(os.environ, **spec["env"]) if spec.get("env") else None
    limit = spec.get("file_size_limit")
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, OpenWatch(spec.get("outside")) as watch:
        t0 = time.monotonic()
        proc = subprocess.Popen([*cmd, *spec["argv"]], cwd=spec["cwd"], stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env,
                                preexec_fn=_file_size_limit(limit) if limit else None)
        killed, status, usage = None, None, None
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - t0 > timeout:
                killed = f"timed out after {timeout:.0f} s"
            elif _rss(proc.pid) > rss_kill:
                killed = f"killed at RSS over {rss_kill / 2**30:.1f} GiB"
            if killed:
                os.killpg(proc.pid, signal.SIGKILL)
                _pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.02)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.monotonic() - t0
        opened = watch.opened()
        out.seek(0)
        err.seek(0)
        return Outcome(proc.returncode, out.read(), err.read(), usage.ru_maxrss / 1024, seconds, killed, opened)


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def tree(root: Path, skip=()) -> dict:
    """{path relative to ``root``: kind and content} of ``root`` and everything under it: a
    folder, a link (its target, not followed), a regular file (its SHA-256) or another kind
    (never opened). Entries under a ``skip`` path that lies inside ``root`` are left out."""
    root = Path(root)
    skip = [Path(q) for q in skip if root in Path(q).parents]
    out = {}

    def entry(p: Path):
        try:
            st = p.lstat()
        except OSError:
            return ("missing",)
        if stat.S_ISLNK(st.st_mode):
            return ("link", os.readlink(p))
        if stat.S_ISDIR(st.st_mode):
            return ("dir",)
        if stat.S_ISREG(st.st_mode):
            with open(p, "rb") as f:
                return ("file", hashlib.file_digest(f, "sha256").hexdigest())
        return ("other", stat.S_IFMT(st.st_mode))

    out["."] = entry(root)
    if out["."] != ("dir",):
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if not any(p == q or q in p.parents for q in skip):
                out[str(p.relative_to(root))] = entry(p)
    return out


def _rel(p: Path, folder: Path) -> str:
    return str(p.relative_to(folder)) if Path(p).is_relative_to(folder) else str(p)


def judge(spec: dict, outcome: Outcome, folder: Path, before: dict) -> list:
    """Reasons why a case was not handled correctly (empty: refused or run correctly).

    Rules: the expected exit status; for status 2, stderr is exactly one line starting with
    ``infoprobe: error:`` and no traceback; the secret in no written file, not on stdout or
    stderr; no watched outside file opened; ``must_not_exist`` paths absent (patterns match
    nothing), ``must_exist`` paths there; ``unchanged`` paths as :func:`build` found them; ``stderr_has`` and
    ``stdout_has`` said; for ``memory`` cases a peak RSS under :data:`RSS_BUDGET`;
    ``verify()`` passes after a success.
    """
    reasons = []
    expect = spec.get("expect", 2)
    expects = tuple(expect) if isinstance(expect, (tuple, list, set, frozenset)) else (expect,)
    err = outcome.stderr.decode("utf-8", "replace")
    out = outcome.stdout.decode("utf-8", "replace")
    if outcome.crash:
        reasons.append(outcome.crash)
    if outcome.rc not in expects:
        reasons.append(f"exit {outcome.rc}, expected {' or '.join(map(str, expects))}")
    if "Traceback" in err:
        last = [ln for ln in err.strip().splitlines() if ln.strip()][-1:]
        reasons.append("traceback: " + (last[0][:160] if last else ""))
    elif 2 in expects and outcome.rc == 2:
        lines = err.splitlines()
        if len(lines) != 1 or not lines[0].startswith(ERROR_PREFIX) or not lines[0][len(ERROR_PREFIX):].strip():
            reasons.append(f"stderr is {len(lines)} lines, not one '{ERROR_PREFIX}' line: "
                           + " | ".join(ln[:100] for ln in lines[:3]))
    secret = spec.get("secret")
    if secret:
        if secret in outcome.stdout or secret in outcome.stderr:
            reasons.append("the secret is on stdout or stderr")
        leaked = [p for p in written_files(folder, before) if _contains(p, secret)]
        if leaked:
            reasons.append("the secret is in " + ", ".join(str(p.relative_to(folder)) for p in leaked))
    if outcome.opened:
        reasons.append("opened outside file " + ", ".join(str(p.relative_to(folder)) if p.is_relative_to(folder)
                                                          else str(p) for p in outcome.opened))
    for p in spec.get("must_not_exist", ()):
        if glob.has_magic(str(p)):
            found = sorted(glob.glob(str(p), recursive=True))
            if found:
                reasons.append(", ".join(_rel(Path(f), folder) for f in found[:3]) + " left behind")
        elif os.path.lexists(p):
            reasons.append(f"{Path(p).name} exists")
    for p in spec.get("must_exist", ()):
        if not os.path.lexists(p):
            reasons.append(f"{Path(p).name} does not exist")
    for p, old in spec.get("_unchanged", {}).items():
        new = tree(p, spec.get("unchanged_except", ()))
        if new != old:
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            reasons.append(f"{_rel(p, folder)} changed: " + ", ".join(changed[:4]))
    for key, text in (("stderr_has", err), ("stdout_has", out)):
        for needle in spec.get(key, ()):
            if needle not in text:
                reasons.append(f"{key.split('_')[0]} does not say {needle!r}")
    if spec.get("memory") and outcome.peak_mib is not None and outcome.peak_mib * 2**20 > RSS_BUDGET:
        reasons.append(f"peak RSS {outcome.peak_mib:.0f} MiB over {RSS_BUDGET / 2**30:.0f} GiB")
    if outcome.rc in expects and outcome.rc != 2 and spec.get("verify"):
        try:
            why = spec["verify"]()
        except Exception as exc:   # the output itself is unreadable
            why = f"output unreadable: {type(exc).__name__}: {exc}"
        if why:
            reasons.append(why)
    return reasons


def build(c: Case, folder: Path) -> tuple[dict, dict]:
    """Build case ``c`` in the empty ``folder``; return its spec (with the state of its
    ``unchanged`` paths) and the file snapshot. Call :func:`finish` with the spec once the
    command is judged."""
    folder.mkdir(parents=True, exist_ok=True)
    spec = c.build(folder)
    try:
        spec["_unchanged"] = {Path(p): tree(p, spec.get("unchanged_except", ())) for p in spec.get("unchanged", ())}
        return spec, snapshot(folder)
    except BaseException:
        finish(spec)
        raise


def finish(spec: dict) -> None:
    """Run the spec's ``cleanup`` (e.g. stop a listener ``build`` started), once."""
    cleanup = spec.pop("cleanup", None)
    if cleanup is not None:
        cleanup()


def cases(classes=None) -> list:
    """Cases of the given classes (all when None)."""
    return [c for c in CASES if classes is None or c.cls in classes]


def _check_unique():
    ids = [c.id for c in CASES + CONTROLS]
    dup = {i for i in ids if ids.count(i) > 1}
    assert not dup, dup


_check_unique()
