"""Pruning plans: which units to remove and the affine function of kept units replacing each.

A removed unit j of a unit layer is replaced by an affine function of the *kept* units of the
same layer (DESIGN.md, "One intervention")::

    t_j  ~=  sum_k a_jk * t_k + c_j          (t: post-activations)

A constant replacement (ablation to zero, bias balancing to the mean, the lesion constant
sigma(b_j)) has a = 0; merging j into a similar unit i is a one-hot a (a_ji = 1); refactoring
a redundant unit is a least-squares a. Physical pruning applies every kind by one rule on
the next layer: ``W_next <- W_next[:, kept] + W_next[:, removed] @ A`` and
``b_next <- b_next + W_next[:, removed] @ c``.

File format (JSON, ``format = "infoprobe-pruning-plan"``, ``version = 1``)::

    {
      "format": "infoprobe-pruning-plan",
      "version": 1,
      "model_sha256": "<SHA-256 of the .onnx file the plan was made for, or null>",
      "generator": {"method": "mutual_information", "...": "free-form provenance"},
      "layers": [
        {"layer": "fc1", "units": 100,
         "remove": [
           {"unit": 3, "constant": 0.0},
           {"unit": 7, "constant": 0.12, "terms": [[12, 1.0]]},
           {"unit": 9, "constant": -0.4, "terms": [[0, 0.5], [12, -0.25]]}
         ]}
      ]
    }

- ``layer``: a unit-layer name as ``infoprobe inspect`` lists it (not the output layer).
- ``units``: the layer's unit count (neurons, or channels of a conv layer), checked against
  the model.
- ``unit``: 0-based index of a removed unit, at most once per layer, at least one unit kept.
- ``constant``: c_j, in the units of the post-activation (per channel for conv layers).
- ``terms``: optional ``[k, a_jk]`` pairs; every k is a kept unit of the same layer.

Plans are produced by :mod:`infoprobe.analyses.plans` (``infoprobe plan``) and by later
analyses, and consumed by :func:`infoprobe.prune.prune` (``infoprobe prune``).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import PlanError
from .results import atomic_write_bytes, check_outputs

PLAN_FORMAT = "infoprobe-pruning-plan"
PLAN_VERSION = 1
#: Largest plan file :meth:`PruningPlan.load` reads.
MAX_PLAN_BYTES = 256 * 2**20


@dataclass
class LayerPlan:
    """Removals of one unit layer.

    Attributes
    ----------
    layer : str
    units : int
        Unit count U of the layer.
    remove : int ndarray [R]
        Removed units, ascending.
    constant : float64 ndarray [R]
        c_j of each removed unit.
    coef : float64 ndarray [R, K]
        a_jk over the kept units (``kept``, ascending; K = U - R); zeros for constants.
    """

    layer: str
    units: int
    remove: np.ndarray
    constant: np.ndarray
    coef: np.ndarray

    @classmethod
    def build(cls, layer: str, units: int, remove, constant=None, coef=None) -> "LayerPlan":
        """Validated plan of one layer from removed units, their constants ([R], default 0)
        and coefficients over kept units ([R, K], default 0), sorted by unit.

        Raises
        ------
        PlanError
            Indices out of range or repeated, no unit kept, shapes that disagree, non-finite
            numbers.
        """
        remove = np.asarray(remove, np.int64).reshape(-1)
        if len(np.unique(remove)) != len(remove):
            raise PlanError(f"layer {layer!r}: a unit is listed twice for removal")
        if len(remove) and (remove.min() < 0 or remove.max() >= units):
            raise PlanError(f"layer {layer!r}: unit index out of range 0..{units - 1}")
        if len(remove) >= units:
            raise PlanError(f"layer {layer!r}: the plan removes all {units} units; keep at least one")
        n_kept = units - len(remove)
        constant = np.zeros(len(remove)) if constant is None else np.asarray(constant, np.float64).reshape(-1)
        coef = np.zeros((len(remove), n_kept)) if coef is None else np.asarray(coef, np.float64)
        if constant.shape != (len(remove),) or coef.shape != (len(remove), n_kept):
            raise PlanError(f"layer {layer!r}: constants {constant.shape} or coefficients {coef.shape} "
                            f"do not match {len(remove)} removed and {n_kept} kept units")
        if not (np.isfinite(constant).all() and np.isfinite(coef).all()):
            raise PlanError(f"layer {layer!r}: constants and coefficients must be finite numbers")
        order = np.argsort(remove, kind="stable")
        return cls(layer, int(units), remove[order], constant[order], coef[order])

    @property
    def kept(self) -> np.ndarray:
        """Kept units, ascending."""
        return np.setdiff1d(np.arange(self.units), self.remove)

    @property
    def is_constant(self) -> bool:
        """True when every removed unit is replaced by a constant (a = 0)."""
        return not self.coef.any()

    def replacement_matrix(self) -> np.ndarray:
        """float64 [U, U] matrix P with P[j, k] = a_jk (rows of removed units), zero elsewhere."""
        p = np.zeros((self.units, self.units))
        p[np.ix_(self.remove, self.kept)] = self.coef
        return p

    def to_dict(self) -> dict:
        kept = self.kept
        items = []
        for j, c, row in zip(self.remove, self.constant, self.coef):
            item = {"unit": int(j), "constant": float(c)}
            nz = np.flatnonzero(row)
            if len(nz):
                item["terms"] = [[int(kept[i]), float(row[i])] for i in nz]
            items.append(item)
        return {"layer": self.layer, "units": self.units, "remove": items}


@dataclass
class PruningPlan:
    """Per-layer removals with their affine replacements (see the module docstring).

    Attributes
    ----------
    layers : dict of str -> LayerPlan
    model_sha256 : str or None
        The model the plan was made for; :func:`infoprobe.prune.prune` refuses another one.
    generator : dict
        How the plan was made (method, fractions, seed, inputs' SHA-256...).
    """

    layers: dict
    model_sha256: str | None = None
    generator: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "model_sha256": self.model_sha256,
                "generator": self.generator, "layers": [p.to_dict() for p in self.layers.values()]}

    def describe(self) -> dict:
        """What generated the plan and, per layer, the units removed and the kind of
        replacement (``constant`` or ``affine``)."""
        return {"generator": self.generator,
                "layers": {n: {"units": lp.units, "removed": len(lp.remove),
                               "replacement": "constant" if lp.is_constant else "affine"}
                           for n, lp in self.layers.items()}}

    def summary(self) -> str:
        """Per layer, the units the plan removes and their replacement."""
        return "\n".join(f"{n:<20} remove {d['removed']:>5} of {d['units']:<5} ({d['replacement']} replacement)"
                         for n, d in self.describe()["layers"].items())

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False)

    def sha256(self) -> str:
        """SHA-256 of the canonical JSON text."""
        return hashlib.sha256(self.to_json().encode()).hexdigest()

    def save(self, path, *, overwrite: bool = False) -> Path:
        """Write the plan as JSON (atomically; refuses to replace a file unless ``overwrite``)."""
        path = Path(path)
        check_outputs([path], overwrite)
        atomic_write_bytes(path, self.to_json().encode())
        return path

    @classmethod
    def load(cls, path) -> "PruningPlan":
        """Read and validate a plan file.

        Raises
        ------
        PlanError
            Missing, too large (over 256 MiB), not JSON, another format or version, or any
            field of the wrong type or out of range.
        """
        path = Path(path)
        if not path.is_file():
            raise PlanError(f"plan file {path} does not exist")
        if os.path.getsize(path) > MAX_PLAN_BYTES:
            raise PlanError(f"plan file {path} is over {MAX_PLAN_BYTES // 2**20} MiB")
        try:
            doc = json.loads(path.read_bytes(), parse_constant=_reject_constant)
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise PlanError(f"{path} is not valid JSON: {type(exc).__name__}: {str(exc)[:160]}") from None
        try:
            return cls.from_dict(doc)
        except PlanError as exc:
            raise PlanError(f"{path}: {exc}") from None

    @classmethod
    def from_dict(cls, doc) -> "PruningPlan":
        """Validate a parsed plan document (see the module docstring for the format)."""
        if not isinstance(doc, dict) or doc.get("format") != PLAN_FORMAT:
            raise PlanError(f"not a pruning plan (expected \"format\": \"{PLAN_FORMAT}\")")
        if doc.get("version") != PLAN_VERSION:
            raise PlanError(f"plan version {doc.get('version')!r} is not supported (this infoprobe "
                            f"reads version {PLAN_VERSION})")
        sha = doc.get("model_sha256")
        if sha is not None and not (isinstance(sha, str) and len(sha) == 64):
            raise PlanError("model_sha256 must be a 64-character hex string or null")
        gen = doc.get("generator", {})
        if not isinstance(gen, dict):
            raise PlanError("generator must be an object")
        entries = doc.get("layers")
        if not isinstance(entries, list):
            raise PlanError("layers must be a list")
        layers = {}
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("layer"), str):
                raise PlanError("every entry of layers needs a string 'layer'")
            name = entry["layer"]
            if name in layers:
                raise PlanError(f"layer {name!r} appears twice")
            units = _int(entry.get("units"), f"layer {name!r}: units")
            if units < 1:
                raise PlanError(f"layer {name!r}: units must be positive")
            items = entry.get("remove")
            if not isinstance(items, list):
                raise PlanError(f"layer {name!r}: remove must be a list")
            remove = [_int(it.get("unit") if isinstance(it, dict) else None, f"layer {name!r}: unit")
                      for it in items]
            removed = set(remove)
            kept = np.setdiff1d(np.arange(units), np.array(remove, np.int64))
            col = {int(k): i for i, k in enumerate(kept)}
            const = np.zeros(len(items))
            coef = np.zeros((len(items), len(kept)))
            for r, it in enumerate(items):
                const[r] = _float(it.get("constant", 0.0), f"layer {name!r} unit {remove[r]}: constant")
                terms = it.get("terms", [])
                if not isinstance(terms, list):
                    raise PlanError(f"layer {name!r} unit {remove[r]}: terms must be a list of [unit, a]")
                for term in terms:
                    if not (isinstance(term, list) and len(term) == 2):
                        raise PlanError(f"layer {name!r} unit {remove[r]}: a term must be [unit, a]")
                    k = _int(term[0], f"layer {name!r} unit {remove[r]}: term unit")
                    if k in removed or k not in col:
                        raise PlanError(f"layer {name!r} unit {remove[r]}: term unit {k} is not a kept unit")
                    if coef[r, col[k]] != 0:
                        raise PlanError(f"layer {name!r} unit {remove[r]}: term unit {k} appears twice")
                    coef[r, col[k]] = _float(term[1], f"layer {name!r} unit {remove[r]}: coefficient")
            layers[name] = LayerPlan.build(name, units, remove, const, coef)
        return cls(layers, sha, gen)

    def check_model(self, lm) -> None:
        """Check that the plan fits ``lm`` (a :class:`~infoprobe.model.LoadedModel`).

        Raises
        ------
        PlanError
            The plan was made for another model (SHA-256), names an unknown or the output
            layer, or a unit count differs.
        """
        if self.model_sha256 and self.model_sha256 != lm.sha256:
            raise PlanError(f"the plan was made for another model (SHA-256 {self.model_sha256[:12]}..., "
                            f"{lm.path.name} is {lm.sha256[:12]}...)")
        names = {lay.name: lay for lay in lm.layers}
        for name, lp in self.layers.items():
            if name not in names:
                raise PlanError(f"the plan names layer {name!r}, which {lm.path.name} does not have; "
                                "its unit layers are: " + ", ".join(names))
            lay = names[name]
            if lay.is_output:
                raise PlanError(f"layer {name!r} is the output layer; its units are the model's outputs "
                                "and cannot be pruned")
            if lay.units != lp.units:
                raise PlanError(f"layer {name!r} has {lay.units} units in the model but {lp.units} in the plan")


def _reject_constant(name):
    raise ValueError(f"{name} is not a number a plan may hold")


def _int(v, what) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise PlanError(f"{what} must be an integer, got {v!r}")
    return v


def _float(v, what) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise PlanError(f"{what} must be a finite number, got {v!r}")
    return float(v)
