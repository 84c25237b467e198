"""The HDF5 activation store, schema version 1 (DESIGN.md).

::

    /                attrs: format="infoprobe-activations", schema_version=1, created_by,
                            source, model_sha256, complete, plus capture provenance
    /samples/labels  int64 [N]        (absent for unlabelled data)
    /samples/index   int64 [N]
    /layers/<name>/  attrs: kind, activation, depth, units, inputs, op, fan_in, is_output
        pre, post    float32 [N, U] or [N, C, H, W]
        weight       float32 [U, fan_in] or [C_out, C_in, kh, kw]
        bias         float32 [U]
    /outputs/logits  float32 [N, classes]

Datasets are chunked along N (about 1 MiB a chunk) so readers stream through files larger
than memory. A writer builds ``<path>.partial`` and renames it to ``<path>`` only after the
last row, so a file at ``<path>`` is always complete; an interrupted writer resumes from the
rows recorded in the partial file's ``rows_written`` attribute.
"""
from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import h5py
import numpy as np

from .errors import DataError, OutputExistsError, StoreError

FORMAT = "infoprobe-activations"
SCHEMA_VERSION = 1
LAYER_ATTRS = ("kind", "activation", "depth", "units")


def _version() -> str:
    from . import __version__

    return f"infoprobe {__version__}"


def _chunk_rows(per_row: int) -> int:
    return int(max(1, min(65536, (1 << 20) // max(1, per_row * 4))))


def partial_path(path: Path) -> Path:
    """Where an unfinished store for ``path`` is written."""
    return path.with_name(path.name + ".partial")


class StoreWriter:
    """Write an activation store row block by row block, with resume.

    Parameters
    ----------
    path : path-like
        Final file name. Work happens in ``<path>.partial``.
    n_rows : int
        Number of samples N.
    layers : list of dict
        One per layer: ``name``, ``shape`` (per-sample), ``weight``, ``bias`` and the layer
        attributes (``kind``, ``activation``, ``depth``, ``units``, ``inputs``, ...).
    n_outputs : int
        Width of ``/outputs/logits``.
    labels, index : int array [N] or None
    attrs : dict
        Root attributes (``source``, ``model_sha256``, provenance). A partial file is resumed
        only when its ``fingerprint`` attribute equals ``attrs["fingerprint"]``.
    overwrite : bool
        Replace an existing complete store at ``path`` (only once the new one is complete).

    Raises
    ------
    OutputExistsError
        ``path`` exists and ``overwrite`` is false.
    StoreError
        A partial file exists for different inputs (and ``overwrite`` is false).
    """

    def __init__(self, path, *, n_rows: int, layers: list, n_outputs: int, labels=None, index=None,
                 attrs: dict | None = None, overwrite: bool = False):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        self.n_rows = int(n_rows)
        attrs = dict(attrs or {})
        if self.path.exists() and not overwrite:
            raise OutputExistsError(f"{self.path} already exists; pass --overwrite to replace it "
                                    "(the old file is kept until the new one is complete)")
        self.resumed = False
        if self.partial.exists():
            try:
                with h5py.File(self.partial, "r") as f:
                    same = (f.attrs.get("format") == FORMAT
                            and f.attrs.get("fingerprint") == attrs.get("fingerprint")
                            and int(f.attrs.get("n_rows", -1)) == self.n_rows)
            except OSError:
                same = False
            if same:
                self.resumed = True
            elif not overwrite:
                raise StoreError(f"{self.partial} is an unfinished capture of other inputs; delete "
                                 "it or pass --overwrite to start again")
        if not self.resumed:
            self._create(layers, n_outputs, labels, index, attrs)
        self.file = h5py.File(self.partial, "r+")
        self.rows_written = int(self.file.attrs["rows_written"])

    def _create(self, layers, n_outputs, labels, index, attrs):
        tmp = self.partial
        with h5py.File(tmp, "w") as f:
            f.attrs.update(format=FORMAT, schema_version=SCHEMA_VERSION, created_by=_version(),
                           complete=False, rows_written=0, n_rows=self.n_rows)
            for k, v in attrs.items():
                f.attrs[k] = json.dumps(v) if isinstance(v, (dict, list, tuple)) else v
            s = f.create_group("samples")
            if labels is not None:
                s.create_dataset("labels", data=np.asarray(labels, np.int64))
            s.create_dataset("index", data=np.asarray(index if index is not None else np.arange(self.n_rows), np.int64))
            g = f.create_group("layers")
            for lay in layers:
                lg = g.create_group(lay["name"])
                for k in ("kind", "activation", "depth", "units", "op", "fan_in", "is_output"):
                    if k in lay:
                        lg.attrs[k] = lay[k]
                lg.attrs["inputs"] = json.dumps(list(lay.get("inputs", [])))
                shape = tuple(lay["shape"])
                rows = _chunk_rows(int(np.prod(shape)))
                for ds in ("pre", "post"):
                    lg.create_dataset(ds, shape=(self.n_rows, *shape), dtype="f4",
                                      chunks=(min(rows, max(1, self.n_rows)), *shape))
                lg.create_dataset("weight", data=np.asarray(lay["weight"], np.float32))
                lg.create_dataset("bias", data=np.asarray(lay["bias"], np.float32))
            o = f.create_group("outputs")
            o.create_dataset("logits", shape=(self.n_rows, n_outputs), dtype="f4",
                             chunks=(min(_chunk_rows(n_outputs), max(1, self.n_rows)), n_outputs))

    def write(self, start: int, blocks: dict) -> None:
        """Write rows ``start : start + n`` of each dataset in ``blocks`` (path -> array).

        Rows must be written in order; ``rows_written`` advances only after every dataset of
        the block is written and flushed.
        """
        if start != self.rows_written:
            raise StoreError(f"rows must be written in order: expected row {self.rows_written}, got {start}")
        n = None
        for key, arr in blocks.items():
            n = len(arr) if n is None else n
            if len(arr) != n:
                raise StoreError("blocks of one write must have the same number of rows")
            self.file[key][start:start + n] = arr
        self.file.flush()
        self.rows_written = start + (n or 0)
        self.file.attrs["rows_written"] = self.rows_written
        self.file.flush()

    def finish(self) -> Path:
        """Mark the store complete and move it to its final name (atomic rename)."""
        if self.rows_written != self.n_rows:
            raise StoreError(f"only {self.rows_written} of {self.n_rows} rows were written")
        self.file.attrs["complete"] = True
        self.file.close()
        os.replace(self.partial, self.path)
        return self.path

    def close(self) -> None:
        """Close the partial file without completing it (it can be resumed later)."""
        if self.file.id.valid:
            self.file.close()


class Store:
    """Lazy, validated reader of an activation store.

    Opening checks the format, schema version, the ``complete`` flag and that every
    layer's datasets agree in shape; activations are only read on request, in chunks.

    Parameters
    ----------
    path : path-like

    Raises
    ------
    StoreError
        Missing file, not HDF5, not an infoprobe store, other schema version, incomplete,
        or inconsistent shapes.
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.is_file():
            hint = " (an unfinished capture exists: re-run capture to resume it)" \
                if partial_path(self.path).exists() else ""
            raise StoreError(f"activation store {self.path} does not exist{hint}")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError:
            raise StoreError(f"{self.path} is not a readable HDF5 file (truncated or another format)") from None
        try:
            self._validate()
        except Exception:
            self.file.close()
            raise

    def _validate(self):
        f, p = self.file, self.path
        if f.attrs.get("format") != FORMAT:
            raise StoreError(f"{p} is not an infoprobe activation store (no format='{FORMAT}' attribute)")
        if int(f.attrs.get("schema_version", -1)) != SCHEMA_VERSION:
            raise StoreError(f"{p} has schema version {f.attrs.get('schema_version')}; this infoprobe reads "
                             f"version {SCHEMA_VERSION}")
        if not bool(f.attrs.get("complete", False)):
            raise StoreError(f"{p} is incomplete (capture was interrupted); re-run capture to resume it")
        if "layers" not in f or not len(f["layers"]):
            raise StoreError(f"{p} has no /layers")
        if "samples/index" not in f:
            raise StoreError(f"{p} has no /samples/index")
        self.n_rows = int(f["samples/index"].shape[0])
        if "samples/labels" in f and f["samples/labels"].shape != (self.n_rows,):
            raise StoreError(f"{p}: /samples/labels has shape {f['samples/labels'].shape}, expected ({self.n_rows},)")
        for name, g in f["layers"].items():
            for key in ("pre", "post"):
                if key not in g:
                    raise StoreError(f"{p}: layer {name!r} has no {key!r} dataset")
            if g["pre"].shape != g["post"].shape or g["post"].shape[0] != self.n_rows:
                raise StoreError(f"{p}: layer {name!r} has pre {g['pre'].shape} and post {g['post'].shape} "
                                 f"for {self.n_rows} samples")
            for k in LAYER_ATTRS:
                if k not in g.attrs:
                    raise StoreError(f"{p}: layer {name!r} lacks the attribute {k!r}")
            if int(g.attrs["units"]) != g["post"].shape[1]:
                raise StoreError(f"{p}: layer {name!r} says {g.attrs['units']} units but stores "
                                 f"{g['post'].shape[1]}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Close the HDF5 file."""
        self.file.close()

    @functools.cached_property
    def sha256(self) -> str:
        """SHA-256 of the store file, computed once (for result provenance)."""
        from .model import sha256_file

        return sha256_file(self.path)

    @property
    def attrs(self) -> dict:
        """Root attributes (provenance)."""
        return {k: (v.item() if hasattr(v, "item") else v) for k, v in self.file.attrs.items()}

    @property
    def layer_names(self) -> list:
        """Layer names in capture order (by depth, then name order of the file)."""
        names = list(self.file["layers"].keys())
        return sorted(names, key=lambda n: (int(self.file["layers"][n].attrs["depth"]), names.index(n)))

    def layer_info(self, name: str) -> dict:
        """Attributes of layer ``name`` plus its per-sample ``shape``."""
        g = self._group(name)
        info = {k: (v.item() if hasattr(v, "item") else v) for k, v in g.attrs.items()}
        info["inputs"] = json.loads(info.get("inputs", "[]"))
        info["shape"] = tuple(g["post"].shape[1:])
        info["name"] = name
        return info

    def hidden_layers(self) -> list:
        """Layers not flagged ``is_output``."""
        return [n for n in self.layer_names if not bool(self._group(n).attrs.get("is_output", False))]

    def _group(self, name):
        if name not in self.file["layers"]:
            raise StoreError(f"layer {name!r} is not in {self.path}; it has: {', '.join(self.layer_names)}")
        return self.file["layers"][name]

    @property
    def labels(self) -> np.ndarray | None:
        """Class labels int64 [N], or None for unlabelled data."""
        return self.file["samples/labels"][()] if "samples/labels" in self.file else None

    def require_labels(self) -> np.ndarray:
        """Class labels; raises :class:`DataError` when the store has none."""
        y = self.labels
        if y is None:
            raise DataError(f"{self.path} has no labels (/samples/labels); this measure needs class "
                            "labels: capture from data with a 'y' array")
        if len(y) and y.min() < 0:
            raise DataError(f"{self.path}: labels must be non-negative class indices")
        return y

    def dataset(self, layer: str, which: str = "post") -> h5py.Dataset:
        """The lazy h5py dataset ``which`` in {"pre", "post", "weight", "bias"} of ``layer``."""
        g = self._group(layer)
        if which not in g:
            raise StoreError(f"layer {layer!r} has no {which!r} dataset")
        return g[which]

    def iter_rows(self, layer: str, which: str = "post", rows: int | None = None):
        """Yield ``(start, float32 block [n, ...])`` over all samples, checking for NaN/inf.

        Raises
        ------
        DataError
            A block holds NaN or infinite values.
        """
        ds = self.dataset(layer, which)
        step = rows or max(ds.chunks[0] if ds.chunks else 4096, 4096)
        for start in range(0, ds.shape[0], step):
            block = ds[start:start + step]
            if not np.isfinite(block).all():
                bad = start + int(np.flatnonzero(~np.isfinite(block.reshape(len(block), -1)).all(1))[0])
                raise DataError(f"{self.path}: layer {layer!r} {which} activations contain NaN or inf "
                                f"(first at sample {bad}); fix the model or the input data")
            yield start, block

    def read(self, layer: str, which: str = "post") -> np.ndarray:
        """Whole dataset as float32 in memory, checked for NaN/inf (see :meth:`iter_rows`)."""
        return np.concatenate([b for _, b in self.iter_rows(layer, which)]) if self.n_rows else \
            np.empty((0, *self.dataset(layer, which).shape[1:]), np.float32)
