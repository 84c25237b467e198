"""``infoprobe analyze``: the analyses that apply to one model and one labelled data set, sized
to a work budget, written to one folder with their report.

The budget is split into shares (:data:`SHARES`). One onnxruntime pass over a few hundred
samples measures the model's cost per sample; each analysis then takes the largest setting of
its ladder (:data:`LADDERS`) whose estimated time fits its share, and the plan, with what was
cut to fit, is printed before any work. Synergy's search, which can use any time it is given,
gets what the budget has left once the analyses after it have their estimates.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
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
#: Overhead of an evaluation over the timed instrumented pass (its per-call costs, stacking).
INSTRUMENTED = 1.2


def _settings_text(settings: dict) -> str:
    """``k=v, ...`` of an analysis' settings, tuples as ``a/b``."""
    return ", ".join(f"{k}={'/'.join(v) if isinstance(v, tuple) else v}" for k, v in settings.items())


@dataclass
class Step:
    """One analysis of the plan: its share (seconds), settings, estimate and what was cut."""

    name: str
    seconds: float
    settings: dict = field(default_factory=dict)
    estimate: float = 0.0
    cut: str = ""
    skipped: str = ""
    took: float | None = None

    def line(self) -> str:
        if self.skipped:
            return f"  {self.name:<11} skipped: {self.skipped}"
        sets = _settings_text(self.settings)
        return (f"  {self.name:<11} {self.seconds:6.0f} s share, about {self.estimate:5.0f} s"
                + (f"  ({sets})" if sets else "") + (f"; cut: {self.cut}" if self.cut else ""))


def _per_sample_seconds(lm: LoadedModel, data: Dataset, scale) -> float:
    """Seconds per sample of one pass of the instrumented model (the masks and offsets every
    intervention goes through; quantized sites are dequantized and quantized again there), the
    median of 3 runs on up to 256 samples after a warm-up."""
    from ..data import model_inputs
    from ..runner import Runner

    runner = Runner(lm, spin=False)
    k = min(256, len(data.x))
    x = model_inputs(lm, data.x[:k], resolve_scale(data.x, scale))
    runner.run(x, outputs=[lm.output_name])
    times = []
    for _ in range(3):
        t = time.perf_counter()
        runner.run(x, outputs=[lm.output_name])
        times.append(time.perf_counter() - t)
    return float(np.median(times)) / k


def plan_analyses(lm: LoadedModel, n_fit: int, n_eval: int, per_sample: float, budget_s: float,
                  has_labels: bool = True) -> list:
    """The steps of :func:`analyze` for a model whose forward pass costs ``per_sample`` seconds
    per sample, within ``budget_s`` seconds.

    Estimates (seconds, c = ``per_sample`` x :data:`INSTRUMENTED`, L hidden layers, N samples):
    importance 2 N_fit c (capture) + 1e-6 N_fit U (estimators over U units); ablation
    L x values x (2 rankings + repeats) x steps x N_eval x c; modules
    12 L (1 + n_random) + 10 n_double lesions of N_eval c each, and 3e-4 s per vertex (input
    and units) for each shuffled network's spectral clustering;
    frivolous L x 2 modes x 7 fractions x permutations x N_eval x c. Synergy gets its share as
    its own search budget.

    Returns
    -------
    list of Step
    """
    c = per_sample * INSTRUMENTED
    hidden = max(1, len(lm.hidden_layers))
    units = sum(lay.units for lay in lm.hidden_layers)
    vertices = units + int(np.prod([d or 1 for d in lm.input_shape[1:]], dtype=np.float64)) + lm.layers[-1].units
    steps = []
    for name, share in SHARES.items():
        secs = share * budget_s
        if not has_labels and name in ("importance", "ablation", "modules", "synergy"):
            steps.append(Step(name, secs, skipped="the data have no labels"))
            continue
        if name == "importance":
            # Liu et al.'s one-bit threshold code is for dense units; a conv channel's mean over
            # positions after a ReLU is almost never 0, so its threshold code would be constant
            dense = all(lay.kind == "dense" for lay in lm.hidden_layers)
            steps.append(Step(name, secs, {"samples": n_fit, "quantizer": "threshold" if dense else "median"},
                              2 * n_fit * c + 1e-6 * n_fit * units))
            continue
        if name == "synergy":
            steps.append(Step(name, secs, {"budget_s": round(max(5.0, secs), 1)}, max(5.0, secs)))
            continue
        ladder = LADDERS[name]

        def cost(s):
            if name == "ablation":
                return hidden * len(s["values"]) * (2 + s["random_repeats"]) * s["n_steps"] * n_eval * c
            if name == "modules":
                return (12 * hidden * (1 + s["n_random"]) + 10 * s["n_double"]) * n_eval * c + 3e-4 * vertices * s["n_shuffles"]
            return hidden * 2 * 7 * s["n_permutations"] * n_eval * c

        fit = next((s for s in ladder if cost(s) <= secs), ladder[-1])
        step = Step(name, secs, dict(fit), cost(fit))
        if fit is not ladder[0]:
            step.cut = ", ".join(f"{k} {'/'.join(v) if isinstance(v, tuple) else v} instead of "
                                 f"{'/'.join(ladder[0][k]) if isinstance(ladder[0][k], tuple) else ladder[0][k]}"
                                 for k, v in fit.items() if v != ladder[0][k])
        if cost(fit) > 3 * secs:
            step.skipped = (f"even its smallest setting needs about {cost(fit):.0f} s, over 3x its share of "
                            f"{secs:.0f} s (raise --budget)")
        steps.append(step)
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
    import json
    import os
    import stat

    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise ConfigError(f"cannot read the plan {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(f"the plan {path} is not a regular file")
        if st.st_size > MAX_PLAN_BYTES:
            raise ConfigError(f"the plan {path} is over {MAX_PLAN_BYTES >> 20} MiB; give the analyze.json "
                              "of an earlier run")
        raw = os.read(fd, MAX_PLAN_BYTES + 1)
    finally:
        os.close(fd)

    def bad(what):
        return ConfigError(f"{path} is not a plan of infoprobe analyze: {what} (give the analyze.json of an "
                           "earlier run)")

    try:
        doc = json.loads(raw, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad("not JSON") from None
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
            echo=print) -> dict:
    """Run the analyses that apply to ``model`` on ``data`` within ``budget`` minutes and write
    their results and ``report.html`` to ``out``, as one result set: every file appears
    together when the run ends, or none does (:func:`infoprobe.results.result_set`).

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
        Minutes of work (default :data:`DEFAULT_BUDGET`); see :func:`plan_analyses`. Ignored
        with ``plan``.
    plan : path-like, optional
        The ``analyze.json`` of an earlier run (:func:`read_plan`): run its analyses with its
        settings, synergy with the exhaustive sizes it reached, and no timing, so that the
        same inputs give the same numbers as that run.
    device : {"cpu", "cuda"}
        Where the estimators of importance, synergy and frivolous units compute (NumPy or
        CuPy).
    echo : callable
        Receives the plan's lines before any work and one line per finished analysis.

    Returns
    -------
    dict
        ``plan`` (one dict per step, also written as ``analyze.{csv,json}``: share, settings,
        estimate and measured seconds, what was cut, why it was skipped; the JSON's
        ``meta.plan`` is what ``plan`` reads back), ``seconds`` (total), ``report`` (path of
        the page), ``failed`` (the analyses that did not run because of an error, with why).

    Raises
    ------
    ConfigError
        ``budget`` not positive, a malformed ``plan``, or another analyze writing ``out``.
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
    out = Path(out)
    with result_set() as rs:
        rs: ResultSet
        work = rs.workspace(out)           # makes out (removed again if the run fails) and its staging folder
        rs.hold(_lock_folder(out))
        check_outputs([out / name for name in WRITES], overwrite)      # nothing of the user's is replaced unasked
        with unstaged(), relocated(work, out):
            res = _analyze(model, data, work, fit_data=fit_data, budget=budget, pinned=pinned, scale=scale,
                           device=device, progress=progress, echo=echo)
        rs.adopt(work, out)
    res["report"] = str(out / "report.html")
    return res


def _analyze(model, data: Dataset, out: Path, *, fit_data, budget, pinned, scale, device, progress, echo) -> dict:
    """:func:`analyze`'s work, written directly into ``out`` (a private folder)."""
    from ..htmlreport import write_report
    from ..store import Store
    from .ablation import cumulative_ablation
    from .capture import capture
    from .frivolous import frivolous
    from .importance import Quantizer, importance
    from .modules import modules
    from .synergy import synergy

    t0 = time.perf_counter()
    lm = model if isinstance(model, LoadedModel) else load_model(model)
    if not lm.hidden_layers:
        raise DataError(f"{lm.path.name} has no hidden unit site to analyse")
    fit = fit_data if fit_data is not None else data
    n_fit = min(len(fit.x), MAX_FIT_SAMPLES) if pinned is None else pinned["n_fit"]
    if n_fit > len(fit.x):
        raise ConfigError(f"the plan estimates the measures on {n_fit:,} samples; these data have {len(fit.x):,}")
    if len(fit.x) > n_fit:
        fit = replace(fit, x=fit.x[:n_fit], y=None if fit.y is None else fit.y[:n_fit], index=fit.index[:n_fit])
    if pinned is None:
        per_sample = _per_sample_seconds(lm, data, scale)
        steps = plan_analyses(lm, len(fit.x), len(data.x), per_sample, budget * 60, data.y is not None)
        echo(f"infoprobe analyze {lm.path.name}: {len(data.x):,} samples, {len(lm.hidden_layers)} hidden sites, "
             f"{per_sample * 1e3:.3f} ms per sample per pass; budget {budget:g} min:")
    else:
        per_sample, steps = None, pinned["steps"]
        echo(f"infoprobe analyze {lm.path.name}: {len(data.x):,} samples, {len(lm.hidden_layers)} hidden sites; "
             "the plan given (no time budget):")
    for s in steps:
        echo(s.line())
    store_path = out / "acts.h5"
    failed = {}
    for s in steps:
        if s.skipped:
            continue
        spent = time.perf_counter() - t0
        if pinned is None and spent > 1.5 * budget * 60:
            s.skipped = f"out of budget ({spent:.0f} s spent)"
            echo(f"  {s.name}: skipped, {s.skipped}")
            continue
        t = time.perf_counter()
        try:
            if s.name == "importance":
                try:
                    capture(lm, fit, store_path, overwrite=True, progress=progress, scale=scale)
                finally:
                    keep_on_interrupt(None)       # its partial store goes with the result set
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
                    later = sum(o.estimate for o in steps[steps.index(s) + 1:] if not o.skipped)
                    spare = budget * 60 - (time.perf_counter() - t0) - later      # what the others leave
                    syn = synergy(store_path, max_size=SYNERGY_MAX_SIZE, budget=max(s.settings["budget_s"], spare),
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
            s.skipped = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            failed[s.name] = s.skipped
            echo(f"  {s.name}: not run, {s.skipped}")
            if s.name == "importance":                # the others read its store and ranking
                for left in out.glob("acts.h5*"):     # a capture's partial store and lock
                    left.unlink(missing_ok=True)
                for later in steps:
                    if later.name in ("ablation", "synergy") and not later.skipped:
                        later.skipped = "needs importance"
            continue
        s.took = time.perf_counter() - t
        echo(f"  {s.name}: {s.took:.1f} s")
    plan = [{"analysis": s.name, "share_s": s.seconds,
             "settings": _settings_text({k: v for k, v in s.settings.items() if k != "exhaustive_sizes"}),
             "estimate_s": s.estimate, "seconds": s.took, "cut": s.cut, "skipped": s.skipped} for s in steps]
    meta = provenance({"model": (lm.path, lm.sha256), "data": (data.path, data.sha256)},
                      {"budget_min": None if pinned is not None else budget, "n_samples": len(data.x),
                       "n_fit": len(fit.x), "split": data.split, "per_sample_s": per_sample,
                       "pinned_plan": pinned is not None})
    meta["plan"] = _plan_doc(steps, len(fit.x))
    write_table(out, "analyze", plan, meta)
    write_report([out], out / "report.html", title=f"infoprobe analyze {lm.path.name}", overwrite=True)
    return {"plan": plan, "seconds": time.perf_counter() - t0, "failed": failed}
