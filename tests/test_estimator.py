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
