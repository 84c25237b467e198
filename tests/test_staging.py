"""Staging folders in result folders someone else made: only the ones this user's infoprobe made
in that very folder are finished or discarded; forged, copied, linked or foreign ones are left
alone with one warning line, and no byte outside the result folder changes."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from infoprobe import results
from infoprobe.results import ResultSet, recover

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX descriptors and links")

CLI = [sys.executable, "-m", "infoprobe.cli.main"]


def snapshot(root: Path, skip: tuple = ()) -> dict:
    """Every entry under ``root`` (not following links) but those under ``skip``: its kind and
    content or target."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            if any(p == q or q in p.parents for q in skip):
                continue
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", hashlib.sha256(p.read_bytes()).hexdigest())
    return out


def forge(res: Path, home: Path) -> list:
    """Forged staging folders in ``res`` aimed at ``home``: names that climb out through a linked
    folder, entries that are links, a staging folder that is a link to a folder outside, and one
    with new-style marks that carry no valid seal. Returns their names."""
    (home / "sub").mkdir(parents=True)
    (home / ".bashrc").write_text("original bashrc\n")
    (home / "secret.txt").write_text("SECRET-OUTSIDE\n")
    (home / "victim").mkdir()
    (home / "victim" / "precious.txt").write_text("precious\n")
    (home / "victim" / ".lock").touch()
    (home / "victim" / "COMMIT").write_text(json.dumps(["precious.txt"]))
    res.mkdir(parents=True, exist_ok=True)
    (res / "x").symlink_to(home / "sub")
    (res / "escape.json").write_text("{}")
    a = res / ".infoprobe-staging-1-aaaa"
    (a / "x").mkdir(parents=True)
    (a / ".lock").touch()
    (a / ".bashrc").write_text("echo pwned\n")
    (a / "link.json").symlink_to(home / "secret.txt")
    (a / "COMMIT").write_text(json.dumps(["x/../.bashrc", "link.json", "../escape.json"]))
    (res / ".infoprobe-staging-2-bbbb").symlink_to(home / "victim")
    c = res / ".infoprobe-staging-3-cccc"
    (c / "files").mkdir(parents=True)
    (c / ".lock").touch()
    (c / "MARK").write_text(json.dumps({"mac": "0" * 64}))
    (c / "files" / "importance.json").write_text("forged")
    (c / "COMMIT").write_text(json.dumps({"names": ["importance.json"], "mac": "0" * 64}))
    return [a.name, ".infoprobe-staging-2-bbbb", c.name]


@pytest.mark.parametrize("command", ["importance", "report"])
def test_a_forged_staging_folder_changes_nothing_outside_the_folder(tmp_path, sigmoid_store, command):
    home, res, state = tmp_path / "home", tmp_path / "res", tmp_path / "state"
    env = dict(os.environ, INFOPROBE_STATE_DIR=str(state))

    def infoprobe(*args):
        return subprocess.run(CLI + [str(a) for a in args], cwd=tmp_path, capture_output=True, text=True,
                              timeout=300, env=env)

    importance = ["importance", sigmoid_store, "--out", res, "--no-progress", "--overwrite"]
    if command == "report":                 # a folder of real results, then forged
        assert infoprobe(*importance).returncode == 0
    forged = forge(res, home)
    before_outside = snapshot(tmp_path, skip=(res, state))
    before_forged = {n: snapshot(res / n) if not (res / n).is_symlink() else os.readlink(res / n) for n in forged}
    out = infoprobe(*(["report", res, "--out", res / "report.html"] if command == "report" else importance))
    assert out.returncode == 0, out.stderr
    assert "Traceback" not in out.stderr
    assert snapshot(tmp_path, skip=(res, state)) == before_outside        # no byte outside the folder changed
    after_forged = {n: snapshot(res / n) if not (res / n).is_symlink() else os.readlink(res / n) for n in forged}
    assert after_forged == before_forged                          # and the forgeries are left as they were
    left_alone = [line for line in out.stderr.splitlines() if "left alone" in line]
    assert len(left_alone) == len(forged) and all(line.startswith("infoprobe: warning:") for line in left_alone)
    assert not (res / ".bashrc").exists() and not (res / "link.json").exists()
    if command == "importance":
        assert json.loads((res / "importance.json").read_text())["rows"]    # the real result, not the forged one
    else:
        assert "SECRET-OUTSIDE" not in (res / "report.html").read_text()


def _killed_after_commit(folder: Path, name: str, data: bytes) -> Path:
    """A genuine staging folder of a command killed after its COMMIT list; returns it."""
    rs = ResultSet()
    Path(rs.stage(folder / name)).write_bytes(data)
    rs.seal()
    staging, lock, _ = rs.folders[folder]
    os.close(lock)
    return staging


def test_only_a_staging_folder_made_in_that_folder_is_finished(tmp_path):
    """A genuine staging folder copied or moved elsewhere carries a seal for another inode: it
    is left alone there, while the original is finished where it was made."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    a.mkdir(), b.mkdir(), c.mkdir()
    staging = _killed_after_commit(a, "r.json", b"result")
    shutil.copytree(staging, b / staging.name, symlinks=True)
    moved = _killed_after_commit(a / "other", "m.json", b"moved")
    os.rename(moved, c / moved.name)
    with pytest.warns(UserWarning, match="left alone: not marked"):
        recover(b)
    with pytest.warns(UserWarning, match="left alone: not marked"):
        recover(c)
    assert not (b / "r.json").exists() and (b / staging.name).is_dir()
    assert not (c / "m.json").exists() and (c / moved.name).is_dir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recover(a)
    assert (a / "r.json").read_bytes() == b"result" and not staging.exists()


def test_another_users_key_does_not_open_a_staging_folder(tmp_path, monkeypatch):
    """The seal is this user's secret key: a folder sealed under another key is left alone."""
    monkeypatch.setenv("INFOPROBE_STATE_DIR", str(tmp_path / "theirs"))
    monkeypatch.setattr(results, "_KEY", [])
    staging = _killed_after_commit(tmp_path / "res", "r.json", b"theirs")
    assert (tmp_path / "theirs" / "staging.key").stat().st_mode & 0o777 == 0o600
    monkeypatch.setenv("INFOPROBE_STATE_DIR", str(tmp_path / "mine"))
    monkeypatch.setattr(results, "_KEY", [])
    with pytest.warns(UserWarning, match="left alone"):
        recover(tmp_path / "res")
    assert staging.is_dir() and not (tmp_path / "res" / "r.json").exists()


def test_a_key_file_others_can_read_is_not_used(tmp_path, monkeypatch):
    """A key file readable by the group or others (or not a regular file) is not trusted: the
    process seals with a key of its own, so old staging folders are left alone, not finished."""
    state = tmp_path / "state"
    state.mkdir()
    (state / "staging.key").write_bytes(b"k" * 32)
    os.chmod(state / "staging.key", 0o644)
    monkeypatch.setenv("INFOPROBE_STATE_DIR", str(state))
    monkeypatch.setattr(results, "_KEY", [])
    assert results._key() != b"k" * 32
    os.chmod(state / "staging.key", 0o600)
    monkeypatch.setattr(results, "_KEY", [])
    assert results._key() == b"k" * 32


def test_a_tampered_commit_list_is_not_followed(tmp_path):
    """A genuine staging folder whose COMMIT names were changed afterwards is left alone."""
    staging = _killed_after_commit(tmp_path, "r.json", b"result")
    doc = json.loads((staging / "COMMIT").read_text())
    doc["names"] = ["../../evil.json"]
    (staging / "COMMIT").write_text(json.dumps(doc))
    with pytest.warns(UserWarning, match="left alone"):
        recover(tmp_path)
    assert staging.is_dir() and not (tmp_path / "r.json").exists() and not (tmp_path.parent / "evil.json").exists()


def test_a_folder_another_user_can_write_is_refused_for_results(tmp_path):
    """Another user who may write the folder could rename a staging folder and put a link in its
    place between infoprobe's checks: such a folder is refused, a sticky one (as /tmp) is not."""
    from infoprobe.errors import ConfigError
    from infoprobe.results import atomic_write_bytes, result_set

    theirs, shared, sticky = tmp_path / "theirs", tmp_path / "shared", tmp_path / "sticky"
    for d in (theirs, shared, sticky):
        d.mkdir()
    os.chmod(shared, 0o777)
    os.chmod(sticky, 0o1777)
    if os.geteuid() == 0:
        os.chown(theirs, 65534, 65534)
    cases = [shared] + ([theirs] if os.geteuid() == 0 else [])
    for folder in cases:
        with pytest.raises(ConfigError, match="another user|writable by other users"):
            with result_set():
                atomic_write_bytes(folder / "r.json", b"x")
        assert not (folder / "r.json").exists() and not list(folder.iterdir())
    with result_set():
        atomic_write_bytes(sticky / "r.json", b"x")
    assert (sticky / "r.json").read_bytes() == b"x"


def test_a_staging_folder_being_made_by_a_live_process_is_left_alone(tmp_path):
    """Between its mkdir and its lock a staging folder has no mark: another command's recovery
    must not take it for a killed one's while its process lives."""
    live = tmp_path / f".infoprobe-staging-{os.getpid()}-aaaa"
    live.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    gone = tmp_path / f".infoprobe-staging-{dead.pid}-bbbb"
    gone.mkdir()
    (gone / ".lock").touch()
    recover(tmp_path)
    assert live.is_dir() and not gone.exists()


def test_a_commit_that_fails_before_its_renames_discards_the_whole_set(tmp_path, monkeypatch):
    """A full disk while the COMMIT lists are written: nothing appears, now or after recovery."""
    from infoprobe.results import atomic_write_bytes, result_set

    real = results._write_durable

    def full(path, data):
        if Path(path).name.startswith("COMMIT") and Path(path).parent.parent.name == "b":
            raise OSError(28, "No space left on device")
        return real(path, data)

    monkeypatch.setattr(results, "_write_durable", full)
    with pytest.raises(OSError):
        with result_set():
            atomic_write_bytes(tmp_path / "a" / "x.json", b"x")
            atomic_write_bytes(tmp_path / "b" / "y.json", b"y")
    monkeypatch.setattr(results, "_write_durable", real)
    recover(tmp_path / "a") if (tmp_path / "a").exists() else None
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
