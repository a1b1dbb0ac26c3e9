"""spark_apps.common.drift against independent computations (scipy, scikit-learn) on synthetic
embedding-like vectors: identical sets show no drift, a shifted set does."""

import numpy as np
import pytest
from scipy.spatial.distance import cosine, pdist
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.metrics.pairwise import rbf_kernel

from spark_apps.common import drift


def unit_rows(rng, n, dim=48, centre=None, spread=1.0):
    centre = np.zeros(dim) if centre is None else centre
    rows = centre + spread * rng.standard_normal((n, dim))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def sets():
    rng = np.random.default_rng(7)
    centre = rng.standard_normal(48) * 0.3
    reference = unit_rows(rng, 300, centre=centre)
    shifted_centre = centre.copy()
    shifted_centre[:6] += 1.0  # a topic shift along a few axes
    return reference, unit_rows(rng, 280, centre=shifted_centre)


def test_roc_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 500)
    scores = np.round(rng.normal(size=500) + 0.4 * labels, 1)  # rounded: many ties
    assert drift.roc_auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_classifier_auc_matches_sklearn_logistic_regression(sets):
    reference, current = sets
    train_x, train_y, test_x, test_y = drift.split_halves(reference, current, seed=3)
    assert sorted(np.bincount(train_y.astype(int))) == [140, 150]
    expected = LogisticRegression(C=1.0, max_iter=5000, tol=1e-10).fit(train_x, train_y)
    expected_auc = roc_auc_score(test_y, expected.decision_function(test_x))
    assert drift.classifier_auc(train_x, train_y, test_x, test_y) == pytest.approx(expected_auc, abs=1e-3)


def test_mean_shift_and_mmd_match_independent_figures(sets):
    reference, current = sets
    shift = drift.mean_shift(reference, current)
    a, b = reference.mean(axis=0), current.mean(axis=0)
    assert shift["mean_cosine_distance"] == pytest.approx(cosine(a, b), abs=1e-12)
    assert shift["mean_l2_distance"] == pytest.approx(float(np.sqrt(((a - b) ** 2).sum())), abs=1e-12)

    sigma = float(np.median(pdist(np.vstack([reference, current]))))
    gamma = 1.0 / (2 * sigma**2)
    kxx, kyy = rbf_kernel(reference, gamma=gamma), rbf_kernel(current, gamma=gamma)
    n, m = len(reference), len(current)
    expected = (
        (kxx.sum() - n) / (n * (n - 1))
        + (kyy.sum() - m) / (m * (m - 1))
        - 2 * rbf_kernel(reference, current, gamma=gamma).mean()
    )
    mmd2, bandwidth = drift.mmd2_rbf(reference, current)
    assert bandwidth == pytest.approx(sigma, rel=1e-9)
    assert mmd2 == pytest.approx(expected, abs=1e-9)


def test_identical_sets_show_no_drift_and_shifted_sets_do(sets):
    reference, current = sets
    same = drift.compare(reference, reference.copy())
    assert same["mean_cosine_distance"] == pytest.approx(0.0, abs=1e-9)
    assert same["mean_l2_distance"] == pytest.approx(0.0, abs=1e-9)
    assert same["classifier_auc"] <= drift.AUC_THRESHOLD
    assert abs(same["mmd2_rbf"]) < 0.01
    assert same["drift_detected"] is False

    shifted = drift.compare(reference, current)
    assert shifted["classifier_auc"] > 0.8
    assert shifted["drift_detected"] is True
    assert shifted["mmd2_rbf"] > 10 * abs(same["mmd2_rbf"]) + 0.01
    assert shifted["mean_cosine_distance"] > 0.05


def test_pca_projection_matches_sklearn_and_plot_is_a_png(sets):
    reference, current = sets
    ref2, cur2, explained = drift.pca_2d(reference, current)
    pca = PCA(n_components=2).fit(np.vstack([reference, current]))
    expected = pca.transform(np.vstack([reference, current]))
    got = np.vstack([ref2, cur2])
    for axis in range(2):  # principal axes are defined up to their sign
        assert (
            min(np.abs(got[:, axis] - expected[:, axis]).max(), np.abs(got[:, axis] + expected[:, axis]).max()) < 1e-9
        )
    assert explained == pytest.approx(pca.explained_variance_ratio_, abs=1e-9)

    pytest.importorskip("matplotlib")
    png = drift.plot_png(reference, current, drift.compare(reference, current))
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
