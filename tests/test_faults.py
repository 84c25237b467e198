"""Faults: a full disk, interruptions, processes killed at random points, concurrent writers,
file modes. Whatever happens, no final name holds an incomplete file, what was kept is said
in one line, and the next run cleans up and finishes.

Commands run as child processes (``python -m infoprobe.cli.main``). A full disk is simulated
with a file-size limit (``RLIMIT_FSIZE``, with ``SIGXFSZ`` ignored: writes past it fail with
``EFBIG`` as they would with ``ENOSPC``).
"""
from __future__ import annotations

import fcntl
import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import FIX
from infoprobe.results import ResultSet, atomic_write_bytes, recover, result_set
from infoprobe.store import Store

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals and limits")

MODEL = FIX / "mlp_sigmoid.onnx"
DATA = FIX / "mnist_demo.npz"
CLI = [sys.executable, "-m", "infoprobe.cli.main"]


def _limit_file_size(nbytes):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


def run(args, cwd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(CLI + [str(a) for a in args], cwd=cwd, capture_output=True, text=True, timeout=300, **kw)


def start(args, cwd) -> subprocess.Popen:
    return subprocess.Popen(CLI + [str(a) for a in args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def one_error_line(res, prefix="infoprobe: error:"):
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(prefix), res.stderr
    assert "Traceback" not in res.stderr
    return lines[0]


def hidden_leftovers(folder: Path) -> list:
    """Temporary files and staging folders infoprobe may leave in ``folder``."""
    return sorted(p.name for p in folder.iterdir()
                  if p.name.startswith(".infoprobe-staging-") or p.name.endswith((".tmp", ".partial", ".lock")))


def store_contents(path) -> dict:
    """Every dataset's bytes and every attribute of a store (what 'bit-identical' compares)."""
    out = {}
    with h5py.File(path, "r") as f:
        out.update({f"@{k}": np.asarray(v).tobytes() for k, v in f.attrs.items()})

        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = (obj.dtype.str, obj.shape, obj[()].tobytes())
            out.update({f"{name}@{k}": np.asarray(v).tobytes() for k, v in obj.attrs.items()})
        f.visititems(visit)
    return out


# ----------------------------------------------------------------------------- a full disk

def test_full_disk_during_capture_is_one_line_and_leaves_nothing(tmp_path):
    res = run(["capture", MODEL, "--data", DATA, "--split", "validation", "--out", "acts.h5", "--no-progress"],
              tmp_path, preexec_fn=_limit_file_size(1_000_000))
    assert res.returncode == 2   # not a crash (-11) of HDF5 closing a file it cannot flush
    line = one_error_line(res)
    assert "File too large" in line and "free some space" in line
    assert not (tmp_path / "acts.h5").exists() and hidden_leftovers(tmp_path) == []


def test_full_disk_during_an_analysis_writes_no_result(tmp_path, sigmoid_store):
    res = run(["importance", sigmoid_store, "--out", "res", "--no-progress"], tmp_path,
              preexec_fn=_limit_file_size(100_000))
    assert res.returncode == 2
    assert "nothing was written" in one_error_line(res)
    assert not (tmp_path / "res").exists()   # no table, no plot, no staging folder: the folder made for them is gone
    ok = run(["importance", sigmoid_store, "--out", "res", "--no-progress"], tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == [
        "importance.csv", "importance.json", "importance.png", "specific_information.csv",
        "specific_information.json"]


# ----------------------------------------------------------------------------- interruptions

def _capture_args(out="acts.h5"):
    # 4,000 samples in blocks of 4: a few seconds, so that a signal lands in the middle
    return ["capture", MODEL, "--data", DATA, "--out", out, "--batch-size", "4", "--no-progress"]


@pytest.fixture(scope="module")
def reference_store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("reference")
    res = run(_capture_args(), folder)
    assert res.returncode == 0, res.stderr
    return folder / "acts.h5"


def _wait_for(path: Path, proc, timeout=60.0):
    t0 = time.monotonic()
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout
        time.sleep(0.02)


def test_ctrl_c_says_what_was_kept_and_the_capture_resumes_bit_identical(tmp_path, reference_store):
    proc = start(_capture_args(), tmp_path)
    _wait_for(tmp_path / "acts.h5.partial", proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    line = one_error_line(subprocess.CompletedProcess([], 130, out, err), "infoprobe: interrupted;")
    assert "acts.h5.partial keeps" in line and "run the same command again to resume" in line
    assert not (tmp_path / "acts.h5").exists() and not (tmp_path / "acts.h5.lock").exists()
    kept = int(line.split(" keeps ")[1].split(" of ")[0].replace(",", ""))
    assert 0 < kept < 4000
    res = run(_capture_args()[:-1] + ["--progress"], tmp_path)   # announcements come with the progress bars
    assert res.returncode == 0, res.stderr
    assert f"resuming acts.h5.partial: {kept:,} of 4,000" in res.stderr
    assert store_contents(tmp_path / "acts.h5") == store_contents(reference_store)
    assert hidden_leftovers(tmp_path) == []


def test_sigkill_at_random_points_never_leaves_an_incomplete_store(tmp_path, reference_store):
    rng = random.Random(0)
    for _ in range(3):
        proc = start(_capture_args(), tmp_path)
        time.sleep(rng.uniform(0.5, 4.0))
        proc.kill()
        proc.communicate()
        if (tmp_path / "acts.h5").exists():   # finished before the kill: complete by construction
            Store(tmp_path / "acts.h5").close()
            break
    res = run(_capture_args(), tmp_path)
    assert res.returncode == 0 or "already exists" in res.stderr, res.stderr
    assert store_contents(tmp_path / "acts.h5") == store_contents(reference_store)
    assert hidden_leftovers(tmp_path) == []


def test_a_second_capture_of_the_same_store_is_told_another_holds_it(tmp_path):
    lock = os.open(tmp_path / "acts.h5.lock", os.O_RDWR | os.O_CREAT)
    fcntl.flock(lock, fcntl.LOCK_EX)          # what a running capture holds
    try:
        res = run(_capture_args(), tmp_path)
    finally:
        os.close(lock)
    assert res.returncode == 2
    assert "another infoprobe process is writing" in one_error_line(res)
    assert not (tmp_path / "acts.h5.partial").exists()


def _plan(tmp_path) -> Path:
    plan = run(["plan", MODEL, "--method", "magnitude", "--fraction", "0.3", "--out", "plan.json"], tmp_path)
    assert plan.returncode == 0, plan.stderr
    return tmp_path / "plan.json"


def test_sigkill_of_prune_and_of_an_analysis_leaves_complete_files_or_none(tmp_path, sigmoid_store):
    plan = _plan(tmp_path)
    rng = random.Random(1)
    tables = {"importance.csv", "importance.json", "specific_information.csv", "specific_information.json",
              "importance.png"}
    for _ in range(3):
        for args, check in (
                (["prune", MODEL, plan, "--out", "out/small.onnx", "--repeats", "3"], "prune"),
                (["importance", sigmoid_store, "--out", "res", "--no-progress"], "importance")):
            proc = start(args + ["--overwrite"], tmp_path)
            time.sleep(rng.uniform(0.3, 2.5))
            proc.kill()
            proc.communicate()
            if check == "prune" and (tmp_path / "out" / "small.onnx").exists():
                from infoprobe.model import load_model
                load_model(tmp_path / "out" / "small.onnx")   # a complete, valid model
            if check == "importance" and (tmp_path / "res").exists():
                names = {p.name for p in (tmp_path / "res").iterdir() if not p.name.startswith(".")}
                assert names in (set(), tables), names
    for args in (["prune", MODEL, plan, "--out", "out/small.onnx", "--repeats", "3", "--overwrite"],
                 ["importance", sigmoid_store, "--out", "res", "--no-progress", "--overwrite"]):
        res = run(args, tmp_path)
        assert res.returncode == 0, res.stderr
    assert hidden_leftovers(tmp_path / "out") == [] and hidden_leftovers(tmp_path / "res") == []


def _killed(files: dict, *, sealed: bool, renamed=()) -> None:
    """A result set staging ``files`` ({final path: bytes}) whose command was killed: after its
    COMMIT lists (``sealed``) with the ``renamed`` files already in place, or before them."""
    rs = ResultSet()
    for final, data in files.items():
        Path(rs.stage(final)).write_bytes(data)
    if sealed:
        rs.seal()
    for final in renamed:
        os.replace(rs.files[final], final)
    for _, lock, _ in rs.folders.values():
        os.close(lock)                   # the lock dies with the process


def test_a_commit_cut_short_is_finished_by_the_next_writer(tmp_path):
    """A result set killed after its COMMIT list, half renamed, is completed (roll forward);
    one killed before it is discarded (roll back)."""
    with result_set():
        atomic_write_bytes(tmp_path / "a.json", b"old a")
    _killed({tmp_path / "a.json": b"new a", tmp_path / "b.json": b"new b"}, sealed=True, renamed=[tmp_path / "a.json"])
    _killed({tmp_path / "sub" / "c.json": b"never committed"}, sealed=False)
    assert len(hidden_leftovers(tmp_path)) == 1 and len(hidden_leftovers(tmp_path / "sub")) == 1
    assert not (tmp_path / "b.json").exists()
    recover(tmp_path)
    recover(tmp_path / "sub")
    assert (tmp_path / "b.json").read_bytes() == b"new b" and (tmp_path / "a.json").read_bytes() == b"new a"
    assert not (tmp_path / "sub" / "c.json").exists()
    assert hidden_leftovers(tmp_path) == [] and hidden_leftovers(tmp_path / "sub") == []


def test_a_running_result_set_is_left_alone(tmp_path):
    with result_set():
        atomic_write_bytes(tmp_path / "x.json", b"x")
        staging = next(p for p in tmp_path.iterdir() if p.name.startswith(".infoprobe-staging-"))
        recover(tmp_path)                # another command's recovery: the lock is held
        assert staging.exists() and not (tmp_path / "x.json").exists()
    assert (tmp_path / "x.json").read_bytes() == b"x" and hidden_leftovers(tmp_path) == []


def test_an_exception_discards_the_whole_result_set(tmp_path):
    with pytest.raises(RuntimeError):
        with result_set():
            atomic_write_bytes(tmp_path / "a.json", b"a")
            atomic_write_bytes(tmp_path / "sub" / "b.json", b"b")
            raise RuntimeError("the analysis failed")
    assert not (tmp_path / "a.json").exists() and not (tmp_path / "sub").exists()


# ----------------------------------------------------------------------------- file modes

def test_results_follow_the_users_umask(tmp_path, sigmoid_store):
    plan = _plan(tmp_path)
    env_umask = 0o002
    args = [(["importance", sigmoid_store, "--out", "res", "--no-plot", "--no-progress"], ["res/importance.csv"]),
            (["prune", MODEL, plan, "--out", "small.onnx", "--repeats", "2"], ["small.onnx"]),
            (["check", MODEL, MODEL, "--data", DATA, "--split", "test", "--markdown", "check.md", "--no-progress"],
             ["check.md"])]
    for cmd, files in args:
        res = run(cmd, tmp_path, preexec_fn=lambda: os.umask(env_umask))
        assert res.returncode == 0, res.stderr
        for f in files:
            assert (tmp_path / f).stat().st_mode & 0o777 == 0o666 & ~env_umask, f
    res = run(["plan", MODEL, "--method", "random", "--out", "p2.json"], tmp_path, preexec_fn=lambda: os.umask(0o077))
    assert res.returncode == 0 and (tmp_path / "p2.json").stat().st_mode & 0o777 == 0o600


def test_interruptions_wait_outside_hdf5_callbacks_and_finalizers():
    """A Ctrl-C landing in an HDF5 write callback would break the file, and one landing in a
    finalizer would be printed as 'ignored' and lost: both are delivered again later."""
    from infoprobe.results import interruptible, uninterruptible

    @uninterruptible
    def callback():
        return sys._getframe()

    def inner():
        return sys._getframe()

    class Finalized:
        def __del__(self):
            frames.append(sys._getframe())

    frames = []
    Finalized()
    assert not interruptible(callback()) and not interruptible(frames[0])
    assert interruptible(inner())
