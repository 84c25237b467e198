"""Frivolous units of one model: prunability and redundancy in one table (Casper, Boix et al.,
"Frivolous Units", AAAI 2021, Sections 3-4)."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...config import Config, param
from ...data import Dataset, resolve_scale
from ...errors import ConfigError
from ...model import LoadedModel
from ...results import Tables, check_outputs, provenance, write_table
from ...store import Store
from .prunability import CONV_UNITS, MODES, Prunability, checked_fractions, prunability
from .redundancy import open_source, redundancy


@dataclass(repr=False)
class FrivolousResult(Tables):
    """Prunability and redundancy of one model (or redundancy of one store).

    ``layers``: the per-layer table (one row per hidden layer, plus ``all`` for the network
    mode); ``prunability``: :class:`Prunability` or None; ``correlations``: layer -> |r|.
    """

    source: str
    layers: list
    prunability: Prunability | None
    redundancy: list
    correlations: dict
    meta: dict = field(default_factory=dict)

    def tables(self) -> dict:
        return {"frivolous": self.layers, "prunability": self.prunability.curves if self.prunability else []}

    def summary(self) -> str:
        """The terminal text: units, prunable units (of the ablation units) and redundant units
        per layer, with the mean |r| between units."""
        lines = [f"{self.source}:", f"  {'layer':<14} {'units':>6} {'prunable':>9} {'of':>7} {'redundant':>9}  mean |r|"]
        for r in self.layers:
            pru = (f"{r['prunable_units']:9.1f} {r['ablation_units']:>7}" if r.get("prunable_units") is not None
                   else f"{'-':>9} {'':>7}")
            red = f"{r['redundant']:>9}" if r.get("redundant") is not None else f"{'-':>9}"
            corr = f"{r['corr_mean']:.3f}" if r.get("corr_mean") is not None else ""
            lines.append(f"  {r['layer']:<14} {r['units']:>6} {pru} {red}  {corr}")
        return "\n".join(lines)

    def save(self, outdir, *, overwrite: bool = False) -> list:
        """Write ``frivolous.{csv,json}`` (per layer) and ``prunability.{csv,json}`` (the
        ablation curves) to ``outdir``."""
        outdir = Path(outdir)
        names = ["frivolous"] + (["prunability"] if self.prunability else [])
        check_outputs([outdir / f"{t}.{e}" for t in names for e in ("csv", "json")], overwrite)
        outdir.mkdir(parents=True, exist_ok=True)
        files = write_table(outdir, "frivolous", self.layers, self.meta)
        if self.prunability:
            files += write_table(outdir, "prunability", self.prunability.curves, self.meta)
        return files

    def plot(self, outdir) -> list:
        """``prunability.png`` (ablation curves, Fig. 2a-b) and ``correlations.png``
        (violins of |r| per layer, Fig. 2c-d)."""
        from ... import report

        outdir = Path(outdir)
        files = []
        if self.prunability:
            files.append(report.plot_prunability({self.source: self.prunability.curves}, outdir / "prunability.png",
                                                 tolerance=self.meta["parameters"]["prune_tolerance"]))
        if self.correlations:
            files.append(report.plot_correlations({self.source: self.correlations}, outdir / "correlations.png"))
        return files


@dataclass(frozen=True)
class FrivolousConfig(Config):
    """Parameters of :func:`frivolous` (Casper, Boix et al. 2021; defaults are the authors').

    Random streams (:meth:`~infoprobe.config.Config.streams`): ``permutations`` (the
    ablation orders of prunability) and ``redundancy_rows`` (the rows of a layer's
    activation matrix kept when it has more than ``max_rows``).
    """

    STEPS = ("permutations", "redundancy_rows")

    layers: tuple | None = param(None, help="Hidden layers (default: all).")
    prune_tolerance: float = param(0.2, help="Prunability: tolerated fraction of changed predictions.")
    agreement: float | None = param(None, help="Prunability: compare outputs, not labels: a prediction is unchanged "
                                               "while its output moves by at most this fraction of its norm "
                                               "(relative L2). Default: labels for class logits, 0.05 for any "
                                               "other output (detectors, segmenters, embeddings).")
    redundancy_tolerance: float = param(0.05, help="Redundancy (and --thin): largest fraction of variance left unexplained.")
    fractions: tuple | None = param(None, help="Ablated fractions, ascending from 0 (default 0, 1/6, ..., 1).")
    n_permutations: int = param(3, help="Random permutations per curve; the largest prunable fraction is kept.")
    conv_units: str = param("position", choices=CONV_UNITS, what="conv unit",
                            help="Conv ablation units: channel x position (the paper's) or whole channels (for "
                                 "--plan-prunable).")
    modes: tuple = param(MODES, choices=MODES, what="mode",
                         help="Ablate one layer at a time, and/or all chosen layers at once.")
    max_rows: int = param(50_000, help="Redundancy: rows of a layer's activation matrix (conv: samples x positions) kept "
                                "at random.")
    seed: int = param(0, help="Seeds the permutations and the row subsampling.")
    device: str = param("cpu", choices=("cpu", "cuda"), what="device", help="Where PCA runs (NumPy or CuPy).")
    scale: str | float = param("auto", help="Input multiplier for the data ('auto': 1/255 for 8-bit images).")
    batch_size: int = param(4096, help="Largest chunk of samples per onnxruntime call.")

    def check(self):
        checked_fractions(self.fractions)
        if self.n_permutations < 1:
            raise ConfigError("n_permutations must be at least 1")
        if not self.modes:
            raise ConfigError(f"modes must be among {', '.join(MODES)}")
        if not 0 <= self.prune_tolerance <= 1 or not 0 <= self.redundancy_tolerance < 1:
            raise ConfigError("tolerances are fractions: prune_tolerance in [0, 1], redundancy_tolerance in [0, 1)")
        if self.agreement is not None and not self.agreement >= 0:
            raise ConfigError("agreement is a tolerance >= 0 (a fraction of the output's norm)")
        if self.max_rows < 2:
            raise ConfigError("max_rows must be at least 2")


def frivolous(source, data: Dataset | None = None, *, config: FrivolousConfig | None = None, progress: bool = True,
              **params) -> FrivolousResult:
    """Prunable and redundant units of every hidden layer of one model (Casper et al.,
    Sections 3-4): :func:`prunability` (needs a model and data) and :func:`redundancy`
    (a model with data, or an activation store), merged into one table.

    Parameters
    ----------
    source : LoadedModel, Store or path-like
    data : Dataset, optional
        Test samples [N, ...] (needed for a model).
    config : FrivolousConfig, optional
        The parameters, as one object; keyword parameters (its fields) change it. They are
        those of :func:`prunability` (``prune_tolerance`` is its tolerance) and
        :func:`redundancy` (``redundancy_tolerance``).

    Returns
    -------
    FrivolousResult
        ``layers`` rows: ``layer``, ``kind``, ``units`` (neurons or channels), and from
        prunability ``ablation_units``, ``unit``, ``prunable_fraction``, ``prunable_units``,
        ``crossed``; from redundancy ``non_redundant``, ``redundant``, ``redundant_fraction``,
        ``unexplained`` and the |r| summary. The network-mode row has ``layer`` = "all".

    Raises
    ------
    ConfigError, DataError, DeviceError, ModelError
    """
    cfg = FrivolousConfig.build(config, **params)
    src = open_source(source)
    try:
        return _frivolous(src, data, cfg, progress)
    finally:
        if isinstance(src, Store) and src is not source:
            src.close()


def _frivolous(src, data, cfg: FrivolousConfig, progress):
    if isinstance(src, LoadedModel) and data is None:
        raise ConfigError("a model needs data: prunability and redundancy are measured on its activations")
    streams = cfg.streams()
    pr = None
    if isinstance(src, LoadedModel):
        pr = prunability(src, data, layers=cfg.layers, fractions=cfg.fractions, n_permutations=cfg.n_permutations,
                         tolerance=cfg.prune_tolerance, conv_units=cfg.conv_units, modes=cfg.modes,
                         seed=streams["permutations"], scale=cfg.scale, batch_size=cfg.batch_size, progress=progress,
                         agreement=cfg.agreement)
    red, corrs = redundancy(src, data, layers=cfg.layers, tolerance=cfg.redundancy_tolerance, max_rows=cfg.max_rows,
                            seed=streams["redundancy_rows"], device=cfg.device, scale=cfg.scale,
                            batch_size=cfg.batch_size, progress=progress)
    rows = []
    for r in red:
        row = {"layer": r["layer"], "kind": r["kind"], "units": r["units"]}
        if pr is not None and any(s["mode"] == "layer" for s in pr.summary):
            s = pr.row(r["layer"], "layer")
            row.update({"ablation_units": s["units"], "unit": s["unit"], "prunable_fraction": s["prunable_fraction"],
                        "prunable_units": s["prunable_units"], "crossed": s["crossed"]})
        row.update({k: v for k, v in r.items() if k not in ("layer", "kind", "units")})
        rows.append(row)
    if pr is not None and any(s["mode"] == "network" for s in pr.summary):
        s = pr.row("all", "network")
        rows.append({"layer": "all", "kind": "network", "units": sum(r["units"] for r in red),
                     "ablation_units": s["units"], "unit": s["unit"], "prunable_fraction": s["prunable_fraction"],
                     "prunable_units": s["prunable_units"], "crossed": s["crossed"],
                     "non_redundant": sum(r["non_redundant"] for r in red),
                     "redundant": sum(r["redundant"] for r in red),
                     "redundant_fraction": float(np.mean([r["redundant_fraction"] for r in red]))})
    path = src.path
    inputs = {"source": (path, src.sha256)}
    if data is not None:
        inputs["data"] = (data.path, data.sha256)
    params = dict(cfg.record(), fractions=list(checked_fractions(cfg.fractions)), split=getattr(data, "split", None),
                  unchanged="labels" if pr is None or pr.agreement is None else f"outputs within {pr.agreement:g}",
                  input_scale=resolve_scale(data.x, cfg.scale) if data is not None else None)
    return FrivolousResult(str(path), rows, pr, red, corrs, provenance(inputs, params))
