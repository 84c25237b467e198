"""Result tables as JSON and CSV with provenance, written atomically."""
from __future__ import annotations

import csv
import io
import json
import os
import platform
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .errors import OutputExistsError


def atomic_write_bytes(path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename,
    so a reader never sees a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _plain(v):
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if np.isfinite(v) else None
    if isinstance(v, np.ndarray):
        return [_plain(x) for x in v.tolist()]
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, Path):
        return str(v)
    return v


def provenance(inputs: dict | None = None, params: dict | None = None) -> dict:
    """Versions, input files with SHA-256, and parameters: what regenerates a result.

    Parameters
    ----------
    inputs : dict of role -> (path, sha256)
    params : dict of JSON-serialisable parameters
    """
    import h5py
    import onnx
    import onnxruntime

    from . import __version__

    return {
        "infoprobe": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"python": platform.python_version(), "numpy": np.__version__,
                     "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
                     "h5py": h5py.__version__},
        "inputs": {k: {"path": str(p), "sha256": s} for k, (p, s) in (inputs or {}).items()},
        "parameters": _plain(params or {}),
    }


def check_outputs(paths, overwrite: bool) -> None:
    """Refuse to replace existing result files unless ``overwrite``.

    Raises
    ------
    OutputExistsError
    """
    existing = [str(p) for p in paths if Path(p).exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} already exists; choose another --out folder or pass "
                                "--overwrite")


def write_table(outdir, name: str, rows: list, meta: dict) -> list:
    """Write ``rows`` (list of dicts with the same keys) as ``name.csv`` and ``name.json``.

    The JSON holds ``{"meta": meta, "columns": [...], "rows": [...]}``; NaN and infinities
    become null (an empty CSV cell).
    Returns the two paths.
    """
    outdir = Path(outdir)
    columns = list(rows[0].keys()) if rows else []
    clean = [{k: _plain(r.get(k)) for k in columns} for r in rows]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    w.writeheader()
    for r in clean:
        w.writerow({k: ("" if v is None else (json.dumps(v) if isinstance(v, list) else v)) for k, v in r.items()})
    csv_path, json_path = outdir / f"{name}.csv", outdir / f"{name}.json"
    atomic_write_bytes(csv_path, buf.getvalue().encode())
    atomic_write_bytes(json_path, json.dumps({"meta": meta, "columns": columns, "rows": clean},
                                             indent=1, allow_nan=False).encode())
    return [csv_path, json_path]


def read_table(path) -> list:
    """Rows of a table written by :func:`write_table` (the ``.json`` file)."""
    with open(path) as f:
        return json.load(f)["rows"]
