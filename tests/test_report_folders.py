"""`infoprobe report` on result folders from anyone: special files, links, malformed JSON and
oversized figures are listed under "Files not shown" with the reason, never a hang, a
traceback (exit 3) or another file's bytes on the page; the memory budget bounds the page."""
import html
import json
import os
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from click.testing import CliRunner

from infoprobe.cli.main import cli
from infoprobe.results import provenance, write_table


def _png(width: int, height: int, seed: int = 0) -> bytes:
    """A valid RGB PNG of random (incompressible) pixels."""
    rng = np.random.default_rng(seed)
    raw = b"".join(b"\0" + rng.integers(0, 256, width * 3, dtype=np.uint8).tobytes() for _ in range(height))

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b""))


def _folder(path):
    """A result folder holding one valid synergy table (the page always has something to show)."""
    path.mkdir(parents=True)
    write_table(path, "synergy", [{"layer": "fc1", "size": 3, "o_information": 0.25}],
                provenance({"store": ("acts.h5", "ab" * 32)}, {"n_samples": 100}))
    return path


def _report(folder, out, *extra):
    return CliRunner().invoke(cli, ["report", str(folder), "--out", str(out), *extra])


def _not_shown(page: str) -> str:
    """The page's "Files not shown" section ('' when there is none)."""
    start = page.find('id="skipped"')
    return "" if start < 0 else html.unescape(page[start:page.index("</section>", start)])


def _meta():
    return {"inputs": {"store": {"path": "acts.h5", "sha256": "ab" * 32}}, "parameters": {"n_samples": 10}}


#: (file, document or raw text, the reason it is listed with; None: shown, its odd values as text)
MALFORMED = [
    ("ablation.json", {"meta": {}, "columns": ["layer"]}, "not a result table: no rows"),
    ("ablation.json", {"meta": {}, "columns": ["layer"], "rows": [1, 2, 3]}, "rows[0] is a number, not an object"),
    ("importance.json", [1, 2, 3], "not a result table: the document is a list"),
    ("importance.json", {"meta": {}, "columns": [1, 2], "rows": [{"1": 3}]}, "columns is not a list of strings"),
    ("importance.json", {"meta": [1], "columns": ["layer"], "rows": [{"layer": "fc1"}]},
     "meta is a list, not an object"),
    ("check.json", {"passed": False, "checks": [], "metrics": [1]}, "metrics is a list, not an object"),
    ("check.json", {"passed": True, "checks": [1, "x"], "metrics": {}}, "checks[0] is a number, not an object"),
    ("check.json", {"passed": "yes", "checks": [], "metrics": {}}, "passed is a string, not a boolean"),
    ("check.json", {"passed": True, "checks": []}, "not a gate result: no metrics"),
    ("network.json", {"meta": {}, "network": {"ncut": 0.5, "categories": [1, 2]}},
     "network.categories is a list, not an object"),
    ("network.json", {"meta": {}, "network": None}, "network is null, not an object"),
    ("check.json", {"passed": True, "checks": [], "metrics": None}, "metrics is null, not an object"),
    # values of unexpected types inside a well-formed table: shown, as text
    ("ablation.json", {"meta": _meta(), "columns": ["scope", "layer", "ranking", "order", "value", "fraction", "accuracy"],
                       "rows": [{"scope": "layer", "layer": "fc1", "ranking": "mutual_information", "order": "low",
                                 "value": "mean", "fraction": f, "accuracy": a}
                                for f, a in (("NaN", 0.9), (0.5, float("nan")), ("half", "NaN"), (0.0, 0.93))]}, None),
    ("importance.json", {"meta": {"inputs": [1, 2], "parameters": "x"}, "columns": ["layer", "unit", "mutual_information"],
                         "rows": [{"layer": {"a": [1, {"b": [[[]]]}]}, "unit": [1, 2], "mutual_information": 0.5},
                                  {"layer": "fc2", "unit": 10**400, "mutual_information": 1e400},
                                  {"layer": "fc2", "unit": 3, "mutual_information": -10**300},
                                  {"layer": "\ud800 lone surrogate", "unit": 1, "mutual_information": 0.1}]}, None),
    ("check.json", {"passed": True, "checks": [{"name": 5, "passed": False}], "metrics": {"accuracy_drop": "x"},
                    "statistics": {"mcnemar_p": [1]}, "divergence": {"first_diverging": 5, "sites": []}}, None),
    ("analyze.json", {"meta": {"parameters": [4]}, "columns": ["analysis", "seconds", "cut", "skipped"],
                      "rows": [{"analysis": 1, "seconds": "x", "cut": 7, "skipped": None},
                               {"analysis": None, "seconds": 2, "cut": None, "skipped": {"why": 1}}]}, None),
]


@pytest.mark.parametrize("name,doc,reason", MALFORMED, ids=[f"{i}-{m[0]}" for i, m in enumerate(MALFORMED)])
def test_a_malformed_result_is_listed_or_shown_never_a_traceback(tmp_path, name, doc, reason):
    folder = _folder(tmp_path / "res")
    (folder / name).write_text(json.dumps(doc))
    out = tmp_path / "r.html"
    r = _report(folder, out)
    assert r.exit_code == 0, (r.output, r.exception)
    page = out.read_text()
    listed = _not_shown(page)
    assert 'id="synergy"' in page and "could not be shown" not in page
    if reason is None:
        assert name not in listed
        assert f'<section class="analysis" id="{ANALYSIS_OF[name]}"' in page
    else:
        assert f"{name}: {reason}" in listed, listed


ANALYSIS_OF = {"ablation.json": "ablation", "importance.json": "importance", "check.json": "check",
               "analyze.json": "analyze", "network.json": "modules"}


def test_nothing_to_show_is_one_line_naming_why(tmp_path):
    folder = tmp_path / "res"
    folder.mkdir()
    (folder / "ablation.json").write_text(json.dumps({"meta": {}, "columns": ["layer"], "rows": [1]}))
    r = _report(folder, tmp_path / "r.html")
    assert r.exit_code == 2, (r.output, r.exception)
    assert r.output.count("\n") == 1 and "no result of infoprobe" in r.output
    assert "ablation.json: rows[0] is a number, not an object" in r.output
    assert not (tmp_path / "r.html").exists()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_named_json_does_not_block(tmp_path):
    folder = _folder(tmp_path / "res")
    os.mkfifo(folder / "importance.json")
    os.mkfifo(folder / "ablation_fc1.png")
    out = tmp_path / "r.html"
    # a child process, so that a report that blocks on the FIFO fails the test instead of hanging it
    proc = subprocess.run([sys.executable, "-c", "from infoprobe.cli.main import main; main()", "report", str(folder),
                           "--out", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    listed = _not_shown(out.read_text())
    assert "importance.json: a FIFO, not a regular file" in listed
    assert "ablation_fc1.png: a FIFO, not a regular file" in listed


def test_links_do_not_bring_outside_bytes_onto_the_page(tmp_path):
    folder = _folder(tmp_path / "res")
    secret_table = tmp_path / "secret.json"
    secret_table.write_text(json.dumps({"meta": {}, "columns": ["layer", "secret"],
                                        "rows": [{"layer": "fc1", "secret": "SECRET-TOKEN-8841"}]}))
    secret_png = tmp_path / "secret.png"
    secret_png.write_bytes(_png(8, 8, seed=7))
    os.link(secret_table, folder / "importance.json")          # hard links
    os.link(secret_png, folder / "ablation_fc1.png")
    os.symlink(secret_table, folder / "flow.json")              # symbolic links
    os.symlink(secret_png, folder / "importance_fc1.png")
    sub = tmp_path / "elsewhere"
    sub.mkdir()
    (sub / "frivolous.json").write_text(secret_table.read_text())
    os.symlink(sub, folder / "frivolous")                       # a linked folder
    out = tmp_path / "r.html"
    r = _report(folder, out)
    assert r.exit_code == 0, (r.output, r.exception)
    page = out.read_text()
    import base64

    assert "SECRET-TOKEN-8841" not in page
    assert base64.b64encode(secret_png.read_bytes()).decode()[:40] not in page
    listed = _not_shown(page)
    assert "importance.json: a hard link (2 links to the same file), not read" in listed
    assert "ablation_fc1.png: a hard link (2 links to the same file), not read" in listed
    assert "flow.json: a symbolic link, not followed" in listed
    assert "importance_fc1.png: a symbolic link, not followed" in listed
    assert "frivolous: a symbolic link, not followed" in listed


def test_figures_are_inlined_within_the_memory_budget(tmp_path):
    folder = _folder(tmp_path / "res")
    big = _png(1000, 700, seed=1)                               # ~2.1 MB of incompressible pixels
    small = _png(100, 100, seed=2)
    (folder / "importance_big.png").write_bytes(big)
    (folder / "importance_small.png").write_bytes(small)
    out = tmp_path / "r.html"
    r = _report(folder, out, "--max-memory", "16M")             # the page's share: 2 MiB
    assert r.exit_code == 0, (r.output, r.exception)
    page = out.read_text()
    import base64

    assert base64.b64encode(small).decode() in page             # what fits is shown
    assert base64.b64encode(big).decode()[:1000] not in page
    listed = _not_shown(page)
    assert "importance_big.png: a figure of 2.0 MiB would exceed the report's share of the memory budget" in listed
    assert "--max-memory" in listed
    assert len(page) < 2.2 * 2**20
    r = _report(folder, out, "--overwrite")                     # the default budget holds it
    assert r.exit_code == 0 and base64.b64encode(big).decode() in out.read_text()
    # a .png that is not one is not inlined as an image either
    (folder / "importance_fake.png").write_text("<svg onload=alert(1)>")
    r = _report(folder, out, "--overwrite")
    assert "importance_fake.png: not a PNG image" in _not_shown(out.read_text())


def test_json_is_read_within_the_memory_budget(tmp_path):
    folder = _folder(tmp_path / "res")
    rows = [{"layer": "fc1", "unit": u, "mutual_information": u / 1e5} for u in range(20_000)]
    write_table(folder, "importance", rows, {})
    size = (folder / "importance.json").stat().st_size
    out = tmp_path / "r.html"
    r = _report(folder, out, "--max-memory", "64M")             # the JSON share: 1 MiB
    assert r.exit_code == 0, (r.output, r.exception)
    assert size > 2**20 and "importance.json: a JSON file of" in _not_shown(out.read_text())
    r = _report(folder, out, "--overwrite")
    assert r.exit_code == 0 and 'id="importance"' in out.read_text()


def test_the_files_analyses_write_are_all_shown(tmp_path):
    """The shapes checked are those the analyses write: a modules result (its network.json with
    lists beside the network) and a gate result enter the page, nothing is listed as not shown."""
    from infoprobe.results import plain

    folder = _folder(tmp_path / "res")
    (folder / "modules").mkdir()
    meta = provenance({"model": ("m.onnx", "cd" * 32)}, {"n_samples": 10})
    (folder / "modules" / "network.json").write_text(json.dumps({
        "meta": meta, "network": {"ncut": 0.4, "n_clusters": 4, "clusterability_p_all": 0.01, "fisher_importance": None,
                                  "categories": {"important": 2, "coherent": 0}},
        "clusterability": [{"shuffle": 0, "ncut": 0.5}], "base_class_accuracy": [0.9, 0.8]}))
    write_table(folder / "modules", "partition", [{"layer": "fc1", "unit": 0, "cluster": 1}], meta)
    gate = {"passed": True, "checks": [{"name": "max_label_change", "value": 0.0, "threshold": 0.01, "passed": True}],
            "metrics": {"accuracy_reference": 0.9, "accuracy_candidate": 0.9, "accuracy_drop": 0.0, "label_change": 0.0,
                        "class_accuracy": [{"class": 0, "n": 5, "reference": 1.0, "candidate": 1.0, "drop": 0.0}]},
            "models": {"reference": {"path": "a.onnx", "sha256": "ab" * 32}}, "data": {"n_samples": 5},
            "parameters": {"batch_size": 8}, "statistics": {"mcnemar_p": 1.0}, "confusions": {"moves": []},
            "divergence": {"first_diverging": None, "sites": [{"reference": "fc1", "candidate": "fc1"}]}, "notes": []}
    (folder / "check.json").write_text(json.dumps(plain(gate)))
    out = tmp_path / "r.html"
    r = _report(folder, out)
    assert r.exit_code == 0, (r.output, r.exception)
    page = out.read_text()
    assert _not_shown(page) == "" and 'id="modules"' in page and 'id="check"' in page
    assert 'data-pointer="/network/ncut"' in page and "The candidate <b>passes</b> the gate" in page
