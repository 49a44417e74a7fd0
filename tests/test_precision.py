"""medcl.precision: resolving train.precision, networks under autocast, losses in float32."""

from __future__ import annotations

import copy

import pytest
import torch

from medcl import precision as P
from medcl.errors import ConfigError
from medcl.methods import build_method
from medcl.methods.base import DataSpec
from medcl.models.networks import NetOutput, build_network
from medcl.services.configs import build_config


def small_net():
    return build_network(
        spatial_dims=2, in_channels=1, out_channels=3, name="basicunet", features=[4, 4, 8, 8, 16, 4]
    )


def conv_dtypes(net) -> list[tuple[int, torch.dtype]]:
    """(positions of the input map, output dtype) of every convolution in the next forward."""
    seen: list[tuple[int, torch.dtype]] = []
    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d):
            m.register_forward_hook(lambda mod, args, out: seen.append((args[0][0, 0].numel(), out.dtype)))
    return seen


def test_explicit_precisions_resolve_to_their_dtype() -> None:
    assert P.resolve_precision("fp32", "cpu").dtype is None
    bf16 = P.resolve_precision("bf16", "cpu")
    assert bf16.dtype == torch.bfloat16 and not bf16.needs_scaler and bf16.device_type == "cpu"


def test_auto_follows_the_cpu_capability(monkeypatch) -> None:
    monkeypatch.setattr(P, "cpu_has_bf16", lambda: True)
    assert P.resolve_precision("auto", "cpu").name == "bf16"
    monkeypatch.setattr(P, "cpu_has_bf16", lambda: False)
    assert P.resolve_precision("auto", "cpu").name == "fp32"


def test_auto_on_cuda_picks_bf16_or_fp16_with_a_scaler(monkeypatch) -> None:
    monkeypatch.setattr(P, "_cuda_has_bf16", lambda: True)
    assert P.resolve_precision("auto", "cuda").name == "bf16"
    monkeypatch.setattr(P, "_cuda_has_bf16", lambda: False)
    fp16 = P.resolve_precision("auto", "cuda")
    assert fp16.name == "fp16" and fp16.dtype == torch.float16 and fp16.needs_scaler


def test_impossible_precisions_are_clear_errors() -> None:
    with pytest.raises(ConfigError, match="fp16 needs a CUDA device"):
        P.resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="unknown precision 'half'"):
        P.resolve_precision("half", "cpu")


def test_cpu_capability_reads_cpu_flags_not_the_vendor(monkeypatch) -> None:
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.delattr(torch.cpu, name, raising=False)
    monkeypatch.setattr(P, "_cpuinfo_flags", lambda: {"avx2", "avx512f"})
    assert not P.cpu_has_bf16()
    monkeypatch.setattr(P, "_cpuinfo_flags", lambda: {"avx512f", "avx512_bf16"})
    assert P.cpu_has_bf16()
    monkeypatch.setattr(P, "_cpuinfo_flags", lambda: {"fp", "asimd", "bf16"})  # Arm's Features line
    assert P.cpu_has_bf16()


def test_network_runs_in_bf16_and_returns_float32() -> None:
    torch.manual_seed(0)
    net = small_net()
    x = torch.randn(2, 1, 32, 32)
    ref = net(x)
    seen = conv_dtypes(net)
    assert P.set_compute_dtype(net, torch.bfloat16) == 1
    out = net(x, return_features=True)
    # The convolutions ran in bf16, but for those on maps of fewer than SMALL_NORM positions (fp32).
    assert {dtype for n, dtype in seen if n >= P.SMALL_NORM} == {torch.bfloat16}
    assert {dtype for n, dtype in seen if n < P.SMALL_NORM} == {torch.float32}
    assert isinstance(out, NetOutput)
    assert out.logits.dtype == torch.float32 and out.embedding.dtype == torch.float32
    assert all(f.dtype == torch.float32 for f in out.features.values())
    # Same function, bf16 rounding only.
    assert torch.allclose(out.logits, ref, atol=0.1 * ref.abs().max().item())
    out.logits.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())


def test_fp32_leaves_the_network_alone() -> None:
    net = small_net()
    seen = conv_dtypes(net)
    P.set_compute_dtype(net, None)
    assert net(torch.randn(1, 1, 32, 32)).dtype == torch.float32
    assert {dtype for _, dtype in seen} == {torch.float32}


def test_ema_copies_keep_the_compute_dtype() -> None:
    net = small_net()
    P.set_compute_dtype(net, torch.bfloat16)
    teacher = copy.deepcopy(net)
    assert teacher.compute_dtype == torch.bfloat16


def test_to_float32_walks_containers() -> None:
    h = torch.ones(2, dtype=torch.bfloat16)
    out = P.to_float32({"a": [h, (h, 3)], "b": torch.ones(1, dtype=torch.int64)})
    assert out["a"][0].dtype == torch.float32 and out["a"][1][0].dtype == torch.float32
    assert out["a"][1][1] == 3 and out["b"].dtype == torch.int64


OVERRIDES = {
    "supervised": ["model.features=[4, 4, 8, 8, 16, 4]"],
    "mcsc": [
        "method.cnn.features=[4, 4, 8, 8, 16, 4]",
        "method.transformer.feature_size=12",
        "method.projector_hidden=16",
        "method.projector_dim=8",
        "method.contrast_warmup_steps=0",
        "method.cps_rampup_steps=0",
    ],
}


@pytest.mark.parametrize("method", sorted(OVERRIDES))
def test_method_losses_are_float32_under_bf16(method: str) -> None:
    spec = DataSpec(1, 3, ("background", "a", "b"), 2, (64, 64))
    cfg = build_config({"method": {"name": method}}, ["data.patch_size=[64, 64]", *OVERRIDES[method]])
    torch.manual_seed(0)
    m = build_method(cfg, spec)
    assert P.set_compute_dtype(m, torch.bfloat16) >= 1
    label = torch.zeros(2, 1, 64, 64)
    label[:, :, 10:30, 10:30] = 1
    label[:, :, 35:50, 20:40] = 2
    batch = {
        "labeled": {"image": label + 0.1 * torch.randn_like(label), "label": label.long()},
        "unlabeled": {"image": torch.randn(2, 1, 64, 64)},
    }
    out = m(batch, 1)
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    if method == "mcsc":
        assert out["contrast"].dtype == torch.float32 and out["contrast"] > 0
    out["loss"].backward()


def test_config_precision_and_the_old_amp_key() -> None:
    assert build_config({"method": {"name": "supervised"}}).train.precision == "auto"
    assert build_config({"method": {"name": "supervised"}, "train": {"amp": False}}).train.precision == "fp32"
    assert build_config({"method": {"name": "supervised"}, "train": {"amp": True}}).train.precision == "auto"
    cfg = build_config({"method": {"name": "supervised"}}, ["train.precision=bf16"])
    assert cfg.train.precision == "bf16"
    with pytest.raises(ConfigError, match="train.precision"):
        build_config({"method": {"name": "supervised"}}, ["train.precision=half"])


class _TwoConvs(torch.nn.Module):
    """A big map and a 2x2x2 one through convolutions and instance norms, under @mixed_precision."""

    def __init__(self) -> None:
        super().__init__()
        self.big, self.small = torch.nn.Conv3d(2, 2, 3, padding=1), torch.nn.Conv3d(2, 2, 3, padding=1)
        self.norm_big, self.norm_small = torch.nn.InstanceNorm3d(2), torch.nn.InstanceNorm3d(2)
        self.seen: list[tuple[str, torch.dtype, bool]] = []

    @P.mixed_precision
    def forward(self, x):
        a = self.norm_big(self.big(x))
        self.seen.append(("after small", torch.is_autocast_enabled("cpu"), None))
        b = self.norm_small(self.small(x[..., :2, :2, :2]))
        self.seen.append(("after small", torch.is_autocast_enabled("cpu"), None))
        return a.mean() + b.mean()


def test_small_maps_leave_bf16_and_autocast_comes_back() -> None:
    """oneDNN's bf16 weight gradient of a conv on a 2x2x2 map came out as 1e33/NaN: small maps run in fp32."""
    m = _TwoConvs()
    dtypes = {}
    for name in ("big", "small", "norm_big", "norm_small"):
        getattr(m, name).register_forward_hook(
            lambda mod, a, o, name=name: dtypes.__setitem__(name, (a[0].dtype, o.dtype))
        )
    P.set_compute_dtype(m, torch.bfloat16)
    P.set_compute_dtype(m, torch.bfloat16)  # hooks are added once
    assert len(m.small._forward_pre_hooks) == 1 and len(m.norm_small._forward_pre_hooks) == 1
    out = m(torch.randn(1, 2, 16, 16, 16))
    assert dtypes["big"][1] == torch.bfloat16 and dtypes["norm_big"][0] == torch.bfloat16
    assert dtypes["small"] == (torch.float32, torch.float32) and dtypes["norm_small"][0] == torch.float32
    assert [s[1] for s in m.seen] == [True, True]  # autocast is back on after the small conv
    out.backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())
    assert not torch.is_autocast_enabled("cpu")
