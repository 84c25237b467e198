"""`infoprobe analyze` as one result set: complete or absent whatever happens (kills at random
points, a full disk, a concurrent run), a non-zero exit when a planned analysis failed, and a
plan written by one run that makes the next give the same numbers (`--plan`)."""
from __future__ import annotations

import json
import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import hostile
from conftest import FIX
from infoprobe.cli.main import cli
from infoprobe.results import recover

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="POSIX signals and limits")

CLI = [sys.executable, "-m", "infoprobe.cli.main"]
MODEL, DATA = FIX / "mlp_sigmoid.onnx", FIX / "mnist_demo.npz"


def small_plan(**changes) -> dict:
    """An analyze.json whose plan runs every analysis of the sigmoid MLP at a small setting (a
    few seconds), on 600 samples."""
    return hostile.analyze_plan(600, **{"synergy": {"exhaustive_sizes": {"fc1": 3, "fc2": 3}}, **changes})


def args(out, plan) -> list:
    return ["analyze", str(MODEL), "--data", str(DATA), "--split", "test", "--limit", "600", "--plan", str(plan),
            "--out", str(out), "--no-progress"]


def files(folder: Path) -> set:
    """The visible files of a result folder, relative (hidden staging folders left out)."""
    if not folder.exists():
        return set()
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)}


def rows_of(folder: Path) -> dict:
    """Every JSON table's rows (the numbers; provenance times and paths left out)."""
    out = {}
    for rel in sorted(files(folder)):
        if rel.endswith(".json"):
            doc = json.loads((folder / rel).read_text())
            rows = doc["rows"] if "rows" in doc else {k: v for k, v in doc.items() if k != "meta"}
            for r in rows if isinstance(rows, list) else []:
                for k in ("store", "seconds", "share_s", "estimate_s"):
                    r.pop(k, None) if isinstance(r, dict) else None
            out[rel] = rows
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One complete run of the small plan: (its folder, the plan file, seconds it took)."""
    root = tmp_path_factory.mktemp("analyze-ref")
    plan = root / "plan.json"
    plan.write_text(json.dumps(small_plan()))
    t = time.perf_counter()
    res = subprocess.run(CLI + args(root / "ref", plan), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    return root / "ref", plan, time.perf_counter() - t


def test_a_pinned_plan_gives_the_same_numbers_and_writes_its_own(reference, tmp_path):
    ref, plan, _ = reference
    assert {"report.html", "acts.h5", "analyze.json", "synergy.json", "modules/partition.json",
            "frivolous/frivolous.json"} <= files(ref)
    written = json.loads((ref / "analyze.json").read_text())["meta"]["plan"]
    assert written["steps"][2]["settings"]["exhaustive_sizes"] == {"fc1": 3, "fc2": 3}
    r = CliRunner().invoke(cli, args(tmp_path / "again", ref / "analyze.json"))   # the plan a run wrote
    assert r.exit_code == 0, r.output
    assert rows_of(tmp_path / "again") == rows_of(ref)
    assert json.loads((ref / "importance.json").read_text())["meta"]["inputs"]["store"]["path"] == str(ref / "acts.h5")
    assert ".infoprobe-staging" not in (tmp_path / "again" / "report.html").read_text()


def test_an_analysis_that_fails_makes_the_exit_non_zero_and_keeps_the_rest(tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps(small_plan(frivolous={"n_permutations": 0})))
    r = CliRunner().invoke(cli, args(tmp_path / "out", plan))
    assert r.exit_code == 1, r.output
    assert "1 planned analysis did not run: frivolous: ConfigError" in r.output
    assert "report.html" in files(tmp_path / "out") and not (tmp_path / "out" / "frivolous").exists()
    rows = json.loads((tmp_path / "out" / "analyze.json").read_text())["rows"]
    assert rows[-1]["skipped"].startswith("ConfigError")


@pytest.mark.parametrize("doc, says", [
    (b"not json", "not JSON"),
    (b"[" * 100000, "not JSON"),
    (json.dumps({"meta": {}}).encode(), "no meta.plan"),
    (json.dumps(small_plan(modules={"n_random": True})).encode(), "modules.n_random"),
    (json.dumps(small_plan(ablation={"values": ["zero", "rm -rf"]})).encode(), "ablation.values"),
    (json.dumps(small_plan(frivolous={"evil": 1})).encode(), "unknown settings of frivolous"),
    (json.dumps(small_plan(synergy={"exhaustive_sizes": {"fc1": 10**9}})).encode(), "synergy.exhaustive_sizes"),
    (json.dumps(small_plan(importance={"samples": 10**6})).encode(), "importance.samples"),
    (json.dumps(small_plan()).replace('"version": 1', '"version": 7').encode(), "version 7"),
    (json.dumps(small_plan(ablation={"values": [{}]})).encode(), "ablation.values"),
])
def test_a_malformed_plan_is_one_line_and_exit_2(tmp_path, doc, says):
    plan = tmp_path / "plan.json"
    plan.write_bytes(doc)
    r = CliRunner().invoke(cli, args(tmp_path / "out", plan))
    assert r.exit_code == 2 and says in r.output, r.output
    assert len(r.output.strip().splitlines()) == 1 and files(tmp_path / "out") == set()


def test_a_plan_that_is_a_fifo_is_refused_without_blocking(tmp_path):
    os.mkfifo(tmp_path / "plan.json")
    res = subprocess.run(CLI + args(tmp_path / "out", tmp_path / "plan.json"), capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 2 and "not a regular file" in res.stderr


def test_killed_at_random_points_the_folder_is_complete_or_absent(reference, tmp_path):
    ref, plan, seconds = reference
    complete = files(ref)
    rng = random.Random(7)
    outcomes = []
    for k in range(4):
        out = tmp_path / f"out{k}"
        proc = subprocess.Popen(CLI + args(out, plan), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.3, seconds * 1.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        if out.exists():
            for folder in (out, out / "modules", out / "frivolous"):   # what the next command there does first
                if folder.exists():
                    recover(folder)
        got = files(out)
        assert got in (set(), complete), sorted(got ^ complete)
        outcomes.append(bool(got))
        res = subprocess.run(CLI + args(out, plan), capture_output=True, text=True, timeout=600)   # the rerun
        if got:
            assert res.returncode == 2 and "already exists" in res.stderr
        else:
            assert res.returncode == 0, res.stderr
        assert files(out) == complete and not [p for p in out.rglob(".infoprobe-staging-*")]


def test_two_runs_into_one_folder_one_is_refused(reference, tmp_path):
    _, plan, _ = reference
    out = tmp_path / "out"
    procs = [subprocess.Popen(CLI + args(out, plan), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    refused = next(err for rc, err in results if rc == 2)
    assert "another infoprobe analyze is writing" in refused or "already exists" in refused
    assert files(out) == files(reference[0])


def _limit_file_size(nbytes):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, nbytes))
    return apply


@pytest.mark.parametrize("limit", [20_000, 1_000_000])
def test_a_full_disk_writes_nothing_and_exits_2(reference, tmp_path, limit):
    _, plan, _ = reference
    res = subprocess.run(CLI + args(tmp_path / "out", plan), capture_output=True, text=True, timeout=600,
                         preexec_fn=_limit_file_size(limit))
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith("infoprobe: error:") and "Traceback" not in res.stderr
    assert "File too large" in lines[-1] and ("file-size limit" in lines[-1] or "free some space" in lines[-1])
    assert not (tmp_path / "out").exists() or files(tmp_path / "out") == set()
    assert not list((tmp_path).rglob(".infoprobe-staging-*"))


def test_a_plan_that_skips_importance_skips_what_reads_it():
    """Ablation and synergy read importance's store and ranking: a plan (hand-edited) that
    skips importance skips them too, rather than running them without it."""
    import tempfile

    from infoprobe.analyses.analyze import read_plan

    doc = small_plan()
    doc["meta"]["plan"]["steps"][0]["skipped"] = "skipped by the plan: skipped by the plan: ModelError: x"
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        f.write(json.dumps(doc))
        f.flush()
        steps = read_plan(f.name)["steps"]
    assert [s.skipped for s in steps] == ["skipped by the plan: ModelError: x", "needs importance",
                                          "needs importance", "", ""]
