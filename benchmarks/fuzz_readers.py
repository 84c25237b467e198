"""Fuzz the readers of untrusted files: ONNX models, activation stores, data files.

Each input is written to a temporary folder and opened the way every command opens it
(``load_model``; ``Store`` and every layer read; ``load_data``). An
:class:`~infoprobe.errors.InfoprobeError` is the expected refusal; any other exception, a
crash or memory past ``-rss_limit_mb`` is a finding, reported by libFuzzer with the input
that caused it. The seeds are valid files (a bundled model, a store captured from it, the
bundled data), so the mutations start inside the formats.

Needs ``pip install atheris`` (not a dependency of infoprobe). Run by hand::

    python benchmarks/fuzz_readers.py model -max_total_time=300 -rss_limit_mb=2048
    python benchmarks/fuzz_readers.py store -max_total_time=300 -rss_limit_mb=2048
    python benchmarks/fuzz_readers.py data  -max_total_time=300 -rss_limit_mb=2048

Further libFuzzer flags (``-runs=N``, ``-seed=S``) pass through.
"""
from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

import atheris

with atheris.instrument_imports(include=["infoprobe"]):
    from infoprobe.data import load_data
    from infoprobe.errors import InfoprobeError
    from infoprobe.limits import budgets
    from infoprobe.model import load_model
    from infoprobe.store import Store

FIX = Path(__file__).resolve().parents[1] / "fixtures"
WORK = Path(tempfile.mkdtemp(prefix="infoprobe-fuzz-"))
#: A small memory budget, so that a bomb the readers let through shows as a finding.
BUDGET = "256M"


def _seed_store() -> bytes:
    from infoprobe.analyses.capture import capture

    data = load_data(FIX / "mnist_demo.npz", split="validation", limit=16)
    path = capture(FIX / "mlp_sigmoid.onnx", data, WORK / "seed.h5", progress=False)
    return path.read_bytes()


def _seed_data() -> list:
    """(reader index, bytes): a compressed and a plain .npz, an .npy and an HDF5 data file."""
    import h5py
    import numpy as np

    with np.load(FIX / "mnist_demo.npz") as d:
        x, y, split = d["x"][:32], d["y"][:32], d["split"][:32]
    seeds = []
    buf = io.BytesIO()
    np.savez_compressed(buf, x=x, y=y, split=split)
    seeds.append((0, buf.getvalue()))
    buf = io.BytesIO()
    np.savez(buf, x=x, y=y, split=split)
    seeds.append((0, buf.getvalue()))
    buf = io.BytesIO()
    np.save(buf, x)
    seeds.append((1, buf.getvalue()))
    with h5py.File(WORK / "seed_data.h5", "w") as f:
        for k, v in (("x", x), ("y", y), ("split", split)):
            f.create_dataset(k, data=v)
    seeds.append((2, (WORK / "seed_data.h5").read_bytes()))
    return seeds


def model_target(data: bytes) -> None:
    path = WORK / "m" / "model.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    try:
        with budgets(memory=BUDGET):
            load_model(path)
    except InfoprobeError:
        pass


def store_target(data: bytes) -> None:
    path = WORK / "s" / "acts.h5"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data)
    try:
        with budgets(memory=BUDGET), Store(path) as st:
            st.labels
            for name in st.layer_names:
                for which in ("pre", "post"):
                    for _ in st.iter_rows(name, which):
                        pass
                st.read_weights(name)
    except InfoprobeError:
        pass


def data_target(data: bytes) -> None:
    if len(data) < 2:
        return
    suffix = (".npz", ".npy", ".h5")[data[0] % 3]         # the first two bytes choose the reader
    split = ("all", "validation")[data[1] % 2]
    path = WORK / "d" / f"data{suffix}"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(data[2:])
    try:
        with budgets(memory=BUDGET):
            load_data(path, split=split)
    except InfoprobeError:
        pass


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in ("model", "store", "data"):
        sys.exit(__doc__)
    which = sys.argv.pop(1)
    seeds = {"model": lambda: [(FIX / n).read_bytes() for n in ("mlp_sigmoid.onnx", "cnn_small.onnx")],
             "store": lambda: [_seed_store()],
             "data": lambda: [bytes([k, 1]) + s for k, s in _seed_data()]}[which]()
    corpus = WORK / f"corpus-{which}"
    corpus.mkdir()
    for i, s in enumerate(seeds):
        (corpus / f"seed{i}").write_bytes(s)
    target = {"model": model_target, "store": store_target, "data": data_target}[which]
    os.environ.setdefault("INFOPROBE_MAX_MEMORY", BUDGET)
    atheris.Setup([sys.argv[0], *sys.argv[1:], str(corpus)], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
