"""Fast scores of how well a frozen backbone's embeddings suit a labelled data set (no head is trained).

* LogME (You et al., "LogME: Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021):
  the log marginal evidence of a Bayesian linear regression from the embeddings to each one-hot label column,
  with the prior and noise precisions (alpha, beta) maximised by MacKay's fixed-point iteration, averaged over
  classes and divided by the number of images. Computed in the singular basis of the embedding matrix, so
  each iteration costs O(min(N, D)). Higher is better; only differences between backbones on one data set mean
  anything.
* Leave-one-out k-NN accuracy with cosine similarity on centred embeddings: the plain probe that a large study
  of transferability estimators found ranks backbones at least as well as the dedicated scores.

Written out here (about 30 lines) rather than taken from the `LogME` reference code, which is not on PyPI.
"""

from __future__ import annotations

import numpy as np

from tlearn.audits.vectors import centred_unit

LOGME_ITERATIONS = 50
LOGME_TOLERANCE = 1e-3
KNN_NEIGHBOURS = 10
_EPSILON = 1e-5


def logme(embeddings: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """LogME score of (N, D) embeddings for labels in [0, num_classes): mean evidence per image.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> labels = rng.integers(0, 2, 200)
        >>> informative = np.c_[labels + 0.1 * rng.normal(size=200), rng.normal(size=(200, 5))]
        >>> bool(logme(informative, labels, 2) > logme(rng.normal(size=(200, 6)), labels, 2))
        True
    """
    features = embeddings.astype(np.float64)
    n, dims = features.shape
    left, singular, _ = np.linalg.svd(features, full_matrices=False)  # (N, k), (k,)
    sigma = singular**2  # eigenvalues of F^T F; the other D - k are zero
    evidences = []
    for label in range(num_classes):
        target = (labels == label).astype(np.float64)
        projected = left.T @ target  # (k,) coordinates of the target in the column space of F
        squared = projected**2
        outside = max(float(target @ target - squared.sum()), 0.0)  # the part no linear map can explain
        alpha, beta = 1.0, 1.0
        for _ in range(LOGME_ITERATIONS):
            ratio = alpha / beta
            gamma = float((sigma / (sigma + ratio)).sum())  # effective number of parameters
            weight_norm = float((sigma * squared / (sigma + ratio) ** 2).sum())  # |m|^2
            residual = float((squared * (ratio / (sigma + ratio)) ** 2).sum()) + outside  # |F m - y|^2
            alpha = gamma / (weight_norm + _EPSILON)
            beta = (n - gamma) / (residual + _EPSILON)
            if abs(alpha / beta - ratio) / ratio < LOGME_TOLERANCE:
                break
        log_determinant = float(np.log(alpha + beta * sigma).sum()) + (dims - len(sigma)) * np.log(alpha)
        evidence = (
            dims / 2 * np.log(alpha)
            + n / 2 * np.log(beta)
            - log_determinant / 2
            - beta / 2 * residual
            - alpha / 2 * weight_norm
            - n / 2 * np.log(2 * np.pi)
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def knn_accuracy(embeddings: np.ndarray, labels: np.ndarray, *, neighbours: int = KNN_NEIGHBOURS) -> float:
    """Leave-one-out accuracy of a similarity-weighted k-NN vote (cosine, centred embeddings).

    Example:
        >>> knn_accuracy(np.array([[0, 1.0], [0, 1.1], [1.0, 0], [1.1, 0]]), np.array([0, 0, 1, 1]), neighbours=1)
        1.0
    """
    unit = centred_unit(embeddings)
    count = min(neighbours, len(unit) - 1)
    num_classes = int(labels.max()) + 1
    similarity = unit @ unit.T
    np.fill_diagonal(similarity, -np.inf)
    nearest = np.argpartition(-similarity, count - 1, axis=1)[:, :count]  # (N, count)
    votes = np.zeros((len(unit), num_classes))
    rows = np.repeat(np.arange(len(unit)), count)
    np.add.at(votes, (rows, labels[nearest].ravel()), 1.0 + similarity[rows, nearest.ravel()])
    return float((votes.argmax(axis=1) == labels).mean())
