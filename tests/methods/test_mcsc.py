"""MCSC on real ACDC and Hippocampus slices: every loss term, both networks learning, export selection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from medcl.data.dataset import load_dataset
from medcl.data.mixing import step_generator, strong_view
from medcl.data.sampling import StepSampler, preprocess_volumes
from medcl.data.transforms import sample_transforms, volume_transforms
from medcl.engine.data_setup import data_spec
from medcl.engine.optim import build_optimizer, build_scheduler
from medcl.errors import ConfigError
from medcl.methods import METHODS, build_method
from medcl.methods.mcsc import MCSC, cps_weight
from medcl.services.configs import build_config, load_config

REPO = Path(__file__).resolve().parents[2]
# Small, fast networks: a narrow BasicUNet and a feature_size-12 SwinUNETR on 64x64 slices.
SMALL = [
    "method.cnn.features=[8, 8, 16, 32, 64, 8]",
    "method.transformer.feature_size=12",
    "method.projector_hidden=32",
    "method.projector_dim=16",
    "method.sampler=block",
    "method.block_size=8",
    "method.coarse_block_size=4",
    "method.contrast_warmup_steps=1",
    "method.cps_rampup_steps=0",
    "data.patch_size=[64, 64]",
]
# Tests that never run the contrast skip the projectors (and the dry forward that sizes them).
PLAIN = [*SMALL, "method.contrast_weight=0"]
TERMS = {
    "sup_cnn",
    "sup_transformer",
    "cps_cnn",
    "cps_transformer",
    "contrast",
    "contrast_fine",
    "contrast_coarse",
}


def batches(root: Path, cfg, n_cases: int = 2, size: int = 2) -> tuple[dict, object]:
    """Labeled + unlabeled batches of real slices (labels of the unlabeled stream are never loaded)."""
    info = load_dataset(root)
    spec = data_spec(cfg, info)
    lab_vols = preprocess_volumes(
        info.cases[:n_cases],
        volume_transforms(cfg.data, "mri", with_label=True),
        with_label=True,
        progress=False,
    )
    unl_vols = preprocess_volumes(
        info.cases[n_cases : 2 * n_cases],
        volume_transforms(cfg.data, "mri", with_label=False),
        with_label=False,
        progress=False,
    )
    patch = cfg.data.patch_size
    batch = {
        "labeled": StepSampler(lab_vols, sample_transforms(None, patch, with_label=True), size).sample(
            0, 0, 0
        ),
        "unlabeled": StepSampler(
            unl_vols, sample_transforms(None, patch, with_label=False), size, stream=1
        ).sample(0, 0, 0),
    }
    return batch, spec


def train_steps(method: MCSC, batch: dict, steps: int, start: int = 0) -> list[dict]:
    opt = build_optimizer(method.param_groups(), method.run.optim)
    outs = []
    for step in range(start, start + steps):
        out = method(batch, step)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        outs.append(out)
    return outs


@pytest.fixture(scope="module")
def acdc_setup(shared_data: Path):
    cfg = build_config({"method": {"name": "mcsc"}}, [*SMALL, "data.orientation=null"])
    batch, spec = batches(shared_data / "ACDC", cfg)
    return cfg, batch, spec


def test_acdc_steps_give_every_term_and_update_both_networks(acdc_setup) -> None:
    cfg, batch, spec = acdc_setup
    assert "mcsc" in METHODS
    torch.manual_seed(0)
    method = build_method(cfg, spec)
    before = {n: p.detach().clone() for n, p in method.named_parameters()}
    outs = train_steps(method, batch, 2, start=1)  # past the 1-step warm-up: unlabeled pixels contrast too
    for out in outs:
        assert TERMS <= set(out), set(out)
        for key in TERMS | {"loss"}:
            assert torch.isfinite(out[key]), key
        assert out["contrast"] > 0 and isinstance(out["cps_weight"], float)
    changed = {n.split(".")[0] for n, p in method.named_parameters() if not torch.equal(p, before[n])}
    assert {"cnn", "transformer", "heads"} <= changed


def test_export_selection_survives_a_state_dict_round_trip(acdc_setup) -> None:
    _, _, spec = acdc_setup
    cfg = build_config({"method": {"name": "mcsc"}}, PLAIN)
    method = build_method(cfg, spec)
    assert set(method.validation_networks()) == {"cnn", "transformer"}
    assert method.inference_network() is method.cnn
    method.select_network({"cnn": 0.5, "transformer": 0.7})
    assert method.inference_network() is method.transformer
    clone = build_method(cfg, spec)
    clone.load_state_dict(method.state_dict())
    assert clone.inference_network() is clone.transformer
    fixed = build_method(build_config({"method": {"name": "mcsc"}}, [*PLAIN, "method.export=cnn"]), spec)
    fixed.select_network({"cnn": 0.1, "transformer": 0.9})
    assert fixed.inference_network() is fixed.cnn


def test_contrast_weight_zero_is_cross_teaching_without_heads(hippocampus: Path) -> None:
    cfg = build_config({"method": {"name": "mcsc"}}, [*SMALL, "method.contrast_weight=0"])
    batch, spec = batches(hippocampus, cfg, n_cases=3)
    torch.manual_seed(0)
    method = build_method(cfg, spec)
    assert len(method.heads) == 0
    calls = []
    method.cnn.register_forward_pre_hook(lambda m, args, kwargs: calls.append(kwargs), with_kwargs=True)
    before = {n: p.detach().clone() for n, p in method.named_parameters()}
    (out,) = train_steps(method, batch, 1, start=5)
    assert calls == [{"return_features": False}]  # the plain (fast) forward: no decoder features captured
    assert "contrast" not in out and {"sup_cnn", "cps_transformer"} <= set(out)
    assert all(
        torch.isfinite(out[k]) for k in ("loss", "sup_cnn", "sup_transformer", "cps_cnn", "cps_transformer")
    )
    assert all(not torch.equal(p, before[n]) for n, p in method.named_parameters() if n.endswith("weight"))
    assert [g["lr"] for g in method.param_groups()] == [cfg.optim.lr, cfg.optim.lr / 5]


def test_cutmix_view_trains_each_network_on_the_others_labels_mixed_like_the_slices(
    hippocampus: Path,
) -> None:
    cfg = build_config({"method": {"name": "mcsc"}}, [*PLAIN, "method.mix=cutmix"])
    batch, spec = batches(hippocampus, cfg, n_cases=3, size=3)
    torch.manual_seed(0)
    method = build_method(cfg, spec)
    x_l, x_u = batch["labeled"]["image"], batch["unlabeled"]["image"]
    with torch.no_grad():  # what both networks say about the unmixed slices
        weak = (method.cnn(x_u).argmax(1), method.transformer(x_u).argmax(1))
    step = 7
    image, mixed_c, mixed_t = strong_view(
        x_u,
        *weak,
        mode="cutmix",
        num_classes=spec.num_classes,
        jitter_prob=cfg.method.jitter_prob,
        blur_prob=cfg.method.blur_prob,
        generator=step_generator(method.run.seed, step, x_u.device),
    )
    assert not torch.equal(mixed_c, weak[0])  # the boxes moved labels between slices
    inputs = []
    method.cnn.register_forward_pre_hook(lambda m, args, kwargs: inputs.append(args[0]), with_kwargs=True)
    out = method(batch, step)
    assert [tuple(x.shape) for x in inputs] == [tuple(x_u.shape), (6, *x_u.shape[1:])]
    assert torch.equal(inputs[0], x_u) and torch.equal(inputs[1][:3], x_l)
    assert torch.allclose(inputs[1][3:], image)  # the strong view, not the unlabeled slices
    with torch.no_grad():
        logits_c, logits_t = method.cnn(inputs[1])[3:], method.transformer(inputs[1])[3:]
        expected_c = method.dice(logits_c, mixed_t[:, None])  # the CNN learns the Transformer's mixed labels
        expected_t = method.dice(logits_t, mixed_c[:, None])
    assert out["cps_cnn"].item() == pytest.approx(expected_c.item(), rel=1e-5)
    assert out["cps_transformer"].item() == pytest.approx(expected_t.item(), rel=1e-5)
    out["loss"].backward()
    assert all(p.grad is not None for p in method.parameters() if p.requires_grad)


def test_hippocampus_random_sampler_and_warmup(hippocampus: Path) -> None:
    cfg = build_config(
        {"method": {"name": "mcsc"}},
        [*SMALL, "method.sampler=random", "method.max_per_class=64", "method.contrast_warmup_steps=100"],
    )
    batch, spec = batches(hippocampus, cfg, n_cases=3)
    torch.manual_seed(0)
    method = build_method(cfg, spec)
    (out,) = train_steps(method, batch, 1)
    assert all(torch.isfinite(out[k]) for k in TERMS | {"loss"})
    assert out["cps_weight"] == pytest.approx(cfg.method.cps_weight)


def test_ramp_transformer_warmup_and_bad_settings() -> None:
    assert cps_weight(0, 0.1, 100) == pytest.approx(0.1 * torch.exp(torch.tensor(-5.0)).item())
    assert cps_weight(100, 0.1, 100) == cps_weight(500, 0.1, 100) == pytest.approx(0.1)
    # Only the Transformer group warms up.
    from medcl.methods.base import DataSpec

    spec = DataSpec(1, 3, ("bg", "a", "b"), 2, (64, 64))
    cfg = build_config({"method": {"name": "mcsc"}}, [*PLAIN, "method.transformer.warmup_steps=10"])
    method = build_method(cfg, spec)
    opt = build_optimizer(method.param_groups(), cfg.optim)
    build_scheduler(opt, 100, cfg.optim)
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs[0] == pytest.approx(cfg.optim.lr) and lrs[1] == pytest.approx(cfg.optim.lr / 5 / 10)
    with pytest.raises(ConfigError, match="divisible by 32"):
        build_method(cfg, DataSpec(1, 3, ("bg", "a", "b"), 2, (48, 48)))
    with pytest.raises(ConfigError, match="coarse_factor"):
        build_method(build_config({"method": {"name": "mcsc"}}, [*SMALL, "method.coarse_factor=32"]), spec)
    with pytest.raises(ConfigError, match="method.transformer.name"):
        build_config({"method": {"name": "mcsc"}}, ["method.transformer.name=unet"])
    missing = build_method(
        build_config({"method": {"name": "mcsc"}}, [*PLAIN, "method.transformer.weights=/no/file.pt"]), spec
    )
    with pytest.raises(ConfigError, match="not found"):
        missing.param_groups()


def test_step_counts_given_as_fractions_scale_with_train_steps() -> None:
    from medcl.methods.base import DataSpec

    spec = DataSpec(1, 3, ("bg", "a", "b"), 2, (64, 64))
    fractions = ["method.transformer.warmup_steps=0.1", "method.cps_rampup_steps=0.75"]
    cfg = build_config({"method": {"name": "mcsc"}}, [*PLAIN, *fractions, "train.steps=200"])
    method = build_method(cfg, spec)
    assert method.params.transformer.warmup_steps == 20 and method.params.cps_rampup_steps == 150
    assert cfg.method.cps_rampup_steps == 0.75  # the stored config keeps the fraction
    opt = build_optimizer(method.param_groups(), cfg.optim)
    build_scheduler(opt, cfg.train.steps, cfg.optim)
    assert opt.param_groups[1]["lr"] == pytest.approx(cfg.optim.lr / 5 / 20)  # step 0 of a 20-step warm-up


def test_pretrained_weights_are_shape_matched(tmp_path: Path) -> None:
    from medcl.methods.base import DataSpec

    spec = DataSpec(1, 3, ("bg", "a", "b"), 2, (64, 64))
    cfg = build_config({"method": {"name": "mcsc"}}, PLAIN)
    donor = build_method(cfg, spec)
    path = tmp_path / "swin.pt"
    # A bare Swin encoder's weights (no swinViT. prefix), wrapped as many checkpoints are.
    swin = {
        k.removeprefix("swinViT."): v
        for k, v in donor.transformer.net.state_dict().items()
        if k.startswith("swinViT.")
    }
    torch.save({"state_dict": swin}, path)
    method = build_method(
        build_config({"method": {"name": "mcsc"}}, [*PLAIN, f"method.transformer.weights={path}"]), spec
    )
    for k, v in method.transformer.net.state_dict().items():
        if k.startswith("swinViT."):
            assert torch.equal(v, donor.transformer.net.state_dict()[k]), k


@pytest.mark.parametrize("dataset", ["hippocampus", "acdc", "la2018"])
def test_configs_validate(dataset: str) -> None:
    cfg = load_config(REPO / "configs" / dataset / "mcsc.yaml")
    assert cfg.method_name == "mcsc"
