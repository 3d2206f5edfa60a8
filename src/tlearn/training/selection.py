"""Choosing between the linear head and the fine-tuned network on the same validation images (NumPy only).

Both candidates are scored on the validation split: the linear head through its cross-validation (each
validation image scored by a head that never saw it), the fine-tuned network after training on the training
split alone. Fine-tuning is kept only when it answers more validation images right, or as many with a clearly
lower loss (by LOSS_MARGIN), and only if it improved on its own starting point; the comparison says how many
images each got right where the other did not, and McNemar's exact test tells whether the difference is more
than chance.
"""

from __future__ import annotations

import numpy as np

from tlearn.evaluation.intervals import mcnemar_p_value
from tlearn.evaluation.tasks import SINGLE_LABEL, Task  # noqa: F401 - SINGLE_LABEL: the doctest's task
from tlearn.runs.summary import SelectionRecord

LOSS_MARGIN = 0.9  # on a tie in right answers, fine-tuning's loss must be below this share of the linear head's


def choose(
    task: Task,
    linear: np.ndarray,
    finetuned: np.ndarray,
    targets: np.ndarray,
    thresholds: tuple[list[float] | None, list[float] | None] = (None, None),
    *,
    improved: bool = True,
) -> SelectionRecord:
    """Compare two candidates' (N, K) validation probabilities on the same images.

    An image is answered right when the task says so (the top class; a multi-label image's whole label set, at
    each candidate's own `thresholds` = (linear's, fine-tuning's)); the loss is the task's log-loss.
    `improved` is False when fine-tuning's best epoch was its starting point (the linear head it began from):
    it then brought nothing, whatever the numbers, and the linear head is kept.

    Example:
        >>> labels = np.array([0, 1, 1, 0])
        >>> choose(SINGLE_LABEL, np.eye(2)[[0, 0, 1, 0]], np.eye(2)[[0, 1, 1, 0]], labels).chosen
        'finetune'
    """
    return _compare(
        task.right(linear, targets, thresholds[0]),
        task.right(finetuned, targets, thresholds[1]),
        (task.loss(linear, targets), task.loss(finetuned, targets)),
        improved=improved,
    )


def _compare(
    linear_right: np.ndarray, finetune_right: np.ndarray, losses: tuple[float, float], *, improved: bool
) -> SelectionRecord:
    """The choice from each candidate's right answers per image and (linear, fine-tuning) losses."""
    only_linear, only_finetune = (
        int((linear_right & ~finetune_right).sum()),
        int((finetune_right & ~linear_right).sum()),
    )
    linear_loss, finetune_loss = losses
    better = improved and (
        finetune_right.sum() > linear_right.sum()
        or (finetune_right.sum() == linear_right.sum() and finetune_loss < LOSS_MARGIN * linear_loss)
    )
    p_value = mcnemar_p_value(only_finetune, only_linear)
    n = len(linear_right)
    verdict = "more than chance" if p_value < 0.05 else "within chance on this many images"
    if not improved:
        reason = (
            f"fine-tuning never did better on validation than the linear head it started from, so the linear "
            f"head is kept ({int(linear_right.sum())}/{n} validation images right)"
        )
    elif better:
        reason = (
            f"fine-tuning answered {int(finetune_right.sum())}/{n} validation images right, the linear head "
            f"{int(linear_right.sum())}/{n} (fine-tuning alone right on {only_finetune}, linear alone on "
            f"{only_linear}; McNemar p = {p_value:.3g}: {verdict})"
        )
    else:
        reason = (
            f"the linear head answered {int(linear_right.sum())}/{n} validation images right, fine-tuning "
            f"{int(finetune_right.sum())}/{n}, so the cheaper linear head is kept (fine-tuning alone right on "
            f"{only_finetune}, linear alone on {only_linear}; McNemar p = {p_value:.3g}: {verdict})"
        )
    chosen = "finetune" if better else "linear"
    return SelectionRecord(
        chosen=chosen,
        kept=chosen,
        images=n,
        linear_accuracy=float(linear_right.mean()),
        finetune_accuracy=float(finetune_right.mean()),
        linear_loss=linear_loss,
        finetune_loss=finetune_loss,
        only_linear_right=only_linear,
        only_finetune_right=only_finetune,
        p_value=p_value,
        reason=reason,
    )
