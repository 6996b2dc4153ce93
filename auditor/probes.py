"""Linear probes shared by plugins: a standardised ridge classifier, cross-validated.

The probe is ridge-regression classification on standardised features, the decision rule of scikit-learn's
``RidgeClassifier`` after a ``StandardScaler``: ``W = (XᵀX + αI)⁻¹ XᵀY`` on centred data with one-hot targets
and an argmax decision (for two classes this equals scikit-learn's single ±1 column), solved in closed form —
in the dual, ``Xᵀ(XXᵀ + αI)⁻¹Y``, when features outnumber rows. Closed form keeps it deterministic, fast and
free of a scikit-learn dependency (the tests check it against scikit-learn on the same folds).
"""

from __future__ import annotations

import numpy as np


def ridge_probe_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, n_classes: int,
                        alpha: float) -> np.ndarray:
    """Fit the probe on ``x_train`` with class indices ``y_train`` (0..n_classes-1) and predict the class
    indices of ``x_test``. Classes absent from the training rows are never predicted."""
    x_train = np.asarray(x_train, dtype=np.float64).reshape(len(x_train), -1)
    x_test = np.asarray(x_test, dtype=np.float64).reshape(len(x_test), -1)
    mu = x_train.mean(axis=0)
    sd = x_train.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)  # constant features: scale 1, as scikit-learn's StandardScaler
    xt = (x_train - mu) / sd
    xs = (x_test - mu) / sd
    onehot = np.eye(n_classes)[y_train]
    ym = onehot.mean(axis=0)
    yc = onehot - ym
    n, d = xt.shape
    if d <= n:
        w = np.linalg.solve(xt.T @ xt + alpha * np.eye(d), xt.T @ yc)
    else:
        w = xt.T @ np.linalg.solve(xt @ xt.T + alpha * np.eye(n), yc)
    scores = xs @ w + ym
    scores[:, np.bincount(y_train, minlength=n_classes) == 0] = -np.inf
    return np.asarray(np.argmax(scores, axis=1))


def cross_validated_probe(features: np.ndarray, labels: np.ndarray, folds: np.ndarray, alpha: float) -> np.ndarray:
    """Out-of-fold predicted class indices for every row; ``labels`` are class indices, ``folds`` each row's
    fold id."""
    labels = np.asarray(labels, dtype=np.int64)
    n_classes = int(labels.max()) + 1
    out = np.full(len(labels), -1, dtype=np.int64)
    for f in np.unique(folds):
        test = folds == f
        out[test] = ridge_probe_predict(features[~test], labels[~test], features[test], n_classes, alpha)
    return out


def balanced_accuracy(y: np.ndarray, pred: np.ndarray) -> float:
    """Mean recall over the classes present in ``y`` (scikit-learn's ``balanced_accuracy_score``)."""
    classes, inv = np.unique(y, return_inverse=True)
    hits = np.bincount(inv, weights=(pred == y).astype(np.float64), minlength=len(classes))
    return float(np.mean(hits / np.bincount(inv, minlength=len(classes))))
