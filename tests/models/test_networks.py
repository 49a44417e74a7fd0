"""Tests for medcl.models.networks: each family's shapes, feature maps, gradients and config errors."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from medcl.errors import ConfigError
from medcl.models import NETWORK_NAMES, NetOutput, SegNet, build_network
from medcl.models.networks import _BUILDERS

pytestmark = pytest.mark.usefixtures("single_thread")

# Small widths keep the whole file fast on 2 CPU cores.
SMALL = {"features": (8, 8, 16, 32, 64, 8), "feature_size": 12}

# Expected channels per scale and the bottleneck (channels, downsampling factor) for SMALL.
EXPECTED = {
    "basicunet": ({"scale_1": 8, "scale_2": 8, "scale_4": 16, "scale_8": 32}, (64, 16)),
    "unet": ({"scale_2": 8, "scale_4": 8, "scale_8": 16}, (64, 16)),
    "swinunetr": ({"scale_1": 12, "scale_2": 12, "scale_4": 24, "scale_8": 48, "scale_16": 96}, (192, 32)),
}

# Smallest inputs that leave 2+ bottleneck voxels for instance norm; 3D ones are anisotropic on purpose
# (scale keys are read along the first axis).
SHAPES = {
    ("basicunet", 2): (32, 32),
    ("unet", 2): (32, 32),
    ("swinunetr", 2): (64, 64),
    ("basicunet", 3): (16, 16, 32),
    ("unet", 3): (16, 16, 32),
    ("swinunetr", 3): (32, 32, 64),
}
CASES = sorted(SHAPES, key=str)
IDS = [f"{name}-{dims}d" for name, dims in CASES]

# An encoder parameter per network (first layer on the input path).
ENCODER = {
    "basicunet": lambda net: net.net.conv_0,
    "unet": lambda net: net.net.model[0],
    "swinunetr": lambda net: net.net.swinViT.patch_embed,
}


def make(name: str, dims: int, **kwargs: object) -> SegNet:
    """Build a small network with 1 input channel and 3 classes."""
    return build_network(name, spatial_dims=dims, in_channels=1, out_channels=3, **{**SMALL, **kwargs})


@dataclass
class Run:
    """One training-mode feature forward, shared by the tests of a case to keep the file fast."""

    net: SegNet
    x: torch.Tensor
    out: NetOutput


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def run(request: pytest.FixtureRequest) -> Run:
    """Build the case's network and run one feature forward on a random batch of 2 (1 for 3D Swin)."""
    name, dims = request.param
    torch.manual_seed(0)
    net = make(name, dims)
    batch = 1 if (name, dims) == ("swinunetr", 3) else 2
    x = torch.randn(batch, 1, *SHAPES[name, dims])
    out = net(x, return_features=True)
    assert isinstance(out, NetOutput)
    return Run(net, x, out)


def test_logits_shape(run: Run) -> None:
    """Logits keep the input's batch and spatial size, with out_channels channels."""
    assert run.out.logits.shape == (run.x.shape[0], 3, *run.x.shape[2:])


def test_feature_keys_shapes_and_order(run: Run) -> None:
    """scale_k maps have spatial size input // k and the expected channels, finest first."""
    channels, _ = EXPECTED[run.net.name]
    assert list(run.out.features) == list(channels)
    spatial = run.x.shape[2:]
    for key, fmap in run.out.features.items():
        k = int(key.removeprefix("scale_"))
        assert fmap.shape == (run.x.shape[0], channels[key], *(s // k for s in spatial)), key
    assert run.out.finest is next(iter(run.out.features.values()))


def test_embedding_shape(run: Run) -> None:
    """The embedding is the bottleneck at the network's total downsampling factor."""
    channels, factor = EXPECTED[run.net.name][1]
    assert run.net.size_divisor == factor
    assert run.out.embedding.shape == (run.x.shape[0], channels, *(s // factor for s in run.x.shape[2:]))


def test_feature_gradients_reach_encoder(run: Run) -> None:
    """A loss on the finest decoder map and the embedding back-propagates to the first encoder layer."""
    run.net.zero_grad()
    loss = run.out.finest.pow(2).mean() + run.out.embedding.pow(2).mean()
    loss.backward(retain_graph=True)
    grads = [p.grad for p in ENCODER[run.net.name](run.net).parameters()]
    assert grads and all(g is not None for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_feature_channels_match(run: Run) -> None:
    """feature_channels() agrees with the maps of a real forward and is cached."""
    expected = {key: fmap.shape[1] for key, fmap in run.out.features.items()}
    expected["embedding"] = run.out.embedding.shape[1]
    assert run.net.feature_channels() == expected
    assert run.net._feature_channels == expected


def test_hooks_idle_on_plain_forward(run: Run) -> None:
    """The plain call returns a Tensor and leaves the capture dict empty; hooks are registered once."""
    hooks_before = sum(len(m._forward_hooks) for m in run.net.modules())
    with torch.no_grad():
        logits = run.net(run.x)
    assert type(logits) is torch.Tensor
    assert run.net._recorder.store == {} and not run.net._recorder.active
    assert sum(len(m._forward_hooks) for m in run.net.modules()) == hooks_before
    assert hooks_before == len(EXPECTED[run.net.name][0]) + 1


@pytest.mark.parametrize("name", ["basicunet", "unet", "swinunetr"])
def test_default_feature_channels_2d(name: str) -> None:
    """The documented 2D defaults."""
    expected = {
        "basicunet": {"scale_1": 32, "scale_2": 32, "scale_4": 64, "scale_8": 128, "embedding": 256},
        "unet": {"scale_2": 32, "scale_4": 32, "scale_8": 64, "embedding": 256},
        "swinunetr": {
            "scale_1": 24,
            "scale_2": 24,
            "scale_4": 48,
            "scale_8": 96,
            "scale_16": 192,
            "embedding": 384,
        },
    }[name]
    net = build_network(name, spatial_dims=2, in_channels=1, out_channels=2)
    assert net.feature_channels() == expected


def test_unet_first_stride_one_adds_full_resolution_map() -> None:
    """strides[0] == 1 keeps the top level at full resolution, so the decoder gains scale_1."""
    net = make("unet", 2, strides=(1, 2, 2, 2))
    assert net.size_divisor == 8
    out = net(torch.randn(2, 1, 16, 16), return_features=True)
    assert list(out.features) == ["scale_1", "scale_2", "scale_4"]
    assert out.embedding.shape == (2, 64, 2, 2)


def test_torch_export_bare_basicunet_2d() -> None:
    """MLflow logs models with torch.export: the bare 2D BasicUNet exports and matches eager."""
    net = make("basicunet", 2).eval()
    program = torch.export.export(net.net, (torch.zeros(2, 1, 64, 64),))
    x = torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(x), net.net(x))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "vnet"}, "model.name must be one of 'basicunet', 'unet', 'swinunetr'; got 'vnet'"),
        ({"spatial_dims": 4}, "model.spatial_dims must be 2 or 3"),
        ({"features": (8, 8, 16, 32)}, "model.features must have 6 values for basicunet"),
        ({"name": "unet", "features": (8, 16)}, "model.features must have 5 or 6 values for unet"),
        ({"name": "unet", "strides": (2, 2)}, "model.strides must have 4 values"),
        ({"name": "unet", "strides": (2, 1, 2, 2)}, "model.strides may have 1 only as its first value"),
        ({"strides": (2, 2, 2, 2)}, "model.strides is used by 'unet' only"),
        ({"name": "swinunetr", "feature_size": 16}, "model.feature_size must be a positive multiple of 12"),
        ({"name": "swinunetr", "act": "relu"}, "model.act must be 'leakyrelu' for swinunetr"),
        ({"name": "swinunetr", "num_heads": (5, 6, 12, 24)}, r"model.num_heads\[0\] = 5 must divide"),
        ({"name": "swinunetr", "depths": (2, 2)}, "model.depths must have 4 values"),
        ({"norm": "layer"}, "model.norm must be one of 'instance', 'batch'"),
        ({"act": "tanh"}, "model.act must be one of"),
        ({"dropout": 1.0}, r"model.dropout must be in \[0, 1\)"),
        ({"out_channels": 0}, "model.out_channels must be a positive integer"),
    ],
)
def test_config_errors(kwargs: dict[str, object], match: str) -> None:
    """Bad settings raise ConfigError naming the key and the allowed values."""
    settings: dict[str, object] = {
        "name": "basicunet",
        "spatial_dims": 2,
        "in_channels": 1,
        "out_channels": 2,
    }
    settings.update(kwargs)
    with pytest.raises(ConfigError, match=match):
        build_network(**settings)  # type: ignore[arg-type]


def test_every_network_name_has_a_builder() -> None:
    """The registry of family builders covers exactly the names the config accepts."""
    assert list(_BUILDERS) == list(NETWORK_NAMES)
