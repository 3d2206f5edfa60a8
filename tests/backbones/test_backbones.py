"""Backbones: the embedded ImageNet weights are mapped right, any timm model loads from a local file, and
offline downloads fail fast with advice."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.data import resolve_data_config

from helpers import HYMENOPTERA, needs_shared
from tlearn.backbones.cache import cache_root
from tlearn.backbones.devices import resolve_device
from tlearn.backbones.fusion import fold_batchnorm
from tlearn.backbones.registry import EMBEDDED, StoredBackbone, backbone_listing, resolve_backbone
from tlearn.backbones.timm_models import load_backbone
from tlearn.data.decoding import decode_chunk
from tlearn.data.preprocess import Preprocessing
from tlearn.errors import BackboneError
from tlearn.util.progress import Progress

ANT, BEE = 310, 309  # ImageNet class indices


def _imagenet_top5_hits(arch: str, folder: Path, target: int, limit: int = 24) -> float:
    backbone = load_backbone(
        resolve_backbone(arch), cache_root=cache_root(), device=resolve_device("cpu"), progress=Progress(quiet=True)
    )
    files = sorted(folder.iterdir())[:limit]
    batch = decode_chunk(0, files, backbone.info.preprocessing, 10**9)
    embeddings = torch.from_numpy(backbone.embed(batch.pixels))
    logits = backbone.model.get_classifier()(embeddings)  # the original ImageNet head
    return float((logits.topk(5, dim=1).indices == target).any(dim=1).float().mean())


@needs_shared
@pytest.mark.parametrize("arch", sorted(EMBEDDED))
def test_embedded_imagenet_head_recognises_ants(arch):
    """The one-to-one key mapping is right iff the ImageNet head still recognises ants."""
    assert _imagenet_top5_hits(arch, HYMENOPTERA / "val" / "ants", ANT) >= 0.75


@needs_shared
def test_embedded_imagenet_head_recognises_bees():
    assert _imagenet_top5_hits("lite0", HYMENOPTERA / "val" / "bees", BEE) >= 0.75


@pytest.mark.parametrize("arch", sorted(EMBEDDED))
def test_embedded_preprocessing_is_timms(arch):
    expected = Preprocessing.from_timm(resolve_data_config(model=timm.create_model(arch, pretrained=False)))
    assert EMBEDDED[arch].preprocessing == expected


def test_aliases_and_listing():
    assert resolve_backbone("lite0").key == resolve_backbone("tf_efficientnet_lite0").key
    assert resolve_backbone("lite0").source == "embedded"
    assert resolve_backbone("resnet50").source == "hub"
    listing = backbone_listing()
    assert "tf_efficientnet_lite0" in listing and "--weights" in listing


def test_unknown_name_suggests_close_matches(tmp_path):
    with pytest.raises(BackboneError, match="did you mean resnet50"):
        load_backbone(
            resolve_backbone("resnt50"), cache_root=tmp_path, device=torch.device("cpu"), progress=Progress(quiet=True)
        )


def test_download_offline_fails_fast_with_advice(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match="--weights"):
        load_backbone(
            resolve_backbone("resnet18"), cache_root=tmp_path, device=torch.device("cpu"), progress=Progress(quiet=True)
        )


def test_local_weights_file_for_any_timm_model(tmp_path):
    model = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.safetensors"
    save_file(model.state_dict(), path)
    ref = resolve_backbone("resnet18", path)
    backbone = load_backbone(ref, cache_root=tmp_path, device=torch.device("cpu"), progress=Progress(quiet=True))
    assert backbone.info.num_features == 512 and backbone.info.classifier_keys == ("fc.weight", "fc.bias")
    assert backbone.embed(np.zeros((2, 224, 224, 3), dtype=np.uint8)).shape == (2, 512)
    stored = StoredBackbone(tmp_path, ref.key).weights()
    np.testing.assert_array_equal(stored["fc.weight"], model.state_dict()["fc.weight"].numpy())
    torch.save(model.state_dict(), tmp_path / "resnet18.pth")  # plain state dict: accepted
    load_backbone(
        resolve_backbone("resnet18", tmp_path / "resnet18.pth"),
        cache_root=tmp_path,
        device=torch.device("cpu"),
        progress=Progress(quiet=True),
    )


class _Payload:
    """Unpickling this runs code: it creates `marker`. A loader that unpickles would leave the file behind."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickled_objects_and_mismatched_weights_are_refused(tmp_path):
    marker = tmp_path / "the payload ran"
    evil = tmp_path / "evil.pth"
    evil.write_bytes(pickle.dumps({"conv1.weight": _Payload(marker)}, protocol=2))  # torch.save's protocol
    with pytest.raises(BackboneError, match=r"never unpickles|cannot read"):
        load_backbone(
            resolve_backbone("resnet18", evil),
            cache_root=tmp_path,
            device=torch.device("cpu"),
            progress=Progress(quiet=True),
        )
    assert not marker.exists(), "the weights file was unpickled: its code ran"
    wrong = tmp_path / "wrong.safetensors"
    save_file(timm.create_model("resnet34", pretrained=False).state_dict(), wrong)
    with pytest.raises(BackboneError, match="do not fit"):
        load_backbone(
            resolve_backbone("resnet18", wrong),
            cache_root=tmp_path,
            device=torch.device("cpu"),
            progress=Progress(quiet=True),
        )
    with pytest.raises(BackboneError, match="not found"):
        resolve_backbone("resnet18", tmp_path / "missing.safetensors")


@pytest.mark.parametrize("arch", ["tf_efficientnet_lite0", "resnet18", "mobilenetv3_small_100", "inception_v3"])
def test_batchnorm_folding_keeps_outputs(arch):
    torch.manual_seed(0)
    model = timm.create_model(arch, pretrained=False).eval()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    inputs = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        expected = model.forward_head(model.forward_features(inputs), pre_logits=True)
        assert fold_batchnorm(model) > 0
        folded = model.forward_head(model.forward_features(inputs), pre_logits=True)
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules())
    torch.testing.assert_close(folded, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))
