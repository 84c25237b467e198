"""`infoprobe analyze` keeps the budget it states: its estimates extrapolate each analysis's
first units of work, the plan cuts and skips exactly as the cost model says, an analysis that
overruns its estimate is reported over the budget, and the store captured for the plan stays.

Every test here runs under a fake clock (:class:`Clock`): time moves only when an analysis is
called, by what the test says it costs, so the decisions are the same on any machine and
under any load."""
from __future__ import annotations

import functools
import json
import re
from html.parser import HTMLParser

import pytest

import importlib
from conftest import FIX
from infoprobe.analyses import analyze as an
from infoprobe.data import load_data
from infoprobe.model import load_model

MODEL, DATA = FIX / "mlp_sigmoid.onnx", FIX / "mnist_demo.npz"
#: Throughputs of a fast machine for the sigmoid MLP (:class:`infoprobe.analyses.analyze.Costs`).
BASE = dict(capture_setup=0.05, capture=1e-4, estimators=2e-7, evaluator=2e-6, site=0.01, evaluation=1e-5,
            clustering=0.05, redundancy=5e-5, results=0.2, subclusters=20)
#: The sigmoid MLP: evaluation samples, hidden sites (fc1, fc2: 100 units each), their units.
N, L, U = 300, 2, 200


class Clock:
    """Virtual seconds: they pass only when :meth:`advance` says so."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def scaled(costs: dict, factor: float) -> dict:
    return {k: v if k == "subclusters" else v * factor for k, v in costs.items()}


def closed_form(name: str, s: dict, c: dict) -> float:
    """The cost model written out for the sigmoid MLP (two layers of 100 units; a curve of
    n_steps points has n_steps distinct unit counts for 100 units when n_steps - 1 divides 100)."""
    fixed = c["evaluator"] * N + L * c["site"] + c["results"]
    e = c["evaluation"] * N
    if name == "importance":
        return c["results"] + c["capture_setup"] + s["samples"] * (c["capture"] + U * c["estimators"])
    if name == "ablation":
        return fixed + len(s["values"]) * (2 + s["random_repeats"]) * L * s["n_steps"] * e
    if name == "modules":
        lesions = c["subclusters"] * (1 + s["n_random"]) + (5 * (1 + 2 * s["n_double"]) if s["n_double"] else 0)
        return (1 + s["n_shuffles"]) * c["clustering"] + fixed + lesions * e
    if name == "frivolous":
        return fixed + (L + 1) * s["n_permutations"] * 6 * e + c["redundancy"] * N
    raise AssertionError(name)


def timed(monkeypatch, clock: Clock, cost, *, synergy_s: float = 3.0) -> list:
    """Make each analysis take ``cost(name, settings, lm, n_eval)`` seconds on ``clock``
    (synergy: the budget it is given), then run it; its real search gets at most
    ``synergy_s`` seconds. Returns the (name, settings) of every analysis called, in order."""
    calls = []

    def wrap(module, attr, name, settings_of):
        real = getattr(module, attr)

        @functools.wraps(real)
        def run(*args, **kw):
            settings, lm, n = settings_of(args, kw)
            calls.append((name, settings))
            clock.advance(cost(name, settings, lm, n))
            if name == "synergy":
                kw["budget"] = min(kw["budget"], synergy_s)
            return real(*args, **kw)
        monkeypatch.setattr(module, attr, run)

    keys = {"ablation": ("n_steps", "random_repeats", "values"), "modules": ("n_random", "n_shuffles", "n_double"),
            "frivolous": ("n_permutations",)}
    pick = lambda name, kw: {k: kw[k] for k in keys[name]}                                    # noqa: E731
    mod = {m: importlib.import_module(f"infoprobe.analyses.{m}") for m in ("capture", "ablation", "modules",
                                                                         "frivolous", "synergy")}
    wrap(mod["capture"], "capture", "importance",
         lambda a, kw: ({"samples": len(a[1].x)}, a[0], 0))
    wrap(mod["ablation"], "cumulative_ablation", "ablation", lambda a, kw: (pick("ablation", kw), a[0], len(a[2].x)))
    wrap(mod["modules"], "modules", "modules", lambda a, kw: (pick("modules", kw), a[0], len(a[1].x)))
    wrap(mod["frivolous"], "frivolous", "frivolous", lambda a, kw: (pick("frivolous", kw), a[0], len(a[1].x)))
    wrap(mod["synergy"], "synergy", "synergy", lambda a, kw: ({"budget_s": kw.get("budget")}, None, None))
    return calls


def the_model(costs: dict):
    """A cost function that charges what the library's own cost model estimates."""
    def cost(name, settings, lm, n):
        if name == "synergy":
            return settings["budget_s"] or 0.0
        full = dict(an._ladder(name, lm, 10**9)[0] if name == "importance" else {}, **settings)
        return an.estimate(name, full, lm, n, an.Costs.build(costs))
    return cost


def cli_with(monkeypatch, costs: dict):
    """``infoprobe analyze`` on the command line with these fixed throughputs and a fake clock
    on which each analysis takes what the cost model estimates: its plan is the same on any
    machine."""
    clock = Clock()
    monkeypatch.setattr(an, "analyze", functools.partial(an.analyze, clock=clock, costs=costs))
    timed(monkeypatch, clock, the_model(costs))
    return clock


class _Headline(HTMLParser):
    """The analyze section's text, and its headline spans (pointer, text)."""

    def __init__(self):
        super().__init__()
        self.text, self.spans, self._in, self._depth = "", [], None, 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "section" and a.get("id") == "analyze":
            self._depth = 1
        elif self._depth and tag == "section":
            self._depth += 1
        if self._depth and tag == "span" and a.get("class") == "hl":
            self._in = [a["data-pointer"], ""]

    def handle_endtag(self, tag):
        if self._depth and tag == "section":
            self._depth -= 1
        if tag == "span" and self._in is not None:
            self.spans.append(tuple(self._in))
            self._in = None

    def handle_data(self, data):
        if self._depth:
            self.text += data
            if self._in is not None:
                self._in[1] += data


def page(out):
    p = _Headline()
    p.feed((out / "report.html").read_text())
    return p


def run(tmp_path, monkeypatch, costs, cost, budget_min, **kw):
    clock = Clock()
    calls = timed(monkeypatch, clock, cost)
    lines = []
    data = load_data(DATA, split="test", limit=N)
    res = an.analyze(MODEL, data, tmp_path / "out", budget=budget_min, progress=False, echo=lines.append,
                     clock=clock, costs=costs, **kw)
    doc = json.loads((tmp_path / "out" / "analyze.json").read_text())
    return res, doc, lines, calls, clock


def test_a_machine_100_times_slower_cuts_and_skips_as_the_cost_model_says(tmp_path, monkeypatch):
    slow = scaled(BASE, 100)
    res, doc, lines, calls, clock = run(tmp_path, monkeypatch, slow, lambda name, s, lm, n: s["budget_s"]
                                        if name == "synergy" else closed_form(name, s, slow), 4.0)
    rows = {r["analysis"]: r for r in doc["rows"]}
    settings = {r["analysis"]: dict(doc["meta"]["plan"]["steps"][i]["settings"]) for i, r in enumerate(doc["rows"])}
    # 100x slower: importance (29.2 s) fits its share; ablation's largest setting (198 s) does not,
    # its second (55.1 s) does; modules' smallest (253 s) is over 3x any share it gets; frivolous
    # (39.8 s at 3 permutations) fits once modules' share is given to the others
    assert settings["importance"] == {"samples": 300, "quantizer": "threshold"}
    assert settings["ablation"] == {"n_steps": 11, "random_repeats": 3, "values": ["mean"]}
    assert "n_steps 11 instead of 21" in rows["ablation"]["cut"]
    assert rows["modules"]["skipped"].startswith("out of budget: even its smallest setting needs about 253 s")
    assert settings["frivolous"] == {"n_permutations": 3} and not rows["frivolous"]["cut"]
    assert [c[0] for c in calls] == ["importance", "ablation", "synergy", "frivolous"]
    # each estimate is the closed form of its settings, and the next larger setting did not fit its share
    for name in ("importance", "ablation", "frivolous"):
        s = dict(settings[name], **({"values": tuple(settings[name]["values"])} if name == "ablation" else {}))
        assert rows[name]["estimate_s"] == pytest.approx(closed_form(name, s, slow), rel=1e-12)
        assert rows[name]["seconds"] == pytest.approx(rows[name]["estimate_s"], rel=1e-12)
        ladder = an._ladder(name, load_model(MODEL), 300)
        k = [dict(r, values=tuple(r["values"])) if "values" in r else r for r in ladder].index(s)
        assert k == 0 or closed_form(name, ladder[k - 1], slow) > rows[name]["share_s"]
    # synergy gets what the others leave: 240 s less the others' estimates, from where it starts
    others = sum(rows[n]["estimate_s"] for n in ("importance", "ablation", "frivolous"))
    assert 240 - others - 0.1 <= rows["synergy"]["estimate_s"] <= 240 - others
    t = doc["meta"]["timing"]
    assert t["total_s"] == pytest.approx(clock.now) and 240 - 0.1 <= t["total_s"] <= 240
    assert t["within_budget"] is True and t["over_s"] == 0 and t["calibration_s"] == 0
    assert doc["meta"]["costs"] == an.asdict(an.Costs.build(slow))
    assert "within the budget of 4 min" in lines[-1]
    assert "within the budget of 4 minutes" in page(tmp_path / "out").text


def test_an_analysis_that_overruns_its_estimate_is_reported_over_the_budget(tmp_path, monkeypatch):
    def cost(name, s, lm, n):            # ablation takes 100 s, far over its estimate; the rest as estimated
        return 100.0 if name == "ablation" else the_model(BASE)(name, s, lm, n)

    res, doc, lines, calls, clock = run(tmp_path, monkeypatch, BASE, cost, 0.5)
    rows = {r["analysis"]: r for r in doc["rows"]}
    assert [c[0] for c in calls] == ["importance", "ablation"]          # nothing is started after the overrun
    assert rows["ablation"]["seconds"] == 100.0 and rows["ablation"]["estimate_s"] < 10
    for name in ("synergy", "modules", "frivolous"):
        assert rows[name]["skipped"].startswith("out of budget") and rows[name]["seconds"] is None
    t = doc["meta"]["timing"]
    assert t["total_s"] == pytest.approx(rows["importance"]["seconds"] + 100.0)
    assert t["within_budget"] is False and t["over_s"] == pytest.approx(t["total_s"] - 30)
    assert res["timing"] == t and res["seconds"] == t["total_s"]
    assert lines[-2] == f"analysed in {t['total_s']:.0f} s (calibration 0 s), over the budget of 0.5 min by " \
                        f"{t['over_s']:.0f} s"
    # the page says so, its numbers pointing at the JSON; and that the store is kept
    p = page(tmp_path / "out")
    m = re.search(r"over the budget of (\S+) minutes by (\S+) s", p.text)
    assert m and float(m.group(1)) == 0.5 and abs(float(m.group(2)) - t["over_s"]) < 0.5
    assert ("/meta/timing/over_s", m.group(2)) in p.spans and "within the budget" not in p.text
    assert (tmp_path / "out" / "acts.h5").is_file() and "acts.h5 (300 samples) is kept in this folder" in p.text
    assert "is kept in this folder for reuse" in lines[-1]


def test_calibration_extrapolates_each_analysis_from_its_first_units(tmp_path, monkeypatch):
    """Every unit of work takes a known time on the fake clock: the costs calibrate finds
    are these throughputs, whatever the machine."""
    red, imp, part, iv = (importlib.import_module(f"infoprobe.{m}") for m in (
        "analyses.frivolous.redundancy", "analyses.importance", "analyses.modules.partition", "interventions"))

    clock = Clock()
    want = dict(capture_setup=2.0, capture=0.01, estimators=3e-5, evaluator=1e-3, site=0.5, evaluation=2e-3,
                clustering=3.0, redundancy=5e-3)

    def charge(module, attr, seconds):
        real = getattr(module, attr)

        def run(*a, **kw):
            clock.advance(seconds(*a, **kw))
            return real(*a, **kw)
        monkeypatch.setattr(module, attr, run)

    charge(importlib.import_module("infoprobe.analyses.capture"), "capture",
           lambda lm, d, *a, **kw: want["capture_setup"] + want["capture"] * len(d.x))
    charge(imp, "importance", lambda st, **kw: 0.7 + want["estimators"] * st.n_rows * U)
    charge(part, "partition", lambda *a, **kw: want["clustering"])
    charge(red, "redundancy", lambda lm, d, **kw: want["redundancy"] * len(d.x))
    seen = set()

    class Evaluator(iv.Evaluator):
        def __init__(self, lm, x, **kw):
            clock.advance(want["evaluator"] * len(x))
            super().__init__(lm, x, **kw)

        def evaluate(self, sets, **kw):
            site = sets[0][0].site
            clock.advance((0 if site in seen else want["site"]) + want["evaluation"] * len(sets) * len(self.x))
            seen.add(site)
            return super().evaluate(sets, **kw)
    monkeypatch.setattr(iv, "Evaluator", Evaluator)

    lm = load_model(MODEL)
    data = load_data(DATA, split="test", limit=N)
    costs, failed = an.calibrate(lm, data, data, tmp_path / "cal", samples=64, clock=clock)
    assert failed == []
    got = an.asdict(costs)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9), k
    graph = part.load_graph(lm)[0]
    assert costs.subclusters == len(part.partition(graph, 12).sub_clusters())
    assert not list((tmp_path / "cal").iterdir())               # its stores are gone
