"""Segmentation networks (MONAI BasicUNet, UNet, SwinUNETR) with decoder-feature capture."""

from __future__ import annotations

from medcl.models.networks import ACTIVATIONS, NETWORK_NAMES, NORMS, NetOutput, SegNet, build_network

__all__ = ["ACTIVATIONS", "NETWORK_NAMES", "NORMS", "NetOutput", "SegNet", "build_network"]
