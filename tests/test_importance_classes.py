"""importance at any number of classes: classes are the labels present, JS subset separation
scales past 20 classes, and memory stays within --max-memory."""
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from infoprobe.analyses.importance import Quantizer, importance
from infoprobe.store import StoreWriter


def _store(path, y, t):
    """A store of one dense ReLU layer ``fc`` (pre-activations ``t`` [N, U]) and labels ``y``."""
    n, u = t.shape
    out = np.zeros((n, 2), np.float32)
    layers = [dict(name="fc", kind="dense", shape=(u,), units=u, activation="relu", depth=1, inputs=[],
                   is_output=False),
              dict(name="out", kind="dense", shape=(2,), units=2, activation="none", depth=2, inputs=["fc"],
                   is_output=True)]
    w = StoreWriter(path, n_rows=n, layers=layers, n_outputs=2, labels=y)
    w.write(0, {"layers/fc/pre": t.astype(np.float32), "layers/fc/post": np.maximum(t, 0).astype(np.float32),
                "layers/out/pre": out, "layers/out/post": out, "outputs/logits": out})
    w.finish()
    w.close()
    return path


def _plain_measures(code, y):
    """H, I(T;Y), specific information per class and labeled MI of one unit, in bits, from plain
    relative frequencies and loops over the labels present (Liu et al. eqs. 2-5, 16)."""
    labels = sorted(set(y.tolist()))
    vals = sorted(set(code.tolist()))
    n = len(y)
    pt = {t: np.mean(code == t) for t in vals}
    h = -sum(p * np.log2(p) for p in pt.values())
    mi, spec, lab = 0.0, {}, {}
    for c in labels:
        py = np.mean(y == c)
        spec[c] = 0.0
        for t in vals:
            ptc = np.sum((code == t) & (y == c)) / n
            if ptc > 0:
                mi += ptc * np.log2(ptc / (pt[t] * py))
                spec[c] += ptc / py * np.log2(ptc / py / pt[t])
        ind = y == c
        lab[c] = sum(np.mean((code == t) & (ind == a)) * np.log2(np.mean((code == t) & (ind == a))
                                                                  / (pt[t] * np.mean(ind == a)))
                     for t in vals for a in (True, False) if np.any((code == t) & (ind == a)))
    return h, mi, spec, lab


def test_labels_with_gaps_are_the_classes_and_keep_their_names(tmp_path):
    rng = np.random.default_rng(0)
    codes = np.repeat([0, 1, 2], [9, 13, 18])[rng.permutation(40)]
    t = rng.standard_normal((40, 5)) + np.array([[-1.0], [0.3], [1.5]])[codes] * rng.standard_normal(5)
    gaps = np.array([0, 3, 882])[codes]
    a = importance(_store(tmp_path / "gaps.h5", gaps, t), progress=False)
    b = importance(_store(tmp_path / "coded.h5", codes, t), progress=False)
    assert a.params["classes"] == [0, 3, 882] and a.params["n_classes"] == 3 and b.params["classes"] == [0, 1, 2]
    name = {0: 0, 1: 3, 2: 882}
    for ra, rb in zip(a.units, b.units, strict=True):
        for k in ("entropy", "mutual_information", "kl_selectivity", "js_subset_separation", "labeled_mi"):
            assert ra[k] == pytest.approx(rb[k], abs=1e-12), k
        assert ra["kl_selectivity_class"] == name[rb["kl_selectivity_class"]]
        assert ra["labeled_mi_class"] == name[rb["labeled_mi_class"]]
        assert ra["js_subset"] == [name[c] for c in rb["js_subset"]]
    # the class-conditional quantities against plain loops over the labels present
    spec = {(r["unit"], r["class"]): r["specific_information"] for r in a.specific}
    assert len(a.specific) == 5 * 3 and {c for _, c in spec} == {0, 3, 882}
    for r in a.units:
        h, mi, sp, lab = _plain_measures((t[:, r["unit"]] > 0).astype(int), gaps)
        assert (r["entropy"], r["mutual_information"]) == pytest.approx((h, mi), abs=1e-12)
        for c in (0, 3, 882):
            assert spec[r["unit"], c] == pytest.approx(sp[c], abs=1e-12)
        assert r["kl_selectivity"] == pytest.approx(max(sp.values()), abs=1e-12)
        assert r["kl_selectivity_class"] == max(sp, key=sp.get)
        assert r["labeled_mi"] == pytest.approx(max(lab.values()), abs=1e-12)
    # the files written keep the labels and the mapping
    a.save(tmp_path / "r")
    doc = json.loads((tmp_path / "r" / "specific_information.json").read_text())
    assert doc["meta"]["parameters"]["classes"] == [0, 3, 882]
    assert sorted({r["class"] for r in doc["rows"]}) == [0, 3, 882]


def test_per_class_output_within_the_budget(tmp_path):
    # 5 units x 3 classes: 15 per-class rows, under PER_CLASS_ROWS; whether they are built follows
    # the budget: 5 unit rows need 20 KiB, with the per-class rows 51.7 KiB
    from infoprobe.analyses import importance as mod
    from infoprobe.errors import BudgetError
    from infoprobe.limits import budgets

    rng = np.random.default_rng(4)
    y = np.array([1, 5, 9])[rng.integers(0, 3, 60)]
    store = _store(tmp_path / "s.h5", y, rng.standard_normal((60, 5)))
    assert 5 * mod.UNIT_ROW_BYTES < 40 * 1024 < 5 * mod.UNIT_ROW_BYTES + 15 * mod.PER_CLASS_ROW_BYTES
    roomy = importance(store, progress=False)
    with budgets(memory="40K"):
        tight = importance(store, progress=False)
        with pytest.raises(BudgetError, match=r"per-class output \(15 rows"):
            importance(store, per_class=True, progress=False)
    assert roomy.params["per_class"] is True and len(roomy.specific) == 15
    assert all(r["js_subset"] is not None for r in roomy.units)
    assert tight.params["per_class"] is False and tight.specific == []
    assert all(r["js_subset"] is None for r in tight.units)
    for a, b in zip(roomy.units, tight.units, strict=True):   # the summary columns do not change
        assert {k: v for k, v in a.items() if k != "js_subset"} == {k: v for k, v in b.items() if k != "js_subset"}
    assert "per-class output left out (15 rows" in tight.summary()


def _split_mi(code, inside):
    """I(T; 1[Y in A]) in bits of codes ``code`` [N] and the indicator ``inside`` [N]."""
    mi = 0.0
    for t in set(code.tolist()):
        for a in (True, False):
            p = np.mean((code == t) & (inside == a))
            if p > 0:
                mi += p * np.log2(p / (np.mean(code == t) * np.mean(inside == a)))
    return mi


def test_js_over_the_top_classes_equals_brute_force(tmp_path):
    # 3 quantile bins, 30 classes with gaps and distinct frequencies, top 4: the 4 most frequent
    # classes apart, the other 26 pooled; the brute force enumerates every split of those 5 groups
    rng = np.random.default_rng(1)
    labels = np.arange(30) * 7 + 2
    freq = np.arange(30) + 3
    y = rng.permutation(np.repeat(labels, freq))
    t = (rng.standard_normal((len(y), 3)) + rng.standard_normal((30, 3))[np.searchsorted(labels, y)]).astype(np.float32)
    res = importance(_store(tmp_path / "s.h5", y, t), which="pre", quantizer=Quantizer("quantile", bins=3), js_top=4,
                     per_class=True, progress=False)
    top = labels[-4:]
    assert res.params["js_classes"] == top.tolist() and "lower bound" in res.params["js_method"]
    group = np.where(np.isin(y, top), y, -1)                 # the pooled classes as one group, -1
    names = [*top, -1]
    for r in res.units:
        x = t[:, r["unit"]].astype(np.float64)
        code = (x > np.quantile(x, 1 / 3)).astype(int) + (x > np.quantile(x, 2 / 3))
        best = max(_split_mi(code, np.isin(group, a)) for k in range(1, 5) for a in itertools.combinations(names, k))
        assert r["js_subset_separation"] == pytest.approx(best, abs=1e-12)
        assert r["js_subset_separation"] == pytest.approx(_split_mi(code, np.isin(y, r["js_subset"])), abs=1e-12)
        assert r["js_subset_size"] == len(r["js_subset"])


def test_js_one_bit_is_exact_over_many_classes(tmp_path):
    # one-bit codes, 14 classes: every one of the 2^13 - 1 splits, by brute force
    rng = np.random.default_rng(2)
    labels = np.arange(14) * 60 + 5
    y = labels[rng.integers(0, 14, 700)]
    t = rng.standard_normal((700, 3)) + rng.standard_normal((14, 3))[np.searchsorted(labels, y)]
    res = importance(_store(tmp_path / "s.h5", y, t), js_top=1, progress=False)
    assert res.params["js_classes"] is None and res.params["js_method"].startswith("exact")
    for r in res.units:
        code = (t[:, r["unit"]] > 0).astype(int)
        best = max(_split_mi(code, np.isin(y, a)) for k in range(1, 8) for a in itertools.combinations(labels, k))
        assert r["js_subset_separation"] == pytest.approx(best, abs=1e-12)
        assert r["js_subset_separation"] == pytest.approx(_split_mi(code, np.isin(y, r["js_subset"])), abs=1e-12)


# A child that loads the libraries, notes its resident memory, runs the command and reports its
# peak. The peak is the process's own high-water mark (VmHWM): getrusage's ru_maxrss keeps that
# of the process it was started from (Linux carries it over execve), here pytest's.
CHILD = """
import sys
import h5py, numpy, onnx, onnxruntime, tqdm
import infoprobe.analyses.importance, infoprobe.results
from infoprobe.cli.main import cli

def status(key):
    return next(int(ln.split()[1]) * 1024 for ln in open("/proc/self/status") if ln.startswith(key + ":"))

base = status("VmRSS")
code = 0
try:
    cli.main(sys.argv[1:], prog_name="infoprobe")
except SystemExit as e:
    code = e.code
print("PEAK", status("VmHWM") - base, code, file=sys.stderr)
"""
BUDGET = 64 * 2**20


def _child(args, tmp_path):
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", INFOPROBE_THREADS="1",
               TMPDIR=str(tmp_path))
    r = subprocess.run([sys.executable, "-c", CHILD, *map(str, args), "--max-memory", "64M", "--no-plot",
                        "--no-progress"], env=env, capture_output=True, text=True, timeout=600)
    peak, code = r.stderr.strip().splitlines()[-1].split()[1:]
    return int(code), int(peak), r


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_many_classes_and_units_within_64M(tmp_path):
    # 400 classes (labels 0..1596 with gaps) x 1,000 units x 800 samples: 400,000 per-class rows
    rng = np.random.default_rng(3)
    labels = np.sort(rng.choice(1600, 400, replace=False))
    y = labels[rng.permutation(np.concatenate([np.arange(400), rng.integers(0, 400, 400)]))]
    t = rng.standard_normal((1600, 1000), dtype=np.float32)[y] + rng.standard_normal((800, 1000), dtype=np.float32)
    store = _store(tmp_path / "many.h5", y, t)

    # the defaults: JS exact over the 400 classes; the per-class output is left out
    code, peak, r = _child(["importance", store, "--out", tmp_path / "a"], tmp_path)
    assert code == 0, r.stderr[-2000:]
    assert peak <= BUDGET, f"{peak / 2**20:.1f} MiB over the libraries"
    doc = json.loads((tmp_path / "a" / "importance.json").read_text())
    assert len(doc["rows"]) == 1000 and all(r["js_subset_separation"] is not None for r in doc["rows"])
    assert doc["meta"]["parameters"]["classes"] == labels.tolist()
    assert doc["meta"]["parameters"]["per_class"] is False
    assert json.loads((tmp_path / "a" / "specific_information.json").read_text())["rows"] == []
    assert "per-class output left out (400,000 rows" in r.stdout

    # 3 bins: [1000, 3, 400] tables in blocks of units, a pass over the store each; the values are
    # those of one block in this process without a budget
    code, peak, r = _child(["importance", store, "--out", tmp_path / "b", "--quantizer", "uniform", "--bins", "3",
                            "--no-js"], tmp_path)
    assert code == 0, r.stderr[-2000:]
    assert peak <= BUDGET, f"{peak / 2**20:.1f} MiB over the libraries"
    rows = json.loads((tmp_path / "b" / "importance.json").read_text())["rows"]
    whole = importance(store, quantizer=Quantizer("uniform", bins=3), js=False, progress=False)
    for k in ("entropy", "mutual_information", "kl_selectivity", "labeled_mi", "kl_selectivity_class"):
        np.testing.assert_allclose([r[k] for r in rows], [r[k] for r in whole.units], rtol=0, atol=1e-12)

    # the per-class output asked for does not fit: refused in one line before it is built
    code, peak, r = _child(["importance", store, "--out", tmp_path / "c", "--per-class"], tmp_path)
    assert code == 2 and peak <= BUDGET
    err = [ln for ln in r.stderr.splitlines() if not ln.startswith("PEAK")]
    assert len(err) == 1 and "per-class output (400,000 rows" in err[0] and "memory budget of 64.0 MiB" in err[0]
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").iterdir())
