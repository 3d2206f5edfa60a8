"""Fixtures shared by the backbone tests."""

from __future__ import annotations

import pytest

from helpers import TINY_BACKBONE, tiny_backbone_weights
from tlearn.backbones.registry import resolve_backbone


@pytest.fixture(scope="module")
def tiny_ref(tmp_path_factory):
    """timm's tiny test network with weights of its own, resolved as a backbone (one per test module)."""
    return resolve_backbone(TINY_BACKBONE, tiny_backbone_weights(tmp_path_factory.mktemp("weights")))
