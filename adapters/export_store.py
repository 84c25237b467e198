"""Framework-neutral part of the adapters' ``export_activations``: layer specs and the store writer."""
from __future__ import annotations

import json
import uuid
from pathlib import Path

import h5py
import numpy as np
from tqdm.auto import tqdm

from infoprobe.errors import DataError, ModelError
from infoprobe.store import StoreWriter, partial_path

_FINGERPRINT_KEY = "export"


def _drop_stale_partial(partial: Path) -> None:
    """Remove the partial file of an earlier export that was killed (exports never resume);
    a partial capture of ``infoprobe capture`` is left alone."""
    if not partial.exists():
        return
    try:
        with h5py.File(partial, "r") as f:
            fp = json.loads(str(f.attrs.get("fingerprint", "{}")))
    except (OSError, ValueError):
        return
    if isinstance(fp, dict) and set(fp) == {_FINGERPRINT_KEY}:
        partial.unlink()


def _writer(out, **kwargs) -> StoreWriter:
    partial = partial_path(Path(out))
    existed = partial.exists()
    try:
        return StoreWriter(out, **kwargs)
    except BaseException:
        if not existed:
            partial.unlink(missing_ok=True)
        raise


def depths(inputs: dict) -> dict:
    """Depth of each layer: 1 when fed by the model input only, else 1 + the deepest upstream."""
    out = {}

    def depth(name, seen=()):
        if name in seen:
            raise ModelError(f"layer {name!r} feeds itself; infoprobe analyses feed-forward networks")
        if name not in out:
            out[name] = 1 + max((depth(u, seen + (name,)) for u in inputs[name]), default=0)
        return out[name]

    for name in inputs:
        depth(name)
    return out


def layer_spec(name, *, kind, op, activation, weight, bias, shape, inputs, depth, is_output) -> dict:
    """One layer of a store in the form :class:`infoprobe.store.StoreWriter` takes."""
    weight = np.ascontiguousarray(weight, np.float32)
    return dict(name=name, kind=kind, op=op, activation=activation, units=int(weight.shape[0]),
                fan_in=int(np.prod(weight.shape[1:])), depth=int(depth), inputs=list(inputs),
                is_output=bool(is_output), shape=tuple(int(d) for d in shape), weight=weight,
                bias=np.ascontiguousarray(bias, np.float32))


def write_batches(out, *, n_rows: int, specs: list, batches, has_labels: bool, source: str,
                  attrs: dict | None = None, overwrite: bool = False, progress: bool = True) -> Path:
    """Write a store from an iterator of batches.

    Parameters
    ----------
    out : path-like
    n_rows : int
        Samples N the iterator yields in all.
    specs : list of dict
        From :func:`layer_spec`.
    batches : iterator of (blocks, labels)
        ``blocks`` maps ``"layers/<name>/pre"``, ``".../post"`` and ``"outputs/logits"`` to
        float32 arrays [n, ...]; ``labels`` is int [n] or None.
    has_labels : bool
        Whether the store gets ``/samples/labels`` (every batch must then carry labels).

    Raises
    ------
    DataError
        The batches hold more or fewer than ``n_rows`` samples, or labels come and go.
    OutputExistsError, StoreError
        As :class:`infoprobe.store.StoreWriter`.
    """
    _drop_stale_partial(partial_path(Path(out)))
    writer, done = None, False
    try:
        start = 0
        with tqdm(total=n_rows, unit="sample", desc="export", disable=not progress) as bar:
            for blocks, labels in batches:
                if writer is None:
                    n_out = blocks["outputs/logits"].shape[-1]
                    # A fresh fingerprint: an export is never resumed (a framework's data
                    # cannot be hashed up front); a failed one removes its partial file.
                    writer = _writer(out, n_rows=n_rows, layers=specs, n_outputs=int(n_out),
                                         labels=np.zeros(n_rows, np.int64) if has_labels else None,
                                         overwrite=overwrite,
                                         attrs=dict(attrs or {}, source=source,
                                                    fingerprint=json.dumps({_FINGERPRINT_KEY: uuid.uuid4().hex})))
                n = len(blocks["outputs/logits"])
                if start + n > n_rows:
                    raise DataError(f"the data yielded more than the {n_rows} samples announced")
                if has_labels != (labels is not None):
                    raise DataError("some batches carry labels and others do not")
                if labels is not None:
                    blocks = dict(blocks, **{"samples/labels": np.asarray(labels, np.int64).reshape(-1)})
                writer.write(start, blocks)
                start += n
                bar.update(n)
        if writer is None:
            raise DataError("the data yielded no samples")
        if start != n_rows:
            raise DataError(f"the data yielded {start} samples, not the {n_rows} announced")
        path = writer.finish()
        done = True
        return path
    finally:
        if writer is not None and not done:
            writer.close()
            writer.partial.unlink(missing_ok=True)  # never resumed: leave nothing half-written


def write_mapped_onnx(irm, path: Path, modules: dict) -> dict:
    """Write an exported ``onnx_ir`` model with the module -> unit-layer map in its metadata.

    Parameters
    ----------
    irm : onnx_ir.Model
        The export, its affine nodes already renamed.
    path : Path
        Written atomically (a temporary sibling is discovered first, then removed).
    modules : dict
        Affine node name -> framework module name.

    Returns
    -------
    dict
        {module name: unit-layer name} as written under
        :data:`infoprobe.model.MODULE_MAP_KEY`.

    Raises
    ------
    ModelError
        The export has no unit layer infoprobe can analyse.
    """
    import onnx_ir as ir

    from infoprobe.model import MODULE_MAP_KEY, load_model
    from infoprobe.results import atomic_write_bytes

    tmp = path.with_name(f".{path.name}.unmapped")
    try:
        atomic_write_bytes(tmp, ir.to_proto(irm).SerializeToString(), staged=False)
        lm = load_model(tmp)
        mapping = {modules[lay.nodes[0]]: lay.name for lay in lm.layers if lay.nodes[0] in modules}
    finally:
        tmp.unlink(missing_ok=True)
    irm.metadata_props[MODULE_MAP_KEY] = json.dumps(mapping)
    atomic_write_bytes(path, ir.to_proto(irm).SerializeToString())
    return mapping
