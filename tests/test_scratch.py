"""Scratch space: values over the memory budget spilled to the temporary folder by ``synergy``
and the O-information estimators. A full disk is one line and exit 2 (no HDF5 crash), the
scratch folder goes whatever ends the work, a folder left by a killed process is removed by
the next run, and the folder of a live process never is.

A full disk is simulated as in ``test_faults.py``: a file-size limit (``RLIMIT_FSIZE``, with
``SIGXFSZ`` ignored, so writes past it fail with ``EFBIG``), in a child process.
"""
from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import FIX

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals, limits and flock")

CLI = [sys.executable, "-m", "infoprobe.cli.main"]
#: 2,000 x 20 float64 values (312.5 KiB) per layer: over a quarter of 512K, so they spill; one
#: unit's copula (94 KiB) fits.
SPILL = ["--max-memory", "512K", "--max-size", "3", "--exhaustive-up-to", "3", "--no-progress", "--no-plot"]


def _limit_file_size(nbytes):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


@pytest.fixture(scope="module")
def relu_store(tmp_path_factory):
    from infoprobe.analyses.capture import capture
    from infoprobe.data import load_data

    out = tmp_path_factory.mktemp("scratch-store") / "relu.h5"
    return capture(FIX / "mlp_relu.onnx", load_data(FIX / "mnist_demo.npz", split="test"), out, progress=False)


@pytest.fixture
def tmpdir_env(tmp_path, monkeypatch):
    """A private temporary folder, for child processes (``env``) and this one (``tempfile``)."""
    import tempfile

    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setenv("TMPDIR", str(folder))
    monkeypatch.setattr(tempfile, "tempdir", None)
    return folder


def scratch_left(folder: Path) -> list:
    """What infoprobe's spills (of any version) left in a temporary folder."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("infoprobe-"))


def synergy(store, out, cwd, **kw):
    return subprocess.Popen(CLI + ["synergy", str(store), "--out", str(out), *SPILL], cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


# ----------------------------------------------------------------------------- a full disk

def test_full_disk_during_the_spill_is_one_line_exit_2_and_leaves_no_scratch(tmp_path, tmpdir_env, relu_store):
    proc = synergy(relu_store, "res", tmp_path, preexec_fn=_limit_file_size(100_000))
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err      # not -11/139 (segfault) or 134 (free(): invalid pointer) of HDF5
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("infoprobe: error: the temporary folder ") and str(tmpdir_env) in lines[0]
    assert "while spilling 312.5 KiB" in lines[0] and "TMPDIR" in lines[0] and "--max-memory" in lines[0]
    assert scratch_left(tmpdir_env) == []
    assert not (tmp_path / "res").exists() or list((tmp_path / "res").iterdir()) == []


@pytest.mark.parametrize("fallocate", ["reserved", "unsupported"])
def test_full_disk_while_spilling_copula_values_is_a_scratch_error(tmp_path, tmpdir_env, fallocate):
    """The estimator's own spill (copula values), with the space reserved up front or, on a
    filesystem without ``fallocate``, failing in the middle of the writes."""
    script = textwrap.dedent(f"""
        import errno, os
        import numpy as np
        if {fallocate == "unsupported"!r}:
            def unsupported(*a):
                raise OSError(errno.EOPNOTSUPP, "Operation not supported")
            os.posix_fallocate = unsupported
        from infoprobe.estimators.oinfo import copula_model
        from infoprobe.errors import InfoprobeError
        from infoprobe.limits import budgets
        rng = np.random.default_rng(0)
        x, y = rng.standard_normal((3000, 40)), rng.integers(0, 4, 3000)
        try:
            with budgets(memory="2M"):
                copula_model(x, y)
        except InfoprobeError as exc:
            print(type(exc).__name__, exc)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                         preexec_fn=_limit_file_size(300_000))
    assert res.returncode == 0 and res.stderr == "", res.stderr
    assert res.stdout.startswith("ScratchError the temporary folder ")
    assert "reached the file-size limit while spilling 937.5 KiB of the 3,000 x 40 copula values" in res.stdout
    assert scratch_left(tmpdir_env) == []


def test_no_space_names_the_folder_and_its_free_space(tmpdir_env, monkeypatch):
    import errno

    from infoprobe.errors import InfoprobeError
    from infoprobe.scratch import scratch_matrix

    def full(*a):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    with pytest.raises(InfoprobeError, match=r"^the temporary folder .* ran out of space while spilling 7\.6 MiB "
                                             r"of the test values, .* free; free space there or set TMPDIR") as e:
        with scratch_matrix(1000, 1000, what="the test values"):
            pass
    assert e.value.errno == errno.ENOSPC and str(tmpdir_env) in str(e.value)
    assert scratch_left(tmpdir_env) == []


# ----------------------------------------------------------------------------- processes killed or alive

def _wait_for_new_scratch(proc, folder: Path, before: set, timeout: float = 120.0) -> set:
    t0 = time.monotonic()
    while True:
        new = set(scratch_left(folder)) - before
        if new or proc.poll() is not None or time.monotonic() - t0 > timeout:
            return new
        time.sleep(0.002)


def _freeze_in_spill(store, tmp_path, folder, sig, tries=10) -> tuple:
    """Start synergy, and deliver ``sig`` (SIGKILL, SIGSTOP) while its scratch folder exists.
    Returns (process, the folder)."""
    for i in range(tries):
        before = set(scratch_left(folder))
        proc = synergy(store, f"res-{sig.name}-{i}", tmp_path)
        new = _wait_for_new_scratch(proc, folder, before)
        proc.send_signal(sig)
        left = set(scratch_left(folder)) - before
        if new and left:
            return proc, left.pop()
        if sig == signal.SIGSTOP:
            proc.send_signal(signal.SIGCONT)
        proc.kill()
        proc.communicate()
    pytest.fail(f"no scratch folder seen at {sig.name} in {tries} tries")


def test_a_killed_spills_folder_is_removed_by_the_next_run_a_live_ones_is_kept(tmp_path, tmpdir_env, relu_store):
    killed, dead_folder = _freeze_in_spill(relu_store, tmp_path, tmpdir_env, signal.SIGKILL)
    killed.communicate()
    assert dead_folder in scratch_left(tmpdir_env)                     # SIGKILL: nothing could remove it
    stopped, live_folder = _freeze_in_spill(relu_store, tmp_path, tmpdir_env, signal.SIGSTOP)
    try:
        assert scratch_left(tmpdir_env) == [live_folder]                # the next spill removed the dead one
        own = tmpdir_env / f"infoprobe-scratch-{os.getpid()}-abcd1234"    # this live process, without a lock
        own.mkdir()
        nxt = synergy(relu_store, "res-next", tmp_path)
        out, err = nxt.communicate(timeout=300)
        assert nxt.returncode == 0, err
        assert scratch_left(tmpdir_env) == sorted([live_folder, own.name])   # live processes' folders stay
    finally:
        stopped.send_signal(signal.SIGCONT)
    out, err = stopped.communicate(timeout=300)
    assert stopped.returncode == 0, err                                     # it finished with its scratch
    assert scratch_left(tmpdir_env) == [own.name]


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


def test_stale_folders_only_by_exact_name_own_real_directory_dead_process_and_free_lock(tmp_path):
    import fcntl

    from infoprobe.scratch import LOCK, remove_stale

    root = tmp_path / "tmp"
    root.mkdir()
    dead = _dead_pid()

    def folder(name, lock=True):
        p = root / name
        p.mkdir()
        (p / "values.f8").write_bytes(b"x" * 64)
        if lock:
            (p / LOCK).touch()
        return p

    stale = folder(f"infoprobe-scratch-{dead}-aaaa1111")
    stale_unlocked = folder(f"infoprobe-scratch-{dead}-aaaa2222", lock=False)   # killed before its lock
    held = folder(f"infoprobe-scratch-{dead}-aaaa3333")        # e.g. a child that inherited the lock lives on
    alive = folder(f"infoprobe-scratch-{os.getppid()}-aaaa4444")
    other = [folder(n) for n in (f"infoprobe-scratch-{dead}-aaaa5555x", f"infoprobe-scratch-{dead}-AAAA5555",
                                 f"xinfoprobe-scratch-{dead}-aaaa6666", "infoprobe-values-abcd1234")]
    target = folder("precious")
    (root / f"infoprobe-scratch-{dead}-aaaa7777").symlink_to(target)        # a link is never followed
    fd = os.open(held / LOCK, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        removed = remove_stale(root)
    finally:
        os.close(fd)
    assert sorted(removed) == sorted([stale, stale_unlocked])
    assert not stale.exists() and not stale_unlocked.exists()
    assert held.exists() and alive.exists() and all(p.exists() for p in other)
    assert (root / f"infoprobe-scratch-{dead}-aaaa7777").is_symlink() and (target / "values.f8").exists()
    assert remove_stale(root) == [held]                          # its lock released


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another user")
def test_another_users_stale_folder_is_kept(tmp_path):
    from infoprobe.scratch import remove_stale

    p = tmp_path / f"infoprobe-scratch-{_dead_pid()}-bbbb1111"
    p.mkdir()
    os.chown(p, 12345, 12345)
    assert remove_stale(tmp_path) == [] and p.exists()


# ----------------------------------------------------------------------------- exceptions and interruptions

def _cli_sigterm_handler():
    from infoprobe.cli.hardening import _interrupt, _Terminated

    return _interrupt(_Terminated), _Terminated


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("raised", [KeyboardInterrupt, ValueError])
def test_an_exception_or_ctrl_c_removes_the_scratch_even_if_a_signal_lands_in_the_removal(
        raised, sig, tmpdir_env, relu_store, monkeypatch):
    """The first interruption (or error) ends the spill; a second Ctrl-C, or the SIGTERM the
    CLI turns into an exception, arrives while the scratch folder is being removed (sent from
    inside the removal). The folder is gone all the same, and the signal still ends the work."""
    import shutil

    from infoprobe.analyses.synergy import reduced_values
    from infoprobe.limits import budgets
    from infoprobe.store import Store

    if sig == "SIGINT":
        handler, ends = signal.default_int_handler, KeyboardInterrupt
    else:
        handler, ends = _cli_sigterm_handler()
    signum = getattr(signal, sig)
    rmtree = shutil.rmtree

    def interrupted_rmtree(*a, **kw):
        os.kill(os.getpid(), signum)
        return rmtree(*a, **kw)

    monkeypatch.setattr(shutil, "rmtree", interrupted_rmtree)
    previous = signal.signal(signum, handler)
    st = Store(relu_store)
    seen = []
    try:
        with pytest.raises(ends), budgets(memory="512K"):
            with reduced_values(st, "fc1_matmul") as (x, y):
                seen = scratch_left(tmpdir_env)
                assert x.shape == (2000, 20) and not isinstance(x, np.ndarray)   # spilled
                raise raised()
    finally:
        signal.signal(signum, previous)
        st.close()
    assert len(seen) == 1
    assert scratch_left(tmpdir_env) == []


def test_spilled_values_read_back_exactly(tmpdir_env):
    from infoprobe.scratch import scratch_matrix

    rng = np.random.default_rng(0)
    for n, k in [(1, 1), (37, 5), (101, 33), (1000, 70)]:
        x = rng.standard_normal((n, k))
        with scratch_matrix(n, k, what="x") as m:
            for r in range(0, n, 7):
                m[r:r + 7] = x[r:r + 7]
            for _ in range(30):
                (r0, r1), (j0, j1) = sorted(rng.integers(0, n + 1, 2)), sorted(rng.integers(0, k + 1, 2))
                assert np.array_equal(m[r0:r1, j0:j1], x[r0:r1, j0:j1])
        with scratch_matrix(n, k + 3, what="z", by="columns") as m:
            j = 0
            while j < k:
                w = int(rng.integers(1, 9))
                m.append_columns(x[:, j:j + w])
                j += w
            assert m.shape == (n, k)
            assert np.array_equal(np.concatenate([b for _, b in m.rows(13)]), x)
            (r0, r1), (j0, j1) = sorted(rng.integers(0, n + 1, 2)), sorted(rng.integers(0, k + 1, 2))
            assert np.array_equal(m[r0:r1, j0:j1], x[r0:r1, j0:j1])
    assert scratch_left(tmpdir_env) == []
