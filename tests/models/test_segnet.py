"""Tests for medcl.models.segnet: the wrapper's two forwards, its hooks and its input-size checks."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from medcl.errors import ConfigError
from medcl.models import FeatureDropout, NetOutput, SegNet, build_network

pytestmark = pytest.mark.usefixtures("single_thread")

# Small widths keep the whole file fast on 2 CPU cores.
SMALL = {"features": (8, 8, 16, 32, 64, 8), "feature_size": 12}

# Smallest inputs that leave 2+ bottleneck voxels for instance norm.
SHAPES = {("basicunet", 2): (32, 32), ("unet", 3): (16, 16, 32), ("swinunetr", 2): (64, 64)}


def make(name: str, dims: int, **kwargs: object) -> SegNet:
    """Build a small network with 1 input channel and 3 classes."""
    return build_network(name, spatial_dims=dims, in_channels=1, out_channels=3, **{**SMALL, **kwargs})


@pytest.mark.parametrize(("name", "dims"), [("basicunet", 2), ("unet", 3), ("swinunetr", 2)])
def test_plain_forward_equals_feature_logits(name: str, dims: int) -> None:
    """In eval mode the fast path gives exactly the feature call's logits."""
    torch.manual_seed(0)
    net = make(name, dims).eval()
    x = torch.randn(2, 1, *SHAPES[name, dims])
    with torch.no_grad():
        plain = net(x)
        out = net(x, return_features=True)
    assert isinstance(plain, torch.Tensor) and not isinstance(plain, NetOutput)
    assert torch.equal(plain, out.logits)


def test_feature_calls_return_fresh_dicts() -> None:
    """A second feature call (e.g. the teacher) does not overwrite the first call's maps."""
    net = make("basicunet", 2)
    first = net(torch.randn(1, 1, 32, 32), return_features=True)
    kept = dict(first.features)
    second = net(torch.randn(1, 1, 64, 64), return_features=True)
    assert first.features == kept and first.features is not second.features
    assert second.features["scale_2"].shape[-1] == 32


def test_feature_channels_keeps_modes_and_batchnorm_stats() -> None:
    """The dry forward neither moves BatchNorm running stats nor changes any module's train/eval flag."""
    net = make("basicunet", 2, norm="batch")
    frozen = net.net.conv_0
    frozen.eval()
    stats = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    assert stats
    channels = net.feature_channels()
    assert channels == {"scale_1": 8, "scale_2": 8, "scale_4": 16, "scale_8": 32, "embedding": 64}
    assert net.training and net.net.down_1.training and not frozen.training
    assert all(torch.equal(net.state_dict()[k], v) for k, v in stats.items())


def test_deepcopy_gets_own_recorder() -> None:
    """An EMA teacher made by deepcopy captures into its own dict, not the student's."""
    student = make("basicunet", 2)
    teacher = copy.deepcopy(student)
    assert teacher._recorder is not student._recorder
    out = teacher(torch.randn(1, 1, 32, 32), return_features=True)
    assert len(out.features) == 4 and student._recorder.store == {}


def test_swin_rejects_size_not_divisible_by_32() -> None:
    """A 48x48 input fails before the forward with the shape and the rule."""
    net = make("swinunetr", 2)
    with pytest.raises(ConfigError, match=r"divisible by 32; got \(48, 48\): use a patch size like 64 or 96"):
        net(torch.zeros(1, 1, 48, 48))


def test_instance_norm_needs_two_bottleneck_voxels() -> None:
    """32x32 is divisible by 32 but leaves Swin's instance norm a single voxel: a clear error, not MONAI's."""
    with pytest.raises(ConfigError, match="at least 2 voxels at its 1/32 bottleneck"):
        make("swinunetr", 2).check_spatial_shape((32, 32))
    with pytest.raises(ConfigError, match="divisible by 16"):
        make("unet", 3).check_spatial_shape((16, 16, 24))
    with pytest.raises(ValueError, match="built for 3D inputs"):
        make("unet", 3).check_spatial_shape((32, 32))
    # BasicUNet pads odd sizes itself, so only the minimum applies.
    make("basicunet", 2).check_spatial_shape((33, 40))


def test_segnet_is_module_with_bare_net() -> None:
    """The wrapper exposes its settings and the bare MONAI module."""
    net = make("unet", 3)
    assert isinstance(net.net, nn.Module) and not isinstance(net.net, SegNet)
    assert (net.name, net.spatial_dims, net.in_channels, net.out_channels) == ("unet", 3, 1, 3)


@pytest.mark.parametrize("name", ["basicunet", "unet", "swinunetr"])
def test_feature_dropout_perturbs_only_the_tail_of_the_batch_and_only_during_the_call(name: str) -> None:
    net = make(name, 2).eval()
    x = torch.randn(4, 1, 64, 64)
    with torch.no_grad():
        clean = net(x)
        perturbed = net(x, perturb=FeatureDropout(0.5, start=2, generator=torch.Generator().manual_seed(0)))
        again = net(x)
        out = net(x, return_features=True, perturb=FeatureDropout(0.5, start=2))
    assert torch.equal(perturbed[:2], clean[:2])  # samples before start: untouched
    assert not torch.allclose(perturbed[2:], clean[2:], atol=1e-3)
    assert torch.equal(again, clean)  # the hooks are idle again after the call
    assert torch.equal(out.logits[:2], clean[:2])


def test_feature_dropout_of_zero_is_the_plain_forward_and_same_generator_same_masks() -> None:
    net = make("basicunet", 2).eval()
    x = torch.randn(3, 1, 32, 32)
    with torch.no_grad():
        assert torch.equal(net(x, perturb=FeatureDropout(0.0, start=0)), net(x))
        a = net(x, perturb=FeatureDropout(0.5, start=1, generator=torch.Generator().manual_seed(3)))
        b = net(x, perturb=FeatureDropout(0.5, start=1, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(a, b)


def test_feature_dropout_drops_whole_channels_and_keeps_the_expectation() -> None:
    t = torch.ones(2, 4000, 3, 3)
    out = FeatureDropout(0.5, start=1, generator=torch.Generator().manual_seed(0))(t)
    assert torch.equal(out[0], t[0])
    per_channel = out[1].flatten(1)  # (C, H*W): each channel all zero or all 1 / (1 - p)
    assert set(per_channel.unique().tolist()) == {0.0, 2.0}
    assert torch.all(per_channel.min(1).values == per_channel.max(1).values)
    assert float(out[1].mean()) == pytest.approx(1.0, abs=0.05)  # 4000 channels: mean within 3 sd
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        FeatureDropout(1.0)


def test_feature_dropout_drops_each_encoder_map_once_where_the_decoder_reads_it() -> None:
    """BasicUNet: upcat_4 reads (bottleneck, skip), the later blocks (decoder path, skip). Under a perturbed
    call the encoder runs clean, so every perturbed encoder input is the clean one with each channel either
    zeroed or doubled (p = 0.5): dropped once, not twice (that would give 4x)."""
    net = make("basicunet", 2).eval()
    x = torch.randn(2, 1, 32, 32)
    seen: dict[str, list[tuple[torch.Tensor, ...]]] = {}
    for name in ("upcat_4", "upcat_3", "upcat_2", "upcat_1"):
        # Registered after SegNet's own hook, so it sees the inputs as perturbed.
        getattr(net.net, name).register_forward_pre_hook(
            lambda m, args, name=name: seen.setdefault(name, []).append(tuple(a.detach() for a in args))
        )
    with torch.no_grad():
        net(x)
        net(x, perturb=FeatureDropout(0.5, start=1, generator=torch.Generator().manual_seed(0)))

    def dropped_once(clean: torch.Tensor, perturbed: torch.Tensor) -> bool:
        ratio = perturbed[1].flatten(1) / clean[1].flatten(1).where(clean[1].flatten(1) != 0, 1.0)
        per_channel = ratio.amax(1)  # 0 (dropped) or 2 (kept, rescaled) for every channel
        return bool(((per_channel - 0).abs() < 1e-4).logical_or((per_channel - 2).abs() < 1e-4).all())

    (clean4, perturbed4) = seen["upcat_4"]
    assert dropped_once(clean4[0], perturbed4[0]) and dropped_once(clean4[1], perturbed4[1])
    for name in ("upcat_3", "upcat_2", "upcat_1"):
        clean, perturbed = seen[name]
        assert dropped_once(clean[1], perturbed[1])  # the skip
        assert torch.equal(clean[1][0], perturbed[1][0])  # sample 0 is before start
