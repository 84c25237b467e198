"""Dask schedulers and workers as a trust boundary (infoprobe.parallel): task results are
unpickled in infoprobe's process, so only an authenticated (TLS) scheduler is used. A hostile
peer answering as a scheduler runs nothing here; a silent one, a scheduler without workers,
and every malformed address are one line and exit 2 within the stated time."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

import hostile
from conftest import FIX
from infoprobe import parallel
from infoprobe.cli.main import cli
from infoprobe.errors import ConfigError

pytest.importorskip("dask.distributed")
pytest.importorskip("cryptography")


def _listener(mode, marker=None, tls=None, life=60.0):
    """A server on 127.0.0.1 (:class:`hostile.Listener`): ``"evil"`` answers with a Dask message
    whose unpickling creates ``marker``, ``"garbage"`` with bytes that are no Dask message,
    ``"silent"`` never answers."""
    data = hostile.dask_message(hostile.Touch(marker)) if mode == "evil" else \
        b"HTTP/1.0 200 OK\r\n\r\n" + os.urandom(64)
    return hostile.Listener("silent" if mode == "silent" else "evil", data=data, tls=tls, life=life)


@pytest.fixture
def listener():
    made = []

    def make(*args, **kw):
        made.append(_listener(*args, **kw))
        return made[-1]

    yield make
    for x in made:
        x.close()


def _write_pems(security, folder, name):
    """Write the certificate and key of a ``Security.temporary()`` (held in memory) as files."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
    cert.write_text(security.tls_client_cert)
    key.write_text(security.tls_client_key)
    return cert, key


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    """A certificate authority shared by a test scheduler and infoprobe's client (as
    ``Security.temporary`` makes it: one self-signed certificate for every role), its
    security file, and a stranger's certificate signed by nobody infoprobe trusts."""
    from distributed.security import Security

    folder = tmp_path_factory.mktemp("certs")
    sec = Security.temporary()
    cert, key = _write_pems(sec, folder, "client")
    (folder / "ca.pem").write_text(sec.tls_ca_file)
    toml = folder / "tls.toml"
    toml.write_text('ca_file = "ca.pem"\ncert = "client.pem"\nkey = "client-key.pem"\n')
    stranger = _write_pems(Security.temporary(), folder, "stranger")
    return {"security": sec, "file": toml, "stranger": stranger, "folder": folder}


@pytest.fixture
def fast(monkeypatch):
    """Deadlines small enough for a test."""
    for name, value in (("SCHEDULER_TIMEOUT", 3.0), ("NO_WORKERS_TIMEOUT", 2.0), ("WORKER_POLL", 0.3)):
        monkeypatch.setattr(parallel, name, value, raising=False)


def _cli_args(tmp_path, *extra):
    """``infoprobe frivolous --sweep`` of two models: two tasks, so the scheduler is used."""
    models = [FIX / f"synth_mlp_w{w}.onnx" for w in ("0.25", "0.5")]
    return ["frivolous", "--sweep", *map(str, models), "--data", str(FIX / "synthetic_10d.npz"), "--split", "test",
            "--limit", "50", "--out", str(tmp_path / "out"), "--no-progress", *map(str, extra)]


def _cli(tmp_path, *extra, timeouts=None, limit=90):
    """The command in a process of its own (its real stderr, Dask's logging included),
    with ``timeouts`` set on infoprobe.parallel; (exit status, stderr lines, seconds)."""
    code = ("import sys; from infoprobe import parallel\n"
            f"for k, v in {dict(timeouts or {})!r}.items(): setattr(parallel, k, v)\n"
            "from infoprobe.cli.main import main\n"
            f"sys.argv = ['infoprobe'] + {_cli_args(tmp_path, *extra)!r}\nmain()\n")
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=limit)
    return res.returncode, [line for line in res.stderr.splitlines() if line.strip()], time.monotonic() - t0


def _assert_one_line(status, lines, match):
    assert status == 2, lines
    assert len(lines) == 1 and lines[0].startswith("infoprobe: error:"), lines
    assert match in lines[0], lines[0]


def test_a_hostile_scheduler_runs_nothing_here(tmp_path, certs, listener, fast):
    """A process on 127.0.0.1 answering as a Dask scheduler with a pickle whose unpickling
    runs a command: at a tcp:// address it is never contacted; over TLS, plain or with a
    certificate of its own, the handshake fails before any message is read."""
    marker = tmp_path / "pwned"
    plain = listener("evil", marker)
    status, lines, _ = _cli(tmp_path, "--scheduler", f"tcp://127.0.0.1:{plain.port}")
    assert not marker.exists(), "a command sent by the scheduler ran in infoprobe's process"
    _assert_one_line(status, lines, "refused")
    assert "unpickles" in lines[0] and plain.accepted == 0

    for server in (plain, listener("evil", marker, tls=certs["stranger"])):
        with parallel.engine(f"tls://127.0.0.1:{server.port}", workers=1, security=certs["file"]):
            with pytest.raises(ConfigError, match="cannot reach the Dask scheduler"):
                parallel.map_tasks(abs, [((-1,), {}), ((-2,), {})])
        assert server.accepted >= 1 and not marker.exists()
    status, lines, _ = _cli(tmp_path, "--scheduler", f"tls://127.0.0.1:{server.port}", "--scheduler-security",
                            certs["file"], timeouts={"SCHEDULER_TIMEOUT": 5.0})
    _assert_one_line(status, lines, "cannot reach the Dask scheduler")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_silent_scheduler_is_refused_within_the_timeout(tmp_path, certs, listener, fast):
    """A listener that accepts and never answers (neither TLS nor Dask's handshake)."""
    silent = listener("silent")
    with parallel.engine(f"tls://127.0.0.1:{silent.port}", workers=1, security=certs["file"]) as eng:
        t0 = time.monotonic()
        with pytest.raises(ConfigError, match=r"Dask scheduler .*(3 s|timed out|Timed out)"):
            eng.client()
        assert time.monotonic() - t0 < parallel.SCHEDULER_TIMEOUT + 2
    assert silent.accepted >= 1
    status, lines, seconds = _cli(tmp_path, "--scheduler", f"tls://127.0.0.1:{silent.port}", "--scheduler-security",
                                  certs["file"], timeouts={"SCHEDULER_TIMEOUT": 3.0})
    _assert_one_line(status, lines, "Dask scheduler")
    assert seconds < 3.0 + 25     # the deadline, the interpreter's start and the models' loading


@pytest.mark.parametrize("address, match", [
    ("foo://127.0.0.1:8786", "foo:// is refused"),
    ("tls://127.0.0.1:8786", "no certificates"),
    ("inproc://127.0.0.1/1/2", "inproc:// is refused"),
    ("just some text", "is not tls://HOST:PORT"),
    ("127.0.0.1:8786", "is not tls://HOST:PORT"),
    ("http://127.0.0.1:8786", "http:// is refused"),
    ("tcp://host:notaport", "tcp:// is refused"),
    ("tls://host:notaport", "the port must be a number"),
    ("tls://host:0", "the port must be a number"),
    ("tls://:8786", "has no host"),
    ("tls://127.0.0.1", "has no port"),
    ("tls://bad host/x:8786", "is not a host name"),
    ("tls://[::zz]:8786", "is not an IPv6 address"),
])
def test_every_malformed_address_is_one_line_and_exit_2(tmp_path, address, match):
    res = CliRunner().invoke(cli, _cli_args(tmp_path, "--scheduler", address))
    lines = [line for line in res.output.splitlines() if line.strip()]
    _assert_one_line(res.exit_code, lines, match)
    assert not (tmp_path / "out").exists()


def test_a_listener_sending_garbage_is_one_line_and_exit_2(tmp_path, certs, listener):
    garbage = listener("garbage")
    for extra in (["--scheduler", f"tcp://127.0.0.1:{garbage.port}"],
                  ["--scheduler", f"tls://127.0.0.1:{garbage.port}", "--scheduler-security", certs["file"]]):
        status, lines, _ = _cli(tmp_path, *extra, timeouts={"SCHEDULER_TIMEOUT": 5.0})
        _assert_one_line(status, lines, "tcp:// is refused" if extra[1].startswith("tcp") else "cannot reach")


def test_security_files_are_checked_in_one_line(tmp_path, certs):
    """--scheduler-security: a missing file, bad TOML, unknown or missing keys, a key that is
    not the certificate's; and the option without --scheduler."""
    folder = certs["folder"]
    bad = {
        "missing.toml": None,
        "syntax.toml": "ca_file = ",
        "unknown.toml": 'ca_file = "ca.pem"\ncert = "client.pem"\npassword = "x"\n',
        "nocert.toml": 'ca_file = "ca.pem"\n',
        "nofile.toml": 'ca_file = "ca.pem"\ncert = "nowhere.pem"\n',
        "mismatch.toml": 'ca_file = "ca.pem"\ncert = "client.pem"\nkey = "stranger-key.pem"\n',
        "notpem.toml": 'ca_file = "tls.toml"\ncert = "client.pem"\nkey = "client-key.pem"\n',
        "list.json": "[1, 2]",
        "folder.toml": None,
    }
    expect = {"missing.toml": "no such file", "syntax.toml": "not valid TOML", "unknown.toml": "unknown key 'password'",
              "nocert.toml": "cert must name a PEM file", "nofile.toml": "is not a PEM file",
              "mismatch.toml": "cannot be used", "notpem.toml": "cannot be used", "list.json": "expected the keys",
              "folder.toml": "not a file"}
    (folder / "folder.toml").mkdir(exist_ok=True)

    for name, text in bad.items():
        if text is not None:
            (folder / name).write_text(text)
        res = CliRunner().invoke(cli, _cli_args(tmp_path, "--scheduler", "tls://127.0.0.1:8786",
                                                "--scheduler-security", folder / name))
        _assert_one_line(res.exit_code, [x for x in res.output.splitlines() if x.strip()], expect[name])
    res = CliRunner().invoke(cli, _cli_args(tmp_path, "--scheduler-security", certs["file"]))
    _assert_one_line(res.exit_code, [x for x in res.output.splitlines() if x.strip()], "goes with --scheduler")
    assert parallel.load_security(certs["file"]).require_encryption
    (folder / "tls.json").write_text('{"ca_file": "ca.pem", "cert": "client.pem", "key": "client-key.pem"}')
    assert parallel.load_security(folder / "tls.json").tls_client_key == str(folder / "client-key.pem")


@pytest.fixture(scope="module")
def tls_scheduler(certs):
    """A TLS scheduler in this process that trusts ``certs``, with no worker yet."""
    from dask.distributed import LocalCluster

    cluster = LocalCluster(n_workers=0, processes=False, host="127.0.0.1", security=certs["security"],
                           dashboard_address=None)
    yield cluster
    cluster.close()


def _slow(x):
    time.sleep(0.05)
    return x * 2


def test_a_scheduler_without_workers_ends_the_run_in_time(tmp_path, tls_scheduler, certs, fast):
    with parallel.engine(tls_scheduler.scheduler_address, workers=1, security=certs["file"]) as eng:
        assert eng.capacity() == 1
        t0 = time.monotonic()
        with pytest.raises(ConfigError, match="has had no workers for 2 s"):
            parallel.map_tasks(_slow, [((1,), {}), ((2,), {})])
        assert time.monotonic() - t0 < parallel.NO_WORKERS_TIMEOUT + parallel.WORKER_POLL + 3
    status, lines, seconds = _cli(tmp_path, "--scheduler", tls_scheduler.scheduler_address, "--scheduler-security",
                                  certs["file"], timeouts={"NO_WORKERS_TIMEOUT": 2.0, "WORKER_POLL": 0.3})
    _assert_one_line(status, lines, "has had no workers for 2 s")
    assert seconds < 2.0 + 25 and not (tmp_path / "out").exists()


def test_an_authenticated_scheduler_runs_the_tasks_and_strangers_cannot_join(tls_scheduler, certs, fast):
    """With a worker holding the authority's certificate, the tasks run; a client or worker
    with a certificate of its own is turned away (TLS), and plain TCP too."""
    import asyncio

    import dask
    from distributed import Client, Worker
    from distributed.security import Security

    address = tls_scheduler.scheduler_address
    tls_scheduler.scale(1)
    tls_scheduler.wait_for_workers(1, timeout=30)
    try:
        with parallel.engine(address, workers=1, security=certs["file"]) as eng:
            assert parallel.map_tasks(_slow, [((i,), {}) for i in range(4)]) == [0, 2, 4, 6]
            assert eng.capacity() >= 1
    finally:
        tls_scheduler.scale(0)
    async def join():
        async with Worker(address, security=Security.temporary(), nthreads=1):
            pass

    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        for security in (Security.temporary(), None):
            with pytest.raises(Exception):
                Client(address if security else address.replace("tls://", "tcp://"), security=security, timeout=2,
                       set_as_default=False).close()
        with pytest.raises(Exception):
            asyncio.run(asyncio.wait_for(join(), 5))
    deadline = time.monotonic() + 10
    while tls_scheduler.scheduler.workers and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not tls_scheduler.scheduler.workers


def _task_sleeps(x):
    time.sleep(0.5)
    return x


def test_all_workers_lost_ends_the_run_in_time(tls_scheduler, certs, fast):
    """The only worker goes while tasks wait: one ConfigError, not a wait without end."""
    tls_scheduler.scale(1)
    tls_scheduler.wait_for_workers(1, timeout=30)
    timer = threading.Timer(0.8, tls_scheduler.scale, (0,))
    done = {}

    def run():
        with parallel.engine(tls_scheduler.scheduler_address, workers=1, security=certs["file"]):
            try:
                parallel.map_tasks(_task_sleeps, [((i,), {}) for i in range(10)])
            except ConfigError as exc:
                done["error"] = str(exc)

    t0 = time.monotonic()
    timer.start()
    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    runner.join(30)
    assert not runner.is_alive(), "map_tasks still waits for a worker"
    assert "has had no workers for 2 s" in done.get("error", ""), done
    assert time.monotonic() - t0 < 0.8 + 0.5 + parallel.NO_WORKERS_TIMEOUT + parallel.WORKER_POLL + 5


def test_an_unreachable_tls_scheduler(certs, fast):
    with parallel.engine("tls://127.0.0.1:9", workers=1, security=certs["file"]) as eng:
        with pytest.raises(ConfigError, match="cannot reach the Dask scheduler"):
            eng.client()


def test_security_files_nested_too_deep_or_naming_no_home_are_one_line(tmp_path):
    """A security file is input: a deeply nested one, or one naming ~user that does not exist,
    is a ConfigError, never an internal error."""
    (tmp_path / "deep.json").write_text("[" * 50000)
    (tmp_path / "deep.toml").write_text("a = " + "[" * 5000)
    (tmp_path / "home.toml").write_text('ca_file = "~no-such-user-here/ca.pem"\ncert = "c.pem"\n')
    for name in ("deep.json", "deep.toml", "home.toml"):
        with pytest.raises(ConfigError, match="not valid|home folder"):
            parallel.load_security(tmp_path / name)
    with pytest.raises(ConfigError, match="home folder"):
        parallel.load_security("~no-such-user-here/tls.toml")
