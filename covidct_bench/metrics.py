"""Metrics as plain functions (numpy / scikit-learn), shared by training and the report.

Classification: COVID = 1 is the positive class; ``score`` is the predicted probability of COVID.
The decision threshold is chosen on the validation split and applied unchanged to test. Rules:

- ``youden`` (default): the ROC threshold maximising sensitivity + specificity - 1 (Youden's J);
  among ties, the one closest to 0.5;
- ``f1``: the threshold maximising F1 on validation;
- ``fixed``: 0.5.

Segmentation: Dice and IoU per image, averaged over images (an image where both the mask and the
prediction are empty counts as 1). Self-supervised: kNN and linear-probe accuracy of frozen features.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import precision_recall_curve, roc_auc_score, roc_curve

THRESHOLD_RULES = ("youden", "f1", "fixed")


def choose_threshold(y_true: np.ndarray, score: np.ndarray, rule: str = "youden") -> float:
    y_true, score = np.asarray(y_true), np.asarray(score, dtype=np.float64)
    if rule == "fixed" or len(np.unique(y_true)) < 2:
        return 0.5
    if rule == "youden":
        fpr, tpr, thr = roc_curve(y_true, score)
        j = tpr - fpr
        thr = np.clip(thr, 0.0, 1.0)  # roc_curve's first threshold is +inf
        best = np.flatnonzero(np.isclose(j, j.max()))
    elif rule == "f1":
        prec, rec, thr = precision_recall_curve(y_true, score)
        f1 = np.where(prec[:-1] + rec[:-1] > 0, 2 * prec[:-1] * rec[:-1] / np.maximum(prec[:-1] + rec[:-1], 1e-12), 0)
        best = np.flatnonzero(np.isclose(f1, f1.max()))
    else:
        raise ValueError(f"threshold rule {rule!r} (expected one of {THRESHOLD_RULES})")
    cands = thr[best]
    return float(cands[np.argmin(np.abs(cands - 0.5))])


def classification_metrics(y_true, score, threshold: float = 0.5) -> dict[str, float]:
    """accuracy, precision, sensitivity (recall), specificity, F1 at ``threshold``; AUC threshold-free."""
    y = np.asarray(y_true).astype(int)
    s = np.asarray(score, dtype=np.float64)
    pred = (s >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())

    def ratio(a: int, b: int) -> float:
        return a / b if b else float("nan")

    prec, sens = ratio(tp, tp + fp), ratio(tp, tp + fn)
    return {"accuracy": ratio(tp + tn, len(y)), "precision": prec, "sensitivity": sens,
            "specificity": ratio(tn, tn + fp),
            "f1": ratio(2 * tp, 2 * tp + fp + fn),
            "auc": float(roc_auc_score(y, s)) if len(np.unique(y)) == 2 else float("nan"),
            "threshold": float(threshold)}


def dice_iou(pred: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-image Dice and IoU of boolean masks shaped [N, H, W]."""
    p = np.asarray(pred, bool).reshape(len(pred), -1)
    t = np.asarray(target, bool).reshape(len(target), -1)
    inter = (p & t).sum(1).astype(np.float64)
    ps, ts = p.sum(1), t.sum(1)
    union = ps + ts - inter
    empty = (ps + ts) == 0
    dice = np.where(empty, 1.0, 2 * inter / np.maximum(ps + ts, 1))
    iou = np.where(empty, 1.0, inter / np.maximum(union, 1))
    return dice, iou


def segmentation_metrics(pred: np.ndarray, target: np.ndarray, prefix: str = "") -> dict[str, float]:
    dice, iou = dice_iou(pred, target)
    return {f"{prefix}dice": float(dice.mean()) if len(dice) else float("nan"),
            f"{prefix}iou": float(iou.mean()) if len(iou) else float("nan")}


def knn_accuracy(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, y: np.ndarray, k: int = 20) -> float:
    """Cosine kNN (distance-weighted vote) on frozen, L2-normalised features."""
    from sklearn.neighbors import KNeighborsClassifier

    k = max(1, min(k, len(train_x)))
    knn = KNeighborsClassifier(n_neighbors=k, metric="cosine", weights="distance").fit(train_x, train_y)
    return float((knn.predict(x) == y).mean())


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, x: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[float, np.ndarray]:
    """Logistic regression on standardised frozen features: (accuracy, P(COVID) per row of ``x``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if len(np.unique(train_y)) < 2:
        return float("nan"), np.full(len(x), 0.5)
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.1, random_state=seed)).fit(train_x, train_y)
    prob = clf.predict_proba(x)[:, 1]
    return float(((prob >= 0.5).astype(int) == y).mean()), prob
