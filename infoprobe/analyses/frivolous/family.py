"""Frivolous units of one model or of a width family, and the plans and thinner model built
from one model: the whole workflow of ``infoprobe frivolous``.

:func:`frivolous_family` runs :func:`~infoprobe.analyses.frivolous.frivolous` on every source
(an ONNX model, or an activation store for redundancy only), writes each one's tables (one
folder per source when there are several), adds the width sweep of a family
(:func:`~infoprobe.analyses.frivolous.width_sweep`), and from a single model writes the plan
removing its prunable units, the plan refactoring its redundant units into the kept ones, and
the thinner model that plan gives (:func:`~infoprobe.analyses.compress.prune_model`). Its
:class:`FrivolousFamily` says what was found and written (:meth:`~FrivolousFamily.summary`,
:meth:`~FrivolousFamily.to_json`).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ...data import Dataset
from ...errors import ConfigError
from ...model import DEFAULT_MAX_BYTES, LoadedModel, load_model
from ...parallel import map_tasks, portable
from ...results import check_outputs, plain
from ...store import Store, is_store_path
from ..compress import PruneReport, prune_model
from .analysis import frivolous
from .plans import prunable_plan, refactor_plan
from .prunability import MODES
from .sweep import SweepResult, width_sweep


# --------------------------------------------------------------------------- text

# --------------------------------------------------------------------------- the workflow

@dataclass
class FrivolousFamily:
    """What :func:`frivolous_family` computed and wrote.

    ``results``: one :class:`~infoprobe.analyses.frivolous.FrivolousResult` per source;
    ``sweep``: the width sweep (or None); ``refactor``: the rows of
    :func:`~infoprobe.analyses.frivolous.refactor_plan` (or None); ``thin``: the report of the
    thinner model (or None) written to ``thin_path``; ``files``: every file written, in order.
    """

    results: list
    files: list
    sweep: SweepResult | None = None
    refactor: list | None = None
    thin: PruneReport | None = None
    thin_path: Path | None = None
    redundancy_tolerance: float = 0.05

    def to_dict(self) -> dict:
        """The per-layer tables of every model, the sweep, the refactoring and the thinner
        model's report, and the files written, as JSON values."""
        doc = {"models": [{"source": r.source, "layers": r.layers} for r in self.results]}
        if self.sweep is not None:
            doc["sweep"] = {"rows": self.sweep.rows, "gains": self.sweep.gains, "g_range": self.sweep.g_range}
        if self.refactor is not None:
            doc["refactor"] = self.refactor
        if self.thin is not None:
            doc["thin"] = self.thin
        return plain(doc) | {"files": [str(f) for f in self.files]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def summary(self) -> str:
        """Each model's table, the width sweep, the refactoring and the thinner model, as text."""
        lines = [res.summary() for res in self.results]
        if self.sweep is not None:
            lines.append(self.sweep.summary())
        if self.refactor is not None:
            rm = sum(r["removed"] for r in self.refactor)
            lines.append(f"refactoring at tolerance {self.redundancy_tolerance}: removes {rm} of "
                         f"{sum(r['units'] for r in self.refactor)} hidden units ("
                         + ", ".join(f"{r['layer']} {r['units']}->{r['kept']}" for r in self.refactor) + ")")
        if self.thin is not None and "verification" in self.thin:
            ver = self.thin["verification"]
            lines.append(f"thinner model {self.thin_path}: labels kept {ver['label_agreement_with_original']:.4f} "
                         f"of {ver['n_samples']}, max |delta logit| {ver['max_abs_diff_original']:.3g}, parameters "
                         f"x{self.thin['ratios']['parameters']:.3f}")
        return "\n".join(lines)


def frivolous_family(sources, data: Dataset | None = None, *, out, sweep: bool = False, widths=None,
                     layers=None, prune_tolerance: float = 0.2, agreement: float | None = None,
                     redundancy_tolerance: float = 0.05, fractions=None,
                     n_permutations: int = 3, modes=MODES, conv_units: str = "position", max_rows: int = 50_000,
                     device: str = "cpu", seed: int = 0, scale="auto", plan_prunable=None, plan_redundant=None,
                     thin=None, overwrite: bool = False, plot: bool = True,
                     max_model_bytes: int = DEFAULT_MAX_BYTES, progress: bool = True) -> FrivolousFamily:
    """Prunable and redundant units of every source, a width sweep over them, and the plans
    and thinner model of one model.

    Parameters
    ----------
    sources : list of path-like, LoadedModel or Store
        ONNX models (need ``data``) or activation stores (redundancy only; a path is a store
        when :func:`infoprobe.store.is_store_path` says so). Several sources form a width
        family and need ``sweep``.
    data : Dataset, optional
        Samples the models' units are measured on (labels are not needed).
    out : path-like
        Results folder; with several sources each gets ``out/<file stem>``.
    sweep : bool
        The sources are one architecture at several widths: write the sweep tables (and plots)
        to ``out``.
    widths : list of float, optional
        Width factors of :func:`~infoprobe.analyses.frivolous.width_sweep`.
    layers, prune_tolerance, agreement, redundancy_tolerance, fractions, n_permutations, modes, conv_units, max_rows :
        As for :func:`~infoprobe.analyses.frivolous.frivolous`; ``redundancy_tolerance``,
        ``layers``, ``max_rows`` and ``seed`` also drive the refactoring.
    device, seed, scale :
        As for :func:`~infoprobe.analyses.frivolous.frivolous`.
    plan_prunable : path-like, optional
        Write the plan removing the prunable units (network mode if measured, else layer mode).
    plan_redundant : path-like, optional
        Write the plan refactoring the redundant units into the kept ones.
    thin : path-like, optional
        Write the thinner ONNX model of that plan, verified against the original on ``data``.
    plot : bool
        Write each model's and the sweep's plots.
    max_model_bytes : int
        Largest model accepted when a source is a path.

    Returns
    -------
    FrivolousFamily

    Raises
    ------
    ConfigError
        Several sources without ``sweep``, a sweep of fewer than two models, plans or a
        thinner model asked from anything but one ONNX model with data, a model without
        data, or a prunable plan of channel x position conv units.
    OutputExistsError, ModelError, StoreError, DataError, PlanError
    """
    sources = list(sources)
    if not sources:
        raise ConfigError("give at least one model or activation store")
    planned = [p for p in (plan_prunable, plan_redundant, thin) if p]
    stores = [isinstance(s, Store) or (not isinstance(s, LoadedModel) and is_store_path(s)) for s in sources]
    if len(sources) > 1 and not sweep:
        raise ConfigError("several sources are analysed as a width family: pass sweep=True (--sweep)")
    if sweep and len(sources) < 2:
        raise ConfigError("a width sweep (--sweep) needs at least two models")
    if planned and (len(sources) > 1 or stores[0] or data is None):
        raise ConfigError("plans and a thinner model (--plan-prunable, --plan-redundant, --thin) need one ONNX "
                          "model and data (--data)")
    if not all(stores) and data is None:
        raise ConfigError("ONNX models need data (--data), or pass activation stores for redundancy only")
    check_outputs(planned, overwrite)
    out = Path(out)
    fam = FrivolousFamily([], [], redundancy_tolerance=redundancy_tolerance)
    source = None
    if planned:            # one ONNX model, read once for the analysis and the plans
        source = sources[0] if isinstance(sources[0], LoadedModel) else load_model(sources[0], max_bytes=max_model_bytes)
        sources = [source]
        if plan_prunable and conv_units == "position" and any(lay.kind == "conv" for lay in source.hidden_layers):
            raise ConfigError("a plan of the prunable units (--plan-prunable) of a model with conv layers "
                              "needs conv_units='channel' (--conv-units channel): a channel x position cannot "
                              "be removed from a model")
    params = dict(layers=layers, prune_tolerance=prune_tolerance, agreement=agreement,
                  redundancy_tolerance=redundancy_tolerance, fractions=fractions, n_permutations=n_permutations,
                  conv_units=conv_units, modes=modes, max_rows=max_rows, seed=seed, device=device, scale=scale)
    several = len(sources) > 1
    tasks = [((portable(src), None if is_store else data, is_store, max_model_bytes),
              dict(params, progress=progress and not several)) for src, is_store in zip(sources, stores)]
    results = map_tasks(_frivolous_task, tasks, desc="models", progress=progress)
    for src, res in zip(sources, results):
        folder = out if not several else out / Path(getattr(src, "path", src)).stem
        fam.files += res.save(folder, overwrite=overwrite)
        if plot:
            fam.files += res.plot(folder)
        fam.results.append(res)
    if sweep:
        fam.sweep = width_sweep(fam.results, widths)
        fam.files += fam.sweep.save(out, overwrite=overwrite)
        if plot:
            fam.files += fam.sweep.plot(out)
    if plan_prunable:
        if fam.results[0].prunability is None:
            raise ConfigError("a plan of the prunable units needs prunability (a model with data)")
        plan = prunable_plan(source, fam.results[0].prunability, mode="network" if "network" in modes else "layer")
        fam.files.append(plan.save(plan_prunable, overwrite=overwrite))
    if plan_redundant or thin:
        plan, fam.refactor = refactor_plan(source, data, layers=layers, tolerance=redundancy_tolerance,
                                           max_rows=max_rows, seed=seed, scale=scale, progress=progress)
        if plan_redundant:
            fam.files.append(plan.save(plan_redundant, overwrite=overwrite))
        if thin:
            fam.thin, fam.thin_path = prune_model(source, plan, thin, data=data, scale=scale,
                                                  overwrite=overwrite), thin
            fam.files.append(thin)
    return fam


def _frivolous_task(src, data, is_store: bool, max_model_bytes: int, **params):
    """:func:`frivolous` of one source (a path, or an open Store or LoadedModel), opened and
    closed here: one task of :func:`frivolous_family` (:func:`infoprobe.parallel.map_tasks`)."""
    if isinstance(src, (Store, LoadedModel)):
        return frivolous(src, data, **params)
    source = Store(src) if is_store else load_model(src, max_bytes=max_model_bytes)
    try:
        return frivolous(source, data, **params)
    finally:
        if is_store:
            source.close()
