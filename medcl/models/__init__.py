"""Segmentation networks (MONAI BasicUNet, UNet, SwinUNETR) with decoder-feature capture."""

from __future__ import annotations

from medcl.models.networks import ACTIVATIONS, NETWORK_NAMES, NORMS, build_network
from medcl.models.segnet import FeatureDropout, NetOutput, SegNet

__all__ = ["ACTIVATIONS", "NETWORK_NAMES", "NORMS", "FeatureDropout", "NetOutput", "SegNet", "build_network"]
