"""Where two models part: per-site divergence of a candidate's activations from its reference's.

A pruned, refactored or quantized copy of a model keeps the reference's unit sites. Both
models run on the same samples; at every pair of matched sites the candidate's
post-activations are compared with the reference's:

- ``relative_error`` = ||T_cand - T_ref||_F / ||T_ref||_F over samples, positions and units;
- per-unit Pearson correlation over samples x positions (``correlation_mean``, ``_min``);
- linear CKA (Kornblith et al. 2019, "Similarity of Neural Network Representations
  Revisited", eq. 4 in its feature-space form ||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) with
  column-centred X, Y): rows are samples x positions, columns are units, so it is defined
  when the two sites have different numbers of units;
- the units that moved most: per unit, the RMS of T_cand - T_ref over the site's RMS.

For a pruned candidate (the ``infoprobe.kept_units`` metadata :func:`infoprobe.prune.apply_plan`
writes), the reference's site is read on the kept units; metadata that does not follow its schema
(:func:`infoprobe.prune.kept_units`) is ignored, with a warning and a note saying why, and the
candidate is compared as one without it. Every statistic is accumulated batch
by batch: memory is a few [units x units] matrices per site, whatever the number of samples.
"""
from __future__ import annotations

import numpy as np
from tqdm.auto import tqdm

from ..errors import ConfigError
from ..limits import human, max_memory, rows_within
from ..model import LoadedModel
from ..rewrite import io_name

#: A site whose relative error exceeds this is where the models part (``tolerance``).
DEFAULT_TOLERANCE = 0.05
#: Share of the memory budget (:func:`infoprobe.limits.max_memory`) the CKA sums of all sites
#: may hold together, and the share one batch of both models' site activations may take.
CKA_SHARE, BATCH_SHARE = 1 / 4, 1 / 8


def match_sites(reference: LoadedModel, candidate: LoadedModel) -> tuple[list, list]:
    """Pair the unit sites of two models.

    Sites are matched by name first; then a candidate site whose name extends a reference
    site's by ``_`` and a suffix (``conv1`` -> ``conv1_quant``: the names onnxruntime's
    quantizer gives) by that prefix, the longest first; the rest in graph order among sites of
    the same kind and per-unit shape (positions), by position and shape.

    Returns
    -------
    pairs : list of dict
        In the reference's graph order: ``reference``, ``candidate`` (site names),
        ``matched_by`` (``"name"``, ``"name prefix"``, ``"position and shape"``).
    unmatched : list of str
        Reference and candidate sites left without a partner, as ``"reference:NAME"`` /
        ``"candidate:NAME"``.
    """
    cand_by_name = {lay.name: lay for lay in candidate.layers}
    match, taken = {}, set()
    for lay in reference.layers:
        if lay.name in cand_by_name:
            match[lay.name] = (lay.name, "name")
            taken.add(lay.name)
    for lay in sorted(reference.layers, key=lambda v: -len(v.name)):
        if lay.name in match:
            continue
        for c in candidate.layers:
            if c.name not in taken and c.name.startswith(lay.name + "_"):
                match[lay.name] = (c.name, "name prefix")
                taken.add(c.name)
                break

    def positions(lay):
        return lay.kind, tuple(d for i, d in enumerate(lay.shape) if i != lay.unit_axis)

    rest = [c for c in candidate.layers if c.name not in taken]
    for lay in reference.layers:
        if lay.name in match:
            continue
        for c in rest:
            if positions(c) == positions(lay):
                match[lay.name] = (c.name, "position and shape")
                rest.remove(c)
                taken.add(c.name)
                break
    pairs = [{"reference": lay.name, "candidate": match[lay.name][0], "matched_by": match[lay.name][1]}
             for lay in reference.layers if lay.name in match]
    unmatched = ([f"reference:{lay.name}" for lay in reference.layers if lay.name not in match]
                 + [f"candidate:{c.name}" for c in candidate.layers if c.name not in taken])
    return pairs, unmatched


def _rows(a: np.ndarray, unit_axis: int) -> np.ndarray:
    """[B, *shape] -> [B * positions, units] float64, units last."""
    a = np.moveaxis(a, 1 + unit_axis, -1)
    return a.reshape(-1, a.shape[-1]).astype(np.float64)


class _Site:
    """Running sums of one matched pair of sites."""

    def __init__(self, units_ref: int, units_cand: int, same_units: bool, cka: bool):
        self.same = same_units
        self.n = 0
        self.sr, self.sc = np.zeros(units_ref), np.zeros(units_cand)
        self.rr, self.cc = np.zeros(units_ref), np.zeros(units_cand)
        self.cka = cka
        if self.cka:
            self.RR, self.CC = np.zeros((units_ref, units_ref)), np.zeros((units_cand, units_cand))
            self.CR = np.zeros((units_cand, units_ref))
        if same_units:
            self.rc, self.dd = np.zeros(units_ref), np.zeros(units_ref)

    def add(self, r: np.ndarray, c: np.ndarray) -> None:
        self.n += len(r)
        self.sr += r.sum(0)
        self.sc += c.sum(0)
        self.rr += (r * r).sum(0)
        self.cc += (c * c).sum(0)
        if self.cka:
            self.RR += r.T @ r
            self.CC += c.T @ c
            self.CR += c.T @ r
        if self.same:
            self.rc += (r * c).sum(0)
            self.dd += ((c - r) ** 2).sum(0)

    def result(self, top: int) -> dict:
        n = self.n
        out = {"relative_error": None, "correlation_mean": None, "correlation_min": None, "cka": None,
               "moved_units": []}
        if self.cka:
            mr, mc = self.sr / n, self.sc / n
            rr = self.RR - n * np.outer(mr, mr)
            cc = self.CC - n * np.outer(mc, mc)
            cr = self.CR - n * np.outer(mc, mr)
            den = np.linalg.norm(rr) * np.linalg.norm(cc)
            out["cka"] = float(np.linalg.norm(cr) ** 2 / den) if den > 0 else None
        if self.same:
            total = self.rr.sum()
            out["relative_error"] = float(np.sqrt(self.dd.sum() / total)) if total > 0 else (
                0.0 if self.dd.sum() == 0 else float("inf"))
            vr = self.rr - self.sr ** 2 / n
            vc = self.cc - self.sc ** 2 / n
            cov = self.rc - self.sr * self.sc / n
            with np.errstate(invalid="ignore", divide="ignore"):
                corr = cov / np.sqrt(vr * vc)
            ok = (vr > 1e-12 * max(1.0, self.rr.max())) & (vc > 1e-12 * max(1.0, self.cc.max()))
            corr = np.where(ok, np.clip(corr, -1.0, 1.0), np.nan)
            if ok.any():
                out["correlation_mean"] = float(np.nanmean(corr))
                out["correlation_min"] = float(np.nanmin(corr))
            scale = np.sqrt(total / (n * len(self.rr))) if total > 0 else 1.0
            moved = np.sqrt(self.dd / n) / scale
            order = np.argsort(-moved, kind="stable")[:top]
            out["moved_units"] = [{"unit": int(u), "moved": float(moved[u]),
                                   "correlation": None if np.isnan(corr[u]) else float(corr[u])}
                                  for u in order if moved[u] > 0]
        return out


def site_divergence(reference: LoadedModel, candidate: LoadedModel, x, *, tolerance: float = DEFAULT_TOLERANCE,
                    top_units: int = 5, batch_size: int = 256, progress: bool = False) -> dict:
    """Per-site divergence of ``candidate``'s activations from ``reference``'s on the same samples.

    Parameters
    ----------
    reference, candidate : LoadedModel
        Models with matching unit sites (:func:`match_sites`).
    x : float array [N, ...]
        Model inputs, already prepared (:func:`infoprobe.data.prepare_inputs`).
    tolerance : float
        Relative error above which a site counts as diverged (default 0.05); a site compared
        on CKA only (different units and no record of the kept ones) diverges when
        1 - CKA exceeds it.
    top_units : int
        Units listed per site (the ones that moved most).
    batch_size : int
        Rows per onnxruntime run of each model, lowered so that one batch of both models'
        site activations stays within 1/8 of the memory budget.

    Memory: the batch, plus per site the running sums (a few vectors of its units) and, for
    linear CKA, three units x units matrices; the CKA sums of all sites together stay within
    a quarter of the budget, and a site beyond it is compared without CKA (and said so).

    Returns
    -------
    dict
        ``sites``: one row per matched pair in the reference's graph order with
        ``reference``, ``candidate``, ``matched_by``, ``units`` (reference, candidate),
        ``compared_on`` (``"all units"``, ``"kept units"`` or ``"CKA only"``) and the
        statistics of the module docstring; ``first_diverging`` (the first site over the
        tolerance, or None), ``tolerance``, ``n_samples``, ``unmatched`` and ``notes`` (among them why
        the candidate's record of its kept units was ignored, when it was malformed).

    Raises
    ------
    ConfigError
        ``tolerance`` negative or ``top_units`` < 0.
    ModelError
        A model cannot be instrumented or run.
    """
    from ..prune import kept_units
    from ..runner import Runner

    if not tolerance >= 0 or top_units < 0:
        raise ConfigError("tolerance and top_units must be non-negative")
    pairs, unmatched = match_sites(reference, candidate)
    notes = []
    origin, kept = kept_units(candidate, original=reference, notes=notes)   # malformed: ignored, noted
    if kept and origin != reference.sha256:
        notes.append("the candidate records the units it kept of another model (SHA-256 "
                     f"{origin[:12]}...), not of this reference: sites of different width are compared on CKA only")
        kept = {}
    accum, plan = [], []
    cka_room = int(max_memory() * CKA_SHARE)       # the CKA sums of every site share one part of the budget
    for p in pairs:
        r, c = reference.layer(p["reference"]), candidate.layer(p["candidate"])
        idx = None
        if r.units == c.units:
            how = "all units"
        elif p["reference"] in kept and len(kept[p["reference"]]) == c.units and max(kept[p["reference"]]) < r.units:
            idx, how = np.asarray(kept[p["reference"]]), "kept units"
        else:
            how = "CKA only"
        ur = r.units if idx is None else len(idx)
        need = 8 * (ur * ur + c.units * c.units + ur * c.units)
        site = _Site(ur, c.units, how != "CKA only", cka=need <= cka_room)
        if site.cka:
            cka_room -= need
        else:
            notes.append(f"{p['reference']}: linear CKA left out (its sums would take {human(need)}, more than "
                         "what is left of a quarter of the memory budget)")
        accum.append(site)
        plan.append((r, c, idx, how))
    runners = {"reference": Runner(reference, expose=True, spin=False),
               "candidate": Runner(candidate, expose=True, spin=False)}
    outs = {"reference": [io_name(r.name, "post") for r, _, _, _ in plan],
            "candidate": [io_name(c.name, "post") for _, c, _, _ in plan]}
    n = len(x)
    per_sample = 4 * sum(int(np.prod(r.shape)) + int(np.prod(c.shape)) for r, c, _, _ in plan)
    batch_size = rows_within(3 * per_sample, batch_size, share=BATCH_SHARE,       # float32 + float64 copies
                             what="one sample's activations at every matched site")
    for start in tqdm(range(0, n, batch_size), desc="site divergence", unit="batch", disable=not progress):
        xb = x[start:start + batch_size]
        got = {k: run.run(xb, outputs=outs[k], batch_size=batch_size) for k, run in runners.items()}
        for site, (r, c, idx, _), ro, co in zip(accum, plan, outs["reference"], outs["candidate"]):
            a = _rows(got["reference"][ro], r.unit_axis)
            site.add(a if idx is None else a[:, idx], _rows(got["candidate"][co], c.unit_axis))
    rows, first = [], None
    for p, site, (r, c, idx, how) in zip(pairs, accum, plan):
        row = dict(p, units=[r.units, c.units], compared_on=how, **site.result(top_units))
        if idx is not None:
            for u in row["moved_units"]:
                u["unit"] = int(idx[u["unit"]])
        err = row["relative_error"] if how != "CKA only" else (None if row["cka"] is None else 1.0 - row["cka"])
        row["diverged"] = bool(err is not None and err > tolerance)
        if row["diverged"] and first is None:
            first = p["reference"]
        rows.append(row)
    return {"sites": rows, "first_diverging": first, "tolerance": tolerance, "n_samples": n,
            "unmatched": unmatched, "notes": notes}
