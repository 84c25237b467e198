"""Headline sentences of the report never contradict the numbers they quote: each number is the
JSON value it points at (to the digits shown), synergy wording follows the sign of
O-information (Omega < 0 synergy-dominated, Omega > 0 redundancy-dominated; Rosas et al. 2019),
flow headlines name the first, highest and last checkpoints where the JSON has them, on the
axis the checkpoints really have (epoch, step or checkpoint index), and the demo's terminal
prints the report's own sentences."""
import json
import re
import shutil
from html.parser import HTMLParser

import numpy as np
import pytest

from conftest import FIX
from infoprobe.errors import ConfigError
from infoprobe.htmlreport import headlines, render
from infoprobe.results import provenance, write_table

META = provenance({"store": ("acts.h5", "ab" * 32)}, {"n_samples": 100})


class _Headlines(HTMLParser):
    """Per section id, its headline sentences: (plain text, [(source, pointer, shown text)])."""

    def __init__(self):
        super().__init__()
        self.sections, self._sid, self._in_head, self._p, self._span = {}, None, False, None, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section":
            self._sid = a.get("id")
        elif tag == "div" and a.get("class") == "headline":
            self._in_head = True
        elif tag == "p" and self._in_head:
            self._p = ["", []]
        elif tag == "span" and a.get("class") == "hl" and self._p is not None:
            self._span = [a["data-source"], a["data-pointer"], ""]

    def handle_data(self, data):
        if self._p is not None:
            self._p[0] += data
        if self._span is not None:
            self._span[2] += data

    def handle_endtag(self, tag):
        if tag == "span" and self._span is not None:
            self._p[1].append(tuple(self._span))
            self._span = None
        elif tag == "p" and self._p is not None:
            self.sections.setdefault(self._sid, []).append(tuple(self._p))
            self._p = None
        elif tag == "div" and self._in_head:
            self._in_head = False


def _sentences(folder) -> dict:
    page = _Headlines()
    page.feed(render([folder]))
    return page.sections


def _pointer(doc, pointer):
    for part in pointer.lstrip("/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


def _shown(text) -> tuple[float, float]:
    """(value, half a unit in the last place) of a number as the page shows it."""
    t = text.replace(",", "").replace("+", "")
    scale = 0.01 if t.endswith("%") else 1.0
    t = t.rstrip("%")
    mantissa = t.lower().split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    exponent = int(t.lower().split("e")[1]) if "e" in t.lower() else 0
    return float(t) * scale, 0.5 * 10.0 ** (exponent - decimals) * scale


def _check_numbers(folder, sections):
    """Every number of every headline is the JSON value it points at, to the digits shown,
    and no value is shown as a signed zero."""
    docs = {}
    n = 0
    for sentences in sections.values():
        for text, spans in sentences:
            for source, pointer, shown in spans:
                doc = docs.setdefault(source, json.loads((folder / source).read_text()))
                value = _pointer(doc, pointer)
                got, half = _shown(shown)
                assert abs(got - value) <= half * (1 + 1e-9) + 1e-12 * abs(value), (text, pointer, shown, value)
                assert not re.fullmatch(r"-0(\.0*)?", shown), (text, shown)
                n += 1
    return n


def _profile(layer, size, direction, mean, lo, hi, networks, method="exhaustive"):
    return {"layer": layer, "size": size, "direction": direction, "method": method, "mean": mean,
            "std": 0.1 if networks > 1 else None, "median": mean, "min": lo, "max": hi, "networks": networks}


#: (layer, direction) -> (mean, min, max, networks) of the largest size; smaller sizes get other
#: values, so a headline quoting them is caught.
SIGN_CASES = {
    ("redundant_only", "synergy"): (7.1, 6.5, 7.5, 5),        # the lowest Omega is positive
    ("redundant_only", "redundancy"): (9.2, 8.0, 10.0, 5),
    ("synergy_only", "synergy"): (-1.25, -1.5, -1.0, 5),
    ("synergy_only", "redundancy"): (-0.3, -0.5, -0.1, 5),   # the highest Omega is negative
    ("mixed", "synergy"): (-0.4, -0.9, 0.2, 3),              # negative mean, not in every network
    ("mixed", "redundancy"): (0.5, -0.2, 1.1, 3),
    ("leaning", "synergy"): (0.3, -0.2, 0.8, 4),            # positive mean, one network below 0
    ("leaning", "redundancy"): (1.0, 0.5, 1.5, 4),
    ("single", "synergy"): (0.0, 0.0, 0.0, 1),
    ("single", "redundancy"): (2.5, 2.5, 2.5, 1),
}


def _sign_folder(path):
    rows = []
    for (layer, direction), (mean, lo, hi, n) in SIGN_CASES.items():
        rows.append(_profile(layer, 2, direction, -mean - 3, -mean - 4, -mean - 2, n))   # opposite sign
        rows.append(_profile(layer, 6, direction, mean, lo, hi, n, "greedy"))
    write_table(path, "synergy_profile", rows, META)
    return path


def _sign_claims(text: str) -> dict:
    """What a synergy sentence claims: the side it calls by name, the dominance it asserts."""
    return {"most_synergistic": "the most synergistic" in text, "most_redundant": "the most redundant" in text,
            "no_synergy": "no synergy-dominated" in text, "no_redundancy": "no redundancy-dominated" in text,
            "neither": "neither" in text,
            "synergy_dominated": bool(re.search(r"(?<!no )(?<!neither )(?<!nor )synergy-dominated", text)),
            "redundancy_dominated": bool(re.search(r"(?<!no )(?<!neither )(?<!nor )redundancy-dominated", text))}


def _check_synergy_sentence(text, spans, rows):
    """The sentence quotes the row it means (largest size of its layer and side) and its
    words follow the sign of the Omega it quotes."""
    (_, mean_ptr, _), = [s for s in spans if s[1].endswith("/mean")]
    row = rows[int(mean_ptr.split("/")[2])]
    mine = [r for r in rows if (r["layer"], r["direction"]) == (row["layer"], row["direction"])]
    assert row["size"] == max(r["size"] for r in mine), text
    assert text.startswith(row["layer"] + ":"), text
    size_ptr = next(p for _, p, _ in spans if p.endswith("/size"))
    assert size_ptr == mean_ptr.replace("/mean", "/size")
    v, c = row["mean"], _sign_claims(text)
    assert c["most_synergistic"] == (row["direction"] == "synergy" and v < 0), text
    assert c["most_redundant"] == (row["direction"] == "redundancy" and v > 0), text
    assert c["no_synergy"] == (row["direction"] == "synergy" and v >= 0), text
    assert c["no_redundancy"] == (row["direction"] == "redundancy" and v <= 0), text
    assert c["synergy_dominated"] == (v < 0), text
    assert c["redundancy_dominated"] == (v > 0), text
    assert c["neither"] == (v == 0), text
    # a sign that holds on average but not in every network is said, with the number
    far = row["max"] if row["direction"] == "synergy" else row["min"]
    crosses = row["networks"] > 1 and (v < 0 <= far if row["direction"] == "synergy" else v > 0 >= far)
    assert ("not in every network" in text) == crosses, text
    near = row["min"] if row["direction"] == "synergy" else row["max"]
    some = row["networks"] > 1 and (v >= 0 > near if row["direction"] == "synergy" else v <= 0 < near)
    assert ("though some network has one" in text) == some, text
    assert ("found by greedy search" in text) == ("greedy" in row["method"])


def test_synergy_headlines_follow_the_sign_of_omega(tmp_path):
    folder = _sign_folder(tmp_path / "res")
    sentences = _sentences(folder)["synergy"]
    assert _check_numbers(folder, {"synergy": sentences}) >= 2 * len(SIGN_CASES)
    rows = json.loads((folder / "synergy_profile.json").read_text())["rows"]
    assert len(sentences) == len(SIGN_CASES)
    for text, spans in sentences:
        _check_synergy_sentence(text, spans, rows)
    # the reported case: a positive lowest Omega is not called synergistic
    first = next(t for t, _ in sentences if t.startswith("redundant_only") and "7.1" in t)
    assert "no synergy-dominated multiplet (Ω < 0) of 6 units found on average: the least redundant has Ω = 7.1 " \
           "bits, redundancy-dominated" in first and "synergistic" not in first


def test_synergy_headlines_of_a_real_search_quote_its_mean_over_networks(tmp_path):
    """A search on two ReLU MLPs: each headline's Omega is the mean over networks of the best
    Omega in synergy.json (recomputed here), at the largest size searched."""
    from infoprobe.analyses.capture import capture
    from infoprobe.analyses.synergy import synergy
    from infoprobe.data import load_data

    data = load_data(FIX / "mnist_demo.npz", split="test", limit=300)
    stores = [capture(FIX / f"{n}.onnx", data, tmp_path / f"{n}.h5", progress=False)
              for n in ("mlp_relu", "mlp_relu_s2")]
    res = synergy(stores, max_size=4, exhaustive_up_to=3, progress=False)
    res.save(tmp_path / "res")
    sentences = _sentences(tmp_path / "res")["synergy"]
    profile = json.loads((tmp_path / "res" / "synergy_profile.json").read_text())["rows"]
    best = json.loads((tmp_path / "res" / "synergy.json").read_text())["rows"]
    assert _check_numbers(tmp_path / "res", {"synergy": sentences}) >= 3 * len(sentences)
    assert len(sentences) == 2 * len(res.layers())
    for text, spans in sentences:
        _check_synergy_sentence(text, spans, profile)
        (_, ptr, _), = [s for s in spans if s[1].endswith("/mean")]
        row = profile[int(ptr.split("/")[2])]
        omegas = [b["omega"] for b in best if (b["layer"], b["direction"], b["size"]) ==
                  (row["layer"], row["direction"], 4)]
        assert len(omegas) == 2 and row["mean"] == pytest.approx(np.mean(omegas), rel=1e-12)


def _toys(ks):
    return [FIX / f"toy_tanh_k{k:06d}.onnx" for k in ks]


#: The Section 4 toy neuron: I(X;T) starts at 0, rises to 2 bits, falls towards 1 bit.
TOY_STEPS = (0, 5, 80, 3733, 300000)


def _flow_folder(path, models, n_mc=3000, **kw):
    from infoprobe.analyses.flow import flow_series
    from infoprobe.data import load_data

    s = flow_series(models, load_data(FIX / "toy_tanh.npz"), beta=0.01, n_mc=n_mc, progress=False, **kw)
    s.save(path)
    return s


def _check_flow_sentence(text, spans, rows, axis):
    """The first, highest and last values quoted are the JSON's, each at the position the
    JSON gives on ``axis``, named by the axis' word."""
    word = {"epoch": "epoch", "step": "step", "checkpoint_index": "checkpoint"}[axis]
    mi = np.array([r["mi"] for r in rows])
    quoted = {}
    for role in ("first", "highest", "last"):
        m = re.search(rf"(?:: |, | and ){role}(?: and \w+)? ([-0-9.,]+) bits( \(zero within two standard "
                      rf"errors\))? at {word} ([0-9.,]+)", text)
        assert m, (role, text)
        quoted[role] = (m.group(1), m.group(3), bool(m.group(2)))
    want = {"first": 0, "highest": int(np.argmax(mi)), "last": len(rows) - 1}
    for role, i in want.items():
        value, half = _shown(quoted[role][0])
        assert abs(value - mi[i]) <= half * (1 + 1e-9), (role, text)
        assert _shown(quoted[role][1])[0] == rows[i][axis], (role, text)
        assert quoted[role][2] == (abs(mi[i]) <= 2 * rows[i]["mi_se"]), (role, text)
        assert (rel_ptr := f"/rows/{i}/mi") in {p for _, p, _ in spans}, rel_ptr
    # values are shown to the first digit of the largest Monte Carlo standard error
    se = max(r["mi_se"] for r in rows)
    decimals = -int(np.floor(np.log10(se)))
    assert all(len(s.split(".")[1]) == decimals for _, p, s in spans if p.endswith("/mi"))


def test_flow_headline_names_first_peak_and_last_on_the_steps_of_the_file_names(tmp_path):
    s = _flow_folder(tmp_path / "f", _toys(TOY_STEPS), n_mc=20_000)         # the demo's precision
    rows = json.loads((tmp_path / "f" / "flow.json").read_text())["rows"]
    assert [r["step"] for r in rows] == list(TOY_STEPS) and "epoch" not in rows[0]
    assert [r["checkpoint_index"] for r in rows] == list(range(len(TOY_STEPS))) and s.axis == "step"
    sections = _sentences(tmp_path / "f")
    _check_numbers(tmp_path / "f", sections)
    (text, spans), = sections["flow"]
    _check_flow_sentence(text, spans, rows, "step")
    assert "epoch" not in text
    # the peak of about 2 bits is said even though the first and last values are lower
    mi = [r["mi"] for r in rows]
    assert max(mi) > 1.9 and mi[0] < 0.1 and mi[-1] < 1.5 and re.search(r"highest (1\.9|2\.0)", text)
    # the first value, zero within the estimator's precision, is not shown as a signed number
    assert mi[0] < 0 and re.search(r"first 0\.0+ bits \(zero within two standard errors\) at step 0\b", text), text


def test_flow_without_known_epochs_is_by_checkpoint_and_with_epochs_by_epoch(tmp_path):
    models = []
    for name, k in zip(("early", "middle", "late"), (0, 80, 300000)):
        models.append(tmp_path / f"{name}.onnx")
        shutil.copy(_toys([k])[0], models[-1])
    _flow_folder(tmp_path / "f", models)
    rows = json.loads((tmp_path / "f" / "flow.json").read_text())["rows"]
    assert "epoch" not in rows[0] and "step" not in rows[0] and [r["checkpoint_index"] for r in rows] == [0, 1, 2]
    for table in ("units", "distances"):
        first = json.loads((tmp_path / "f" / f"{table}.json").read_text())["columns"]
        assert "checkpoint_index" in first and "epoch" not in first, table
    (text, spans), = _sentences(tmp_path / "f")["flow"]
    _check_flow_sentence(text, spans, rows, "checkpoint_index")
    assert "epoch" not in text and "step" not in text
    _flow_folder(tmp_path / "g", models, epochs=[0, 10, 50])
    rows = json.loads((tmp_path / "g" / "flow.json").read_text())["rows"]
    assert [r["epoch"] for r in rows] == [0, 10, 50]
    (text, spans), = _sentences(tmp_path / "g")["flow"]
    _check_flow_sentence(text, spans, rows, "epoch")


def test_checkpoint_axis_rules(tmp_path):
    import onnx

    from infoprobe.analyses.flow import checkpoint_axis

    szt = [FIX / f"szt_e{e:04d}.onnx" for e in (0, 10, 50)]
    assert checkpoint_axis(szt) == ("epoch", [0, 10, 50], "file names")
    assert checkpoint_axis(_toys((0, 46))) == ("step", [0, 46], "file names")
    # seeds are not steps; equal numbers are not positions; given epochs win
    assert checkpoint_axis([FIX / "mlp_relu.onnx", FIX / "mlp_relu_s2.onnx"])[0] == "checkpoint_index"
    assert checkpoint_axis(["run1_e10.onnx", "run2_e10.onnx"]) == ("checkpoint_index", [0, 1], "order")
    assert checkpoint_axis(szt, epochs=[1, 2, 3]) == ("epoch", [1.0, 2.0, 3.0], "given")
    with pytest.raises(ConfigError, match="2 epochs for 3 checkpoints"):
        checkpoint_axis(szt, epochs=[1, 2])
    # the model's metadata wins over its name
    assert checkpoint_axis(szt, metadata=[{"step": "7"}, {"global_step": "70"}, {"step": "700"}]) == \
        ("step", [7, 70, 700], "model metadata")
    assert checkpoint_axis(szt, metadata=[{"step": "7"}, {"epoch": "1"}, {}])[2] == "file names"
    models = []
    for i, (k, epoch) in enumerate(((0, "1"), (80, "4"))):
        m = onnx.load(str(_toys([k])[0]))
        onnx.helper.set_model_props(m, {"epoch": epoch})
        models.append(tmp_path / f"ckpt_{'ab'[i]}.onnx")
        onnx.save(m, str(models[-1]))
    s = _flow_folder(tmp_path / "f", models)
    assert (s.axis, s.positions) == ("epoch", [1, 4])
    assert s.meta["parameters"]["checkpoint_axis"] == {"axis": "epoch", "positions": [1, 4], "from": "model metadata"}


def test_flow_plots_label_the_axis_the_checkpoints_have(tmp_path, monkeypatch):
    from infoprobe import report

    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, path: figures.append(fig) or path)
    rows = [{"checkpoint_index": i, "step": k, "layer": "fc1", "mi": 1.0, "mi_se": 0.01, "beta": 0.1, "unit": "bits",
             "bin_size": 0.1, "binned_entropy": 1.0} for i, k in enumerate((0, 10, 1000))]
    report.plot_flow(rows, tmp_path / "a.png")
    report.plot_flow([{k: v for k, v in r.items() if k != "step"} for r in rows], tmp_path / "b.png")
    report.plot_distances({46: [{"layer": "fc1", "kind": "all", "lo": 0.0, "hi": 1.0, "density": 1.0}]},
                          tmp_path / "c.png", axis="step")
    assert figures[0].axes[-1].get_xlabel() == "training step"
    assert figures[1].axes[-1].get_xlabel().startswith("checkpoint (index in training order")
    assert figures[2].axes[0].get_title() == "step 46"


def test_every_headline_of_a_full_folder_quotes_its_json(tmp_path):
    """Folders with the tables of the demo and of analyze (written as the analyses write
    them): every number of every headline is the JSON value it points at; modules and
    frivolous wording follow their numbers."""
    folder = _sign_folder(tmp_path / "res")
    rng = np.random.default_rng(0)
    write_table(folder, "importance", [{"layer": lay, "unit": u, "mutual_information": float(rng.random())}
                                       for lay in ("fc1", "fc2") for u in range(5)], META)
    write_table(folder, "ablation", [{"scope": "layer", "layer": "fc1", "ranking": "mutual_information", "order": "low",
                                      "value": "mean", "fraction": f, "accuracy": 0.9 - 0.3 * f}
                                     for f in (0.0, 0.25, 0.5, 0.75)], META)
    write_table(folder, "analyze", [{"analysis": "importance", "seconds": 1.25, "skipped": None, "cut": None}],
                dict(META, parameters={"budget_min": 0.5}))
    (folder / "modules").mkdir()

    def network(p):
        (folder / "modules" / "network.json").write_text(json.dumps({
            "meta": dict(META, parameters={"alpha": 0.05}),
            "network": {"ncut": 0.4, "n_clusters": 4, "clusterability_p_all": 0.01, "fisher_importance": p}}))

    network(0.3)
    (folder / "frivolous").mkdir()
    write_table(folder / "frivolous", "gains", [{"measure": "prunable", "layer": "all", "g": -0.5}], META)
    _flow_folder(folder / "flow", _toys((0, 80, 300000)))
    sections = _sentences(folder)
    assert {"analyze", "importance", "ablation", "synergy", "modules", "frivolous", "flow"} <= set(sections)
    assert _check_numbers(folder, sections) > 30
    assert [t for t, _ in sections["modules"] if "Fisher" in t] == [
        "Sub-clusters do not matter detectably more than random groups of the same size: Fisher's combined "
        "p = 0.3 (not below α = 0.05)."]
    network(0.001)
    assert [t for t, _ in _sentences(folder)["modules"] if "Fisher" in t] == [
        "Sub-clusters matter more than random groups of the same size: Fisher's combined p = 0.001 (below α = 0.05)."]
    assert all("grow" not in t for t, _ in sections["frivolous"])


def test_the_terminal_prints_the_reports_sentences(tmp_path):
    """headlines() and the demo's terminal summary say word for word what the page says."""
    from infoprobe.cli.demo import summary_lines

    folder = _sign_folder(tmp_path / "res")
    _flow_folder(folder / "flow", _toys((0, 80, 300000)))
    page = {sid: [t for t, _ in sentences] for sid, sentences in _sentences(folder).items()}
    said = headlines([folder])
    assert said == page and len(said["synergy"]) == len(SIGN_CASES) and len(said["flow"]) == 1
    summary = {"model": "m.onnx", "baseline_accuracy": 0.9, "n_test": 10, "n_validation": 10,
               "mean_importance_bits": {}, "accuracy_at_50_percent_ablated": [],
               "pruned": {"plan": "p", "parameters": [10, 5], "accuracy": [0.9, 0.9], "label_agreement": 1.0,
                          "latency_ratio": 1.0, "check_passed": True},
               "synergy": {"networks": ["a", "b"]}, "files": [],
               "modules": {"model": "f.onnx", "ncut": 0.4, "clusterability_p_all": 0.1, "fisher_importance": 0.1,
                           "chi2_importance": 0.1, "categories": {}},
               "headlines": {k: said[k] for k in ("synergy", "flow")}}
    lines = summary_lines(summary, tmp_path)
    for sentence in said["synergy"] + said["flow"]:
        assert f"  {sentence}" in lines
