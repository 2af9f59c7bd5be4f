"""Bootstrap intervals, DeLong and Holm against cases with known answers."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import mannwhitneyu, norm
from sklearn.metrics import roc_auc_score

from covidct_bench.report import stats as S


def binormal(rng, n_pos: int, n_neg: int, d: float, per_patient: int = 1, tau: float = 0.0):
    """Scores N(d, 1) vs N(0, 1) plus a per-patient N(0, tau^2) offset; true AUC = Phi(d / sqrt(2 (1 + tau^2)))."""
    y_p = np.r_[np.ones(n_pos, int), np.zeros(n_neg, int)]
    u = rng.normal(0, tau, len(y_p)) if tau else np.zeros(len(y_p))
    y = np.repeat(y_p, per_patient)
    pid = np.repeat(np.arange(len(y_p)), per_patient).astype(str)
    s = d * y + np.repeat(u, per_patient) + rng.normal(size=len(y))
    return y, s, pid, float(norm.cdf(d / np.sqrt(2 * (1 + tau ** 2))))


def test_weighted_auc_is_the_auc_of_the_resampled_set_with_ties():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.normal(y, 1.0), 1)  # many ties
    assert S.weighted_auc(np.ones((1, 300)), y, s)[0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    w = rng.integers(0, 4, size=(5, 300)).astype(float)
    got = S.weighted_auc(w, y, s)
    for b in range(5):
        idx = np.repeat(np.arange(300), w[b].astype(int))
        assert got[b] == pytest.approx(roc_auc_score(y[idx], s[idx]), abs=1e-12)


def test_weighted_class_metrics_match_the_expanded_sample():
    rng = np.random.default_rng(2)
    y, p = rng.integers(0, 2, 100), rng.integers(0, 2, 100)
    w = rng.integers(0, 3, size=(3, 100)).astype(float)
    got = S.weighted_class_metrics(w, y, p)
    for b in range(3):
        idx = np.repeat(np.arange(100), w[b].astype(int))
        yy, pp = y[idx], p[idx]
        tp, fp, fn = ((yy == 1) & (pp == 1)).sum(), ((yy == 0) & (pp == 1)).sum(), ((yy == 1) & (pp == 0)).sum()
        assert got["accuracy"][b] == pytest.approx((yy == pp).mean())
        assert got["f1"][b] == pytest.approx(2 * tp / (2 * tp + fp + fn))
        assert got["sensitivity"][b] == pytest.approx(tp / (tp + fn))


def test_resampler_draws_patients_within_each_class():
    # 6 COVID patients with 3 images each, 4 non-COVID with 2 each
    pid = np.r_[np.repeat([f"c{i}" for i in range(6)], 3), np.repeat([f"n{i}" for i in range(4)], 2)]
    y = np.r_[np.ones(18, int), np.zeros(8, int)]
    rs = S.Resampler.build(pid, y, n_boot=500, seed=0)
    w = rs.weights(pid)
    assert w.shape == (500, 26)
    assert np.all(w[:, y == 1].sum(1) == 18) and np.all(w[:, y == 0].sum(1) == 8)  # 6 and 4 patients each time
    for i in range(6):  # the images of one patient always move together
        cols = w[:, pid == f"c{i}"]
        assert np.all(cols == cols[:, :1])
    assert len(np.unique(w[:, 0])) > 2  # and patients really are resampled
    assert np.array_equal(S.Resampler.build(pid, y, 500, seed=0).counts, rs.counts)  # seeded


def test_perfect_and_constant_classifiers_have_degenerate_intervals():
    rng = np.random.default_rng(3)
    y = np.r_[np.ones(40, int), np.zeros(40, int)]
    pid = np.arange(80).astype(str)
    rs = S.Resampler.build(pid, y, n_boot=2000, seed=0)
    w = rs.weights(pid)
    perfect = S.weighted_metrics(w, y, y + rng.uniform(0, 0.5, 80), y)
    for m in S.METRICS:
        assert S.interval(perfect[m]) == (1.0, 1.0), m
    constant = S.weighted_metrics(w, y, np.full(80, 0.3), np.zeros(80, int))
    assert S.interval(constant["auc"]) == (0.5, 0.5)
    assert S.interval(constant["sensitivity"]) == (0.0, 0.0)
    assert S.interval(constant["specificity"]) == (1.0, 1.0)
    assert S.interval(constant["accuracy"]) == (0.5, 0.5)  # stratified: the class balance never changes


def _coverage(draws: int, by_patient: bool, seed: int, per_patient: int, tau: float, n: int) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    hit_auc = hit_sens = 0
    for _ in range(draws):
        y, s, pid, true_auc = binormal(rng, n, n, 1.0, per_patient, tau)
        ids = pid if by_patient else np.arange(len(y)).astype(str)
        rs = S.Resampler.build(ids, y, n_boot=1000, seed=int(rng.integers(1 << 31)))
        w = rs.weights(ids)
        lo, hi = S.interval(S.weighted_auc(w, y, s))
        hit_auc += lo <= true_auc <= hi
        # sensitivity at threshold 0.5: true value P(N(1, 1 + tau^2) >= 0.5)
        true_sens = float(norm.sf(0.5, loc=1.0, scale=np.sqrt(1 + tau ** 2)))
        lo, hi = S.interval(S.weighted_class_metrics(w, y, s >= 0.5)["sensitivity"])
        hit_sens += lo <= true_sens <= hi
    return hit_auc / draws, hit_sens / draws


def test_bootstrap_interval_covers_the_true_auc_about_95_percent_of_the_time():
    auc, sens = _coverage(draws=300, by_patient=True, seed=10, per_patient=1, tau=0.0, n=100)
    # 300 draws: the binomial sd of a 0.95 rate is 0.013
    assert 0.91 <= auc <= 0.985, auc
    assert 0.91 <= sens <= 0.985, sens


def test_patient_bootstrap_keeps_coverage_on_clustered_images_where_an_image_bootstrap_does_not():
    # 30 patients per class, 6 correlated images each (as CT slices of one scan are)
    patient, _ = _coverage(draws=150, by_patient=True, seed=11, per_patient=6, tau=1.0, n=30)
    image, _ = _coverage(draws=150, by_patient=False, seed=11, per_patient=6, tau=1.0, n=30)
    assert patient >= 0.89, patient
    assert image < patient - 0.1, (image, patient)  # ignoring the clustering gives too narrow intervals


def _naive_delong(y, scores):
    """DeLong et al. (1988) by its definitions: psi kernel over all (positive, negative) pairs."""
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])  # [K, m, n]
    aucs = psi.mean((1, 2))
    v10, v01 = psi.mean(2), psi.mean(1)  # structural components
    s10 = np.array([[np.sum((v10[a] - aucs[a]) * (v10[b] - aucs[b])) / (m - 1) for b in range(len(aucs))] for a in range(len(aucs))])
    s01 = np.array([[np.sum((v01[a] - aucs[a]) * (v01[b] - aucs[b])) / (n - 1) for b in range(len(aucs))] for a in range(len(aucs))])
    return aucs, s10 / m + s01 / n


def test_delong_matches_the_definition_and_mann_whitney():
    rng = np.random.default_rng(4)
    y = np.r_[np.ones(37, int), np.zeros(51, int)]
    a = np.round(rng.normal(y * 1.0, 1), 1)
    b = np.round(a * 0.5 + rng.normal(y * 0.5, 1), 1)  # correlated with a, with ties
    aucs, cov = S.delong(y, np.stack([a, b]))
    ref_aucs, ref_cov = _naive_delong(y, np.stack([a, b]))
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-12)
    u = mannwhitneyu(a[y == 1], a[y == 0]).statistic
    assert aucs[0] == pytest.approx(u / (37 * 51))
    diff, se, p = S.delong_contrast(y, a, b)
    z = (ref_aucs[0] - ref_aucs[1]) / np.sqrt(ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1])
    assert diff == pytest.approx(ref_aucs[0] - ref_aucs[1])
    assert p == pytest.approx(2 * norm.sf(abs(z)))


def test_delong_contrast_of_seed_means_uses_the_joint_covariance():
    rng = np.random.default_rng(5)
    y = np.r_[np.ones(30, int), np.zeros(30, int)]
    a = np.stack([rng.normal(y, 1) for _ in range(3)])
    b = np.stack([rng.normal(y * 0.3, 1) for _ in range(2)])
    aucs, cov = _naive_delong(y, np.concatenate([a, b]))
    c = np.r_[[1 / 3] * 3, [-1 / 2] * 2]
    diff, se, _ = S.delong_contrast(y, a, b)
    assert diff == pytest.approx(c @ aucs)
    assert se == pytest.approx(np.sqrt(c @ cov @ c))


def test_delong_is_calibrated_under_the_null_and_identical_scores_give_p_1():
    rng = np.random.default_rng(6)
    rejections = 0
    for _ in range(400):
        y = np.r_[np.ones(60, int), np.zeros(60, int)]
        a, b = rng.normal(y, 1), rng.normal(y, 1)  # equally good, independent
        rejections += S.delong_contrast(y, a, b)[2] < 0.05
    assert 0.025 <= rejections / 400 <= 0.08, rejections / 400
    y = np.r_[np.ones(10, int), np.zeros(10, int)]
    s = rng.normal(y, 1)
    assert S.delong_contrast(y, s, s) == (0.0, 0.0, 1.0)
    with pytest.raises(ValueError, match="two positive"):
        S.delong(np.r_[1, 0, 0], np.array([[0.1, 0.2, 0.3]]))


def _naive_obuchowski(y, scores, clusters):
    """Obuchowski (1997) clustered AUC covariance by its definitions (psi over all image pairs)."""
    ids, c = np.unique(clusters, return_inverse=True)
    k = len(ids)
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    psi = (pos[:, :, None] > neg[:, None, :]) + 0.5 * (pos[:, :, None] == neg[:, None, :])
    theta = psi.mean((1, 2))
    v10, v01 = psi.sum(2) / n, psi.sum(1) / m
    cp, cn = c[y == 1], c[y == 0]
    cov = np.zeros((len(scores), len(scores)))
    for r in range(len(scores)):
        for s in range(len(scores)):
            a_r = np.array([v10[r, cp == i].sum() - (cp == i).sum() * theta[r] for i in range(k)])
            a_s = np.array([v10[s, cp == i].sum() - (cp == i).sum() * theta[s] for i in range(k)])
            b_r = np.array([v01[r, cn == i].sum() - (cn == i).sum() * theta[r] for i in range(k)])
            b_s = np.array([v01[s, cn == i].sum() - (cn == i).sum() * theta[s] for i in range(k)])
            s10 = k / ((k - 1) * m) * np.sum(a_r * a_s)
            s01 = k / ((k - 1) * n) * np.sum(b_r * b_s)
            s11 = k / (k - 1) * (np.sum(a_r * b_s) + np.sum(a_s * b_r))
            cov[r, s] = s10 / m + s01 / n + s11 / (m * n)
    return theta, cov


def test_clustered_delong_matches_obuchowski_and_reduces_to_delong_without_clusters():
    rng = np.random.default_rng(8)
    # 25 patients, 1-4 images each; some patients have images of both classes (S11 terms)
    sizes = rng.integers(1, 5, 25)
    clusters = np.repeat(np.arange(25), sizes).astype(str)
    y = (rng.uniform(size=len(clusters)) < 0.5).astype(int)
    a = np.round(rng.normal(y, 1), 1)
    b = np.round(0.5 * a + rng.normal(0.5 * y, 1), 1)
    aucs, cov = S.delong(y, np.stack([a, b]), clusters)
    ref_aucs, ref_cov = _naive_obuchowski(y, np.stack([a, b]), clusters)
    np.testing.assert_allclose(aucs, ref_aucs, atol=1e-12)
    np.testing.assert_allclose(cov, ref_cov, atol=1e-12)
    # one image per patient: DeLong's variance up to I(M-1)/((I-1)M)
    y1 = np.r_[np.ones(40, int), np.zeros(60, int)]
    s1 = rng.normal(y1, 1)
    _, plain = S.delong(y1, s1)
    _, clustered = S.delong(y1, s1, np.arange(100))
    assert clustered[0, 0] / plain[0, 0] == pytest.approx(np.mean([100 * 39 / (99 * 40), 100 * 59 / (99 * 60)]), rel=0.05)


def test_clustered_delong_keeps_its_level_where_plain_delong_does_not():
    """Null: two equally good classifiers, 20 patients per class with 8 correlated slices each."""
    rng = np.random.default_rng(9)
    plain = clustered = 0
    draws = 300
    y = np.repeat(np.r_[np.ones(20, int), np.zeros(20, int)], 8)
    pid = np.repeat(np.arange(40), 8)
    for _ in range(draws):
        a = y + np.repeat(rng.normal(0, 1, 40), 8) + rng.normal(0, 0.5, len(y))
        b = y + np.repeat(rng.normal(0, 1, 40), 8) + rng.normal(0, 0.5, len(y))
        plain += S.delong_contrast(y, a, b)[2] < 0.05
        clustered += S.delong_contrast(y, a, b, pid)[2] < 0.05
    assert plain / draws > 0.2  # slices counted as independent patients: far too many false positives
    assert 0.02 <= clustered / draws <= 0.1, clustered / draws


def test_holm_adjusts_step_down_and_keeps_nan():
    p = np.array([0.01, 0.04, 0.03, np.nan, 0.005])
    # sorted: 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> 0.02, 0.03, 0.06, max(0.06, 0.04)
    np.testing.assert_allclose(S.holm(p), [0.03, 0.06, 0.06, np.nan, 0.02])
    assert np.all(S.holm([0.5, 0.9]) == [1.0, 1.0])
    assert np.isnan(S.holm([np.nan])).all()


def test_paired_bootstrap_p_values():
    assert S.bootstrap_p(np.zeros(2000)) == 1.0  # identical configurations
    rng = np.random.default_rng(7)
    assert S.bootstrap_p(rng.normal(0.2, 0.05, 2000)) == pytest.approx(2 / 2001)  # all resamples above 0
    assert 0.2 < S.bootstrap_p(rng.normal(0.0, 0.05, 2000)) <= 1.0
