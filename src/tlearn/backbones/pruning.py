"""Channel pruning: a network made narrower (fewer channels per layer) so that it computes less per image, and
the loader that rebuilds such a network from its weights alone (imports torch; torch-pruning when pruning).

`prune_channels` removes the same share of channels from every prunable layer group, chosen by weight magnitude
(torch-pruning's dependency graph keeps coupled layers consistent: a depthwise convolution loses the channels its
input lost). Two kinds of layer keep their width: the classifier's outputs (one per class) and every layer whose
channels feed the classifier, so the embedding a reject rule or the report reads keeps its size. Widths are
rounded to multiples of `ROUND_TO`: ONNX Runtime's CPU kernels work in blocks of 8 or 16 channels, and odd
widths made a Lite0 pruned to 65% of its compute *slower* (200 against 314 images/s) where widths rounded to 16
made one at 52% 1.8x faster (575 images/s).

A pruned network is saved like any other (`model.safetensors`); `fit_to_state` resizes a freshly built timm
network's layers to the shapes stored there before the weights load. Our own code, for a measured reason:
torch-pruning's own save format pickles the modules' attributes, and tlearn never unpickles a model file.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn

ROUND_TO = 16  # channels per pruned layer are a multiple of this (see the module docstring)
MAX_RATIO = 0.8  # share of a layer group's channels pruning may remove at most
STEPS = 32  # pruning steps up to MAX_RATIO: 2.5% of each group's channels per step


@dataclass(frozen=True)
class PruneOutcome:
    """How much compute per image the pruned network keeps (multiply-accumulates, before / after)."""

    macs_before: int
    macs_after: int
    ratio: float  # share of each layer group's channels removed

    @property
    def speedup(self) -> float:
        """Compute per image before / after: the speed-up to expect where compute bounds the speed."""
        return self.macs_before / max(1, self.macs_after)


def prune_channels(model: nn.Module, speedup: float, input_size: int) -> PruneOutcome:
    """Prune `model` in place to at most 1/`speedup` of its multiply-accumulates per `input_size` image.

    Channels go in `STEPS` equal steps of `MAX_RATIO / STEPS` of each layer group, the least important first
    (importance measured again after each step), and pruning stops at the first step that meets the target: a
    network keeps as much as the speed-up allows. One dependency graph serves every step (building it takes
    seconds on Lite0; a bisection over fresh copies took two minutes).

    Raises:
        ValueError: the target cannot be met without removing more than `MAX_RATIO` of the channels.
    """
    import torch_pruning as tp  # deferred: only pruning runs need it

    example = torch.zeros(1, 3, input_size, input_size)
    before, _ = tp.utils.count_ops_and_params(model, example)
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.MagnitudeImportance(p=2),
        pruning_ratio=MAX_RATIO,
        iterative_steps=STEPS,
        ignored_layers=_embedding_layers(model, example),
        round_to=ROUND_TO,
    )
    after = before
    for step in range(1, STEPS + 1):
        pruner.step()
        after, _ = tp.utils.count_ops_and_params(model, example)
        if after * speedup <= before:
            return PruneOutcome(int(before), int(after), round(MAX_RATIO * step / STEPS, 4))
    raise ValueError(
        f"a {speedup:g}x speed-up needs more than {MAX_RATIO:.0%} of the channels removed "
        f"({before / after:.2f}x at most); ask for less"
    )


def _embedding_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """The classifier and every layer whose channels it reads (pruning them would change the embedding)."""
    import torch_pruning as tp

    classifier = model.get_classifier()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=example)
    group = graph.get_pruning_group(classifier, tp.prune_linear_in_channels, idxs=[0])
    return [classifier, *{id(dep.target.module): dep.target.module for dep, _ in group}.values()]


def fit_to_state(model: nn.Module, state: Mapping[str, torch.Tensor]) -> int:
    """Resize `model`'s convolutions, batch norms and linear layers to the shapes in `state`; returns how many.

    A layer whose stored weight has another shape gets empty parameters (and buffers) of the stored shapes and
    the widths those imply (a depthwise convolution stays depthwise); `load_state_dict` then fills them. Layers
    that already fit are left alone, so an unpruned network is untouched.

    Raises:
        ValueError: a stored shape does not fit the layer's kind (e.g. a convolution weight that is not 4-D).
    """
    resized = 0
    for name, module in model.named_modules():
        weight = state.get(f"{name}.weight" if name else "weight")
        if weight is None or not hasattr(module, "weight") or module.weight is None:
            continue
        if tuple(weight.shape) == tuple(module.weight.shape):
            continue
        if isinstance(module, nn.Conv2d):
            _fit_conv(module, tuple(weight.shape), name)
        elif isinstance(module, nn.modules.batchnorm._BatchNorm):
            _fit_norm(module, tuple(weight.shape), name)
        elif isinstance(module, nn.Linear):
            _fit_linear(module, tuple(weight.shape), name)
        else:
            raise ValueError(f"{name}: a {type(module).__name__} cannot take the stored shape {tuple(weight.shape)}")
        resized += 1
    return resized


def _fit_conv(conv: nn.Conv2d, shape: tuple[int, ...], name: str) -> None:
    if len(shape) != 4:
        raise ValueError(f"{name}: a convolution weight must be 4-D, not {shape}")
    depthwise = conv.groups > 1 and conv.groups == conv.in_channels == conv.out_channels
    out_channels, in_per_group = shape[0], shape[1]
    if depthwise:
        if in_per_group != 1:
            raise ValueError(f"{name}: a depthwise convolution weight must be (C, 1, k, k), not {shape}")
        conv.groups = conv.in_channels = out_channels
    else:
        conv.in_channels = in_per_group * conv.groups
    conv.out_channels = out_channels
    conv.weight = nn.Parameter(torch.empty(shape))
    if conv.bias is not None:
        conv.bias = nn.Parameter(torch.empty(out_channels))


def _fit_norm(norm: nn.modules.batchnorm._BatchNorm, shape: tuple[int, ...], name: str) -> None:
    if len(shape) != 1:
        raise ValueError(f"{name}: a batch norm weight must be 1-D, not {shape}")
    (channels,) = shape
    norm.num_features = channels
    norm.weight = nn.Parameter(torch.empty(channels))
    norm.bias = nn.Parameter(torch.empty(channels))
    if norm.running_mean is not None:
        norm.running_mean = torch.zeros(channels)
        norm.running_var = torch.ones(channels)


def _fit_linear(linear: nn.Linear, shape: tuple[int, ...], name: str) -> None:
    if len(shape) != 2:
        raise ValueError(f"{name}: a linear weight must be 2-D, not {shape}")
    linear.out_features, linear.in_features = shape
    linear.weight = nn.Parameter(torch.empty(shape))
    if linear.bias is not None:
        linear.bias = nn.Parameter(torch.empty(shape[0]))
