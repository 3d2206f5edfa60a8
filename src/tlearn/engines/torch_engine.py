"""A trained model, loaded for inference on PyTorch: `tlearn.load(path).predict([...])` (imports torch).

The loader never unpickles: weights come from safetensors (a "knn" reject rule's reference embeddings too),
everything else from JSON. Predictions for files, pictures and folders come from
`tlearn.engines.base.InferenceEngine`, shared with the ONNX engine.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_torch_safetensors
from torch import nn

from tlearn.backbones.devices import resolve_device
from tlearn.backbones.fusion import fold_batchnorm
from tlearn.backbones.pruning import fit_to_state
from tlearn.backbones.timm_models import normalize_on_device
from tlearn.engines.answers import KnnReferences, calibrated, read_references
from tlearn.engines.base import InferenceEngine
from tlearn.errors import ModelFileError
from tlearn.runs.model_dir import CONFIG_FILE, WEIGHTS_FILE, ModelConfig, model_folder, read_config


class Classifier(InferenceEngine):
    """A trained tlearn model on a device.

    Example:
        >>> clf = Classifier.load("runs/ants/model")  # doctest: +SKIP
        >>> clf.predict(["bee.jpg"], PredictOptions(top_k=1))[0].label  # doctest: +SKIP
        'bees'
    """

    engine = "torch"

    def __init__(
        self,
        model: nn.Module,
        config: ModelConfig,
        device: torch.device,
        folder: Path | None = None,
        references: KnnReferences | None = None,
    ) -> None:
        super().__init__(config, folder, references)
        self.device = device
        self.model = model.eval().to(device=device, memory_format=torch.channels_last)
        self._mean = torch.tensor(self.preprocessing.mean, device=device).view(1, 3, 1, 1)
        self._std = torch.tensor(self.preprocessing.std, device=device).view(1, 3, 1, 1)

    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto") -> Classifier:
        """Load a model directory (or a run directory holding `model/`).

        Raises:
            ModelFileError: the directory is not a complete tlearn model, its weights do not fit, or its reject
                rule's references (`reject.safetensors`) are missing or unreadable.
        """
        folder = model_folder(path)
        config = read_config(folder)
        references = read_references(folder, config)
        try:
            state = load_torch_safetensors(folder / WEIGHTS_FILE)
        except (SafetensorError, OSError) as error:
            raise ModelFileError(f"{folder / WEIGHTS_FILE}: unreadable weights ({error})") from None
        model = _network(config, folder)
        try:
            _load_weights(model, state, config)
        except (RuntimeError, ValueError) as error:
            first = str(error).strip().splitlines()[0]
            raise ModelFileError(f"{folder / WEIGHTS_FILE}: weights do not fit {config.arch}: {first}") from None
        model.eval()
        fold_batchnorm(model)  # a loaded model only predicts: about 30% faster on CPU, same outputs
        return cls(model, config, resolve_device(device), folder, references)

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray], config: ModelConfig, *, device: str = "auto") -> Classifier:
        """A model from weights in memory (a run's fine-tuned network before it is saved), batch norm folded."""
        model = _network(config, None)
        _load_weights(model, {name: torch.from_numpy(np.array(value)) for name, value in state.items()}, config)
        model.eval()
        fold_batchnorm(model)
        return cls(model, config, resolve_device(device))

    @property
    def normalisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The backbone's mean and std as (1, 3, 1, 1) tensors on the model's device."""
        return self._mean, self._std

    @property
    def accelerated(self) -> bool:
        return self.device.type == "cuda"

    @torch.inference_mode()
    def _forward(self, pixels: np.ndarray, *, embeddings: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
        batch = normalize_on_device(pixels, self._mean, self._std, self.device)
        if not embeddings:
            return calibrated(self.model(batch).float().cpu().numpy(), self.config), None
        features = self.model.forward_features(batch)
        pre_logits = self.model.forward_head(features, pre_logits=True)  # (B, D): what the classifier reads
        logits = self.model.forward_head(features)  # (B, C)
        return calibrated(logits.float().cpu().numpy(), self.config), pre_logits.float().cpu().numpy()


def _load_weights(model: nn.Module, state: dict[str, torch.Tensor], config: ModelConfig) -> None:
    """Load `state` strictly; a pruned network's layers first take the stored widths, and one forward pass
    proves they chain (weights edited to widths that do not would otherwise fail at the first prediction).

    Raises:
        RuntimeError, ValueError: the weights do not fit the network.
    """
    if config.pruned is None:
        model.load_state_dict(state)
        return
    fit_to_state(model, state)
    model.load_state_dict(state)
    model.eval()
    side = min(64, int(config.preprocessing_spec().input_size[0]))
    with torch.inference_mode():
        model(torch.zeros(1, 3, side, side))


def _network(config: ModelConfig, folder: Path | None) -> nn.Module:
    """timm's network for `config.arch`, with random weights: built from timm's registry alone.

    `check_model_config` has already refused names with a source (`hf-hub:`, `local-dir:`) or a path, which timm
    would resolve over the network or on disk; a name timm does not know is refused here.

    Raises:
        ModelFileError: `config.arch` is not in this timm's registry, or its pretrained tag is unknown to it.
    """
    where = folder / CONFIG_FILE if folder is not None else "the model's config"
    base, _ = timm.models.split_model_name_tag(config.arch)
    if not timm.is_model(base):
        raise ModelFileError(
            f"{where}: arch {config.arch!r} is not an architecture of timm {timm.__version__}; "
            "upgrade timm, or fix arch in config.json"
        )
    try:
        return timm.create_model(config.arch, pretrained=False, num_classes=len(config.classes))
    except (RuntimeError, ValueError) as error:  # timm's refusal of a tag it does not know
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        reason = f"arch {config.arch!r} cannot be built by timm {timm.__version__} ({first})"
        raise ModelFileError(f"{where}: {reason}; upgrade timm, or fix arch in config.json") from None
