"""The HTML report and `infoprobe analyze`: headline numbers point at the JSON values they
show, tables hold the rows, hostile result folders are kept out, the budget plan cuts what
does not fit. (The page in a real browser: tests/test_browser.py.)"""
import json
import os
from html.parser import HTMLParser

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import FIX
from infoprobe.cli.main import cli
from infoprobe.errors import DataError, OutputExistsError
from infoprobe.htmlreport import render, write_report
from infoprobe.results import provenance, write_table


class _Page(HTMLParser):
    """Headline spans (source, pointer, text), table cells, and every src/href."""

    def __init__(self):
        super().__init__()
        self.spans, self.links, self.cells, self._in = [], [], [], None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "span" and a.get("class") == "hl":
            self._in = [a["data-source"], a["data-pointer"], ""]
        if tag == "td":
            self.cells.append(a.get("data-value"))
        for k in ("src", "href"):
            if k in a:
                self.links.append(a[k])

    def handle_data(self, data):
        if self._in is not None:
            self._in[2] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._in is not None:
            self.spans.append(tuple(self._in))
            self._in = None


def _pointer(doc, pointer):
    for part in pointer.lstrip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def _parse(text):
    t = text.replace(",", "").replace("+", "")
    if t.endswith("%"):
        return float(t[:-1]) / 100, len(t[:-1].split(".")[1]) + 2 if "." in t else 2
    return float(t), (len(t.split(".")[1].lower().split("e")[0]) if "." in t else 0)


def _results(tmp_path):
    """A result folder with importance and ablation tables written as the analyses write them."""
    rng = np.random.default_rng(0)
    meta = provenance({"store": ("acts.h5", "ab" * 32)}, {"n_samples": 500})
    write_table(tmp_path, "importance", [{"layer": lay, "unit": u, "mutual_information": float(rng.random()),
                                          "entropy": float(rng.random())} for lay in ("fc1", "fc2") for u in range(7)],
                meta)
    rows = []
    for lay in ("fc1", "fc2"):
        for k, f in enumerate(np.linspace(0, 1, 5)):
            rows.append({"scope": "layer", "layer": lay, "ranking": "mutual_information", "order": "low",
                         "value": "mean", "fraction": float(f), "accuracy": 0.93 - 0.2 * f * (lay == "fc1"),
                         "note": "<script>alert(1)</script>"})
    write_table(tmp_path, "ablation", rows, meta)
    return tmp_path


def test_headline_numbers_point_at_the_json_values_they_show(tmp_path):
    folder = _results(tmp_path / "res")
    page = _Page()
    page.feed(render([folder]))
    assert len(page.spans) >= 6
    for source, pointer, text in page.spans:
        value = _pointer(json.loads((folder / source).read_text()), pointer)
        shown, decimals = _parse(text)
        assert abs(shown - value) <= 0.5 * 10 ** -decimals + 1e-12 * abs(value), (source, pointer, text, value)
    # the best fc1 unit is the JSON's argmax, and the ablation headline reads the 50% row
    rows = json.loads((folder / "importance.json").read_text())["rows"]
    best = max((r for r in rows if r["layer"] == "fc1"), key=lambda r: r["mutual_information"])
    assert ("importance.json", f"/rows/{rows.index(best)}/mutual_information") in {s[:2] for s in page.spans}
    assert ("ablation.json", "/rows/2/fraction") in {s[:2] for s in page.spans}


def test_tables_hold_the_rows_escaped_and_nothing_is_fetched(tmp_path):
    folder = _results(tmp_path / "res")
    html = render([folder])
    page = _Page()
    page.feed(html)
    assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert page.cells.count("<script>alert(1)</script>") == 10          # the value, unescaped by the parser
    assert all(link.startswith(("#", "data:")) for link in page.links), page.links
    assert 'id="importance"' in html and 'id="ablation"' in html and 'id="synergy"' not in html
    assert "sha256" in html and "n_samples" in html


def test_hostile_folders_are_kept_out_and_said(tmp_path):
    folder = _results(tmp_path / "res")
    (folder / "flow.json").write_text("{not json")
    outside = tmp_path / "secret.json"
    outside.write_text(json.dumps({"columns": ["x"], "rows": [{"x": 42}]}))
    os.symlink(outside, folder / "synergy.json")
    html = render([folder])
    assert "flow.json: not valid JSON" in html and "synergy.json: a symbolic link, not followed" in html
    assert 'id="synergy"' not in html and 'id="flow"' not in html
    with pytest.raises(DataError, match="no result of infoprobe"):
        render([_empty(tmp_path)])
    out = tmp_path / "r.html"
    write_report([folder], out)
    with pytest.raises(OutputExistsError):
        write_report([folder], out)
    r = CliRunner().invoke(cli, ["report", str(folder), "--out", str(out)])
    assert r.exit_code == 2 and "already exists" in r.output
    r = CliRunner().invoke(cli, ["report", str(folder), "--out", str(out), "--overwrite"])
    assert r.exit_code == 0 and r.output.strip().endswith("(open it in a browser)")


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    (d / "notes.txt").write_text("nothing")
    return d


def test_budget_plan_takes_the_largest_setting_that_fits():
    from infoprobe.analyses.analyze import LADDERS, plan_analyses
    from infoprobe.model import load_model

    lm = load_model(FIX / "mlp_sigmoid.onnx")
    roomy = {s.name: s for s in plan_analyses(lm, 2000, 2000, 1e-6, 600)}
    assert roomy["ablation"].settings == LADDERS["ablation"][0] and not roomy["ablation"].cut
    tight = {s.name: s for s in plan_analyses(lm, 2000, 2000, 2e-4, 60)}
    assert tight["ablation"].settings != LADDERS["ablation"][0] and "instead of" in tight["ablation"].cut
    # every chosen setting fits its share, or is the last rung (or the analysis is skipped)
    for s in tight.values():
        if s.name in LADDERS and not s.skipped:
            assert s.estimate <= s.seconds or s.settings == LADDERS[s.name][-1]
    hopeless = {s.name: s for s in plan_analyses(lm, 2000, 2000, 1e-1, 10)}
    assert "raise --budget" in hopeless["importance"].skipped and "raise --budget" in hopeless["modules"].skipped
    assert hopeless["ablation"].skipped.startswith("needs importance")     # it reads importance's store
    unlabelled = {s.name: s for s in plan_analyses(lm, 2000, 2000, 1e-6, 600, has_labels=False)}
    assert unlabelled["importance"].skipped and not unlabelled["frivolous"].skipped


def test_analyze_prints_its_plan_first_and_the_report_last(tmp_path, monkeypatch):
    from test_analyze_budget import BASE, cli_with

    # fixed throughputs and a fake clock: the same plan on a loaded machine (modules' clustering
    # costs 0.3 s, which cuts it to its smallest setting)
    cli_with(monkeypatch, dict(BASE, clustering=0.3))
    out = tmp_path / "an"
    r = CliRunner().invoke(cli, ["analyze", str(FIX / "mlp_sigmoid.onnx"), "--data", str(FIX / "mnist_demo.npz"),
                                 "--split", "test", "--limit", "300", "--budget", "0.5", "--out", str(out),
                                 "--no-progress"])
    assert r.exit_code == 0, r.output
    lines = r.output.strip().splitlines()
    assert lines[0].startswith("infoprobe analyze mlp_sigmoid.onnx: 300 samples")
    assert [ln.split()[0] for ln in lines[1:6]] == ["importance", "ablation", "synergy", "modules", "frivolous"]
    assert lines[-1].endswith(f"report: {out / 'report.html'} (open it in a browser)")
    html = (out / "report.html").read_text()
    for sid in ("analyze", "importance", "ablation", "synergy", "modules", "frivolous"):
        assert f'id="{sid}"' in html
    plan = json.loads((out / "analyze.json").read_text())["rows"]
    assert [r["analysis"] for r in plan] == ["importance", "ablation", "synergy", "modules", "frivolous"]
    assert all(r["seconds"] is not None and not r["skipped"] for r in plan)
    assert "within the budget of 0.5 min" in lines[-2]
    r = CliRunner().invoke(cli, ["analyze", str(FIX / "mlp_sigmoid.onnx"), "--data", str(FIX / "mnist_demo.npz"),
                                 "--out", str(out), "--no-progress"])
    assert r.exit_code == 2 and "already exists" in r.output
    # a folder holding any file analyze would write is refused before any work, not overwritten
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "ablation.json").write_text("my own results")
    r = CliRunner().invoke(cli, ["analyze", str(FIX / "mlp_sigmoid.onnx"), "--data", str(FIX / "mnist_demo.npz"),
                                 "--out", str(mine), "--no-progress"])
    assert r.exit_code == 2 and "ablation.json already exists" in r.output and "--overwrite" in r.output
    assert (mine / "ablation.json").read_text() == "my own results" and not (mine / "acts.h5").exists()


def test_results_have_a_short_repr_and_frames(sigmoid_store, tmp_path):
    """A result prints as its tables and sizes (not thousands of rows); to_frame gives each table
    as pandas; capture's return is a path and the open store at once."""
    from infoprobe.analyses.capture import capture
    from infoprobe.analyses.importance import importance
    from infoprobe.data import load_data
    from infoprobe.errors import ConfigError
    from infoprobe.store import Store

    imp = importance(sigmoid_store, progress=False)
    assert repr(imp) == (f"<ImportanceResult importance: {len(imp.units):,} rows, "
                         f"specific_information: {len(imp.specific):,} rows>")
    frame = imp.to_frame()
    assert list(frame.columns) == list(imp.units[0]) and len(frame) == len(imp.units)
    np.testing.assert_array_equal(frame["mutual_information"].to_numpy(),
                                  [r["mutual_information"] for r in imp.units])
    assert len(imp.to_frame("specific_information")) == len(imp.specific)
    with pytest.raises(ConfigError, match="no table 'nope'; this result has: importance, specific_information"):
        imp.to_frame("nope")
    data = load_data(FIX / "mnist_demo.npz", split="test", limit=30)
    p = capture(FIX / "mlp_sigmoid.onnx", data, tmp_path / "a.h5", progress=False)
    assert str(p) == str(tmp_path / "a.h5") and p.exists() and not hasattr(p, "read")
    assert p.layer_names == ["fc1", "fc2", "fc3"] and p.n_rows == 30      # opened on first use
    with p as store:
        assert isinstance(store, Store) and store.read("fc1").shape == (30, 100)
    with Store(p) as again:                                               # and still a path
        assert again.n_rows == 30


def test_importance_warns_when_the_threshold_code_is_constant(tmp_path):
    """On a ReLU CNN the one-bit threshold code of a channel's mean over positions is constant
    for most channels: importance says so (analyze uses a median split there)."""
    import warnings

    from infoprobe.analyses.capture import capture
    from infoprobe.analyses.importance import Quantizer, importance
    from infoprobe.data import load_data

    data = load_data(FIX / "mnist_demo.npz", split="test", limit=60)
    store = capture(FIX / "zoo_resnet.onnx", data, tmp_path / "r.h5", layers=["block2_conv1"], progress=False)
    with pytest.warns(UserWarning, match=r"of 32 units of block2_conv1 have a constant threshold code"):
        res = importance(store, progress=False)
    # several layers: one warning that counts them, not one per layer
    both = capture(FIX / "zoo_resnet.onnx", data, tmp_path / "r2.h5", layers=["block1_conv1", "block2_conv1"],
                   progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        importance(both, progress=False)
    said = [str(w.message) for w in caught if "constant threshold code" in str(w.message)]
    assert len(said) == 1 and said[0].startswith("most units of 2 layers")
    assert sum(r["entropy"] == 0 for r in res.units) > 16
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = importance(store, quantizer=Quantizer("quantile", bins=2), progress=False)
    assert sum(r["entropy"] == 0 for r in res.units) < 16
