"""``infoprobe analyze``: the analyses that apply to one model and one labelled data set, sized
to a work budget, written to one folder with their report.

The budget is split into shares (:data:`SHARES`). Before any analysis runs, each is timed on
its own first units of work (:func:`calibrate`: the first samples captured, the first
intervention sets evaluated, the first spectral clustering, ...) and the plan extrapolates
these throughputs (:class:`Costs`) to the settings of its ladder (:data:`LADDERS`): each
analysis takes the largest setting whose estimate fits its share. The plan, with what was cut
to fit, is printed before any work. Before each analysis starts, what is left of the budget is
planned again with the time measured so far, so that an analysis that would overrun the budget
is cut or skipped before it starts, never started and abandoned. Synergy's search, which can
use any time it is given, gets what the budget has left once the analyses after it have their
estimates.
"""
from __future__ import annotations

import math
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from ..data import Dataset, resolve_scale
from ..errors import ConfigError, DataError, InfoprobeError
from ..model import LoadedModel, load_model
from ..results import check_outputs, keep_on_interrupt, provenance, write_table

#: Default budget in minutes (about this on two cores for the bundled MLPs).
DEFAULT_BUDGET = 4.0
#: Share of the budget per analysis, in the order they run.
SHARES = {"importance": 0.15, "ablation": 0.30, "synergy": 0.15, "modules": 0.25, "frivolous": 0.15}
#: Settings per analysis, from the papers' (first) down to the least that still says something.
#: Importance's ladder is made per run: the samples of the fit data, halved down to
#: :data:`MIN_FIT_SAMPLES`.
LADDERS = {
    "ablation": [{"n_steps": 21, "random_repeats": 5, "values": ("zero", "mean")},
                 {"n_steps": 11, "random_repeats": 3, "values": ("mean",)},
                 {"n_steps": 6, "random_repeats": 1, "values": ("mean",)}],
    # never under 20 random draws and 20 shuffles: the percentile p values' floor 1/(n + 1)
    # must stay below alpha = 0.05, or no test can be significant (Hod et al., Appendix A.4)
    "modules": [{"n_random": 20, "n_shuffles": 50, "n_double": 50},
                {"n_random": 20, "n_shuffles": 20, "n_double": 20},
                {"n_random": 20, "n_shuffles": 20, "n_double": 0}],
    "frivolous": [{"n_permutations": 3}, {"n_permutations": 2}, {"n_permutations": 1}],
}
#: What analyze writes in its folder (files, and the folders of modules and frivolous).
WRITES = ("report.html", "acts.h5", "modules", "frivolous",
          *(f"{t}.{e}" for t in ("analyze", "importance", "specific_information", "ablation", "synergy",
                                 "synergy_profile") for e in ("csv", "json")),
          "importance.png", "synergy.png", *(f"ablation_{s}.png" for s in ("layer", "network", "hybrid")))
#: Samples the measures are estimated on at most.
MAX_FIT_SAMPLES = 5000
#: Fewest samples a cut of importance estimates the measures on (all of them when fewer).
MIN_FIT_SAMPLES = 1000
#: An analysis whose smallest setting needs more than this many times its share is skipped.
OVER_SHARE = 3.0
#: Least search budget of synergy (seconds); with less left it is skipped.
SYNERGY_MIN_S = 5.0
#: Pairs of important sub-clusters modules' estimate assumes for its double lesions (their
#: number is known only once the lesion tests have run).
DOUBLE_PAIRS = 5
#: Clusters of modules' spectral clustering (its default).
N_CLUSTERS = 12
#: Fraction of the budget the calibration's samples are sized to (from one timed pass).
CALIBRATION_SHARE = 0.05
#: Sites whose evaluations the calibration times (spread over the hidden sites).
CALIBRATION_SITES = 3


def _settings_text(settings: dict) -> str:
    """``k=v, ...`` of an analysis' settings, tuples as ``a/b``."""
    return ", ".join(f"{k}={'/'.join(v) if isinstance(v, tuple) else v}" for k, v in settings.items())


@dataclass
class Costs:
    """Seconds per unit of work of the analyses: what :func:`plan_analyses` extrapolates.

    Measured by :func:`calibrate` on a model's own first units of work, derived from one timed
    forward pass by :meth:`from_pass`, or given (``analyze(costs=...)``, a dict of these
    fields: fixed throughputs that make the plan independent of the machine).

    Attributes
    ----------
    capture_setup : float
        Seconds once per capture (its sessions and store).
    capture : float
        Seconds per sample captured (the pass over every site and the store's write).
    estimators : float
        Seconds per sample and hidden unit of importance's estimators.
    evaluator : float
        Seconds per evaluation sample of the intact pass each evaluating analysis starts with.
    site : float
        Seconds once per site an analysis intervenes at (its suffix session and prefix).
    evaluation : float
        Seconds per intervention set and evaluation sample.
    clustering : float
        Seconds per spectral clustering of the weight graph (the network's, each shuffle's).
    redundancy : float
        Seconds per evaluation sample of frivolous units' redundancy (activations and PCA).
    results : float
        Seconds once per analysis to save its tables and draw its figures.
    subclusters : int or None
        Sub-clusters modules' lesion tests test (from the calibration's clustering; None:
        :data:`N_CLUSTERS` per hidden site).
    """

    capture_setup: float = 0.0
    capture: float = 0.0
    estimators: float = 0.0
    evaluator: float = 0.0
    site: float = 0.0
    evaluation: float = 0.0
    clustering: float = 0.0
    redundancy: float = 0.0
    results: float = 0.0
    subclusters: int | None = None

    @classmethod
    def from_pass(cls, lm: LoadedModel, per_sample: float) -> "Costs":
        """Rough costs from one pass of the instrumented model, ``per_sample`` seconds per
        sample: a capture is two passes, an evaluation or an evaluator's sample one, the
        estimators 1 us per sample and unit, a clustering 0.3 ms per graph vertex (inputs and
        units), an analysis' tables and figures 1 s."""
        units = sum(lay.units for lay in lm.hidden_layers)
        vertices = units + int(np.prod([d or 1 for d in lm.input_shape[1:]], dtype=np.float64)) + lm.layers[-1].units
        return cls(capture=2 * per_sample, estimators=1e-6, evaluator=per_sample, evaluation=per_sample,
                   clustering=3e-4 * vertices, redundancy=2 * per_sample, results=1.0)

    @classmethod
    def build(cls, costs) -> "Costs":
        """``costs`` as :class:`Costs` (a dict of its fields; missing ones 0).

        Raises
        ------
        ConfigError
            An unknown field, or a cost that is not a number >= 0.
        """
        if isinstance(costs, cls):
            return costs
        if not isinstance(costs, dict) or set(costs) - {f.name for f in fields(cls)}:
            raise ConfigError(f"costs must be a dict of {', '.join(f.name for f in fields(cls))}")
        for k, v in costs.items():
            ok = (v is None or isinstance(v, int) and not isinstance(v, bool) and v >= 0) if k == "subclusters" \
                else isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < float("inf")
            if not ok:
                raise ConfigError(f"costs.{k} must be a number >= 0, not {v!r}")
        return cls(**costs)


@dataclass
class Step:
    """One analysis of the plan: its share (seconds), settings, estimate, what was cut, why
    it was skipped (``by_budget``: by the plan, which a later re-plan may undo) and the
    seconds it took."""

    name: str
    seconds: float
    settings: dict = field(default_factory=dict)
    estimate: float = 0.0
    cut: str = ""
    skipped: str = ""
    took: float | None = None
    by_budget: bool = False

    def line(self) -> str:
        if self.skipped:
            return f"  {self.name:<11} skipped: {self.skipped}"
        sets = _settings_text(self.settings)
        return (f"  {self.name:<11} {self.seconds:6.0f} s share, about {self.estimate:5.1f} s"
                + (f"  ({sets})" if sets else "") + (f"; cut: {self.cut}" if self.cut else ""))


def _per_sample_seconds(lm: LoadedModel, data: Dataset, scale, clock) -> float:
    """Seconds per sample of one pass of the instrumented model (the masks and offsets every
    intervention goes through; quantized sites are dequantized and quantized again there), the
    median of 3 runs on up to 256 samples after a warm-up, read on ``clock``."""
    from ..data import model_inputs
    from ..runner import Runner

    runner = Runner(lm, spin=False)
    k = min(256, len(data.x))
    x = model_inputs(lm, data.x[:k], resolve_scale(data.x, scale))
    runner.run(x, outputs=[lm.output_name])
    times = []
    for _ in range(3):
        t = clock()
        runner.run(x, outputs=[lm.output_name])
        times.append(clock() - t)
    return max(float(np.median(times)), 0.0) / k


def _head(data: Dataset, k: int) -> Dataset:
    """The first ``k`` samples of ``data``."""
    if len(data.x) <= k:
        return data
    return replace(data, x=data.x[:k], y=None if data.y is None else data.y[:k], index=data.index[:k])


def _two_sizes(run, small: int, large: int, clock) -> tuple[float, float]:
    """(seconds once, seconds per unit) of ``run(n)`` from its times on ``small`` and
    ``large`` units (one size when they are equal: all of it per unit)."""
    t = clock()
    run(small)
    t_small = clock() - t
    if large <= small:
        return 0.0, max(t_small, 0.0) / small
    t = clock()
    run(large)
    t_large = clock() - t
    per = (t_large - t_small) / (large - small)
    if not per > 0:                 # noise on a loaded machine: all of it per unit
        return 0.0, max(t_large, 0.0) / large
    return max(0.0, t_small - per * small), per


#: A first spectral clustering faster than this (seconds) is timed again, warm, for the estimate
#: of the shuffles (the first pays one-off imports and set-up).
WARM_CLUSTERING_S = 5.0


def calibrate(lm: LoadedModel, fit: Dataset, data: Dataset, scratch, *, samples: int, clock=time.perf_counter,
              scale="auto", device: str = "cpu", rough: Costs | None = None) -> tuple[Costs, list]:
    """Time each analysis on its own first units of work; the throughputs found.

    - capture: ``samples // 4`` and ``samples`` of ``fit`` captured into ``scratch``: its
      setup and seconds per sample (two sizes);
    - importance's estimators on those two stores: seconds per sample and hidden unit; its
      tables and figures saved: seconds per analysis' results;
    - evaluations (ablation, lesions, prunability): an evaluator's intact pass over
      ``samples`` of ``data``, then at up to :data:`CALIBRATION_SITES` hidden sites one
      intervention set (the site's setup) and three more: seconds per set and sample;
    - modules: one spectral clustering of the weight graph (the cost of each shuffle; a second,
      warm one when the first took under :data:`WARM_CLUSTERING_S`), whose sub-clusters are
      those the lesion tests test;
    - frivolous: redundancy on ``samples`` of ``data``, seconds per sample.

    Parameters
    ----------
    lm : LoadedModel
    fit, data : Dataset
        The samples the measures are estimated on and those the model is evaluated on.
    scratch : Path
        A folder for the calibration's stores (made; its files removed after).
    samples : int
        Samples each unit of work is timed on (at most those of the data).
    clock : callable
        Seconds (``time.perf_counter`` by default).
    rough : Costs, optional
        What a measurement that fails keeps (default: all 0).

    Returns
    -------
    (Costs, list of str)
        The throughputs, and one line per measurement that failed (its rough cost kept: the
        analysis then fails on its own, or runs on the rough estimate).
    """
    from ..data import model_inputs
    from ..interventions import Evaluator, Intervention
    from ..store import Store
    from .capture import capture
    from .frivolous.redundancy import redundancy
    from .importance import Quantizer, importance
    from .modules.partition import load_graph, partition

    scratch = Path(scratch)
    scratch.mkdir(parents=True, exist_ok=True)
    got = asdict(rough or Costs())
    failed = []
    units = max(1, sum(lay.units for lay in lm.hidden_layers))
    dense = all(lay.kind == "dense" for lay in lm.hidden_layers)

    def measure(what, fn):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                got.update(fn())
        except InfoprobeError as exc:
            failed.append(f"{what}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")

    def stores():
        k = min(samples, len(fit.x))

        def cap(n):
            try:
                capture(lm, _head(fit, n), scratch / f"calibration{n}.h5", overwrite=True, progress=False, scale=scale)
            finally:
                keep_on_interrupt(None)
        setup, per = _two_sizes(cap, max(1, k // 4), k, clock)
        q = Quantizer() if dense else Quantizer("quantile", bins=2)

        def est(n):
            with Store(scratch / f"calibration{n}.h5") as st:
                kept.append(importance(st, quantizer=q, device=device, progress=False))
        kept = []
        _, per_est = _two_sizes(est, max(1, k // 4), k, clock)
        t = clock()
        (scratch / "calibration_results").mkdir()
        kept[-1].save(scratch / "calibration_results")
        kept[-1].plot(scratch / "calibration_results")
        return {"capture_setup": setup, "capture": per, "estimators": per_est / units, "results": clock() - t}

    def evaluations():
        m = min(samples, len(data.x))
        part = _head(data, m)
        x = model_inputs(lm, part.x, resolve_scale(data.x, scale))
        t = clock()
        engine = Evaluator(lm, x, labels=part.y)
        evaluator = (clock() - t) / m
        hidden = lm.hidden_layers
        picked = sorted({round(i * (len(hidden) - 1) / max(1, CALIBRATION_SITES - 1))
                         for i in range(min(CALIBRATION_SITES, len(hidden)))})
        setups, pers = [], []
        for i in picked:
            lay = hidden[i]
            one = [Intervention(lay.name, np.arange(max(1, lay.units // 2)), 0.0)]
            t = clock()
            engine.evaluate([one])
            first = clock() - t
            t = clock()
            engine.evaluate([one, one, one])
            per = (clock() - t) / 3
            setups.append(max(0.0, first - per))
            pers.append(per / m)
        return {"evaluator": evaluator, "site": float(np.mean(setups)), "evaluation": float(np.mean(pers))}

    def clustering():
        graph, _, _ = load_graph(lm)
        t = clock()
        part = partition(graph, N_CLUSTERS)
        took = clock() - t
        if took < WARM_CLUSTERING_S:     # the first call pays one-off imports and set-up: time a second
            t = clock()
            partition(graph, N_CLUSTERS)
            took = min(took, clock() - t)
        return {"clustering": took, "subclusters": len(part.sub_clusters())}

    def redundant():
        m = min(samples, len(data.x))
        t = clock()
        redundancy(lm, _head(data, m), device=device, scale=scale, progress=False)
        return {"redundancy": (clock() - t) / m}

    try:
        if fit.y is not None and data.y is not None:      # importance and modules need labels
            measure("capture and importance", stores)
            measure("modules' clustering", clustering)
        measure("evaluations", evaluations)
        measure("redundancy", redundant)
    finally:
        for left in scratch.glob("calibration*"):
            shutil.rmtree(left) if left.is_dir() else left.unlink(missing_ok=True)
    return Costs(**got), failed


def _ladder(name: str, lm: LoadedModel, n_fit: int) -> list:
    """The settings of ``name``, largest first (importance: ``n_fit`` samples halved down to
    :data:`MIN_FIT_SAMPLES`, with the quantizer for the model's sites)."""
    if name != "importance":
        return LADDERS[name]
    # Liu et al.'s one-bit threshold code is for dense units; a conv channel's mean over
    # positions after a ReLU is almost never 0, so its threshold code would be constant
    q = "threshold" if all(lay.kind == "dense" for lay in lm.hidden_layers) else "median"
    sizes = [n_fit]
    while sizes[-1] // 2 >= MIN_FIT_SAMPLES:
        sizes.append(sizes[-1] // 2)
    return [{"samples": n, "quantizer": q} for n in sizes]


def estimate(name: str, settings: dict, lm: LoadedModel, n_eval: int, costs: Costs) -> float:
    """Seconds ``name`` needs with ``settings``: its units of work counted and priced at
    ``costs``.

    With N the evaluation samples, L the hidden sites, U their units, E = evaluator x N +
    L x site (the intact pass and each site's setup) and e = evaluation x N (one set):
    importance capture_setup + samples x (capture + U estimators); ablation E + sets x e,
    sets = values x (2 rankings + random repeats) x the points of each layer's curve;
    modules (1 + n_shuffles) clusterings + E + (S (1 + n_random) + DOUBLE_PAIRS (1 + 2
    n_double)) e for S sub-clusters; frivolous E + (L + 1) x permutations x 6 fractions x e +
    redundancy x N; synergy its search budget. Each but synergy adds ``results`` (its tables
    and figures).
    """
    from .ablation import _steps

    hidden = lm.hidden_layers
    fixed = costs.evaluator * n_eval + len(hidden) * costs.site
    e = costs.evaluation * n_eval
    if name == "synergy":
        return float(settings.get("budget_s", 0.0))
    fixed += costs.results
    if name == "importance":
        units = sum(lay.units for lay in hidden)
        return costs.results + costs.capture_setup + settings["samples"] * (costs.capture + units * costs.estimators)
    if name == "ablation":
        points = sum(len(_steps(lay.units, settings["n_steps"])) for lay in hidden)
        return fixed + len(settings["values"]) * (2 + settings["random_repeats"]) * points * e
    if name == "modules":
        subs = costs.subclusters if costs.subclusters is not None else N_CLUSTERS * len(hidden)
        lesions = subs * (1 + settings["n_random"]) + (DOUBLE_PAIRS * (1 + 2 * settings["n_double"])
                                                       if settings["n_double"] else 0)
        return (1 + settings["n_shuffles"]) * costs.clustering + fixed + lesions * e
    if name == "frivolous":
        return fixed + (len(hidden) + 1) * settings["n_permutations"] * 6 * e + costs.redundancy * n_eval
    raise ConfigError(f"no analysis {name!r}; analyze runs {', '.join(SHARES)}")


def _fit_shares(todo: list, out: set, left: float, lm, n_fit: int, n_eval: int, costs: Costs) -> float:
    """One pass of :func:`replan` with the shares of ``left`` split among ``todo`` but
    ``out``; the sum of the shares split."""
    for s in todo:
        s.skipped, s.by_budget = "", False
    total = sum(SHARES[s.name] for s in todo if s.name not in out) or 1.0
    running = left
    for s in todo:
        if s.name == "synergy" or s.skipped:
            continue
        share = s.seconds = left * SHARES[s.name] / total
        ladder = _ladder(s.name, lm, n_fit)
        costs_of = [estimate(s.name, rung, lm, n_eval, costs) for rung in ladder]
        pick = next((i for i, c in enumerate(costs_of) if c <= share), None)
        if pick is None and costs_of[-1] <= min(OVER_SHARE * share, running):
            pick = len(ladder) - 1
        if pick is None or costs_of[pick] > running:
            s.skipped, s.by_budget, s.estimate = (
                f"out of budget: even its smallest setting needs about {costs_of[-1]:.0f} s, "
                + (f"over the {max(running, 0):.0f} s left" if costs_of[-1] > running
                   else f"over {OVER_SHARE:g}x its share of {share:.0f} s") + " (raise --budget)", True, costs_of[-1])
            if s.name == "importance":
                for later in todo:
                    if later.name in ("ablation", "synergy"):
                        later.skipped, later.by_budget = "needs importance, which does not fit the budget", True
            continue
        rung = ladder[pick]
        s.settings, s.estimate = dict(rung), costs_of[pick]
        s.cut = ", ".join(f"{k} {'/'.join(v) if isinstance(v, tuple) else v} instead of "
                          f"{'/'.join(ladder[0][k]) if isinstance(ladder[0][k], tuple) else ladder[0][k]}"
                          for k, v in rung.items() if v != ladder[0][k])
        running -= s.estimate
    return total


def replan(steps: list, start: int, left: float, lm: LoadedModel, n_fit: int, n_eval: int, costs: Costs) -> None:
    """Plan ``steps[start:]`` (in place) within ``left`` seconds.

    Each analysis not skipped for a fixed reason (no labels, an error, a pinned plan) gets
    the share :data:`SHARES` gives it of ``left`` among those that fit, and takes the largest setting
    of its ladder whose :func:`estimate` fits it; else its smallest setting when that needs
    at most :data:`OVER_SHARE` times its share and fits what is left once the analyses before
    it have their estimates; else it is skipped. Synergy gets what the others leave (at least
    :data:`SYNERGY_MIN_S`, or it is skipped). Importance skipped skips ablation and synergy,
    which read its store and ranking.
    """
    todo = [s for s in steps[start:] if not s.skipped or s.by_budget]
    out: set = set()            # the analyses skipped: their shares go to the others
    for _ in range(len(todo) + 1):
        total = _fit_shares(todo, out, left, lm, n_fit, n_eval, costs)
        now = {s.name for s in todo if s.skipped}
        if now == out:
            break
        out = now
    for s in todo:
        if s.name == "synergy" and not s.skipped:
            s.seconds = left * SHARES[s.name] / total
            spare = left - sum(o.estimate for o in todo if o.name != "synergy" and not o.skipped)
            if spare < SYNERGY_MIN_S:
                s.skipped, s.by_budget, s.estimate = (f"out of budget: {max(spare, 0):.0f} s left once the others "
                                                      f"have their estimates, under its least {SYNERGY_MIN_S:g} s "
                                                      "(raise --budget)"), True, SYNERGY_MIN_S
            else:
                spare = math.floor(spare * 10) / 10          # rounded down: what it leaves stays the others'
                s.settings, s.estimate, s.cut = {"budget_s": spare}, spare, ""


def plan_analyses(lm: LoadedModel, n_fit: int, n_eval: int, costs, budget_s: float,
                  has_labels: bool = True) -> list:
    """The steps of :func:`analyze` within ``budget_s`` seconds, their estimates extrapolated
    from ``costs`` (:class:`Costs`, or seconds per sample of one pass: :meth:`Costs.from_pass`);
    see :func:`replan` and :func:`estimate`.

    Parameters
    ----------
    lm : LoadedModel
    n_fit, n_eval : int
        Samples the measures are estimated on, and the model is evaluated on.
    costs : Costs, dict or float
    budget_s : float
        Seconds the analyses may take.
    has_labels : bool
        Without labels only frivolous units apply.

    Returns
    -------
    list of Step
        In :data:`SHARES` order; ``seconds`` is each one's share of ``budget_s``.
    """
    costs = Costs.from_pass(lm, float(costs)) if isinstance(costs, (int, float)) else Costs.build(costs)
    steps = [Step(name, share * budget_s) for name, share in SHARES.items()]
    for s in steps:
        if not has_labels and s.name in ("importance", "ablation", "modules", "synergy"):
            s.skipped = "the data have no labels"
    replan(steps, 0, budget_s, lm, n_fit, n_eval, costs)
    return steps


_BY_PLAN = "skipped by the plan: "
#: Largest multiplet synergy searches for.
SYNERGY_MAX_SIZE = 8
#: Largest plan file :func:`read_plan` reads.
MAX_PLAN_BYTES = 1 << 20
#: Settings a pinned plan may give each analysis, with their types.
PLAN_SETTINGS = {"importance": {"samples": int, "quantizer": str},
                 "ablation": {"n_steps": int, "random_repeats": int, "values": tuple},
                 "synergy": {"budget_s": float, "exhaustive_sizes": dict},
                 "modules": {"n_random": int, "n_shuffles": int, "n_double": int},
                 "frivolous": {"n_permutations": int}}


def _plan_doc(steps: list, n_fit: int) -> dict:
    """What ``--plan`` reads back: every step's settings and why it was skipped."""
    return {"format": "infoprobe-analyze-plan", "version": 1, "n_fit": n_fit,
            "steps": [{"analysis": s.name, "share_s": s.seconds, "estimate_s": s.estimate, "cut": s.cut,
                       "settings": {k: list(v) if isinstance(v, tuple) else v for k, v in s.settings.items()},
                       "skipped": s.skipped} for s in steps]}


def read_plan(path) -> dict:
    """The plan that an earlier :func:`analyze` wrote in its ``analyze.json`` (``meta.plan``),
    checked field by field, to run the same analyses with the same settings again.

    Parameters
    ----------
    path : path-like
        An ``analyze.json`` (a regular file of at most :data:`MAX_PLAN_BYTES`).

    Returns
    -------
    dict
        ``n_fit`` (samples the measures were estimated on) and ``steps``: a list of
        :class:`Step`, in :data:`SHARES` order.

    Raises
    ------
    ConfigError
        Not a regular file, too large, not JSON, or any field missing, unknown, of the wrong
        type or out of range (a count over the largest setting of its :data:`LADDERS`, an
        exhaustive size over :data:`SYNERGY_MAX_SIZE`, samples over ``n_fit``).
    """
    from ..config import read_json

    def bad(what):
        return ConfigError(f"{path} is not a plan of infoprobe analyze: {what} (give the analyze.json of an "
                           "earlier run)")

    doc = read_json(path, max_bytes=MAX_PLAN_BYTES, what="the plan")
    plan = doc.get("meta", {}).get("plan") if isinstance(doc, dict) and isinstance(doc.get("meta"), dict) else None
    if not isinstance(plan, dict) or plan.get("format") != "infoprobe-analyze-plan":
        raise bad("no meta.plan")
    if plan.get("version") != 1:
        raise bad(f"plan version {plan.get('version')!r} (this infoprobe reads version 1)")
    n_fit = plan.get("n_fit")
    if not isinstance(n_fit, int) or isinstance(n_fit, bool) or not 1 <= n_fit <= MAX_FIT_SAMPLES:
        raise bad(f"n_fit is not an integer in [1, {MAX_FIT_SAMPLES}]")
    rows = plan.get("steps")
    if not isinstance(rows, list) or [r.get("analysis") if isinstance(r, dict) else None for r in rows] != list(SHARES):
        raise bad(f"steps must be the analyses {', '.join(SHARES)}, in this order")
    steps = []
    for r in rows:
        name, settings, skipped = r["analysis"], r.get("settings"), r.get("skipped", "")
        if not isinstance(settings, dict) or not isinstance(skipped, str) or len(skipped) > 1000:
            raise bad(f"the settings or skipped reason of {name}")
        allowed = PLAN_SETTINGS[name]
        if set(settings) - set(allowed):
            raise bad(f"unknown settings of {name}: {', '.join(sorted(map(str, set(settings) - set(allowed))))}")
        clean = {}
        for key, value in settings.items():
            kind = allowed[key]
            top = n_fit if key == "samples" else max(rung[key] for rung in LADDERS[name]) if kind is int else None
            if kind is int and (not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top):
                raise bad(f"{name}.{key} is not an integer in [0, {top}]")
            if kind is float and (not isinstance(value, (int, float)) or isinstance(value, bool)
                                  or not 0 < value <= 10**7):
                raise bad(f"{name}.{key} is not a number in (0, 10^7]")
            if kind is str and value not in ("threshold", "median"):
                raise bad(f"{name}.{key} is not threshold or median")
            if kind is tuple:
                if not isinstance(value, list) or not value or not all(v in ("zero", "mean") for v in value):
                    raise bad(f"{name}.{key} is not a list of zero and mean")
                value = tuple(value)
            if kind is dict and not (isinstance(value, dict) and len(value) <= 10**4 and all(
                    isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= SYNERGY_MAX_SIZE
                    for v in value.values())):
                raise bad(f"{name}.{key} is not a map of layers to sizes in [1, {SYNERGY_MAX_SIZE}]")
            clean[key] = float(value) if kind is float else value
        if not skipped and set(clean) != set(allowed):
            raise bad(f"the settings of {name} must be {', '.join(sorted(allowed))}")
        numbers = [r.get(k, 0.0) for k in ("share_s", "estimate_s")]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v <= 1e9 for v in numbers) \
                or not isinstance(r.get("cut", ""), str) or len(r.get("cut", "")) > 1000:
            raise bad(f"the share, estimate or cut of {name}")
        while skipped.startswith(_BY_PLAN):
            skipped = skipped[len(_BY_PLAN):]
        steps.append(Step(name, float(numbers[0]), clean, float(numbers[1]), r.get("cut", ""),
                          skipped=skipped and _BY_PLAN + skipped))
    if steps[0].skipped:                      # ablation and synergy read importance's store and ranking
        for later in steps[1:3]:
            later.skipped = later.skipped or "needs importance"
    return {"n_fit": n_fit, "steps": steps}


def _environment(exc: BaseException) -> bool:
    """Whether an error comes from the machine (a full disk, a file-size limit, an I/O error)
    rather than from what the analysis was given: such an error stops the whole run. It is an
    OSError that caused the error (``raise ... from exc``, or raised while handling it unless
    ``from None``)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        nxt = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
        if isinstance(nxt, OSError) and nxt.errno is not None:
            return True
        exc = nxt
    return False


def _lock_folder(out: Path) -> int:
    """Take ``out``'s advisory lock (``flock`` on the folder itself) for one analyze at a time.

    Raises
    ------
    ConfigError
        Another process holds it.
    """
    import fcntl
    import os

    fd = os.open(out, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise ConfigError(f"another infoprobe analyze is writing to {out}; wait for it to finish or choose "
                          "another --out") from None
    return fd


def analyze(model, data: Dataset, out, *, fit_data: Dataset | None = None, budget: float = DEFAULT_BUDGET,
            plan=None, scale="auto", device: str = "cpu", overwrite: bool = False, progress: bool = True,
            echo=print, clock=None, costs=None) -> dict:
    """Run the analyses that apply to ``model`` on ``data`` within ``budget`` minutes and write
    their results and ``report.html`` to ``out``, as one result set: every file appears
    together when the run ends, or none does (:func:`infoprobe.results.result_set`).

    The analyses are first timed on their own first units of work (:func:`calibrate`), the
    plan extrapolates these throughputs (:func:`plan_analyses`), and before each analysis
    starts what is left of the budget is planned again (:func:`replan`) with the time
    measured so far: an analysis that would overrun the budget is cut or skipped before it
    starts. The activation store captured for the plan stays in ``out`` (``acts.h5``) even
    when the analyses that read it do not run.

    Parameters
    ----------
    model : LoadedModel or path-like
        A classifier (logits or probabilities as its output).
    data : Dataset
        Labelled samples the model is evaluated on (ablations, lesions, prunability).
    out : path-like
        Result folder (created). One analyze at a time writes it (an advisory lock on the
        folder).
    fit_data : Dataset, optional
        Samples the measures are estimated on (the activation store); default ``data``
        (at most :data:`MAX_FIT_SAMPLES`).
    budget : float
        Minutes of work in all, the calibration included (default :data:`DEFAULT_BUDGET`).
        Ignored with ``plan``.
    plan : path-like, optional
        The ``analyze.json`` of an earlier run (:func:`read_plan`): run its analyses with its
        settings, synergy with the exhaustive sizes it reached, and no timing, so that the
        same inputs give the same numbers as that run.
    device : {"cpu", "cuda"}
        Where the estimators of importance, synergy and frivolous units compute (NumPy or
        CuPy).
    echo : callable
        Receives the plan's lines before any work, one line per re-planned, skipped or
        finished analysis, and the total against the budget.
    clock : callable, optional
        Seconds, read to time the calibration, every analysis and the total (default
        ``time.perf_counter``); every budget decision reads it.
    costs : Costs or dict, optional
        Fixed throughputs (:class:`Costs`) instead of the calibration: with them and a
        ``clock``, the plan and every decision are the same on any machine.

    Returns
    -------
    dict
        ``plan`` (one dict per step, also written as ``analyze.{csv,json}``: share, settings,
        the estimate it started with and the seconds it took, what was cut, why it was
        skipped; the JSON's ``meta.plan`` is what ``plan`` reads back), ``seconds`` (total),
        ``timing`` (``budget_s``, ``total_s``, ``calibration_s``, ``over_s``, ``within_budget``,
        ``store``: a sentence when the store is kept for analyses that did not run; also the
        JSON's ``meta.timing``), ``report`` (path of the page), ``failed`` (the analyses that
        did not run because of an error, with why).

    Raises
    ------
    ConfigError
        ``budget`` not positive, a malformed ``plan`` or ``costs``, or another analyze
        writing ``out``.
    OutputExistsError
        ``out`` holds results and not ``overwrite``.
    OSError
        The machine failed the run (a full disk): nothing is written.
    ModelError, DataError
        As the analyses raise them.
    """
    from ..results import ResultSet, relocated, result_set, unstaged

    if not budget > 0:
        raise ConfigError("--budget is a positive number of minutes")
    pinned = read_plan(plan) if plan is not None else None
    costs = None if costs is None else Costs.build(costs)
    out = Path(out)
    with result_set() as rs:
        rs: ResultSet
        work = rs.workspace(out)           # makes out (removed again if the run fails) and its staging folder
        rs.hold(_lock_folder(out))
        check_outputs([out / name for name in WRITES], overwrite)      # nothing of the user's is replaced unasked
        with unstaged(), relocated(work, out):
            res = _analyze(model, data, work, fit_data=fit_data, budget=budget, pinned=pinned, scale=scale,
                           device=device, progress=progress, echo=echo, clock=clock or time.perf_counter,
                           costs=costs)
        rs.adopt(work, out)
    res["report"] = str(out / "report.html")
    return res


def budget_sentence(timing: dict) -> str:
    """The total against the budget, in words: ``analysed in T s, within the budget of B min``
    or ``..., over the budget of B min by X s``; a pinned plan's total alone."""
    total = f"analysed in {timing['total_s']:.0f} s (calibration {timing['calibration_s']:.0f} s)"
    if timing.get("budget_s") is None:
        return f"analysed in {timing['total_s']:.0f} s, the plan given (no time budget)"
    b = f"{timing['budget_s'] / 60:g} min"
    if timing["within_budget"]:
        return f"{total}, within the budget of {b}"
    return f"{total}, over the budget of {b} by {timing['over_s']:.0f} s"


def _orphan(steps: list) -> None:
    """Skip ablation and synergy for good (a re-plan does not undo it): importance, whose
    store and ranking they read, did not run."""
    for s in steps:
        if s.name in ("ablation", "synergy") and (not s.skipped or s.by_budget):
            s.skipped, s.by_budget = "needs importance", False


def _analyze(model, data: Dataset, out: Path, *, fit_data, budget, pinned, scale, device, progress, echo, clock,
             costs) -> dict:
    """:func:`analyze`'s work, written directly into ``out`` (a private folder)."""
    from ..htmlreport import write_report
    from ..store import Store
    from .ablation import cumulative_ablation
    from .capture import capture
    from .frivolous import frivolous
    from .importance import Quantizer, importance
    from .modules import modules
    from .synergy import synergy

    t0 = clock()
    budget_s = budget * 60
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    if not lm.hidden_layers:
        raise DataError(f"{lm.path.name} has no hidden unit site to analyse")
    fit = fit_data if fit_data is not None else data
    n_fit = min(len(fit.x), MAX_FIT_SAMPLES) if pinned is None else pinned["n_fit"]
    if n_fit > len(fit.x):
        raise ConfigError(f"the plan estimates the measures on {n_fit:,} samples; these data have {len(fit.x):,}")
    fit = _head(fit, n_fit)
    n_eval, labelled = len(data.x), data.y is not None
    per_sample, calibration_s, uncalibrated = None, 0.0, []
    head = f"infoprobe analyze {lm.path.name}: {n_eval:,} samples, {len(lm.hidden_layers)} hidden sites"
    if pinned is not None:
        steps = pinned["steps"]
        echo(f"{head}; the plan given (no time budget):")
    else:
        if costs is None:
            per_sample = _per_sample_seconds(lm, data, scale, clock)
            rough = Costs.from_pass(lm, per_sample)
            # the calibration's samples: about CALIBRATION_SHARE of the budget in some 20 passes
            samples = int(np.clip(CALIBRATION_SHARE * budget_s / max(per_sample * 20, 1e-12), 16, 128))
            costs, uncalibrated = calibrate(lm, fit, data, out / ".calibration", samples=samples, clock=clock,
                                            scale=scale, device=device, rough=rough)
            shutil.rmtree(out / ".calibration", ignore_errors=True)
            head += f", {per_sample * 1e3:.3f} ms per sample per pass"
        calibration_s = clock() - t0
        steps = plan_analyses(lm, n_fit, n_eval, costs, budget_s - calibration_s, labelled)
        source = ("the costs given" if per_sample is None else
                  f"each analysis timed on its first units of work in {calibration_s:.0f} s")
        echo(f"{head}; budget {budget:g} min, estimates from {source}:")
        for line in uncalibrated:
            echo(f"  (not calibrated, estimated from the pass: {line})")
    for s in steps:
        echo(s.line())
    store_path = out / "acts.h5"
    failed, captured = {}, False
    for i, s in enumerate(steps):
        if pinned is None:
            left = budget_s - (clock() - t0)
            before = (dict(s.settings), s.skipped)
            replan(steps, i, left, lm, n_fit, n_eval, costs)
            if (s.settings, s.skipped) != before and not s.skipped:
                echo(f"  {s.name}: planned again with {left:.0f} s left: about {s.estimate:.0f} s "
                     f"({_settings_text(s.settings)})" + (f"; cut: {s.cut}" if s.cut else ""))
            elif s.by_budget:
                echo(f"  {s.name}: skipped, {s.skipped}")
        if s.skipped:
            if s.name == "importance":
                _orphan(steps)
            continue
        t = clock()
        try:
            if s.name == "importance":
                sample = _head(fit, s.settings["samples"])
                try:
                    capture(lm, sample, store_path, overwrite=True, progress=progress, scale=scale)
                finally:
                    keep_on_interrupt(None)       # its partial store goes with the result set
                captured = True
                q = Quantizer() if s.settings["quantizer"] == "threshold" else Quantizer("quantile", bins=2)
                with Store(store_path) as st:
                    imp = importance(st, quantizer=q, device=device, progress=progress)
                imp.save(out, overwrite=True)
                imp.plot(out)
            elif s.name == "ablation":
                with Store(store_path) as st:
                    abl = cumulative_ablation(lm, st, data, importance=imp, measures=("mutual_information", "kl_selectivity"),
                                              orders=("low",), scopes=("layer",), scale=scale, progress=progress,
                                              **s.settings)
                abl.save(out, overwrite=True)
                abl.plot(out)
            elif s.name == "synergy":
                if "exhaustive_sizes" in s.settings:       # pinned: the sizes the planned run reached
                    syn = synergy(store_path, max_size=SYNERGY_MAX_SIZE,
                                  exhaustive_up_to=s.settings["exhaustive_sizes"], device=device, progress=progress)
                else:
                    syn = synergy(store_path, max_size=SYNERGY_MAX_SIZE, budget=s.settings["budget_s"],
                                  device=device, progress=progress)
                    s.settings["exhaustive_sizes"] = dict(syn.meta["parameters"]["exhaustive_sizes"])
                syn.save(out, overwrite=True)
                syn.plot(out)
            elif s.name == "modules":
                mod = modules(lm, data, progress=progress, scale=scale, **s.settings)
                mod.save(out / "modules", overwrite=True)
                mod.plot(out / "modules")
            elif s.name == "frivolous":
                fr = frivolous(lm, data, progress=progress, scale=scale, device=device, **s.settings)
                fr.save(out / "frivolous", overwrite=True)
                fr.plot(out / "frivolous")
        except InfoprobeError as exc:     # an analysis that does not apply to this model: say why, go on
            if _environment(exc):
                raise
            s.took = clock() - t
            s.skipped = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            failed[s.name] = s.skipped
            echo(f"  {s.name}: not run, {s.skipped}")
            if s.name == "importance":                # the others read its store and ranking
                if not captured:
                    for left_over in out.glob("acts.h5*"):     # a capture's partial store and lock
                        left_over.unlink(missing_ok=True)
                _orphan(steps)
            continue
        s.took = clock() - t
        echo(f"  {s.name}: {s.took:.1f} s (estimated {s.estimate:.1f} s)")
    total = clock() - t0
    store = None
    if captured and any(o.skipped for o in steps if o.name in ("ablation", "synergy")):
        store = (f"The activation store acts.h5 ({len(_head(fit, steps[0].settings['samples']).x):,} samples) "
                 "is kept in this folder for reuse by infoprobe importance, ablate and synergy, which did not "
                 "all run here.")
    timing = {"budget_s": None if pinned is not None else budget_s, "total_s": total, "calibration_s": calibration_s,
              "over_s": None if pinned is not None else max(0.0, total - budget_s),
              "within_budget": None if pinned is not None else total <= budget_s, "store": store}
    plan = [{"analysis": s.name, "share_s": s.seconds,
             "settings": _settings_text({k: v for k, v in s.settings.items() if k != "exhaustive_sizes"}),
             "estimate_s": s.estimate, "seconds": s.took, "cut": s.cut, "skipped": s.skipped} for s in steps]
    meta = provenance({"model": (lm.path, lm.sha256), "data": (data.path, data.sha256)},
                      {"budget_min": None if pinned is not None else budget, "n_samples": n_eval,
                       "n_fit": len(fit.x), "split": data.split, "per_sample_s": per_sample,
                       "pinned_plan": pinned is not None})
    meta["plan"] = _plan_doc(steps, len(fit.x))
    meta["timing"] = timing
    meta["costs"] = None if costs is None else asdict(costs)
    write_table(out, "analyze", plan, meta)
    write_report([out], out / "report.html", title=f"infoprobe analyze {lm.path.name}", overwrite=True)
    echo(budget_sentence(timing))
    if store:
        echo(f"  {store}")
    return {"plan": plan, "seconds": total, "timing": timing, "failed": failed}
