"""Which embedded backbone a run learns on, when the user leaves it to tlearn (`--backbone auto`, the default).

The embedded ImageNet backbones differ by data set more than their ImageNet scores suggest: a linear head on
Lite1's embeddings scores 97.4% on hymenoptera against Lite0's 94.8%, Lite2's 83.4% on mri against 82.3%, and
Lite0 stays ahead on signs (benchmarks/results/features.json). Each candidate's embeddings are cached, so
trying one costs an embedding pass and seconds of fitting; the run then learns (linear head and fine-tuning)
on the winner.

The choice is made the way the head's own C is, on the train + val images only (the test split stays unseen):
each candidate's linear head is cross-validated over `DRAWS` draws of the folds, because on a few hundred
images one draw moves a backbone's out-of-fold accuracy by 1-2 points, as much as the backbones differ. The
candidates are tried cheapest first, and a more expensive one replaces the current winner only when its mean
out-of-fold accuracy is higher by at least `MARGIN`: a bigger backbone costs up to 2.3x the time to embed,
fine-tune and serve, which a difference within the folds' noise does not pay for. Below `MIN_IMAGES` images the
folds cannot tell backbones apart at all, and the cheapest is used. Beyond `SAMPLE_LIMIT` images, the
candidates are compared on a stratified sample of that many (the winner then embeds the rest).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from tlearn.backbones.result_cache import ResultCache
from tlearn.evaluation.intervals import wilson_interval
from tlearn.evaluation.tasks import Task
from tlearn.runs.summary import BackboneTrial
from tlearn.training.head import cached_select_c

DRAWS = 3  # draws of the folds averaged per candidate (3 gave the ranking of 10 on every shared set)
MARGIN = 0.01  # mean out-of-fold accuracy a more expensive backbone must add to be chosen
MIN_IMAGES = 100  # train + val images below which the cheapest candidate is used without comparing
SAMPLE_LIMIT = 1000  # train + val images the candidates are compared on at most


@dataclass(frozen=True)
class CandidateFeatures:
    """One candidate backbone's embeddings of the images the comparison uses."""

    name: str  # how the run names the backbone (e.g. "tf_efficientnet_lite1")
    embeddings: np.ndarray  # (N, D) train + val images (or their sample), in the order of the targets
    embedding_seconds: float = 0.0


@dataclass(frozen=True)
class BackboneChoice:
    """The chosen candidate (its index in the candidates) and how every candidate fared, with the reason."""

    chosen: int
    trials: list[BackboneTrial]
    reason: str


def compare_backbones(
    candidates: Sequence[CandidateFeatures],
    targets: np.ndarray,
    num_classes: int,
    task: Task,
    *,
    balanced: bool = False,
    folds: int = 5,
    seed: int = 0,
    results: ResultCache | None = None,
) -> BackboneChoice:
    """Cross-validate a linear head on each candidate's embeddings (`DRAWS` draws of the folds) and choose.

    Args:
        candidates: the backbones' embeddings of the same images, cheapest backbone first.
        targets: the task's targets of those images.
        num_classes: number of classes.
        task: single- or multi-label.
        balanced: class-weighted loss (imbalanced data), as the run's head uses it.
        folds: cross-validation folds per draw.
        seed: the first draw's seed (the others follow it).
        results: where earlier identical cross-validations are read from (None: computed).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = np.repeat([0, 1], 60)
        >>> weak = CandidateFeatures("small", rng.normal(size=(120, 8)) + 0.3 * y[:, None])
        >>> strong = CandidateFeatures("large", rng.normal(size=(120, 8)) + 2.0 * y[:, None])
        >>> from tlearn.evaluation.tasks import SINGLE_LABEL
        >>> choice = compare_backbones([weak, strong], y, 2, SINGLE_LABEL)
        >>> choice.chosen, choice.trials[1].name, choice.trials[1].chosen
        (1, 'large', True)
    """
    trials = [
        _trial(candidate, targets, num_classes, task, balanced=balanced, folds=folds, seed=seed, results=results)
        for candidate in candidates
    ]
    chosen = 0
    for index in range(1, len(trials)):
        if trials[index].cv_accuracy >= trials[chosen].cv_accuracy + MARGIN:
            chosen = index
    trials = [trial.model_copy(update={"chosen": index == chosen}) for index, trial in enumerate(trials)]
    return BackboneChoice(chosen, trials, _reason(trials, chosen))


def comparison_rows(targets: np.ndarray, task: Task, seed: int) -> np.ndarray | None:
    """The rows (of train + val, in order) the candidates are compared on: all of them, a sample beyond
    SAMPLE_LIMIT, or None below MIN_IMAGES (too few to tell backbones apart: the cheapest is used)."""
    if len(targets) < MIN_IMAGES:
        return None
    if len(targets) <= SAMPLE_LIMIT:
        return np.arange(len(targets))
    return task.sample(targets, SAMPLE_LIMIT, seed)


def _trial(
    candidate: CandidateFeatures,
    targets: np.ndarray,
    num_classes: int,
    task: Task,
    *,
    balanced: bool,
    folds: int,
    seed: int,
    results: ResultCache | None,
) -> BackboneTrial:
    started = time.perf_counter()
    accuracies, losses, cs = [], [], []
    for draw in range(DRAWS):
        options = {"task": task, "balanced": balanced, "folds": folds, "seed": seed + draw}
        selection = cached_select_c(results, candidate.embeddings, targets, num_classes, **options)
        accuracies.append(selection.chosen["cv_accuracy"])
        losses.append(selection.chosen["cv_loss"])
        cs.append(selection.c)
    mean = float(np.mean(accuracies))
    low, high = wilson_interval(round(mean * len(targets)), len(targets))
    return BackboneTrial(
        name=candidate.name,
        cv_accuracy=round(mean, 6),
        cv_accuracy_draws=[round(value, 6) for value in accuracies],
        cv_accuracy_interval=[round(low, 6), round(high, 6)],
        cv_loss=round(float(np.mean(losses)), 6),
        c=float(np.median(cs)),
        images=len(targets),
        seconds=round(candidate.embedding_seconds + time.perf_counter() - started, 3),
    )


def _reason(trials: list[BackboneTrial], chosen: int) -> str:
    winner = trials[chosen]
    others = ", ".join(f"{trial.name} {100 * trial.cv_accuracy:.1f}%" for trial in trials if trial is not winner)
    return (
        f"{winner.name}: its linear head answered {100 * winner.cv_accuracy:.1f}% of {winner.images} train + val "
        f"images right out of fold (mean of {DRAWS} draws; {others}); a larger backbone is chosen only when it "
        f"adds at least {100 * MARGIN:.0f} point"
    )
