"""The panels `tlearn train --help` groups its options into (Rich help panels), in the order a user meets them."""

from __future__ import annotations

# The help's panels, in the order a user meets the options; every TrainConfig field but `data` is in one
# (a test checks it), and the command's own options (`COMMAND_OPTIONS`) name theirs.
PANELS: dict[str, tuple[str, ...]] = {
    "Data": ("split", "follow_links", "review", "label_sep", "task", "crop", "max_image_pixels"),
    "Backbone and choices": ("backbone", "weights", "mode", "final_fit", "time_budget", "cv_folds"),
    "Smaller networks: a teacher, pruning": ("teacher", "teacher_share", "unlabelled", "prune"),
    "Answers": ("calibrate", "reject", "target_accuracy", "target_coverage"),
    "Fine-tuning": (
        "epochs",
        "batch_size",
        "lr",
        "layer_decay",
        "unfreeze_every",
        "unfreeze_depth",
        "bn",
        "head_init",
        "train_size",
        "eval_size",
        "weight_decay",
        "label_smoothing",
        "warmup_epochs",
        "patience",
        "augment",
        "balance",
        "seed",
    ),
    "Compute": ("device", "embedding_engine", "precision", "compile", "workers", "ray"),
    "Run folder and tracking": ("mlflow", "wandb"),
}
PANEL_OF = {name: panel for panel, names in PANELS.items() for name in names}
RUN_FOLDER, COMPUTE = "Run folder and tracking", "Compute"
