"""Statistics of the leaderboard: patient-level bootstrap intervals, DeLong's test, Holm's correction.

Plain numpy / scipy (no Ray, no torch), so each piece can be checked against a known answer.

**Bootstrap.** COVID-CT's test split has about 200 images from fewer than 100 patients, and the
images of one patient are not independent. A resample therefore draws *patients* with replacement,
separately within each class (a patient's class is COVID if any of its images is), and every image
of a drawn patient enters with the patient's multiplicity. A resample is a matrix of weights
``W[b, i]`` (how many times image ``i`` is in resample ``b``); every metric below is computed for all
resamples at once from those weights, so 2000 resamples of a 200-image test set take milliseconds.
All configurations of a leaderboard share the same resamples (common random numbers): the difference
of two configurations in resample ``b`` is a paired difference.

**DeLong.** AUCs of several scores on the same images and their covariance by DeLong, DeLong &
Clarke-Pearson (1988), computed with midranks as in Sun & Xu (2014). A contrast of AUCs (e.g. the
mean over seeds of one configuration minus the mean over seeds of another) gets its variance from
the same covariance. DeLong treats images as independent; with several images per patient the
structural components are summed per patient (Obuchowski 1997, the clustered extension), otherwise
correlated slices of one scan would pass for independent evidence and the p-values would be too small.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import norm, rankdata

CLASS_METRICS = ("accuracy", "f1", "sensitivity", "specificity")
METRICS = (*CLASS_METRICS, "auc")
LEVEL = 0.95


def method_note(n_boot: int, seed: int, level: float = LEVEL, clustered: bool = True) -> str:
    """How the intervals were made, for the report's footnotes (``clustered``: patients have several images)."""
    unit = "patients" if clustered else "patients (one image each here)"
    return (f"{level:.0%} percentile intervals from a stratified bootstrap over {unit} ({n_boot} resamples, seed {seed}): "
            "patients are drawn with replacement within each class (COVID = positive), each with all its images; a "
            "configuration's statistic is the mean over its seeds of the metric on the resampled test images, with the "
            "same resamples for every configuration (paired)")


# ------------------------------------------------------------------------------------------ resampling
@dataclass
class Resampler:
    """Stratified patient-level bootstrap weights for any subset of a fixed universe of images."""

    patients: np.ndarray  # unique patient ids (the universe)
    counts: np.ndarray  # [B, P] times each patient is drawn in each resample

    @classmethod
    def build(cls, patient_ids, labels, n_boot: int = 2000, seed: int = 0) -> "Resampler":
        """``patient_ids`` and ``labels`` per image (of every configuration to be compared)."""
        pid = np.asarray(patient_ids).astype(str)
        y = np.asarray(labels).astype(int)
        patients, inverse = np.unique(pid, return_inverse=True)
        cls_of = np.zeros(len(patients), dtype=int)
        np.maximum.at(cls_of, inverse, y)  # a patient with any COVID image is a COVID patient
        rng = np.random.default_rng(seed)
        counts = np.zeros((n_boot, len(patients)), dtype=np.int32)
        for c in (0, 1):
            members = np.flatnonzero(cls_of == c)
            if len(members):
                k = len(members)
                draws = rng.integers(0, k, size=(n_boot, k)) + np.arange(n_boot)[:, None] * k
                counts[:, members] = np.bincount(draws.ravel(), minlength=n_boot * k).reshape(n_boot, k)
        return cls(patients, counts)

    @property
    def n_boot(self) -> int:
        return len(self.counts)

    def weights(self, patient_ids) -> np.ndarray:
        """[B, N] weight of each of N images (given by their patient ids) in each resample."""
        idx = np.searchsorted(self.patients, np.asarray(patient_ids).astype(str))
        idx = np.clip(idx, 0, len(self.patients) - 1)
        if len(idx) and not np.array_equal(self.patients[idx], np.asarray(patient_ids).astype(str)):
            raise ValueError("patient ids outside the resampler's universe")
        return self.counts[:, idx].astype(np.float64)


# --------------------------------------------------------------------------------- weighted metrics
def weighted_class_metrics(w: np.ndarray, y_true, y_pred) -> dict[str, np.ndarray]:
    """accuracy, F1, sensitivity, specificity for each row of weights ``w`` [B, N] (NaN where undefined)."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(y_pred).astype(bool)
    tp, fp = w @ (y & p), w @ (~y & p)
    fn, tn = w @ (y & ~p), w @ (~y & ~p)
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"accuracy": (tp + tn) / (tp + tn + fp + fn), "f1": 2 * tp / (2 * tp + fp + fn),
                "sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp)}


def weighted_auc(w: np.ndarray, y_true, score) -> np.ndarray:
    """ROC AUC (ties count one half) for each row of weights ``w`` [B, N]; a weight ``k`` counts an
    image ``k`` times, so integer weights give the AUC of the resampled set. O(B x N)."""
    w = np.atleast_2d(np.asarray(w, dtype=np.float64))
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    if not len(s):
        return np.full(len(w), np.nan)
    order = np.argsort(s, kind="mergesort")
    s, y = s[order], y[order]
    wt = np.ascontiguousarray(w[:, order].T)  # [N, B]: sums along images run over contiguous rows
    starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]  # groups of tied scores
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(s)]))
    neg_in = np.add.reduceat(wt * ~y[:, None], starts, axis=0)  # [G, B] negative weight per tie group
    below = np.cumsum(neg_in, axis=0) - neg_in  # negative weight strictly below each group
    credit = below[group[y]] + 0.5 * neg_in[group[y]]  # per positive image: negatives it outranks
    pos = wt[y]
    den = pos.sum(0) * wt[~y].sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, np.einsum("ij,ij->j", pos, credit) / den, np.nan)


def weighted_metrics(w: np.ndarray, y_true, score, y_pred) -> dict[str, np.ndarray]:
    return {**weighted_class_metrics(w, y_true, y_pred), "auc": weighted_auc(w, y_true, score)}


def interval(dist: np.ndarray, level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of a bootstrap distribution (NaN resamples, e.g. an undefined F1, ignored)."""
    d = np.asarray(dist, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not len(d):
        return float("nan"), float("nan")
    a = (1 - level) / 2 * 100
    lo, hi = np.percentile(d, [a, 100 - a])
    return float(lo), float(hi)


def bootstrap_p(delta: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from a paired bootstrap distribution of a difference:
    twice the smaller tail beyond 0, with the +1 correction, capped at 1."""
    d = np.asarray(delta, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not len(d):
        return float("nan")
    lo = (np.sum(d <= 0) + 1) / (len(d) + 1)
    hi = (np.sum(d >= 0) + 1) / (len(d) + 1)
    return float(min(1.0, 2 * min(lo, hi)))


# ------------------------------------------------------------------------------------------- DeLong
def delong(y_true, scores, clusters=None) -> tuple[np.ndarray, np.ndarray]:
    """AUCs of K scores [K, N] on the same images and their DeLong covariance [K, K].

    With ``clusters`` (a patient id per image), the structural components are summed per patient and
    the covariance is Obuchowski's (1997) clustered extension of DeLong's, so several images of one
    patient are not counted as independent evidence; with one image per patient it is DeLong's up to
    a factor I(M-1)/((I-1)M) that tends to 1."""
    y = np.asarray(y_true).astype(bool)
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    m, n = int(y.sum()), int((~y).sum())
    if m < 2 or n < 2:
        raise ValueError("DeLong needs at least two positive and two negative images")
    pos, neg = s[:, y], s[:, ~y]
    tz = rankdata(np.concatenate([pos, neg], axis=1), axis=1)
    tx, ty = rankdata(pos, axis=1), rankdata(neg, axis=1)
    aucs = (tz[:, :m].sum(1) - m * (m + 1) / 2) / (m * n)
    v10 = (tz[:, :m] - tx) / n  # per positive image: share of negatives it outranks
    v01 = 1 - (tz[:, m:] - ty) / m  # per negative image: share of positives that outrank it
    if clusters is None:
        cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
        return aucs, cov
    _, c = np.unique(np.asarray(clusters).astype(str), return_inverse=True)
    k = c.max() + 1
    if k < 2:
        raise ValueError("a clustered DeLong needs at least two patients")

    def per_cluster(v: np.ndarray, members: np.ndarray) -> np.ndarray:
        return np.stack([np.bincount(members, weights=row, minlength=k) for row in v])

    m_i, n_i = np.bincount(c[y], minlength=k), np.bincount(c[~y], minlength=k)
    a = per_cluster(v10, c[y]) - m_i * aucs[:, None]  # [K, I]
    b = per_cluster(v01, c[~y]) - n_i * aucs[:, None]
    f = k / (k - 1)
    s10, s01, s11 = f * a @ a.T / m, f * b @ b.T / n, f * a @ b.T
    return aucs, s10 / m + s01 / n + (s11 + s11.T) / (m * n)


def delong_contrast(y_true, scores_a, scores_b, clusters=None) -> tuple[float, float, float]:
    """Difference of mean AUC (over the rows of ``scores_a`` minus over those of ``scores_b``, all on
    the same images), its DeLong standard error and two-sided p-value (clustered by patient when
    ``clusters`` is given)."""
    a, b = np.atleast_2d(scores_a), np.atleast_2d(scores_b)
    aucs, cov = delong(y_true, np.concatenate([a, b]), clusters)
    c = np.r_[np.full(len(a), 1 / len(a)), np.full(len(b), -1 / len(b))]
    diff, var = float(c @ aucs), float(c @ cov @ c)
    if var <= 1e-15:
        return diff, 0.0, 1.0 if abs(diff) < 1e-12 else 0.0
    se = var ** 0.5
    return diff, se, float(2 * norm.sf(abs(diff) / se))


def holm(pvalues) -> np.ndarray:
    """Holm's step-down adjusted p-values (family = the finite entries; NaN stays NaN)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full_like(p, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    if not len(ok):
        return out
    order = ok[np.argsort(p[ok], kind="mergesort")]
    k = len(order)
    adjusted = np.maximum.accumulate(np.minimum(1.0, (k - np.arange(k)) * p[order]))
    out[order] = adjusted
    return out
