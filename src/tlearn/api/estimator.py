"""`TlearnClassifier`: tlearn as a scikit-learn estimator over image paths, for `cross_val_score`,
`GridSearchCV` and pipelines that already speak scikit-learn.

`fit(paths, labels)` trains as `tlearn.train` does on a DataFrame of those (path, label) rows (the automatic
hash split, the backbone choice, the final fit on every image), with one difference: a fold of a few dozen
images can draw no validation image from the hash (12 images at 16% draw none 12% of the time), which
`tlearn.train` refuses as an error for the user to act on, while inside `cross_val_score` it would turn one fold
into NaN at random; so when the hash leaves validation empty, the training image nearest the validation share
(the highest path hash whose class keeps another training image) validates instead.

`predict_proba(paths)` has one column per entry of `classes_` (the labels as given, sorted as `numpy.unique` sorts
them), and `predict` answers the labels themselves, so integer labels come back as integers. Settings are
constructor parameters, as scikit-learn asks, so `get_params` / `set_params` and cloning work. Each fit writes its
run into `out` when given, else into a temporary folder that lives as long as the estimator.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin


class TlearnClassifier(ClassifierMixin, BaseEstimator):
    """An image classifier over file paths, trained by tlearn.

    Example:
        >>> from sklearn.model_selection import cross_val_score  # doctest: +SKIP
        >>> cross_val_score(TlearnClassifier(mode="linear"), paths, labels, cv=3)  # doctest: +SKIP
        array([0.95, 0.97, 0.94])
    """

    def __init__(
        self,
        mode: str = "auto",
        backbone: str = "auto",
        time_budget: str | None = None,
        seed: int = 0,
        settings: dict[str, Any] | None = None,
        out: str | Path | None = None,
        quiet: bool = True,
    ) -> None:
        self.mode = mode
        self.backbone = backbone
        self.time_budget = time_budget
        self.seed = seed
        self.settings = settings
        self.out = out
        self.quiet = quiet

    def fit(self, X: Sequence[str | Path], y: Sequence[Any]) -> TlearnClassifier:
        """Train on the images at paths `X` with labels `y`; returns the estimator."""
        import pandas as pd

        import tlearn

        paths, labels = [str(path) for path in X], list(y)
        if len(paths) != len(labels):
            raise ValueError(f"{len(paths)} paths but {len(labels)} labels")
        self.classes_ = np.unique(np.asarray(labels, dtype=object if isinstance(labels[0], str) else None))
        self._label_of_name = {str(label): label for label in self.classes_}
        if self.out is None:
            self._folder = tempfile.TemporaryDirectory(prefix="tlearn-estimator-")
            out = Path(self._folder.name) / "run"
        else:
            out = Path(self.out)
        options = {"mode": self.mode, "backbone": self.backbone, "seed": self.seed, **(self.settings or {})}
        if self.time_budget is not None:
            options["time_budget"] = self.time_budget
        names = [str(label) for label in labels]
        splits = _splits_with_validation(paths, names, _fractions(options.get("split")))
        frame = pd.DataFrame({"path": paths, "label": names, "split": splits})
        self.run_ = tlearn.train(frame, out=out, overwrite=self.out is not None, quiet=self.quiet, **options)
        self.model_ = tlearn.load(self.run_.model_path)
        return self

    def predict_proba(self, X: Sequence[str | Path]) -> np.ndarray:
        """(N, len(classes_)) probabilities, columns in the order of `classes_`."""
        rows = self.model_.predict_proba([str(path) for path in X])
        column = {name: index for index, name in enumerate(self.model_.classes)}
        return rows[:, [column[str(label)] for label in self.classes_]]

    def predict(self, X: Sequence[str | Path]) -> np.ndarray:
        """The most probable label of each image, as the labels were given to `fit`."""
        return self.classes_[self.predict_proba(X).argmax(axis=1)]


def _fractions(split: Any) -> tuple[float, float, float]:
    """The (train, val, test) shares the settings ask for (`"60,20,20"` or a triple), else the automatic ones."""
    from tlearn.config import parse_split
    from tlearn.data.discovery import AUTO_SPLIT, check_split_fractions

    if split is None:
        return AUTO_SPLIT
    return check_split_fractions(parse_split(split) if isinstance(split, str) else tuple(split))


def _splits_with_validation(paths: list[str], labels: list[str], fractions: tuple[float, float, float]) -> list[str]:
    """Each image's hash split (drawn from its absolute path, as a DataFrame's rows are), with one training image
    moved to validation when the hash gives validation none; see the module docstring for why."""
    from tlearn.data.discovery import assign_split, path_fraction

    absolute = [str(Path(path).expanduser().absolute()) for path in paths]
    splits = [assign_split(path, fractions) for path in absolute]
    if "val" in splits:
        return splits
    training = [index for index, split in enumerate(splits) if split == "train"]
    per_class = {label: sum(labels[index] == label for index in training) for label in set(labels)}
    movable = [index for index in training if per_class[labels[index]] > 1]
    if movable:
        splits[max(movable, key=lambda index: path_fraction(absolute[index]))] = "val"
    return splits
