"""Metrics: COVID = 1 positive, threshold chosen on validation, Dice/IoU, frozen-feature probes."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score, roc_auc_score

from covidct_bench.metrics import (choose_threshold, classification_metrics, dice_iou, knn_accuracy, linear_probe,
                                   segmentation_metrics)


def test_classification_metrics_match_their_definitions():
    y = np.array([1, 1, 1, 0, 0, 0, 0, 1])
    s = np.array([0.9, 0.8, 0.3, 0.2, 0.6, 0.1, 0.4, 0.7])
    m = classification_metrics(y, s, 0.5)
    pred = (s >= 0.5).astype(int)
    assert m["accuracy"] == pytest.approx((pred == y).mean())
    assert m["sensitivity"] == pytest.approx(3 / 4) and m["specificity"] == pytest.approx(3 / 4)
    assert m["precision"] == pytest.approx(3 / 4)
    assert m["f1"] == pytest.approx(f1_score(y, pred))
    assert m["auc"] == pytest.approx(roc_auc_score(y, s))


def test_youden_threshold_separates_validation_and_f1_rule():
    y = np.array([0, 0, 0, 1, 1, 1])
    s = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    thr = choose_threshold(y, s, "youden")
    assert 0.3 < thr <= 0.7
    assert classification_metrics(y, s, thr)["accuracy"] == 1.0
    assert 0.3 < choose_threshold(y, s, "f1") <= 0.7
    assert choose_threshold(y, s, "fixed") == 0.5
    assert choose_threshold(np.ones(3), s[:3]) == 0.5  # one class only: no ROC


def test_dice_iou_per_image():
    a = np.zeros((3, 4, 4), bool)
    b = np.zeros((3, 4, 4), bool)
    a[0, :2], b[0, :1] = True, True  # 8 vs 4 pixels, overlap 4
    a[1, 0, 0] = True  # prediction on an empty target
    dice, iou = dice_iou(a, b)
    assert dice[0] == pytest.approx(2 * 4 / 12) and iou[0] == pytest.approx(4 / 8)
    assert dice[1] == 0 and dice[2] == 1  # both empty counts as perfect
    assert segmentation_metrics(a, b)["dice"] == pytest.approx(dice.mean())


def test_frozen_feature_probes_find_separable_classes():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 30)
    x = rng.normal(size=(60, 8)) + (2 * y[:, None] - 1) * 2.0
    assert knn_accuracy(x[::2], y[::2], x[1::2], y[1::2], k=5) > 0.9
    acc, prob = linear_probe(x[::2], y[::2], x[1::2], y[1::2])
    assert acc > 0.9 and prob.shape == (30,)
