"""Gaussian-copula estimators and O-information against closed forms, brute force, frites and hoi."""
import itertools

import numpy as np
import pytest
from scipy import special, stats

from infoprobe.errors import ConfigError, DataError
from infoprobe.estimators.gaussian import (
    untie, constant_units, copnorm, entropy_bias, gaussian_entropy, gcmi_mixture_cd, gcmi_model_cd,
    label_entropy,
)
from infoprobe.estimators.oinfo import copula_model, o_information, search_multiplets

LN2 = np.log(2)


# ---------------------------------------------------------------- independent references

def ref_copnorm(x):
    """Plain loop: rank (no ties) / (N + 1) -> normal quantile."""
    out = np.empty_like(x, dtype=float)
    n = len(x)
    for j in range(x.shape[1]):
        order = sorted(range(n), key=lambda i: x[i, j])
        for r, i in enumerate(order, start=1):
            out[i, j] = stats.norm.ppf(r / (n + 1))
    return out


def ref_bias(d, n):
    """Ince et al. 2017: d/2 (ln 2 - ln(N-1)) + 1/2 sum_i psi((N-i)/2), nats."""
    return d * (np.log(2) - np.log(n - 1)) / 2 + sum(special.digamma((n - i) / 2) for i in range(1, d + 1)) / 2


def ref_h(cov, n=None):
    """Gaussian entropy in nats from slogdet, optionally bias-corrected."""
    cov = np.atleast_2d(cov)
    h = 0.5 * np.linalg.slogdet(2 * np.pi * np.e * cov)[1]
    return h - ref_bias(cov.shape[0], n) if n is not None else h


def ref_gcmi_model(x, y, bias=True):
    """Loop over units and classes (Ince et al. 2017, Section 2.6, ANOVA form), bits."""
    out = []
    n = len(y)
    for j in range(x.shape[1]):
        z = ref_copnorm(x[:, [j]])[:, 0]
        h = ref_h(np.var(z, ddof=1), n if bias else None)
        hc = 0.0
        for c in np.unique(y):
            zc = z[y == c]
            hc += len(zc) / n * ref_h(np.var(zc, ddof=1), len(zc) if bias else None)
        out.append((h - hc) / LN2)
    return np.array(out)


def ref_gcmi_mixture(x, y):
    """Loop: per class robust copula fit, unscented mixture entropy with scipy's logsumexp
    over the classes at every sigma point (Ince et al. 2017; gcmi mi_mixture_gd), bits."""
    out = []
    classes = np.unique(y)
    n = len(y)
    for j in range(x.shape[1]):
        means, sds, w = [], [], []
        for c in classes:
            xc = x[y == c, j]
            med = np.median(xc)
            mad = np.median(np.abs(xc - med))
            fit = ref_copnorm(xc[:, None])[:, 0] * (1.482602218505602 * mad) + med
            means.append(fit.mean())
            sds.append(fit.std(ddof=1))
            w.append(len(xc) / n)
        h_mix = 0.0
        for c in range(len(classes)):
            for point in (means[c] + sds[c], means[c] - sds[c]):
                logs = [np.log(w[h]) + stats.norm.logpdf(point, means[h], sds[h]) for h in range(len(classes))]
                h_mix -= w[c] * special.logsumexp(logs) / 2
        h_cond = sum(w[c] * 0.5 * np.log(2 * np.pi * np.e * sds[c] ** 2) for c in range(len(classes)))
        out.append((h_mix - h_cond) / LN2)
    return np.array(out)


def ref_omega(model, units):
    """Eq. 1 with every sub-determinant computed explicitly (bits)."""
    cov, n, w = model.cov, model.counts, model.weights
    bias = model.biascorrect
    vidx = list(model.variables(np.array([units]))[0])

    def h(g, s):
        return ref_h(cov[g][np.ix_(s, s)], n[g] if bias else None)

    if model.labels == "exact":
        k = len(vidx)

        def hc(s):
            return sum(w[g] * h(g, s) for g in range(1, len(n)))

        om = (k - 1) * hc(vidx) + sum(h(0, [v]) for v in vidx) \
            - sum(hc([t for t in vidx if t != v]) for v in vidx) - h(0, vidx)
    else:
        z = vidx + list(model.fixed)
        om = (len(z) - 2) * h(0, z) + sum(h(0, [v]) - h(0, [t for t in z if t != v]) for v in z)
    return om / LN2


@pytest.fixture(scope="module")
def mixed_data():
    rng = np.random.default_rng(7)
    n = 3000
    x = rng.standard_normal((n, 7))
    x[:, 1] += x[:, 0]                                   # redundancy
    x[:, 2] = x[:, 3] + x[:, 4] + 0.3 * rng.standard_normal(n)  # synergy
    y = (x[:, 0] + rng.standard_normal(n) > 0).astype(int) + (x[:, 5] > 0.5)
    return x, y


# ---------------------------------------------------------------- copula and entropy

def test_copnorm_matches_rank_loop_and_is_order_free_with_ties():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 3))
    np.testing.assert_allclose(copnorm(x), ref_copnorm(x), atol=1e-12)
    t = np.maximum(x, 0)                                  # ReLU: many exact zeros
    perm = rng.permutation(len(t))
    z = copnorm(t)
    np.testing.assert_array_equal(copnorm(t[perm]), z[perm])   # average ranks: order-free
    zero = z[t[:, 0] == 0, 0]
    assert np.ptp(zero) == 0                             # all ties share one value
    k = int((t[:, 0] == 0).sum())
    assert zero[0] == pytest.approx(stats.norm.ppf((k + 1) / 2 / 301))
    zo = copnorm(t, ties="ordinal")                      # hoi's stable argsort(argsort)
    hoi_like = special.ndtri((np.argsort(np.argsort(t, axis=0, kind="stable"), axis=0, kind="stable") + 1) / 301)
    np.testing.assert_allclose(zo, hoi_like, atol=1e-12)
    with pytest.raises(ConfigError):
        copnorm(x, ties="random")


def test_constant_units_are_detected_and_excluded():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((500, 5))
    x[:, 2] = 0.0
    np.testing.assert_array_equal(constant_units(x), [False, False, True, False, False])
    m = copula_model(x, labels="none")
    assert list(m.units) == [0, 1, 3, 4] and list(m.constant) == [2]
    with pytest.raises(ConfigError, match="constant"):
        o_information(m, np.array([[0, 1, 2]]))
    rows = search_multiplets(m, max_size=4, exhaustive_up_to=4)
    assert all(2 not in r["units"] for r in rows)


def test_gaussian_entropy_closed_form_and_bias_correction():
    rng = np.random.default_rng(2)
    a = rng.standard_normal((4, 4))
    cov = a @ a.T + np.eye(4)
    assert gaussian_entropy(cov, biascorrect=False) == pytest.approx(ref_h(cov) / LN2, abs=1e-12)
    assert gaussian_entropy(cov, 50) == pytest.approx(ref_h(cov, 50) / LN2, abs=1e-12)
    np.testing.assert_allclose(entropy_bias(np.array([1, 3]), 40), [ref_bias(1, 40), ref_bias(3, 40)])
    # on average over repeated small samples, the correction removes the plug-in's bias
    true = ref_h(cov) / LN2
    plug, corr = [], []
    for _ in range(300):
        s = rng.multivariate_normal(np.zeros(4), cov, size=20)
        c = np.cov(s.T)
        plug.append(gaussian_entropy(c, biascorrect=False))
        corr.append(gaussian_entropy(c, 20))
    assert np.mean(plug) < true - 0.3                    # the plug-in underestimates
    assert abs(np.mean(corr) - true) < 0.08
    with pytest.raises(DataError):
        gaussian_entropy(np.zeros((2, 2)), 10)


# ---------------------------------------------------------------- GC-MI with the label

def test_gcmi_model_cd_matches_loop_and_frites(mixed_data):
    x, y = mixed_data
    ours = gcmi_model_cd(x, y)
    np.testing.assert_allclose(ours, ref_gcmi_model(x, y), atol=1e-10)
    np.testing.assert_allclose(gcmi_model_cd(x, y, biascorrect=False), ref_gcmi_model(x, y, bias=False),
                               atol=1e-10)
    frites = pytest.importorskip("frites.core")
    np.testing.assert_allclose(ours, frites.gcmi_model_nd_cd(x.T.copy(), y, traxis=-1), atol=1e-10)
    assert ours[0] > 0.1 and abs(ours[6]) < 0.01        # unit 0 drives the label, unit 6 does not


def test_gcmi_mixture_cd_matches_loop_and_not_frites_bug(mixed_data):
    x, y = mixed_data
    ours = gcmi_mixture_cd(x, y)
    np.testing.assert_allclose(ours, ref_gcmi_mixture(x, y), atol=1e-10)
    assert (ours > -0.01).all() and (ours < np.log2(3)).all()
    frites = pytest.importorskip("frites.core")
    theirs = np.array([frites.gcmi_mixture_1d_cd(x[:, j], y) for j in range(x.shape[1])])
    # frites 0.4.6 sums its log-sum-exp over all axes: badly negative where the truth is >= 0
    assert theirs.mean() < -1.0 < ours.mean()


# ---------------------------------------------------------------- O-information

@pytest.mark.parametrize("labels", ["none", "ordinal", "exact"])
@pytest.mark.parametrize("bias", [True, False])
def test_o_information_matches_brute_force(mixed_data, labels, bias):
    x, y = mixed_data
    m = copula_model(x, y, labels=labels, biascorrect=bias)
    for k in range(2 if labels != "none" else 3, 6):
        mult = np.array(list(itertools.combinations(range(x.shape[1]), k)))
        ours = o_information(m, mult, chunk=5)           # tiny chunks exercise the batching
        ref = np.array([ref_omega(m, list(s)) for s in mult])
        np.testing.assert_allclose(ours, ref, atol=1e-9)


def test_o_information_signs():
    rng = np.random.default_rng(4)
    n = 20000
    ind = rng.standard_normal((n, 4))
    m = copula_model(ind, labels="none")
    assert abs(o_information(m, np.array([[0, 1, 2]]))[0]) < 0.01
    assert abs(o_information(m, np.array([[0, 1, 2, 3]]))[0]) < 0.01
    s = rng.standard_normal(n)
    copies = s[:, None] + 0.3 * rng.standard_normal((n, 4))
    assert (o_information(copula_model(copies, labels="none"), np.array([[0, 1, 2, 3]])) > 1.0).all()
    x1, x2 = rng.standard_normal((2, n))
    syn = np.column_stack([x1, x2, x1 + x2 + 0.1 * rng.standard_normal(n)])
    assert o_information(copula_model(syn, labels="none"), np.array([[0, 1, 2]]))[0] < -1.0
    # noisy XOR: the label is synergistic with two units that say nothing about it alone
    b = rng.integers(0, 2, (n, 2))
    xor = b[:, 0] ^ b[:, 1]
    flip = rng.random(n) < 0.05
    units = b + 0.2 * rng.standard_normal((n, 2))
    label = np.where(flip, 1 - xor, xor)
    assert o_information(copula_model(units, label), np.array([[0, 1]]))[0] < -0.2
    # a label copula-normalised like a unit (hoi's encoding) is linearly unrelated to the units:
    # the Gaussian model sees no XOR at all; the class-conditional covariances of "exact" do
    assert abs(o_information(copula_model(units, label, labels="ordinal"), np.array([[0, 1]]))[0]) < 0.01


def test_degenerate_multiplets_are_nan_and_counted():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1000, 4))
    x[:, 3] = x[:, 0]                                     # an exact copy: singular covariance
    m = copula_model(x, labels="none")
    om = o_information(m, np.array([[0, 1, 3], [0, 1, 2]]))
    assert np.isnan(om[0]) and np.isfinite(om[1])
    rows = search_multiplets(m, max_size=3, exhaustive_up_to=3)
    assert rows[0]["degenerate"] == 2 and rows[0]["evaluated"] == 4


@pytest.mark.filterwarnings("ignore::FutureWarning")  # hoi writes float64 into float32
def test_hoi_agrees_with_ordinal_and_none():
    hoi = pytest.importorskip("hoi.metrics")
    import jax
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(6)
    n = 2000
    x = rng.standard_normal((n, 6))
    x[:, 1] += x[:, 0]
    x[:, 2] = x[:, 3] - x[:, 4] + 0.5 * rng.standard_normal(n)
    y = rng.integers(0, 3, n) + (x[:, 0] > 0)
    mults = [list(c) for k in (2, 3, 4) for c in itertools.combinations(range(6), k)]
    theirs = hoi.Oinfo(x, y=y.astype(float), multiplets=mults, verbose=False).fit(method="gc")[:, 0]
    ours = np.concatenate([o_information(copula_model(x, y, labels="ordinal", ties="ordinal"),
                                         np.array([m for m in mults if len(m) == k])) for k in (2, 3, 4)])
    np.testing.assert_allclose(ours, theirs, atol=2e-5)  # hoi stores results as float32
    mults3 = [m for m in mults if len(m) >= 3]
    theirs = hoi.Oinfo(x, multiplets=mults3, verbose=False).fit(method="gc")[:, 0]
    ours = np.concatenate([o_information(copula_model(x, labels="none"),
                                         np.array([m for m in mults3 if len(m) == k])) for k in (3, 4)])
    np.testing.assert_allclose(ours, theirs, atol=2e-5)


@pytest.mark.parametrize("labels", ["none", "exact"])
def test_search_matches_enumeration_and_greedy_steps(mixed_data, labels):
    x, y = mixed_data
    m = copula_model(x, y, labels=labels)
    rows = search_multiplets(m, max_size=6, exhaustive_up_to=4, keep=3, threads=1)
    rows2 = search_multiplets(m, max_size=6, exhaustive_up_to=4, keep=3, threads=2, chunk=7)
    assert rows == rows2                                   # threads and batching change nothing
    by = {(r["size"], r["direction"]): r for r in rows}
    lo = 2 if labels != "none" else 3
    for k in range(lo, 5):
        mult = np.array(list(itertools.combinations(range(7), k)))
        om = o_information(m, mult)
        for direction, order in (("synergy", np.argsort(om)), ("redundancy", np.argsort(-om))):
            r = by[(k, direction)]
            assert r["method"] == "exhaustive" and r["evaluated"] == len(mult)
            assert r["omega"] == pytest.approx(om[order[0]], abs=1e-12)
            assert r["units"] == list(mult[order[0]])
            assert [u["omega"] for u in r["runners_up"]] == pytest.approx(list(om[order[1:3]]), abs=1e-12)
    for direction, pick in (("synergy", np.argmin), ("redundancy", np.argmax)):
        for k in (5, 6):
            prev = by[(k - 1, direction)]["units"]
            cands = [u for u in range(7) if u not in prev]
            om = o_information(m, np.array([prev + [c] for c in cands]))
            r = by[(k, direction)]
            assert r["method"] == "greedy" and r["units"] == prev + [cands[int(pick(om))]]
            assert r["omega"] == pytest.approx(pick_val(om, pick), abs=1e-12)


def pick_val(om, pick):
    return om[int(pick(om))]


def test_search_validates_sizes(mixed_data):
    x, y = mixed_data
    m = copula_model(x, labels="none")
    with pytest.raises(ConfigError):
        search_multiplets(m, max_size=6, exhaustive_up_to=2)
    with pytest.raises(ConfigError, match="multiplets"):
        search_multiplets(m, max_size=7, exhaustive_up_to=7, max_multiplets=10)
    with pytest.raises(ConfigError):
        copula_model(x, labels="exact")                   # labels missing


@pytest.mark.gpu
def test_cuda_matches_cpu(mixed_data, cupy):
    x, y = mixed_data
    for labels in ("none", "exact"):
        cpu = search_multiplets(copula_model(x, y, labels=labels), max_size=6, exhaustive_up_to=5)
        gpu = search_multiplets(copula_model(x, y, labels=labels, device="cuda"), max_size=6, exhaustive_up_to=5)
        for a, b in zip(cpu, gpu):
            assert a["units"] == b["units"] and a["omega"] == pytest.approx(b["omega"], abs=1e-9)


# ---------------------------------------------------------------- units constant on a class

def relu_dead_on_class0(seed=0, n_per=1000):
    """3 balanced classes; a ReLU unit exactly 0 on every sample of class 0 (and on some others)."""
    rng = np.random.default_rng(seed)
    y = np.repeat([0, 1, 2], n_per)
    x = np.maximum(rng.standard_normal(len(y)) + y, 0.0)
    x[y == 0] = 0.0
    return x, y


def break_ties(x, rng):
    """The same values with every tie broken at random by a jitter far below the value spacing."""
    return x + rng.random(x.shape) * 1e-9


def h_y(y):
    p = np.bincount(y) / len(y)
    return float(-(p[p > 0] * np.log2(p[p > 0])).sum())


def test_gcmi_model_cd_of_a_unit_constant_on_a_class_is_bounded_and_matches_broken_ties():
    x, y = relu_dead_on_class0()
    assert label_entropy(y) == pytest.approx(h_y(y), abs=1e-12) == pytest.approx(np.log2(3))
    mi = gcmi_model_cd(x, y)[0]
    assert 0.0 <= mi <= label_entropy(y)                  # was 17.5 bits: log of a zero variance
    rng = np.random.default_rng(1)
    broken = [gcmi_model_cd(break_ties(x, rng), y)[0] for _ in range(20)]
    # the estimate is the one on expected variances over random tie-breaking: close to the mean
    assert mi == pytest.approx(np.mean(broken), abs=0.02)
    assert np.std(broken) < 0.02


def test_gcmi_model_cd_constant_class_equals_a_continuous_class_on_the_same_ranks():
    # class 0 sits at 0 below every other sample: its tie block holds exactly its ranks, so the
    # expected variances equal those of any continuous class in that rank range, exactly
    rng = np.random.default_rng(2)
    y = np.repeat([0, 1, 2], 300)
    x = np.exp(rng.standard_normal(900) + y)
    x[y == 0] = 0.0
    spread = x.copy()
    spread[y == 0] = -rng.random(300)                      # distinct values, same ranks 1..300
    for bias in (True, False):
        np.testing.assert_allclose(gcmi_model_cd(x, y, biascorrect=bias),
                                   ref_gcmi_model(spread[:, None], y, bias=bias), atol=1e-10)


def test_gcmi_model_cd_without_class_constant_units_is_unchanged_with_ties():
    # ReLU zeros in every class but no class entirely at 0: average-rank copula as before
    rng = np.random.default_rng(3)
    y = rng.integers(0, 3, 2000)
    x = np.maximum(rng.standard_normal((2000, 3)) + 0.5 * y[:, None], 0.0)
    z = np.asarray(copnorm(x))
    ref = []
    for j in range(3):
        h = ref_h(np.var(z[:, j], ddof=1), len(y))
        hc = sum((y == c).mean() * ref_h(np.var(z[y == c, j], ddof=1), int((y == c).sum())) for c in range(3))
        ref.append((h - hc) / LN2)
    np.testing.assert_allclose(gcmi_model_cd(x, y), ref, rtol=0, atol=1e-12)


def test_untie_variances_are_the_random_tie_breaking_expectation():
    rng = np.random.default_rng(4)
    y = np.repeat([0, 1, 2], 20)
    x = rng.integers(0, 6, 60).astype(float)               # tie blocks shared by the classes
    x[y == 0] = 2.0                                        # and one class inside one block
    z, extra_all, extra = untie(x[:, None], y, 3)
    expect = [(np.sum((z[y == g, 0] - z[y == g, 0].mean()) ** 2) + extra[g, 0]) / 19 for g in range(3)]
    draws = np.array([[copnorm(break_ties(x, rng))[y == g].var(ddof=1) for g in range(3)]
                      for _ in range(4000)])
    se = draws.std(axis=0) / np.sqrt(len(draws))
    assert np.all(np.abs(draws.mean(axis=0) - expect) < 4 * se + 1e-12)
    pooled = (np.sum((z - z.mean()) ** 2) + extra_all[0]) / 59
    assert pooled == pytest.approx(np.var(stats.norm.ppf(np.arange(1, 61) / 61), ddof=1), abs=1e-12)
    block = stats.norm.ppf(np.arange((x < 2).sum() + 1, (x <= 2).sum() + 1) / 61)
    assert expect[0] == pytest.approx(np.var(block, ddof=1), abs=1e-12)


def test_gcmi_mixture_treats_a_class_constant_unit_as_an_atom():
    rng = np.random.default_rng(3)
    y = np.repeat([0, 1], 200)
    x = rng.standard_normal((400, 2))
    x[y == 0, 1] = 0.0
    mi = gcmi_mixture_cd(x, y)
    assert np.isfinite(mi[0]) and mi[1] == pytest.approx(1.0, abs=1e-12)   # 0 identifies class 0
    # three classes: h(p) + (1 - p) I(X; Y | Y != 0), the decomposition over the atom's indicator
    y = np.repeat([0, 1, 2], 300)
    x = rng.standard_normal(900) + 2.0 * y
    x[y == 0] = 0.0
    p = 1 / 3
    rest = gcmi_mixture_cd(x[y > 0], y[y > 0])[0]
    hp = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    mi = gcmi_mixture_cd(x, y)[0]
    assert mi == pytest.approx(hp + (1 - p) * rest, abs=1e-12)
    assert 0.0 <= mi <= label_entropy(y)
    squeezed = x.copy()
    squeezed[y == 0] = rng.standard_normal(300) * 1e-9      # the limit of a vanishing class scale
    assert gcmi_mixture_cd(squeezed, y)[0] == pytest.approx(mi, abs=1e-6)
    # classes constant at one shared value are one atom; class-wise constant units reach H(Y)
    both = np.column_stack([(y > 0).astype(float), y.astype(float)])
    np.testing.assert_allclose(gcmi_mixture_cd(both, y), [hp, np.log2(3)], atol=1e-12)


def test_gcmi_mixture_is_nan_without_a_robust_scale():
    # most of class 0 at 0 but not all of it: zero median absolute deviation, no atom
    rng = np.random.default_rng(5)
    y = np.repeat([0, 1], 200)
    x = rng.standard_normal((400, 1))
    x[:150, 0] = 0.0
    assert np.isnan(gcmi_mixture_cd(x, y)[0])


def test_o_information_with_a_unit_constant_on_a_class():
    rng = np.random.default_rng(6)
    n = 3000
    y = np.repeat([0, 1, 2], n // 3)
    x = np.maximum(rng.standard_normal((n, 5)) + 0.5 * y[:, None], 0.0)
    x[:, 4] = rng.standard_normal(n) + y
    x[y == 0, 0] = 0.0                                     # dead on class 0
    x[y == 1, 3] = 0.7                                     # saturated on class 1
    m = copula_model(x, y)
    assert list(m.class_constant) == [0, 3]
    c0, c1 = m.cov[1], m.cov[2]
    assert np.all(c0[0, 1:] == 0) and np.all(c1[3, [0, 1, 2, 4]] == 0)    # independent there
    block = stats.norm.ppf(np.arange((x[:, 0] < 0).sum() + 1, (x[:, 0] <= 0).sum() + 1) / (n + 1))
    assert c0[0, 0] == pytest.approx(np.var(block, ddof=1), rel=1e-12)
    mult = np.array(list(itertools.combinations(range(5), 3)))
    om = o_information(m, mult)
    assert np.isfinite(om).all()
    np.testing.assert_allclose(om, [ref_omega(m, list(s)) for s in mult], atol=1e-9)
    # the same data with the ties of units 0 and 3 broken at random (their ReLU zeros included)
    draws = []
    for _ in range(8):
        xb = x.copy()
        xb[:, [0, 3]] = break_ties(x[:, [0, 3]], rng)
        draws.append(o_information(copula_model(xb, y), mult))
    np.testing.assert_allclose(om, np.mean(draws, axis=0), atol=0.01)   # rounding residue: 0.025
    # pairs with the label: Omega(x_i, x_j, Y) = I(x_i; x_j) - I(x_i; x_j | Y), bounded
    pairs = o_information(m, np.array([[0, 1], [0, 3], [3, 4]]))
    assert np.all(np.abs(pairs) < 1.0)
    # label-free and ordinal models are untouched by the label classes
    assert copula_model(x, y, labels="ordinal").class_constant.size == 0
    assert copula_model(x, y, ties="ordinal").class_constant.size == 0


# ---------------------------------------------------------------- planning the search

def cost_by_hand(n, e, rate, max_size=10):
    """Seconds at a fixed rate: every multiplet of 2..e units, then two greedy steps per larger
    size, each over the units not yet in the multiplet."""
    from math import comb

    exhaustive = sum(comb(n, k) for k in range(2, e + 1))
    greedy = 2 * sum(n - k + 1 for k in range(e + 1, max_size + 1))
    return (exhaustive + greedy) / rate


def test_search_cost_counts_exhaustive_and_greedy_work():
    from infoprobe.estimators.oinfo import search_cost

    c = search_cost(100, 4, throughput=1e6, max_size=10)
    assert (c.exhaustive_up_to, c.exhaustive) == (4, 100 + 4950 + 161700 + 3921225)
    assert c.greedy == 2 * (96 + 95 + 94 + 93 + 92 + 91)
    assert c.seconds == pytest.approx(cost_by_hand(100, 4, 1e6))
    capped = search_cost(5, 6, throughput=1e6, max_size=10)      # capped at the width
    assert (capped.exhaustive_up_to, capped.max_size, capped.greedy) == (5, 5, 0)


def test_plan_search_picks_the_largest_exhaustive_size_within_the_budget():
    from infoprobe.estimators.oinfo import plan_search

    assert cost_by_hand(100, 4, 1e6) < 60 < cost_by_hand(100, 5, 1e6) < 80
    assert plan_search({"a": 100}, throughput=1e6, budget=60)["a"].exhaustive_up_to == 4
    assert plan_search({"a": 100}, throughput=1e6, budget=80)["a"].exhaustive_up_to == 5
    assert plan_search({"a": 100}, throughput=1e7, budget=60)["a"].exhaustive_up_to == 5
    # the budget covers every layer and network: two layers share 160 s, two networks halve it again
    two = plan_search({"a": 100, "b": 100}, throughput=1e6, budget=160)
    assert [c.exhaustive_up_to for c in two.values()] == [5, 5]
    two = plan_search({"a": 100, "b": 100}, throughput=1e6, budget=160, networks=2)
    assert [c.exhaustive_up_to for c in two.values()] == [4, 4]
    # a narrow layer searched exhaustively up to max_size leaves its share to the wide one
    mixed = plan_search({"narrow": 12, "wide": 100}, throughput=1e6, budget=82)
    assert cost_by_hand(12, 10, 1e6) < 1 and 41 < cost_by_hand(100, 5, 1e6) < 81
    assert (mixed["narrow"].exhaustive_up_to, mixed["wide"].exhaustive_up_to) == (10, 5)
    # nothing fits: the smallest size (greedy search needs an exhaustive start)
    assert plan_search({"a": 100}, throughput=1e6, budget=1e-6, min_size=3)["a"].exhaustive_up_to == 3
    assert plan_search({"a": 8}, throughput=1e6, budget=60, max_size=6)["a"].exhaustive_up_to == 6


def test_plan_search_honours_an_explicit_size_and_refuses_absurd_ones():
    from infoprobe.estimators.oinfo import plan_search

    plan = plan_search({"a": 100, "b": 4}, throughput=1e6, budget=1, exhaustive_up_to=6)
    assert plan["a"].exhaustive_up_to == 6 and plan["a"].seconds > 1000   # far over budget, as asked
    assert plan["b"].exhaustive_up_to == 4                                 # capped at the width
    with pytest.raises(ConfigError, match="multiplets"):
        plan_search({"a": 100}, throughput=1e6, exhaustive_up_to=8)       # 1.9e11 multiplets
    with pytest.raises(ConfigError, match="at least 2"):
        plan_search({"a": 100}, throughput=1e6, exhaustive_up_to=1)
    with pytest.raises(ConfigError, match="budget"):
        plan_search({"a": 100}, throughput=1e6, budget=0)


def test_the_cost_model_counts_groups_variables_and_threads():
    from math import comb

    from infoprobe.estimators.oinfo import THREAD_WORK, CostModel, search_cost

    cm = CostModel(leaf=(1e-8, 2e-9, 3e-9), inner=(4e-8, 5e-9, 6e-9), step=1e-4).for_search(labels="ordinal")
    assert (cm.groups, cm.fixed, cm.threads) == (1, 1, 1)       # the label is one more variable
    ex = cm.for_search(labels="exact", classes=10, threads=4)
    assert (ex.groups, ex.fixed, ex.threads) == (11, 0, 4)
    # v = k + 1 variables (the label), one group; greedy steps of 7 - k + 1 candidates at k = 5, 6
    by_hand = comb(7, 2) * (4e-8 + 5e-9 + 6e-9 * 9) + comb(7, 3) * (4e-8 + 5e-9 + 6e-9 * 16) \
        + comb(7, 4) * (1e-8 + 2e-9 + 3e-9 * 25) + 2 * sum(1e-4 + c * (4e-8 + 5e-9 + 6e-9 * (k + 1) ** 2)
                                                           for k, c in ((5, 3), (6, 2)))
    assert search_cost(7, 4, throughput=cm, max_size=6).seconds == pytest.approx(by_hand, rel=1e-12)
    # 11 groups; threads share the exhaustive levels only when the search is threaded
    small, big = search_cost(7, 4, throughput=ex, max_size=4), search_cost(60, 4, throughput=ex, max_size=4)
    assert small.seconds == pytest.approx(sum(comb(7, k) * (ex.seconds(k, leaf=k == 4)) for k in (2, 3, 4)))
    assert sum(comb(60, k) for k in range(1, 5)) * 11 >= THREAD_WORK
    assert big.seconds == pytest.approx(sum(comb(60, k) * (1e-8 * (k == 4) + 4e-8 * (k < 4) + 11 * (
        (2e-9 + 3e-9 * k * k) if k == 4 else (5e-9 + 6e-9 * k * k))) for k in (2, 3, 4)) / 4)
    with pytest.raises(ConfigError):
        CostModel.flat(0)
    with pytest.raises(ConfigError):
        CostModel(leaf=(0, 0, 0))
