"""Learning the classifier: the linear head on cached embeddings, fine-tuning, checkpoints, training
augmentation, multi-process (torchrun) helpers and experiment tracking."""
