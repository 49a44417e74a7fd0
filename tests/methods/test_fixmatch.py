"""FixMatch (one network, weak-to-strong): the unsupervised loss by hand, its mask, and real steps on ACDC."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from monai.losses import DiceLoss

from medcl.engine.data_setup import data_spec
from medcl.methods import build_method
from medcl.methods.base import DataSpec
from medcl.services.configs import build_config

SMALL = [
    "data.patch_size=[64, 64]",
    "data.orientation=null",
    "data.batch_size=2",
    "data.unlabeled_batch_size=2",
    "model.features=[8, 8, 16, 32, 64, 8]",
]
SPEC = DataSpec(in_channels=1, num_classes=2, class_names=("bg", "fg"), spatial_dims=2, patch_size=(2, 2))


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(*extra: str):
    cfg = build_config({"method": {"name": "fixmatch"}}, ["model.features=[4, 4, 4, 4, 4, 4]", *extra])
    return build_method(cfg, SPEC)


def test_masked_ce_is_summed_over_confident_pixels_and_divided_by_every_pixel() -> None:
    method = tiny("method.dice_weight=0", "method.ce_weight=1", "method.threshold=0.9")
    logits = torch.tensor([[[[2.0, 0.0], [0.0, 1.0]], [[0.0, 3.0], [0.0, 0.0]]]])  # (1, 2, 2, 2)
    pseudo = torch.tensor([[[0, 1], [1, 0]]])
    conf = torch.tensor([[[0.95, 0.99], [0.5, 0.9]]])  # pixel (1, 0) is below the threshold
    # CE per pixel by hand: -log softmax at the pseudo-label.
    ce = [
        -math.log(math.exp(2) / (math.exp(2) + 1)),
        -math.log(math.exp(3) / (math.exp(3) + 1)),
        -math.log(0.5),
        -math.log(math.exp(1) / (math.exp(1) + 1)),
    ]
    expected = (ce[0] + ce[1] + ce[3]) / 4  # FixMatch: the masked sum over all 4 pixels
    assert method.unsup_loss(logits, pseudo, conf).item() == pytest.approx(expected, rel=1e-6)


def test_masked_dice_with_every_pixel_confident_is_monai_dice() -> None:
    method = tiny("method.dice_weight=1", "method.ce_weight=0")
    torch.manual_seed(0)
    logits = torch.randn(2, 2, 6, 6)
    pseudo = torch.randint(0, 2, (2, 6, 6))
    conf = torch.ones(2, 6, 6)
    reference = DiceLoss(include_background=False, to_onehot_y=True, softmax=True)(
        logits, pseudo.unsqueeze(1)
    )
    assert method.unsup_loss(logits, pseudo, conf).item() == pytest.approx(reference.item(), rel=1e-5)


def test_no_confident_pixel_gives_zero_loss_and_zero_gradient() -> None:
    method = tiny("method.threshold=0.99")
    logits = torch.randn(2, 2, 6, 6, requires_grad=True)
    pseudo = torch.randint(0, 2, (2, 6, 6))
    loss = method.unsup_loss(logits, pseudo, torch.full((2, 6, 6), 0.6))
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    assert logits.grad is not None and logits.grad.abs().max().item() < 1e-6


def test_loss_is_invariant_to_a_permutation_of_pixels() -> None:
    method = tiny()
    torch.manual_seed(1)
    logits, pseudo, conf = torch.randn(1, 2, 4, 4), torch.randint(0, 2, (1, 4, 4)), torch.rand(1, 4, 4)
    perm = torch.randperm(16)

    def shuffle(t: torch.Tensor, channels: bool) -> torch.Tensor:
        flat = t.flatten(2 if channels else 1)[..., perm]
        return flat.reshape(t.shape)

    a = method.unsup_loss(logits, pseudo, conf)
    b = method.unsup_loss(shuffle(logits, True), shuffle(pseudo, False), shuffle(conf, False))
    assert a.item() == pytest.approx(b.item(), rel=1e-5)


# acdc_volumes: tests/methods/conftest.py
def test_real_steps_train_one_network_on_labeled_and_strong_views(acdc_volumes, tmp_path) -> None:
    info, lab, unl = acdc_volumes
    cfg = build_config(
        {"method": {"name": "fixmatch"}}, [*SMALL, f"output={tmp_path}", "method.threshold=0.5"]
    )
    torch.manual_seed(0)
    method = build_method(cfg, data_spec(cfg, info))
    assert list(method.children()) == [method.net, method.sup_loss]  # no teacher copy
    samplers = {
        "labeled": method.build_sampler("labeled", lab, stream_index=0),
        "unlabeled": method.build_sampler("unlabeled", unl, stream_index=1),
    }
    opt = torch.optim.AdamW(method.param_groups()[0]["params"], lr=1e-3)
    before = {k: v.clone() for k, v in method.net.state_dict().items()}
    for step in range(3):
        batch = {name: s.sample(0, 0, step) for name, s in samplers.items()}
        image = batch["unlabeled"]["image"].clone()
        out = method(batch, step)
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()
        assert {"loss", "sup", "unsup", "confident_fraction"} <= set(out)
        assert all(math.isfinite(float(v.detach() if torch.is_tensor(v) else v)) for v in out.values())
        assert 0.0 <= float(out["confident_fraction"]) <= 1.0
        assert torch.equal(batch["unlabeled"]["image"], image)  # the strong view is a new tensor
        loss = out["sup"] + cfg.method.unsup_weight * out["unsup"]
        assert float(out["loss"].detach()) == pytest.approx(float(loss), rel=1e-5)
    assert any(not torch.equal(before[k], v) for k, v in method.net.state_dict().items())
    assert method.inference_network() is method.net

    # The same step repeats its strong view (resume-safe): the generator is a function of (seed, step).
    batch = {name: s.sample(0, 0, 7) for name, s in samplers.items()}
    method.eval()
    with torch.no_grad():
        a, b = method(batch, 7), method(batch, 7)
    assert torch.equal(a["unsup"], b["unsup"])


def test_withheld_labels_of_unlabeled_cases_give_train_pseudo_dice_and_no_loss_reads_them(
    hippocampus: Path, output_dir: Path
) -> None:
    import json

    import mlflow

    from medcl.engine.run import train

    ids = sorted(p.name.removesuffix(".nii.gz") for p in (hippocampus / "imagesTr").glob("*.nii.gz"))
    splits = output_dir / "splits.json"
    splits.write_text(json.dumps({"labeled": ids[:2], "unlabeled": ids[2:5], "val": ids[5:6], "test": []}))
    common = [
        f"data.path={hippocampus}",
        f"data.splits={splits}",
        f"output={output_dir}",
        "data.patch_size=[32, 32]",
        "data.batch_size=2",
        "data.unlabeled_batch_size=2",
        "model.features=[4, 4, 8, 8, 8, 4]",
        "train.steps=4",
        "train.log_every=2",
        "val.every=4",
        "method.threshold=0.0",
        "tracking.log_model=false",
    ]
    runs = {}
    for pseudo_dice in (True, False):
        cfg = build_config(
            {"method": {"name": "fixmatch"}},
            [*common, f"train.pseudo_dice={str(pseudo_dice).lower()}", f"tracking.run_name=pd-{pseudo_dice}"],
        )
        runs[pseudo_dice] = train(cfg, progress=False)
    client = mlflow.MlflowClient(f"sqlite:///{output_dir / 'mlflow.db'}")
    with_labels = client.get_run(runs[True].run_id).data.metrics
    without = client.get_run(runs[False].run_id).data.metrics
    assert 0.0 <= with_labels["train/pseudo_dice"] <= 1.0
    assert "train/pseudo_dice" not in without
    # The labels are a diagnostic only: the same seed trains to the same weights with or without them.
    a = torch.load(runs[True].last_checkpoint, weights_only=True)["model"]
    b = torch.load(runs[False].last_checkpoint, weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_feature_perturbation_stream_adds_a_third_view_weighted_against_the_strong_one(
    acdc_volumes, tmp_path
) -> None:
    info, lab, unl = acdc_volumes
    overrides = [*SMALL, f"output={tmp_path}", "method.threshold=0.5", "method.fp_dropout=0.5"]
    cfg = build_config({"method": {"name": "fixmatch"}}, [*overrides, "method.fp_weight=0.25"])
    torch.manual_seed(0)
    method = build_method(cfg, data_spec(cfg, info))
    samplers = {
        "labeled": method.build_sampler("labeled", lab, stream_index=0),
        "unlabeled": method.build_sampler("unlabeled", unl, stream_index=1),
    }
    batch = {name: s.sample(0, 0, 3) for name, s in samplers.items()}
    calls = []
    hook = method.net.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append((args[0].shape[0], kwargs)), with_kwargs=True
    )
    out = method(batch, 3)
    hook.remove()
    n_l, n_u = batch["labeled"]["image"].shape[0], batch["unlabeled"]["image"].shape[0]
    # The weak view's pseudo-labelling forward, then one trained forward: labeled + strong + perturbed weak.
    assert [n for n, _ in calls] == [n_u, n_l + 2 * n_u]
    assert calls[1][1]["perturb"].start == n_l + n_u and calls[1][1]["perturb"].p == 0.5
    unsup = 0.75 * out["unsup_strong"] + 0.25 * out["unsup_fp"]
    assert float(out["unsup"]) == pytest.approx(float(unsup), rel=1e-5)
    assert float(out["loss"].detach()) == pytest.approx(float(out["sup"] + unsup), rel=1e-5)
    out["loss"].backward()
    assert all(p.grad is not None for p in method.net.parameters())
    # Resume-safe: the same step draws the same dropout masks (and strong view) again.
    method.eval()
    with torch.no_grad():
        a, b = method(batch, 3), method(batch, 3)
    assert torch.equal(a["unsup_fp"], b["unsup_fp"])
