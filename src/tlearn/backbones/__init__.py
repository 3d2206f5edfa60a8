"""Pretrained backbones and their embeddings: which weights a name means (registry), building timm models,
batch-norm folding, devices, the on-disk embedding cache and the feature extractor that fills it."""
