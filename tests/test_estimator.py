"""`TlearnClassifier`: scikit-learn's conventions over image paths (fit, predict_proba ordered by classes_,
labels of the type given, cloning and cross-validation)."""

from __future__ import annotations

import numpy as np
import pytest

from helpers import make_class_folder

pytest.importorskip("pandas")


@pytest.fixture
def images(tmp_path, monkeypatch):
    monkeypatch.setenv("TLEARN_CACHE_DIR", str(tmp_path / "cache"))
    data = make_class_folder(tmp_path / "data", {"red": 12, "blue": 12})
    paths = sorted(data.rglob("*.png"))
    return paths, [path.parent.name for path in paths]


def test_fit_predict_and_probabilities_follow_scikit_learns_conventions(images):
    from tlearn.api.estimator import TlearnClassifier

    paths, names = images
    numbers = [10 if name == "red" else 2 for name in names]  # integers that sort otherwise as text
    model = TlearnClassifier(mode="linear").fit(paths, numbers)
    assert model.classes_.tolist() == [2, 10]
    probabilities = model.predict_proba(paths[:3] + paths[-3:])
    assert probabilities.shape == (6, 2) and np.allclose(probabilities.sum(axis=1), 1)
    predicted = model.predict(paths)
    assert predicted.dtype.kind == "i" and model.score(paths, numbers) == 1.0
    assert (predicted == np.asarray(numbers)).all()
    # The columns follow classes_: the red images (label 10, the second class) score high in column 1.
    red = [index for index, number in enumerate(numbers) if number == 10]
    assert (model.predict_proba([paths[index] for index in red])[:, 1] > 0.5).all()


def test_it_clones_and_cross_validates(images):
    from sklearn.base import clone
    from sklearn.model_selection import cross_val_score

    from tlearn.api.estimator import TlearnClassifier

    paths, names = images
    estimator = TlearnClassifier(mode="linear", settings={"epochs": 1})
    assert clone(estimator).get_params() == estimator.get_params()
    scores = cross_val_score(estimator, [str(path) for path in paths], names, cv=2)
    assert scores.tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="24 paths but 23 labels"):
        TlearnClassifier().fit(paths, names[:-1])


def test_a_fold_the_hash_gives_no_validation_image_still_validates_on_one():
    from tlearn.api.estimator import _splits_with_validation
    from tlearn.data.discovery import AUTO_SPLIT, assign_split, path_fraction

    # Six paths whose hash puts none in val (found by search, so the case is certain, not drawn).
    names = (f"/images/{index}.png" for index in range(10_000))
    paths = [path for path in names if assign_split(path, AUTO_SPLIT) != "val"][:6]
    labels = ["a", "a", "a", "b", "b", "b"]
    splits = _splits_with_validation(paths, labels, AUTO_SPLIT)
    assert splits.count("val") == 1
    moved = splits.index("val")
    hashed = [assign_split(path, AUTO_SPLIT) for path in paths]
    assert [s for i, s in enumerate(splits) if i != moved] == [s for i, s in enumerate(hashed) if i != moved]
    training = [i for i, split in enumerate(hashed) if split == "train"]
    assert moved == max(training, key=lambda i: path_fraction(paths[i]))
    # Every class keeps a training image; a hash split that already validates is left as it is.
    assert {labels[i] for i, split in enumerate(splits) if split == "train"} == {"a", "b"}
    assert _splits_with_validation([*paths, "/images/v.png"], [*labels, "a"], (0.01, 0.99, 0.0))[-1] == "val"
    # The nearest image is a class's only training image: the next nearest moves instead.
    alone = [label if i != moved else "c" for i, label in enumerate(labels)]
    splits = _splits_with_validation(paths, alone, AUTO_SPLIT)
    assert splits[moved] == "train" and splits.count("val") == 1
