"""ROC, TAR@FAR by the host's nearest-point rule, the table and the plot."""
from __future__ import annotations

import numpy as np
import pytest

from insightface_adadistill.evaluation.roc import (REPORT_FARS, auc, format_tar_table, plot_roc,
                                                   roc_curve, tar_at_far, tar_at_fars)

# genuine 0.9 0.8 0.4, impostor 0.7 0.3 0.2 0.1
LABELS = np.array([1, 1, 0, 1, 0, 0, 0])
SCORES = np.array([0.9, 0.8, 0.7, 0.4, 0.3, 0.2, 0.1])


def test_hand_computed_curve_drops_collinear_points():
    fpr, tpr, thresholds = roc_curve(LABELS, SCORES)
    np.testing.assert_allclose(fpr, [0, 0, 0, 0.25, 0.25, 1])
    np.testing.assert_allclose(tpr, [0, 1 / 3, 2 / 3, 2 / 3, 1, 1])
    np.testing.assert_allclose(thresholds, [np.inf, 0.9, 0.8, 0.7, 0.4, 0.1])


def test_hand_computed_tar_takes_the_nearest_point_and_the_higher_tpr_on_ties():
    tar = tar_at_far(LABELS, SCORES, (1e-6, 0.1, 0.25, 0.9))
    # FAR 0.25: two points at fpr 0.25 (TPR 2/3 and 1) -> the higher; FAR 0.1 and 1e-6: fpr 0 is
    # nearest and its highest TPR is 2/3; FAR 0.9: fpr 1 -> TPR 1
    assert tar == pytest.approx({1e-6: 2 / 3, 0.1: 2 / 3, 0.25: 1.0, 0.9: 1.0})


@pytest.mark.parametrize("seed, decimals", [(0, 2), (1, 3), (2, 6)])
def test_curve_equals_sklearn_with_and_without_ties(seed, decimals):
    from sklearn.metrics import roc_curve as sk_roc_curve

    rng = np.random.default_rng(seed)
    labels = rng.random(5000) < 0.1
    scores = np.round(rng.normal(0, 1, 5000) + 1.5 * labels, decimals)
    ours, theirs = roc_curve(labels, scores), sk_roc_curve(labels, scores)
    for a, b in zip(ours, theirs):
        np.testing.assert_array_equal(a, b)


def _host_rule(labels, scores, fars):
    """arcface_torch's loop: reverse sklearn's curve, min over (|fpr - far|, index) tuples."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    fpr, tpr, _ = sk_roc_curve(labels, scores)
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    return {far: tpr[min(zip(abs(fpr - far), range(len(fpr))))[1]] for far in fars}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tar_at_far_equals_the_host_rule(seed):
    rng = np.random.default_rng(seed)
    labels = (rng.random(20000) < 0.05).astype(int)
    scores = np.round(rng.normal(0, 1, 20000) + 2.0 * labels, 3)
    assert tar_at_far(labels, scores) == _host_rule(labels, scores, REPORT_FARS)


def test_auc_equals_sklearn():
    from sklearn.metrics import auc as sk_auc

    fpr, tpr, _ = roc_curve(LABELS, SCORES)
    assert auc(fpr, tpr) == pytest.approx(sk_auc(fpr, tpr))


@pytest.mark.parametrize("labels, scores, message", [
    ([1, 1], [0.1, 0.2], "both genuine"),
    ([0, 2], [0.1, 0.2], "labels must be 0/1"),
    ([0, 1], [0.1, np.nan], "NaN or infinite"),
    ([0, 1, 1], [0.1, 0.2], "one length"),
])
def test_bad_inputs_are_refused(labels, scores, message):
    with pytest.raises(ValueError, match=message):
        roc_curve(np.array(labels), np.array(scores))


def test_table_looks_like_the_hosts_prettytable():
    table = format_tar_table({"job-IJBC": dict(zip(REPORT_FARS, [0.5, 0.61234, 0.7, 0.8, 0.9, 1.0]))})
    lines = table.splitlines()
    assert len(lines) == 5 and lines[0] == lines[2] == lines[4] and lines[0].startswith("+--")
    assert [c.strip() for c in lines[1].strip("|").split("|")] == [
        "Methods", "1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"]
    assert [c.strip() for c in lines[3].strip("|").split("|")] == [
        "job-IJBC", "50.00", "61.23", "70.00", "80.00", "90.00", "100.00"]


def test_plot_writes_png_and_pdf(tmp_path):
    fpr, tpr, _ = roc_curve(LABELS, SCORES)
    paths = [tmp_path / "roc.png", tmp_path / "roc.pdf"]
    plot_roc({"job": (fpr, tpr)}, paths)
    assert paths[0].read_bytes()[:4] == b"\x89PNG" and paths[1].read_bytes()[:4] == b"%PDF"
    assert tar_at_fars(fpr, tpr, (0.25,)) == {0.25: 1.0}
