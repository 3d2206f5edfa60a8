"""Near-duplicates, outliers, class overlap and the transferability scores, on synthetic embeddings."""

from __future__ import annotations

import numpy as np
import pytest

from tlearn.audits import neighbours
from tlearn.audits.duplicates import group_pairs, near_duplicate_groups
from tlearn.audits.neighbours import ExactSearch, IndexedSearch, knn_distances, neighbour_search, similar_pairs
from tlearn.audits.outliers import outlier_scores
from tlearn.audits.overlap import class_overlap
from tlearn.audits.transferability import knn_accuracy, logme
from tlearn.audits.vectors import standardised_unit


def clusters(per_class: int = 30, classes: int = 2, dims: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    centres = rng.normal(0, 1.0, (classes, dims))
    return centres[labels] + rng.normal(0, 1.0, (len(labels), dims)), labels


def test_near_copies_are_grouped_and_distinct_images_are_not():
    embeddings, _ = clusters()
    rng = np.random.default_rng(1)
    copies = embeddings[[3, 40]] + rng.normal(0, 0.05, (2, embeddings.shape[1]))  # slightly altered copies
    triple = embeddings[7] + rng.normal(0, 0.05, embeddings.shape[1])
    found = near_duplicate_groups(np.vstack([embeddings, copies, triple, triple + 0.01]))
    assert [members for members, _ in found] == [[7, 62, 63], [3, 60], [40, 61]]
    assert all(similarity > 0.99 for _, similarity in found)


def test_the_blockwise_search_finds_pairs_across_block_boundaries(monkeypatch):
    embeddings, _ = clusters(per_class=20)
    embeddings = np.vstack([embeddings, embeddings[[0, 5, 25]]])  # copies at the end, originals in early blocks
    expected = similar_pairs(standardised_unit(embeddings), 0.99)
    monkeypatch.setattr(neighbours, "BLOCK_ROWS", 7)
    blocked = similar_pairs(standardised_unit(embeddings), 0.99)
    assert sorted((i, j) for i, j, _ in blocked) == sorted((i, j) for i, j, _ in expected)
    assert sorted((i, j) for i, j, _ in expected) == [(0, 40), (5, 41), (25, 42)]


def planted_copies(count: int = 3000, dims: int = 96, copies: int = 40, seed: int = 0):
    """Clustered embeddings with `copies` altered copies of earlier images appended (cosine 0.85-0.99)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1.0, (30, dims))
    embeddings = centres[rng.integers(0, 30, count)] + rng.normal(0, 1.0, (count, dims))
    originals = rng.choice(count, copies, replace=False)
    noise = np.linspace(0.1, 0.6, copies)[:, None] * rng.normal(0, 1.0, (copies, dims))
    return np.vstack([embeddings, embeddings[originals] + noise])


def test_the_index_finds_the_pairs_and_neighbours_the_exact_search_finds():
    pytest.importorskip("faiss")
    unit = standardised_unit(planted_copies())
    exact, indexed = ExactSearch(unit), IndexedSearch(unit)
    expected = exact.pairs(0.8)
    assert len(expected) >= 40  # the planted copies (and whatever else is as close)
    found = indexed.pairs(0.8)
    assert [(i, j) for i, j, _ in found] == [(i, j) for i, j, _ in expected]
    assert [s for _, _, s in found] == pytest.approx([s for _, _, s in expected], abs=1e-5)
    assert indexed.method.startswith("faiss IVF") and exact.method == "exact"
    exact_distances, indexed_distances = exact.mean_neighbour_distances(10), indexed.mean_neighbour_distances(10)
    # An approximate search may miss a true neighbour (a larger distance), never find a closer one.
    assert np.all(indexed_distances >= exact_distances - 1e-5)
    assert np.mean(np.isclose(indexed_distances, exact_distances, atol=1e-5)) > 0.9
    assert np.corrcoef(indexed_distances, exact_distances)[0, 1] > 0.99


def test_the_search_is_exact_up_to_the_limit_and_indexed_beyond(monkeypatch):
    pytest.importorskip("faiss")
    embeddings = planted_copies(count=300)
    monkeypatch.setattr(neighbours, "EXACT_LIMIT", len(embeddings))
    assert isinstance(neighbour_search(embeddings), ExactSearch)
    monkeypatch.setattr(neighbours, "EXACT_LIMIT", len(embeddings) - 1)
    assert isinstance(neighbour_search(embeddings), IndexedSearch)


def test_indexed_neighbours_of_many_identical_images_leave_each_image_out():
    pytest.importorskip("faiss")
    embeddings = planted_copies(count=400)
    embeddings[:30] = embeddings[0]  # 30 identical images: the index may return 11 twins and not the image itself
    distances = IndexedSearch(standardised_unit(embeddings)).mean_neighbour_distances(10)
    assert distances.shape == (len(embeddings),)
    assert distances[:30] == pytest.approx(0.0, abs=1e-5)


def test_without_faiss_the_search_stays_exact(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_faiss(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("No module named 'faiss'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(neighbours, "EXACT_LIMIT", 10)
    monkeypatch.setattr(builtins, "__import__", no_faiss)
    embeddings = planted_copies(count=100)
    search = neighbour_search(embeddings)
    assert isinstance(search, ExactSearch)
    assert search.pairs(0.8) == ExactSearch(standardised_unit(embeddings)).pairs(0.8) != []


@pytest.mark.parametrize("search_type", [ExactSearch, IndexedSearch])
def test_with_fewer_images_than_neighbours_every_other_image_counts(search_type):
    if search_type is IndexedSearch:
        pytest.importorskip("faiss")
    diagonal = np.sqrt(0.5)
    unit = np.array([[1.0, 0.0], [0.0, 1.0], [diagonal, diagonal]])
    expected = [1 - diagonal / 2, 1 - diagonal / 2, 1 - diagonal]  # the mean distance to both others
    assert search_type(unit).mean_neighbour_distances(10) == pytest.approx(expected, abs=1e-6)
    assert search_type(unit[:2]).mean_neighbour_distances(10) == pytest.approx([1.0, 1.0], abs=1e-6)
    assert search_type(unit[:1]).mean_neighbour_distances(10).tolist() == [0.0]


def test_group_pairs_joins_chains():
    assert group_pairs([(4, 9, 0.9), (1, 2, 0.95), (2, 3, 0.91)]) == [[1, 2, 3], [4, 9]]


def test_an_image_unlike_every_other_is_an_outlier_and_nothing_else_is(monkeypatch):
    embeddings, labels = clusters(per_class=40)
    far = np.full((1, embeddings.shape[1]), 12.0)  # far from both classes
    found = outlier_scores(np.vstack([embeddings, far]), np.eye(2)[np.append(labels, 0)])
    assert found.flagged.tolist() == [80]
    assert found.scores[80] > found.fence > np.max(found.scores[:80])
    monkeypatch.setattr(neighbours, "BLOCK_ROWS", 9)
    assert outlier_scores(np.vstack([embeddings, far]), np.eye(2)[np.append(labels, 0)]).scores == pytest.approx(
        found.scores
    )


def test_an_image_is_never_its_own_neighbour():
    diagonal = np.sqrt(0.5)
    unit = np.array([[1.0, 0.0], [0.0, 1.0], [diagonal, diagonal]])
    assert knn_distances(unit, 1) == pytest.approx([1 - diagonal, 1 - diagonal, 1 - diagonal])


def test_outliers_report_the_nearest_class():
    embeddings, labels = clusters(per_class=40)
    found = outlier_scores(embeddings, np.eye(2)[labels])
    assert (found.nearest_class == labels).mean() > 0.95


def test_class_overlap_lists_the_confused_pair_first():
    labels = np.repeat(np.arange(3), 10)
    probabilities = np.eye(3)[labels] * 0.9 + 0.05
    probabilities[[10, 11, 12], :] = [0.1, 0.3, 0.6]  # three of class 1 predicted as class 2
    probabilities[[20], :] = [0.05, 0.9, 0.05]  # one of class 2 predicted as class 1
    rows = class_overlap(probabilities, np.eye(3)[labels], np.eye(3)[probabilities.argmax(axis=1)], ["a", "b", "c"])
    assert rows[0]["classes"] == ["b", "c"]
    assert (rows[0]["first_as_second"], rows[0]["second_as_first"], rows[0]["images"]) == (3, 1, 20)
    assert rows[0]["confusion_rate"] == pytest.approx(0.2)


def reference_logme(features: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    """LogME as first published: the full D x D eigendecomposition of F^T F, iterated to convergence."""
    n, dims = features.shape
    sigma, v = np.linalg.eigh(features.T @ features)
    sigma = np.clip(sigma, 0, None)
    evidences = []
    for label in range(num_classes):
        y = (labels == label).astype(float)
        alpha = beta = 1.0
        projected = v.T @ (features.T @ y)
        for _ in range(1000):  # to convergence, with the reference code's 1e-5 guards
            m = v @ (projected * beta / (alpha + beta * sigma))
            gamma = (beta * sigma / (alpha + beta * sigma)).sum()
            new_alpha = gamma / (m @ m + 1e-5)
            new_beta = (n - gamma) / (((y - features @ m) ** 2).sum() + 1e-5)
            converged = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < 1e-9
            alpha, beta = new_alpha, new_beta
            if converged:
                break
        m = v @ (projected * beta / (alpha + beta * sigma))
        evidence = (
            dims / 2 * np.log(alpha)
            + n / 2 * np.log(beta)
            - 0.5 * np.log(alpha + beta * sigma).sum()
            - beta / 2 * ((y - features @ m) ** 2).sum()
            - alpha / 2 * (m @ m)
            - n / 2 * np.log(2 * np.pi)
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


@pytest.mark.parametrize(("n", "dims"), [(40, 90), (150, 20)])
def test_logme_agrees_with_the_published_formulation(n, dims):
    rng = np.random.default_rng(n)
    labels = rng.integers(0, 3, n)
    features = rng.normal(size=(n, dims)) + np.outer(labels, rng.normal(size=dims))
    assert logme(features, labels, 3) == pytest.approx(reference_logme(features, labels, 3), rel=1e-3)


def test_logme_and_knn_prefer_features_that_carry_the_labels():
    informative, labels = clusters(per_class=50, dims=32)
    noise = np.random.default_rng(5).normal(size=informative.shape)
    assert logme(informative, labels, 2) > logme(noise, labels, 2)
    assert knn_accuracy(informative, labels) > 0.95 > 0.7 > knn_accuracy(noise, labels)


def test_class_overlap_of_label_sets_counts_a_missed_label_answered_as_another():
    given = np.array([[1, 0, 1], [1, 0, 0], [1, 1, 0], [0, 1, 0]])
    answered = np.array([[0, 1, 1], [1, 0, 0], [1, 1, 1], [1, 0, 0]])  # 0: a missed, b added; 3: b missed, a added
    probabilities = np.where(answered > 0, 0.8, 0.2)
    rows = {tuple(row["classes"]): row for row in class_overlap(probabilities, given, answered, ["a", "b", "c"])}
    assert (rows["a", "b"]["first_as_second"], rows["a", "b"]["second_as_first"]) == (1, 1)
    assert rows["a", "b"]["images"] == 4  # images carrying a or b, each counted once
    # Image 2 carries a and b and was answered c as well: c added, nothing missed, so no pair counts it.
    assert ("a", "c") not in rows or rows["a", "c"]["first_as_second"] == 0
