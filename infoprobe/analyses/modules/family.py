"""Modules of several networks at once: the whole workflow of ``infoprobe modules``.

:func:`modules_family` runs :func:`~infoprobe.analyses.modules.modules` on every source (an
ONNX model, or an activation store's saved weights), writes each one's tables and plots (one
folder per network when there are several), the table of networks with p values adjusted for
multiple comparisons (:func:`~infoprobe.analyses.modules.network_table`), and the plan removing
the prunable sub-clusters of one model (:func:`~infoprobe.analyses.modules.prunable_plan`). Its
:class:`ModulesFamily` says what was found and written.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ...data import Dataset
from ...errors import ConfigError
from ...model import DEFAULT_MAX_BYTES, LoadedModel, load_model
from ...parallel import map_tasks, portable
from ...results import check_outputs, provenance, write_table
from ...stats import across_replicates
from ...store import is_store_path
from .analysis import modules, network_table, prunable_plan


@dataclass
class ModulesFamily:
    """What :func:`modules_family` computed and wrote.

    ``sources``: the sources as given; ``results``: one
    :class:`~infoprobe.analyses.modules.ModulesResult` per source; ``table``: one row per
    network (the network-level results; with several networks, adjusted p values added);
    ``across``: with several networks, the mean, sd, median, range and Student t interval of
    every numeric column over them (:func:`infoprobe.stats.across_replicates`, written as
    ``networks_summary``); ``files``: every file written, in order.
    """

    sources: list
    results: list
    table: list
    files: list
    across: list = field(default_factory=list)

    def to_json(self) -> str:
        """The table of networks, its statistics over them and the files written, as JSON text."""
        return json.dumps({"networks": self.table, "across_networks": self.across,
                           "files": [str(f) for f in self.files]}, indent=1, default=str)

    def summary(self) -> str:
        """Every network's results (:meth:`ModulesResult.summary`), then the medians over
        networks, as text."""
        lines = [line for src, res in zip(self.sources, self.results)
                 for line in res.summary(getattr(src, "path", src)).splitlines()]
        shown = {r["measure"]: r for r in self.across if r["measure"] in
                 ("ncut", "clusterability_p_all", "fisher_importance", "chi2_importance")}
        if shown:
            lines.append(f"over {len(self.results)} networks (median [min, max]): " + "; ".join(
                f"{k} {r['median']:.4g} [{r['min']:.4g}, {r['max']:.4g}]" for k, r in shown.items()
                if r["median"] is not None))
        return "\n".join(lines)


def modules_family(sources, data: Dataset | None = None, *, out, plan=None, n_clusters: int = 12,
                   overwrite: bool = False, plot: bool = True, alpha: float = 0.05,
                   max_model_bytes: int = DEFAULT_MAX_BYTES, **kw) -> ModulesFamily:
    """Modules of every source, the table of networks, and the prunable plan of one model.

    Parameters
    ----------
    sources : list of path-like or LoadedModel
        ONNX models, or activation stores (their saved weights: clustering and clusterability
        only; a path is a store when :func:`infoprobe.store.is_store_path` says so).
    data : Dataset, optional
        Labelled test data for the lesion tests.
    out : path-like
        Results folder; with several sources each gets ``out/<file stem>`` and ``out`` gets
        ``networks.{csv,json}``.
    plan : path-like, optional
        Write the plan removing the units of the prunable sub-clusters (one ONNX model, with
        ``data``).
    n_clusters, alpha :
        As for :func:`~infoprobe.analyses.modules.modules`; ``alpha`` also of the adjusted p
        values of the table of networks.
    plot : bool
        Write each network's plots.
    max_model_bytes : int
        Largest model accepted when a source is a path.
    **kw
        Passed to :func:`~infoprobe.analyses.modules.modules` (``kind``, ``n_random``,
        ``n_shuffles``, ``variants``, ``lesion``, ``n_double``, ``min_drop``, ``seed``, ...).

    Returns
    -------
    ModulesFamily

    Raises
    ------
    ConfigError
        A plan asked without data or from anything but a single ONNX model.
    OutputExistsError, ModelError, StoreError, DataError
    """
    sources = list(sources)
    if not sources:
        raise ConfigError("give at least one model or activation store")
    stores = [not isinstance(s, LoadedModel) and is_store_path(s) for s in sources]
    if plan is not None and (len(sources) > 1 or data is None or stores[0]):
        raise ConfigError("a plan (--plan) needs data (--data) and a single ONNX model")
    if plan is not None:   # one ONNX model, read once for the analysis and the plan
        check_outputs([plan], overwrite)
        if not isinstance(sources[0], LoadedModel):
            sources = [load_model(sources[0], max_bytes=max_model_bytes)]
    out = Path(out)
    if len(sources) > 1:
        check_outputs([out / f"{t}.{e}" for t in ("networks", "networks_summary") for e in ("csv", "json")],
                      overwrite)
    fam = ModulesFamily(sources, [], [], [])
    several = len(sources) > 1
    params = dict(kw, n_clusters=n_clusters, alpha=alpha)
    if several:
        params["progress"] = False
    results = map_tasks(_modules_task, [((portable(src), data, is_store, max_model_bytes), params)
                                        for src, is_store in zip(sources, stores)],
                        desc="networks", progress=kw.get("progress", True))
    for src, res in zip(sources, results):
        folder = out if not several else out / Path(getattr(src, "path", src)).stem
        fam.files += res.save(folder, overwrite=overwrite)
        if plot:
            fam.files += res.plot(folder)
        fam.results.append(res)
        fam.table.append({"network": str(getattr(src, "path", src)),
                          **{k: v for k, v in res.network.items() if k != "categories"}})
    if len(sources) > 1:
        fam.table = network_table(fam.table, alpha=alpha)
        fam.files += write_table(out, "networks", fam.table, provenance(params={"alpha": alpha}))
        fam.across = across_replicates(fam.table)
        fam.files += write_table(out, "networks_summary", fam.across, provenance(params={"alpha": alpha}))
    if plan is not None:
        prunable_plan(sources[0], fam.results[0]).save(plan, overwrite=overwrite)
        fam.files.append(plan)
    return fam


def _modules_task(src, data, is_store: bool, max_model_bytes: int, **params):
    """:func:`~infoprobe.analyses.modules.modules` of one source (a path or a LoadedModel): one
    task of :func:`modules_family` (:func:`infoprobe.parallel.map_tasks`)."""
    source = src if is_store or isinstance(src, LoadedModel) else load_model(src, max_bytes=max_model_bytes)
    return modules(source, data, **params)
