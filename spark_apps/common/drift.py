"""Embedding drift between two versions of a vector set, on bounded samples (numpy only).

- mean shift: cosine distance and L2 distance between the two mean vectors;
- domain classifier (as Evidently does for embeddings): a logistic regression learns to tell
  reference from current rows on one half of each sample, its ROC AUC on the other half is the
  figure; 0.5 means indistinguishable, drift is flagged above ``AUC_THRESHOLD``;
- MMD^2 (unbiased) with an RBF kernel, bandwidth by the median heuristic;
- a PNG of both samples in 2-D (PCA fit on both), when matplotlib is installed.
"""

import io

import numpy as np

AUC_THRESHOLD = 0.55  # Evidently's default for its domain-classifier drift test
DEFAULT_SAMPLE = 1000


def sample_vectors(df, n, seed=0):
    """At most ``n`` rows of ``df.vector`` as a float64 matrix: a Bernoulli sample, then limit
    (no sort, no full collect)."""
    total = df.count()
    if total > n:
        df = df.sample(False, min(1.0, 1.2 * n / total), seed).limit(n)
    vectors = df.select("vector").toPandas()["vector"]
    return np.stack([np.asarray(v, dtype=np.float64) for v in vectors]) if len(vectors) else np.zeros((0, 0))


def mean_shift(reference, current):
    a, b = reference.mean(axis=0), current.mean(axis=0)
    cosine = float(a.dot(b) / (np.linalg.norm(a) * np.linalg.norm(b)))
    return {"mean_cosine_distance": 1.0 - cosine, "mean_l2_distance": float(np.linalg.norm(a - b))}


def roc_auc(labels, scores):
    """ROC AUC as the Mann-Whitney U statistic (tied scores count one half)."""
    labels = np.asarray(labels).astype(bool)
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # 1-based, ties share their mean rank
    ranks = average_rank[inverse]
    positives, negatives = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives))


def fit_logistic(x, y, c=1.0, iterations=25):
    """L2-penalised logistic regression (sklearn's objective with ``C=c``, intercept not
    penalised) by Newton's method; returns (weights, intercept)."""
    x1 = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(x1.shape[1])
    penalty = np.full(x1.shape[1], 1.0 / c)
    penalty[-1] = 0.0
    for _ in range(iterations):
        p = 0.5 * (1.0 + np.tanh(0.5 * x1.dot(w)))  # the logistic function, without overflow
        gradient = x1.T.dot(p - y) + penalty * w
        hessian = (x1.T * (p * (1 - p))).dot(x1) + np.diag(penalty + 1e-9)
        step = np.linalg.solve(hessian, gradient)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return w[:-1], w[-1]


def classifier_auc(train_x, train_y, test_x, test_y):
    weights, intercept = fit_logistic(train_x, train_y)
    return roc_auc(test_y, test_x.dot(weights) + intercept)


def split_halves(reference, current, seed=0):
    """Stratified 50/50 split of the labelled union (label 1 = current)."""
    rng = np.random.default_rng(seed)
    parts = []
    for label, rows in ((0, reference), (1, current)):
        order = rng.permutation(len(rows))
        half = len(rows) // 2
        parts.append((rows[order[:half]], rows[order[half:]], label))
    train_x = np.vstack([p[0] for p in parts])
    test_x = np.vstack([p[1] for p in parts])
    train_y = np.concatenate([np.full(len(p[0]), p[2]) for p in parts])
    test_y = np.concatenate([np.full(len(p[1]), p[2]) for p in parts])
    return train_x, train_y, test_x, test_y


def median_bandwidth(x):
    """Median pairwise Euclidean distance (i < j) of the rows of ``x``."""
    squared = np.maximum((x * x).sum(1)[:, None] + (x * x).sum(1)[None, :] - 2 * x.dot(x.T), 0.0)
    upper = np.sqrt(squared[np.triu_indices(len(x), 1)])
    return float(np.median(upper))


def mmd2_rbf(reference, current, bandwidth=None):
    """Unbiased MMD^2 with k(x, y) = exp(-|x - y|^2 / (2 sigma^2)); returns (mmd2, sigma)."""
    sigma = bandwidth or median_bandwidth(np.vstack([reference, current])) or 1.0

    def kernel(a, b):
        squared = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2 * a.dot(b.T)
        return np.exp(-np.maximum(squared, 0.0) / (2 * sigma * sigma))

    def within(a):
        k = kernel(a, a)
        return (k.sum() - np.trace(k)) / (len(a) * (len(a) - 1))

    value = within(reference) + within(current) - 2 * kernel(reference, current).mean()
    return float(value), float(sigma)


def compare(reference, current, seed=0):
    """All drift figures of two samples (rows = vectors) as a JSON-ready dict."""
    figures = {"reference_rows": len(reference), "current_rows": len(current)}
    figures.update(mean_shift(reference, current))
    auc = classifier_auc(*split_halves(reference, current, seed))
    mmd2, sigma = mmd2_rbf(reference, current)
    figures.update(
        {
            "classifier_auc": auc,
            "mmd2_rbf": mmd2,
            "mmd_bandwidth": sigma,
            "auc_threshold": AUC_THRESHOLD,
            "drift_detected": bool(auc > AUC_THRESHOLD),
        }
    )
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in figures.items()}


def pca_2d(reference, current):
    """Both samples projected on the first two principal axes of their union; and the share of
    variance those axes explain."""
    union = np.vstack([reference, current])
    centre = union.mean(axis=0)
    _, singular, axes = np.linalg.svd(union - centre, full_matrices=False)
    explained = singular[:2] ** 2 / (singular**2).sum()
    return (reference - centre).dot(axes[:2].T), (current - centre).dot(axes[:2].T), explained


def plot_png(reference, current, figures, title="embedding drift"):
    """PNG bytes of both samples in the PCA plane, or None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    ref2, cur2, explained = pca_2d(reference, current)
    fig, ax = plt.subplots(figsize=(7, 6), dpi=100)
    ax.scatter(ref2[:, 0], ref2[:, 1], s=8, alpha=0.5, label=f"previous ({len(ref2)})")
    ax.scatter(cur2[:, 0], cur2[:, 1], s=8, alpha=0.5, marker="x", label=f"current ({len(cur2)})")
    ax.set_xlabel(f"PC1 ({explained[0]:.0%} of variance)")
    ax.set_ylabel(f"PC2 ({explained[1]:.0%} of variance)")
    ax.set_title(
        "{}\nclassifier AUC {:.3f} (drift > {}), mean cosine distance {:.4f}, MMD² {:.4f}".format(
            title, figures["classifier_auc"], AUC_THRESHOLD, figures["mean_cosine_distance"], figures["mmd2_rbf"]
        ),
        fontsize=9,
    )
    ax.legend(loc="best")
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
