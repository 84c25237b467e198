"""Discrete single-unit measures against brute force, closed forms and scikit-learn."""
import itertools

import numpy as np
import pytest
from sklearn.metrics import mutual_info_score

from infoprobe import estimators as est
from infoprobe.errors import ConfigError, DeviceError


def brute(codes, y):
    """Plain-loop reference for every measure of one unit, from Liu et al. eqs. 2-5, 13a, 16."""
    n = len(y)
    T, C = sorted(set(codes.tolist())), sorted(set(y.tolist()))
    p = {(t, c): np.sum((codes == t) & (y == c)) / n for t in T for c in C}
    pt = {t: sum(p[t, c] for c in C) for t in T}
    py = {c: sum(p[t, c] for t in T) for c in C}
    H = -sum(v * np.log2(v) for v in pt.values() if v > 0)
    I = sum(v * np.log2(v / (pt[t] * py[c])) for (t, c), v in p.items() if v > 0)
    spec = {c: sum((p[t, c] / py[c]) * np.log2((p[t, c] / py[c]) / pt[t]) for t in T if p[t, c] > 0) for c in C}

    def kl(a, b):
        return sum(a[t] * np.log2(a[t] / b[t]) for t in T if a[t] > 0)

    js = 0.0
    for r in range(1, len(C)):
        for A in itertools.combinations(C, r):
            pa = sum(py[c] for c in A)
            p1 = {t: sum(p[t, c] for c in A) / pa for t in T}
            p2 = {t: sum(p[t, c] for c in C if c not in A) / (1 - pa) for t in T}
            m = {t: pa * p1[t] + (1 - pa) * p2[t] for t in T}
            js = max(js, pa * kl(p1, m) + (1 - pa) * kl(p2, m))  # eq. 13a
    lab = 0.0
    for c in C:
        ind = (y == c).astype(int)
        lab = max(lab, mutual_info_score(ind, codes) / np.log(2))
    return H, I, max(spec.values()), js, lab, spec


def measures(t, y, edges, n_bins, n_classes):
    counts = est.joint_counts(est.quantize(t, edges), y, n_bins, n_classes)
    return counts, dict(H=est.entropy(counts), I=est.mutual_information(counts),
                        KL=est.kl_selectivity(counts)[0], JS=est.js_subset_separation(counts)[0],
                        LAB=est.labeled_mutual_information(counts)[0])


@pytest.mark.parametrize("n_bins,n_classes,seed", [(2, 3, 0), (3, 4, 1), (4, 5, 2), (2, 6, 3)])
def test_against_brute_force(n_bins, n_classes, seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, n_classes, 400)
    t = rng.normal(size=(400, 4)) + 0.7 * y[:, None] * rng.normal(size=4)
    edges = est.quantile_edges(t, n_bins)
    codes = est.quantize(t, edges)
    _, m = measures(t, y, edges, n_bins, n_classes)
    counts = est.joint_counts(codes, y, n_bins, n_classes)
    spec = est.specific_information(counts)
    for u in range(4):
        H, I, KL, JS, LAB, sp = brute(codes[:, u], y)
        np.testing.assert_allclose([m["H"][u], m["I"][u], m["KL"][u], m["JS"][u], m["LAB"][u]],
                                   [H, I, KL, JS, LAB], rtol=0, atol=1e-12)
        np.testing.assert_allclose([spec[u, c] for c in sorted(sp)], [sp[c] for c in sorted(sp)], atol=1e-12)
        assert mutual_info_score(y, codes[:, u]) / np.log(2) == pytest.approx(m["I"][u], abs=1e-12)


def test_ordering_eq19_and_lemma2():
    rng = np.random.default_rng(5)
    y = rng.integers(0, 10, 3000)
    t = rng.normal(size=(3000, 50)) + rng.normal(size=(10, 50))[y]
    _, m = measures(t, y, est.threshold_edges(50, 0.0), 2, 10)
    tol = 1e-12
    assert np.all(m["H"] >= m["I"] - tol)
    assert np.all(m["I"] >= m["JS"] - tol)
    assert np.all(m["JS"] >= m["LAB"] - tol)
    assert np.all(m["KL"] >= m["I"] - tol)
    assert np.all(m["KL"] > m["I"])  # strict unless I = 0 (Lemma 2)


def test_closed_form_parity_unit():
    # Y uniform on 4 classes, T = Y mod 2: H = I = JS = 1 bit, every class has 1 bit of
    # specific information, labeled MI = 1 - 3/4 h(1/3).
    y = np.repeat(np.arange(4), 250)
    t = (y % 2).astype(float)[:, None]
    _, m = measures(t, y, est.threshold_edges(1, 0.5), 2, 4)
    h13 = -(1 / 3) * np.log2(1 / 3) - (2 / 3) * np.log2(2 / 3)
    np.testing.assert_allclose([m["H"][0], m["I"][0], m["JS"][0], m["KL"][0], m["LAB"][0]],
                               [1, 1, 1, 1, 1 - 0.75 * h13], atol=1e-12)
    counts = est.joint_counts(est.quantize(t, est.threshold_edges(1, 0.5)), y, 2, 4)
    in_a = est.js_subset_separation(counts)[1][0]
    assert est.subset_classes(in_a) == [1, 3]   # odd classes against even ones (the side without class 0)


def test_independent_unit_has_zero_information():
    y = np.repeat(np.arange(2), 2)           # exact independence: each (t, y) pair once
    t = np.array([[0.], [1.], [0.], [1.]])
    _, m = measures(t, y, est.threshold_edges(1, 0.5), 2, 2)
    assert m["H"][0] == pytest.approx(1.0)
    assert m["I"][0] == pytest.approx(0.0, abs=1e-15)
    assert m["KL"][0] == pytest.approx(0.0, abs=1e-15)  # equality case of Lemma 2


def test_constant_unit_and_absent_class():
    y = np.array([0, 0, 2, 2, 2])              # class 1 absent
    t = np.zeros((5, 1))
    counts = est.joint_counts(est.quantize(t, est.threshold_edges(1, 0.5)), y, 2, 3)
    assert est.entropy(counts)[0] == 0.0
    assert est.mutual_information(counts)[0] == 0.0
    assert np.isnan(est.specific_information(counts)[0, 1])
    assert est.kl_selectivity(counts)[0][0] == 0.0


def test_quantizers():
    t = np.array([[0.0, -1.0], [0.5, 0.0], [0.51, 1.0], [1.0, 2.0]])
    codes = est.quantize(t, est.threshold_edges(2, 0.5))
    assert codes[:, 0].tolist() == [0, 0, 1, 1]  # strictly above the threshold
    e = est.uniform_edges(t.min(0), t.max(0), 4)
    np.testing.assert_allclose(e[1], [-0.25, 0.5, 1.25])
    assert est.quantize(t, e)[:, 1].tolist() == [0, 1, 2, 3]
    q = est.quantile_edges(np.arange(100.0)[:, None], 4)
    np.testing.assert_allclose(q[0], np.quantile(np.arange(100.0), [0.25, 0.5, 0.75]))
    with pytest.raises(ConfigError):
        est.uniform_edges(t.min(0), t.max(0), 1)


def test_counts_add_over_chunks():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 100)
    c = rng.integers(0, 4, (100, 5))
    whole = est.joint_counts(c, y, 4, 3)
    parts = est.joint_counts(c[:37], y[:37], 4, 3) + est.joint_counts(c[37:], y[37:], 4, 3)
    np.testing.assert_array_equal(whole, parts)
    assert whole.sum() == 500


def _split_mi(counts, in_a):
    """I(T; 1[Y in A]) in bits of one unit's table [B, C] and a class mask [C], from p log p."""
    two = np.stack([counts[:, in_a].sum(1), counts[:, ~in_a].sum(1)], axis=1) / counts.sum()
    pt, pa = two.sum(1, keepdims=True), two.sum(0, keepdims=True)
    nz = two > 0
    return float((two[nz] * np.log2(two[nz] / (pt * pa)[nz])).sum())


def brute_js(counts):
    """max over every non-empty proper class subset of I(T; 1[Y in A]), per unit: plain loops."""
    u, _, c = counts.shape
    best = np.zeros(u)
    for r in range(1, c):
        for a in itertools.combinations(range(c), r):
            m = np.zeros(c, bool)
            m[list(a)] = True
            best = np.maximum(best, [_split_mi(counts[i], m) for i in range(u)])
    return best


@pytest.mark.parametrize("n_classes", [2, 5, 9, 13])
def test_js_one_bit_is_exact_at_any_number_of_classes(n_classes):
    # two bins: the ordered splits give the maximum over all 2^(C-1) - 1 splits, even above top + 1
    rng = np.random.default_rng(n_classes)
    counts = rng.integers(0, 40, (7, 2, n_classes)).astype(float)
    value, in_a = est.js_subset_separation(counts, top=2)
    np.testing.assert_allclose(value, brute_js(counts), rtol=0, atol=1e-12)
    for i in range(7):   # the subset returned attains the value, and it is the side with fewer classes
        assert _split_mi(counts[i], in_a[i]) == pytest.approx(value[i], abs=1e-12)
        assert 0 < in_a[i].sum() <= n_classes / 2


def test_js_more_bins_pools_all_but_the_top_classes():
    # 3 bins, 9 classes, top 4: the 4 most frequent classes kept apart, the other 5 pooled as one
    rng = np.random.default_rng(3)
    freq = np.array([5, 90, 7, 60, 80, 3, 70, 9, 4])          # top 4: classes 1, 4, 6, 3
    counts = np.stack([rng.multinomial(f, rng.dirichlet(np.ones(3))) for f in freq], axis=1)[None].astype(float)
    counts = np.concatenate([counts, counts[:, ::-1]], axis=0)  # two units
    assert est.discrete.js_groups(freq, 4).tolist() == [0, 1, 0, 2, 3, 0, 4, 0, 0]
    value, in_a = est.js_subset_separation(counts, top=4)
    rest = [0, 2, 5, 7, 8]
    pooled = np.concatenate([counts[:, :, [1, 3, 4, 6]], counts[:, :, rest].sum(2, keepdims=True)], axis=2)
    np.testing.assert_allclose(value, brute_js(pooled), rtol=0, atol=1e-12)
    assert np.all(value <= brute_js(counts) + 1e-12)          # a lower bound of the exact search
    for i in range(2):
        assert _split_mi(counts[i], in_a[i]) == pytest.approx(value[i], abs=1e-12)
        assert in_a[i, rest].all() or not in_a[i, rest].any()  # the pooled classes stay together
    # up to top + 1 classes the search is exact
    np.testing.assert_allclose(est.js_subset_separation(counts[:, :, :5], top=4)[0], brute_js(counts[:, :, :5]),
                               atol=1e-12)


def test_js_top_outside_its_range_is_refused():
    for top in (0, 21, 2.5, True):
        with pytest.raises(ConfigError, match="1 to 20 classes apart"):
            est.js_subset_separation(np.ones((1, 3, 4)), top=top)


def test_js_blocks_agree():
    rng = np.random.default_rng(1)
    counts = rng.integers(0, 50, (6, 3, 7)).astype(float)
    a = est.js_subset_separation(counts)
    b = est.js_subset_separation(counts, block=5)
    np.testing.assert_allclose(a[0], b[0], atol=1e-14)
    np.testing.assert_array_equal(a[1], b[1])


def test_default_thresholds():
    assert est.default_threshold("sigmoid") == 0.5
    assert est.default_threshold("relu") == 0.0
    with pytest.raises(ConfigError):
        est.default_threshold("softplus")


def test_cuda_without_cupy_is_a_clear_error():
    try:
        import cupy  # noqa: F401
        pytest.skip("CuPy is installed")
    except ImportError:
        pass
    from infoprobe.arrays import namespace

    with pytest.raises(DeviceError, match="CuPy"):
        namespace("cuda")


@pytest.mark.gpu
def test_cupy_matches_numpy(cupy):
    rng = np.random.default_rng(2)
    y = rng.integers(0, 10, 2000)
    t = rng.normal(size=(2000, 30)) + rng.normal(size=(10, 30))[y]
    for edges_fn in (lambda a: est.quantile_edges(a, 3),):
        cn, mn = measures(t, y, edges_fn(t), 3, 10)
        tg, yg = cupy.asarray(t), cupy.asarray(y)
        cg, mg = measures(tg, yg, edges_fn(tg), 3, 10)
        for k in mn:
            np.testing.assert_allclose(cupy.asnumpy(mg[k]), mn[k], atol=1e-12)
