"""Single- or multi-label: the one fact that changes how a classifier learns, is scored and answers, decided once.

A run is `SingleLabel` (every image shows exactly one class: a softmax over the classes, cross-entropy,
accuracy, the top class as the answer) or `MultiLabel` (an image shows any number of classes: one sigmoid per
class, binary cross-entropy, mAP, per-class thresholds, a label set as the answer). The task is chosen once,
where the data is discovered (`task_for`), carried on the prepared data and in the model's `config.json`
(`ModelConfig.task`, read back by `task_named`), and every step that differs asks the task object: the linear
head's likelihood and folds, fine-tuning's loss, the metrics, `predictions.csv` rows, thresholds, class
weights, the engines' answers and the export's output layer. No other module branches on the kind of labels,
the way timm's `ClassificationTask` and `MultiLabelClassificationTask` own their loss and evaluator.

NumPy and scikit-learn (imported when a head is fitted). Torch is never imported: the fine-tuning methods
take torch tensors and use only their methods, and build the loss from the module the caller passes.
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from tlearn.evaluation.calibration import fit_temperature
from tlearn.evaluation.metrics import classification_metrics
from tlearn.evaluation.multilabel import (
    binary_log_loss,
    choose_thresholds,
    mean_average_precision,
    multilabel_metrics,
)
from tlearn.util.numeric import cross_entropy, sigmoid, softmax

if TYPE_CHECKING:
    import torch

# (logits of some rows, the slice of `targets` they are) -> (loss summed over them, its gradient on the logits)
SummedLoss = Callable[[np.ndarray, slice], tuple[float, np.ndarray]]
LABEL_SET_SEPARATOR = "|"  # between the labels of one image in predictions.csv (multi-label runs)
MAX_POSITIVE_WEIGHT = 20.0  # multi-label: a rare class's positives weigh at most this many negatives
MIN_POSITIVE_RATE = 1e-4  # multi-label: probability floor/ceiling of a class with nothing to separate
SOLVER_ITERATIONS = 2000


class LogisticFit(ABC):
    """The task's logistic regression on prepared (standardised) inputs, warm-started from one C to the next."""

    @abstractmethod
    def fit(self, inputs: np.ndarray, targets: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
        """Fit with inverse L2 strength `c`; returns (K, D) coefficients and (K,) intercepts, one row per class."""

    @abstractmethod
    def summed_loss(self, targets: np.ndarray, num_classes: int) -> tuple[SummedLoss, float]:
        """The same likelihood for a fit over chunks of rows (training/streaming_head.py): a function of one
        chunk's logits and row slice giving the loss summed over those rows and its gradient on the logits, and
        the factor on the L2 penalty 0.5 * |W|^2 that makes the optimum `fit`'s at the same C."""


class Task(ABC):
    """What differs between single- and multi-label classification (see the module docstring).

    Attributes:
        name: the task as `config.json` and `metrics.json` spell it ("multiclass" or "multilabel").
        title: how the console and tables name it.
        right_answer: what an image answered right means, as the console says it.
        activation: the output function, as the exported graph's description names it.
        answers_with_sets: an answer is a set of labels (possibly empty), not one class.
        calibration_note: why temperature scaling does not apply (None: it does).
        select_note: why backbone selection (`tlearn select`) does not apply (None: it does).
        reject_note: why an "unknown" answer rule does not apply (None: it does).
        crop_mode: how `--crop auto` fits a picture to the backbone's square input (data/preprocess.py).
    """

    name: ClassVar[str]
    title: ClassVar[str]
    right_answer: ClassVar[str]
    activation: ClassVar[str]
    answers_with_sets: ClassVar[bool]
    calibration_note: ClassVar[str | None] = None
    select_note: ClassVar[str | None] = None
    reject_note: ClassVar[str | None] = None
    crop_mode: ClassVar[str]

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(self.name)

    # What a run learns from

    @abstractmethod
    def targets(self, label_indices: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
        """What the model is trained and scored against, from every image's class indices (its first label
        first): (N,) class indices for single-label data, (N, K) 0/1 indicators for multi-label data."""

    @abstractmethod
    def class_weights(self, targets: np.ndarray, num_classes: int) -> np.ndarray:
        """Loss weights for imbalanced training targets: per class (single-label), per class's positives
        (multi-label)."""

    @abstractmethod
    def target_matrix(self, targets: np.ndarray, num_classes: int) -> np.ndarray:
        """(N, K) float32: the targets as the probabilities a perfect model would give (one-hot rows for
        single-label data, the 0/1 indicators for multi-label data)."""

    def taught_targets(self, targets: np.ndarray, teacher: np.ndarray, share: float) -> np.ndarray:
        """(N, K) float32 training targets that mix the labels with a teacher model's probabilities
        (knowledge distillation): (1 - share) * labels + share * teacher. Fine-tuning's losses take such soft
        targets as they are (cross-entropy with probability targets; binary cross-entropy per class).

        Example:
            >>> SINGLE_LABEL.taught_targets(np.array([0]), np.array([[0.6, 0.4]]), 0.5)
            array([[0.8, 0.2]], dtype=float32)
        """
        labels = self.target_matrix(targets, teacher.shape[1])
        return ((1.0 - share) * labels + share * teacher).astype(np.float32)

    # How a model answers

    @abstractmethod
    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """(N, K) logits → (N, K) probabilities."""

    @abstractmethod
    def torch_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """The same on a torch tensor (the exported graph's last layer)."""

    @abstractmethod
    def answer(self, row: np.ndarray, thresholds: Sequence[float] | None) -> tuple[int, ...]:
        """The class indices one image is given from its (K,) probabilities, most probable first."""

    def label_set(self, row: np.ndarray, thresholds: Sequence[float] | None) -> list[int] | None:
        """The label set of a model that answers with sets (None for one that answers one class)."""
        return list(self.answer(row, thresholds)) if self.answers_with_sets else None

    @abstractmethod
    def right(self, probabilities: np.ndarray, targets: np.ndarray, thresholds: Sequence[float] | None) -> np.ndarray:
        """(N,) whether each image's whole answer is right (the top class; the whole label set at `thresholds`,
        0.5 when None)."""

    @abstractmethod
    def loss(self, probabilities: np.ndarray, targets: np.ndarray) -> float:
        """Mean log-loss of the probabilities (0 for no images)."""

    @abstractmethod
    def validation_score(self, probabilities: np.ndarray, targets: np.ndarray) -> float:
        """The threshold-free score fine-tuning keeps its best epoch by: accuracy, or mAP for label sets
        (whose thresholds are only chosen after training)."""

    @abstractmethod
    def choose_thresholds(self, probabilities: np.ndarray, targets: np.ndarray) -> list[float] | None:
        """Per-class decision thresholds chosen on held-out probabilities (None: the top class is the answer)."""

    @abstractmethod
    def untuned_thresholds(self, num_classes: int) -> list[float] | None:
        """Thresholds before any are chosen (a model being trained)."""

    @abstractmethod
    def threshold_problem(self, thresholds: Sequence[float] | None, num_classes: int) -> str | None:
        """What is wrong with a model's stored thresholds (None when they fit the task)."""

    def temperature(self, probabilities: np.ndarray, targets: np.ndarray) -> float | None:
        """The calibration temperature fitted on held-out probabilities (None where it does not apply)."""
        return None

    # How it is measured and written down

    @abstractmethod
    def metrics(
        self, targets: np.ndarray, probabilities: np.ndarray, classes: list[str], thresholds: Sequence[float] | None
    ) -> dict[str, Any]:
        """One evaluated split's `metrics.json` entry (its `task` says which task measured it)."""

    @abstractmethod
    def headline(self, metrics: dict[str, Any]) -> str:
        """One console line of a split's figures."""

    def label_cell(self, names: Sequence[str]) -> str:
        """An image's labels as one `predictions.csv` cell."""
        return LABEL_SET_SEPARATOR.join(names)

    @abstractmethod
    def label_names(self, cell: str) -> list[str]:
        """The labels of one `label` or `predicted` cell (inverse of `label_cell`)."""

    def prediction_rows(
        self,
        relpaths: Sequence[str],
        targets: np.ndarray,
        probabilities: np.ndarray,
        classes: Sequence[str],
        thresholds: Sequence[float] | None,
        *,
        split: str | None = None,
    ) -> list[dict[str, Any]]:
        """Rows of `predictions.csv` for one split: the given and predicted labels, the confidence (the highest
        probability) and every class's probability; a training run's rows carry their split."""
        rows = []
        for relpath, given, row in zip(relpaths, targets, probabilities, strict=True):
            rows.append(
                {
                    "path": relpath,
                    **({"split": split} if split is not None else {}),
                    "label": self.label_cell([classes[k] for k in self.given(given)]),
                    "predicted": self.label_cell([classes[k] for k in self.answer(row, thresholds)]),
                    "confidence": round(float(row.max()), 6),
                    **{f"p_{name}": round(float(value), 6) for name, value in zip(classes, row, strict=True)},
                }
            )
        return rows

    @abstractmethod
    def given(self, target: np.ndarray) -> list[int]:
        """The class indices one image's target carries."""

    # What the audit checks (confident learning: tlearn.audits.label_errors)

    @abstractmethod
    def label_problems(self, probabilities: np.ndarray, targets: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """The classification problems whose given answers confident learning checks, each as (N, C)
        probabilities and (N,) given answers: the one K-class problem of single-label data; one yes/no problem
        per class for multi-label data (index 1: the class is in the image's set), as cleanlab's multi-label
        search also splits it."""

    @abstractmethod
    def corrected(self, given: Sequence[int], suggestions: dict[int, int]) -> list[int]:
        """The class indices an image with the `given` classes gets once each problem that doubts it
        (problem index → the answer it suggests) has its way, in the order given."""

    @abstractmethod
    def agreement(self, row: np.ndarray, indices: Sequence[int]) -> float:
        """How far (K,) probabilities back the answer `indices`: the class's probability (single-label); the
        weakest of its K decisions, p for a class in the set and 1 - p for one out of it (multi-label)."""

    # The linear head on embeddings

    @abstractmethod
    def sample(self, targets: np.ndarray, size: int, seed: int) -> np.ndarray:
        """Sorted indices of about `size` images to choose the head's settings on, when there are too many."""

    @abstractmethod
    def folds(self, targets: np.ndarray, folds: int, seed: int) -> np.ndarray:
        """Cross-validation fold per image: every class spread over the folds, in a seeded order. At most
        `folds` folds, fewer where the data cannot fill them (at least 2); `fold_count` says how many."""

    @abstractmethod
    def fold_count(self, targets: np.ndarray, folds: int) -> int:
        """The folds `folds` will use for these targets."""

    @abstractmethod
    def logistic(self, *, balanced: bool, seed: int) -> LogisticFit:
        """The head's likelihood: a multinomial logistic regression, or one binary regression per class."""

    # Fine-tuning (torch tensors in; the caller passes torch.nn so this module never imports torch)

    @abstractmethod
    def torch_loss(self, nn: Any, class_weights: torch.Tensor | None, label_smoothing: float) -> torch.nn.Module:
        """The fine-tuning loss module (`nn` is `torch.nn`)."""

    @abstractmethod
    def torch_right(self, logits: torch.Tensor, targets: torch.Tensor) -> int:
        """Images of a training batch answered right (the top class; the whole label set at 0.5); targets may be
        soft (`taught_targets`): their top class, their labels at 0.5."""


class SingleLabel(Task):
    """One class per image: softmax, cross-entropy, accuracy; the answer is the most probable class."""

    name = "multiclass"
    title = "single-label"
    right_answer = "the top class right"
    activation = "softmax"
    answers_with_sets = False
    crop_mode = "center"  # timm's evaluation crop: the object of a one-class photo is mostly central

    def targets(self, label_indices: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
        return np.asarray([indices[0] for indices in label_indices], dtype=np.int64)

    def target_matrix(self, targets: np.ndarray, num_classes: int) -> np.ndarray:
        return np.eye(num_classes, dtype=np.float32)[targets]

    def class_weights(self, targets: np.ndarray, num_classes: int) -> np.ndarray:
        """n / (K * count): the weighting scikit-learn calls "balanced"."""
        counts = np.bincount(targets, minlength=num_classes).astype(np.float64)
        return (len(targets) / (num_classes * np.maximum(counts, 1))).astype(np.float32)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return softmax(logits)

    def torch_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=1)

    def answer(self, row: np.ndarray, thresholds: Sequence[float] | None) -> tuple[int, ...]:
        return (int(np.argmax(row)),)

    def right(self, probabilities: np.ndarray, targets: np.ndarray, thresholds: Sequence[float] | None) -> np.ndarray:
        return probabilities.argmax(axis=1) == targets

    def loss(self, probabilities: np.ndarray, targets: np.ndarray) -> float:
        return cross_entropy(probabilities, targets)

    def validation_score(self, probabilities: np.ndarray, targets: np.ndarray) -> float:
        return float(self.right(probabilities, targets, None).mean()) if len(targets) else 0.0

    def choose_thresholds(self, probabilities: np.ndarray, targets: np.ndarray) -> list[float] | None:
        return None

    def untuned_thresholds(self, num_classes: int) -> list[float] | None:
        return None

    def threshold_problem(self, thresholds: Sequence[float] | None, num_classes: int) -> str | None:
        if thresholds is not None:
            return f"thresholds are only used by multilabel models (this is {self.name})"
        return None

    def temperature(self, probabilities: np.ndarray, targets: np.ndarray) -> float | None:
        return fit_temperature(probabilities, targets)

    def metrics(
        self, targets: np.ndarray, probabilities: np.ndarray, classes: list[str], thresholds: Sequence[float] | None
    ) -> dict[str, Any]:
        return {"task": self.name, **classification_metrics(targets, probabilities, classes)}

    def headline(self, metrics: dict[str, Any]) -> str:
        line = (
            f"accuracy {_figure(metrics, 'accuracy', '.1%')}  balanced {metrics['balanced_accuracy']:.1%}  "
            f"macro F1 {_figure(metrics, 'macro_f1', '.3f')}  (n={metrics['n']})"
        )
        reject = metrics.get("reject")
        if reject and reject.get("selective_accuracy") is not None:
            line += (
                f"; answered {reject['coverage']:.0%} ({reject['score']} score >= {reject['threshold']:.4g}) "
                f"with accuracy {reject['selective_accuracy']:.4f}"
            )
        return line

    def label_cell(self, names: Sequence[str]) -> str:
        return names[0]

    def label_names(self, cell: str) -> list[str]:
        return [cell]

    def given(self, target: np.ndarray) -> list[int]:
        return [int(target)]

    def label_problems(self, probabilities: np.ndarray, targets: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(probabilities, np.asarray(targets, dtype=np.int64))]

    def corrected(self, given: Sequence[int], suggestions: dict[int, int]) -> list[int]:
        return [suggestions[0]] if suggestions else list(given)

    def agreement(self, row: np.ndarray, indices: Sequence[int]) -> float:
        return float(row[indices[0]])

    def sample(self, targets: np.ndarray, size: int, seed: int) -> np.ndarray:
        """Each class keeps its share (at least 2 images)."""
        rng = np.random.default_rng(seed)
        share = size / len(targets)
        chosen = []
        for label in np.unique(targets):
            members = np.flatnonzero(targets == label)
            count = max(2, min(len(members), round(share * len(members))))
            chosen.append(rng.choice(members, size=count, replace=False))
        return np.sort(np.concatenate(chosen))

    def folds(self, targets: np.ndarray, folds: int, seed: int) -> np.ndarray:
        """Each class dealt round-robin over the folds in a seeded random order; classes start on different
        folds, so small classes do not pile up in fold 0."""
        folds = self.fold_count(targets, folds)
        rng = np.random.default_rng(seed)
        assignment = np.empty(len(targets), dtype=np.int64)
        offset = 0
        for label in np.unique(targets):
            members = np.flatnonzero(targets == label)
            rng.shuffle(members)
            assignment[members] = (np.arange(len(members)) + offset) % folds
            offset += len(members)
        return assignment

    def fold_count(self, targets: np.ndarray, folds: int) -> int:
        """At most `folds`, and no more than the smallest class has images (every fold sees every class)."""
        counts = np.bincount(targets)
        return max(2, min(folds, int(counts[counts > 0].min())))

    def logistic(self, *, balanced: bool, seed: int) -> LogisticFit:
        return _Multinomial(balanced=balanced, seed=seed)

    def torch_loss(self, nn: Any, class_weights: torch.Tensor | None, label_smoothing: float) -> torch.nn.Module:
        return nn.CrossEntropyLoss(weight=class_weights, label_smoothing=label_smoothing)

    def torch_right(self, logits: torch.Tensor, targets: torch.Tensor) -> int:
        labels = targets.argmax(1) if targets.ndim == 2 else targets  # soft targets (a teacher's): their top class
        return int((logits.argmax(1) == labels).sum())


class MultiLabel(Task):
    """Any number of classes per image: a sigmoid per class, binary cross-entropy, mAP; the answer is the set
    of classes whose probability reaches its threshold (chosen per class on held-out images)."""

    name = "multilabel"
    title = "multi-label"
    right_answer = "every label right, at 0.5"
    activation = "sigmoid"
    answers_with_sets = True
    # The labels of a multi-label picture may sit at its edges: a centre crop of two photos side by side keeps
    # half of each (benchmarks/bench_multilabel.py --layout side measures the difference).
    crop_mode = "squash"
    calibration_note = "multi-label thresholds are chosen on the probabilities as they are"
    select_note = "backbone selection ranks backbones on single-label data"
    reject_note = (
        "--reject is for single-label models; a multi-label model already answers no label when no class "
        "reaches its threshold"
    )

    def targets(self, label_indices: Sequence[Sequence[int]], num_classes: int) -> np.ndarray:
        matrix = np.zeros((len(label_indices), num_classes), dtype=np.float32)
        for row, indices in enumerate(label_indices):
            matrix[row, list(indices)] = 1.0
        return matrix

    def target_matrix(self, targets: np.ndarray, num_classes: int) -> np.ndarray:
        return np.asarray(targets, dtype=np.float32)

    def class_weights(self, targets: np.ndarray, num_classes: int) -> np.ndarray:
        """Each class's negatives-to-positives ratio (the positive weight of its binary loss), at most
        MAX_POSITIVE_WEIGHT."""
        positives = targets.sum(axis=0)
        ratio = (len(targets) - positives) / np.maximum(positives, 1)
        return np.clip(ratio, 1.0, MAX_POSITIVE_WEIGHT).astype(np.float32)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        return sigmoid(logits)

    def torch_probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def answer(self, row: np.ndarray, thresholds: Sequence[float] | None) -> tuple[int, ...]:
        chosen = np.flatnonzero(row >= _thresholds(thresholds, len(row)))
        return tuple(int(i) for i in chosen[np.argsort(-row[chosen], kind="stable")])

    def right(self, probabilities: np.ndarray, targets: np.ndarray, thresholds: Sequence[float] | None) -> np.ndarray:
        decided = probabilities >= _thresholds(thresholds, probabilities.shape[1])
        return (decided == (targets > 0)).all(axis=1)

    def loss(self, probabilities: np.ndarray, targets: np.ndarray) -> float:
        return binary_log_loss(probabilities, targets)

    def validation_score(self, probabilities: np.ndarray, targets: np.ndarray) -> float:
        return mean_average_precision(targets, probabilities)

    def choose_thresholds(self, probabilities: np.ndarray, targets: np.ndarray) -> list[float] | None:
        return choose_thresholds(probabilities, targets)

    def untuned_thresholds(self, num_classes: int) -> list[float] | None:
        return [0.5] * num_classes

    def threshold_problem(self, thresholds: Sequence[float] | None, num_classes: int) -> str | None:
        if thresholds is None or len(thresholds) != num_classes:
            count = "none" if thresholds is None else len(thresholds)
            return f"a multilabel model needs one threshold per class ({num_classes}), got {count}"
        if not all(np.isfinite(value) and 0.0 <= value <= 1.0 for value in thresholds):
            return f"thresholds must be probabilities between 0 and 1, got {list(thresholds)}"
        return None

    def metrics(
        self, targets: np.ndarray, probabilities: np.ndarray, classes: list[str], thresholds: Sequence[float] | None
    ) -> dict[str, Any]:
        return multilabel_metrics(targets, probabilities, list(_thresholds(thresholds, len(classes))), classes)

    def headline(self, metrics: dict[str, Any]) -> str:
        return (
            f"mAP {metrics['mAP']:.3f}  subset accuracy {_figure(metrics, 'subset_accuracy', '.1%')}  micro F1 "
            f"{metrics['micro_f1']:.3f}  macro F1 {metrics['macro_f1']:.3f}  (n={metrics['n']})"
        )

    def label_names(self, cell: str) -> list[str]:
        return [name for name in cell.split(LABEL_SET_SEPARATOR) if name]

    def given(self, target: np.ndarray) -> list[int]:
        return [int(k) for k in np.flatnonzero(target)]

    def label_problems(self, probabilities: np.ndarray, targets: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        return [
            (np.stack([1.0 - probabilities[:, k], probabilities[:, k]], axis=1), (targets[:, k] > 0).astype(np.int64))
            for k in range(probabilities.shape[1])
        ]

    def corrected(self, given: Sequence[int], suggestions: dict[int, int]) -> list[int]:
        """The given set without the classes suggested out, then the classes suggested in (by index).

        Example:
            >>> MULTI_LABEL.corrected([2, 0], {0: 0, 1: 1})
            [2, 1]
        """
        kept = [k for k in given if suggestions.get(k, 1) == 1]
        return kept + sorted(k for k, answer in suggestions.items() if answer == 1 and k not in kept)

    def agreement(self, row: np.ndarray, indices: Sequence[int]) -> float:
        """The weakest decision: for the set {0}, p(0) = 0.9, 1 - p(1) = 0.7 and 1 - p(2) = 0.8.

        Example:
            >>> round(MULTI_LABEL.agreement(np.array([0.9, 0.3, 0.2]), [0]), 2)
            0.7
        """
        backed = np.where(np.isin(np.arange(len(row)), list(indices)), row, 1.0 - row)
        return float(backed.min()) if len(row) else 1.0

    def sample(self, targets: np.ndarray, size: int, seed: int) -> np.ndarray:
        """A plain random sample (a label set has no single class to stratify by)."""
        return np.sort(np.random.default_rng(seed).choice(len(targets), size=size, replace=False))

    def folds(self, targets: np.ndarray, folds: int, seed: int) -> np.ndarray:
        """Each class's images spread over the folds, the rarest class placed first (its few images spread
        out), then the images without labels."""
        folds = self.fold_count(targets, folds)
        rng = np.random.default_rng(seed)
        assignment = np.full(len(targets), -1, dtype=np.int64)
        next_fold = 0
        for column in np.argsort(targets.sum(axis=0), kind="stable"):
            members = np.flatnonzero((targets[:, column] > 0) & (assignment < 0))
            rng.shuffle(members)
            assignment[members] = (np.arange(len(members)) + next_fold) % folds
            next_fold = (next_fold + len(members)) % folds
        rest = np.flatnonzero(assignment < 0)
        assignment[rest] = (np.arange(len(rest)) + next_fold) % folds
        return assignment

    def fold_count(self, targets: np.ndarray, folds: int) -> int:
        """At most `folds`, with at least two images per fold."""
        return max(2, min(folds, len(targets) // 2))

    def logistic(self, *, balanced: bool, seed: int) -> LogisticFit:
        """One regression per class; `balanced` does not apply (the binary losses see each class's share)."""
        return _OneVsRest(seed=seed)

    def torch_loss(self, nn: Any, class_weights: torch.Tensor | None, label_smoothing: float) -> torch.nn.Module:
        return nn.BCEWithLogitsLoss(pos_weight=class_weights)

    def torch_right(self, logits: torch.Tensor, targets: torch.Tensor) -> int:
        return int(((logits > 0) == (targets > 0.5)).all(dim=1).sum())


SINGLE_LABEL = SingleLabel()
MULTI_LABEL = MultiLabel()
TASKS: dict[str, Task] = {task.name: task for task in (SINGLE_LABEL, MULTI_LABEL)}


def task_named(name: str) -> Task:
    """The task a `config.json` or `metrics.json` names ("multiclass" or "multilabel").

    Example:
        >>> task_named("multilabel").activation
        'sigmoid'
    """
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(TASKS)}") from None


def task_for(setting: str, *, has_label_sets: bool) -> Task:
    """The task of a run: the one `setting` names, or with "auto" multi-label exactly when some image of the
    data carries several labels.

    Example:
        >>> task_for("auto", has_label_sets=False), task_for("multilabel", has_label_sets=False)
        (SingleLabel(), MultiLabel())
    """
    if setting == "auto":
        return MULTI_LABEL if has_label_sets else SINGLE_LABEL
    return task_named(setting)


def measured_by(metrics: dict[str, Any]) -> Task:
    """The task that measured a split's `metrics.json` entry (a file without `task` is single-label's)."""
    return task_named(metrics.get("task", SINGLE_LABEL.name))


def headline(metrics: dict[str, Any]) -> str:
    """One console line of a split's figures, as the task that measured them words it.

    Example:
        >>> headline({"accuracy": 0.95, "accuracy_interval": [0.9, 0.97], "balanced_accuracy": 0.94,
        ...           "macro_f1": 0.945, "macro_f1_interval": [0.91, 0.975], "n": 153})
        'accuracy 95.0% (95% CI 90.0–97.0%)  balanced 94.0%  macro F1 0.945 (95% CI 0.910–0.975)  (n=153)'
    """
    return measured_by(metrics).headline(metrics)


def _figure(metrics: dict[str, Any], name: str, spec: str) -> str:
    """A figure with its 95% interval when the metrics carry one (`NAME_interval`)."""
    value, interval = metrics[name], metrics.get(f"{name}_interval")
    if not interval:
        return format(value, spec)
    low, high = (format(bound, spec) for bound in interval)
    if spec.endswith("%"):
        low = low.rstrip("%")
    return f"{format(value, spec)} (95% CI {low}–{high})"


def _thresholds(thresholds: Sequence[float] | None, num_classes: int) -> np.ndarray:
    return np.full(num_classes, 0.5) if thresholds is None else np.asarray(thresholds, dtype=np.float64)


class _Multinomial(LogisticFit):
    """scikit-learn's L-BFGS multinomial logistic regression; two classes become a symmetric two-row head
    (sigmoid(z) == softmax([-z/2, z/2])[1]: the same probabilities)."""

    def __init__(self, *, balanced: bool, seed: int) -> None:
        from sklearn.linear_model import LogisticRegression  # deferred: ~1.5 s to import

        self.model = LogisticRegression(
            max_iter=SOLVER_ITERATIONS,
            class_weight="balanced" if balanced else None,
            warm_start=True,
            random_state=seed,
        )

    def summed_loss(self, targets: np.ndarray, num_classes: int) -> tuple[SummedLoss, float]:
        """Cross-entropy (class-weighted like scikit-learn's "balanced"). Two classes: scikit-learn fits one row w
        under 0.5 * |w|^2; the symmetric rows (-w/2, w/2) carry a quarter of that each, so the penalty doubles."""
        balanced = self.model.class_weight == "balanced"
        weights = SINGLE_LABEL.class_weights(targets, num_classes) if balanced else np.ones(num_classes)
        row_weights = weights.astype(np.float32)[targets]

        def loss(logits: np.ndarray, rows: slice) -> tuple[float, np.ndarray]:
            labels, weight = targets[rows], row_weights[rows]
            shifted = logits - logits.max(axis=1, keepdims=True)
            log_norm = np.log(np.exp(shifted).sum(axis=1))
            picked = np.arange(len(labels)), labels
            summed = -float(np.dot(weight, shifted[picked] - log_norm))
            gradient = np.exp(shifted - log_norm[:, None])  # softmax; minus the true class's one-hot below
            gradient[picked] -= 1.0
            return summed, gradient * weight[:, None]

        return loss, 2.0 if num_classes == 2 else 1.0

    def fit(self, inputs: np.ndarray, targets: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.exceptions import ConvergenceWarning

        self.model.set_params(C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            self.model.fit(inputs, targets)
        coefficients, intercepts = self.model.coef_, self.model.intercept_
        if coefficients.shape[0] == 1:
            coefficients = np.vstack([-coefficients[0] / 2, coefficients[0] / 2])
            intercepts = np.array([-intercepts[0] / 2, intercepts[0] / 2])
        return coefficients, intercepts


class _OneVsRest(LogisticFit):
    """One warm-started binary L-BFGS regression per class; a class with nothing to separate (all or none of
    the images) gets a constant, nearly certain answer."""

    def __init__(self, *, seed: int) -> None:
        self.seed = seed
        self.models: list[Any] = []

    def summed_loss(self, targets: np.ndarray, num_classes: int) -> tuple[SummedLoss, float]:
        """Binary cross-entropy per class, unweighted like `fit`'s regressions."""

        def loss(logits: np.ndarray, rows: slice) -> tuple[float, np.ndarray]:
            truth = targets[rows]
            summed = float((np.logaddexp(0.0, logits) - truth * logits).sum())  # -log sigmoid terms, stably
            return summed, sigmoid(logits) - truth

        return loss, 1.0

    def fit(self, inputs: np.ndarray, targets: np.ndarray, c: float) -> tuple[np.ndarray, np.ndarray]:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression  # deferred: ~1.5 s to import

        classes = targets.shape[1]
        if not self.models:
            self.models = [
                LogisticRegression(max_iter=SOLVER_ITERATIONS, warm_start=True, random_state=self.seed)
                for _ in range(classes)
            ]
        coefficients, intercepts = np.zeros((classes, inputs.shape[1])), np.zeros(classes)
        for column, model in enumerate(self.models):
            truth = targets[:, column] > 0
            if truth.all() or not truth.any():
                rate = float(np.clip(truth.mean(), MIN_POSITIVE_RATE, 1 - MIN_POSITIVE_RATE))
                intercepts[column] = np.log(rate / (1 - rate))
                continue
            model.set_params(C=c)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(inputs, truth)
            coefficients[column], intercepts[column] = model.coef_[0], model.intercept_[0]
        return coefficients, intercepts
