"""ACTION/ACTION++ methods on real ACDC slices (64x64, small networks): every term, EMA, stages, state."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from medcl.config import build_config
from medcl.data.dataset import load_dataset
from medcl.data.sampling import preprocess_volumes
from medcl.data.transforms import volume_transforms
from medcl.engine.run import data_spec
from medcl.errors import ConfigError
from medcl.methods import build_method
from medcl.methods.base import DataSpec

SMALL = [
    "data.patch_size=[64, 64]",
    "data.orientation=null",
    "data.batch_size=2",
    "data.unlabeled_batch_size=2",
    "model.features=[8, 8, 16, 32, 64, 8]",
]
FAST3 = [
    "method.rep_dim=16",
    "method.anco.num_queries=32",
    "method.anco.num_negatives=32",
    "method.saacl.anchors_per_class=32",
    "method.saacl.queue_size=256",
]
FAST12 = ["method.window=32", "method.window_stride=16", "method.window_pool=4", "method.global_dim=32"]


@pytest.fixture(autouse=True)
def _one_thread():
    """One torch thread: on a shared 2-core machine, two OpenMP threads wait on each other under load."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def acdc_volumes(shared_data: Path):
    info = load_dataset(shared_data / "ACDC")
    cfg = build_config({"method": {"name": "supervised"}}, SMALL)
    lab = preprocess_volumes(
        info.cases[:2], volume_transforms(cfg.data, "mri", with_label=True), with_label=True, progress=False
    )
    unl = preprocess_volumes(
        info.cases[2:4],
        volume_transforms(cfg.data, "mri", with_label=False),
        with_label=False,
        progress=False,
    )
    return info, lab, unl


def setup(acdc_volumes, tmp_path: Path, name: str, *extra: str):
    info, lab, unl = acdc_volumes
    cfg = build_config({"method": {"name": name}}, [*SMALL, f"output={tmp_path}", *extra])
    torch.manual_seed(0)
    method = build_method(cfg, data_spec(cfg, info))
    samplers = {
        "labeled": method.build_sampler("labeled", lab, stream_index=0),
        "unlabeled": method.build_sampler("unlabeled", unl, stream_index=1),
    }
    opt = torch.optim.SGD(method.param_groups()[0]["params"], lr=0.05, momentum=0.9, weight_decay=1e-4)
    return method, samplers, opt


def batch_of(samplers, step: int) -> dict:
    return {name: s.sample(0, 0, step) for name, s in samplers.items()}


def train_step(method, opt, batch, step: int) -> dict:
    out = method(batch, step)
    opt.zero_grad(set_to_none=True)
    out["loss"].backward()
    opt.step()
    method.on_step_end(step)
    return out


def assert_finite(out: dict, keys: set[str]) -> None:
    assert keys <= set(out), set(out)
    for k, v in out.items():
        assert math.isfinite(float(v.detach()) if torch.is_tensor(v) else v), k


def test_actionpp_steps_give_every_term_and_the_teacher_moves_only_by_ema(acdc_volumes, tmp_path) -> None:
    method, samplers, opt = setup(
        acdc_volumes,
        tmp_path,
        "actionpp",
        *FAST3,
        "method.schedule.kind=cosine",
        "method.schedule.applies_to=[anco, saacl]",
    )
    assert all(not p.requires_grad for p in method.teacher.parameters())
    for step in range(2):
        batch = batch_of(samplers, step)
        image = batch["unlabeled"]["image"].clone()
        teacher_before = {k: v.clone() for k, v in method.teacher.state_dict().items()}
        out = train_step(method, opt, batch, step)
        assert_finite(out, {"loss", "sup", "unsup", "anco", "saacl", "tau", "tau_anco", "tau_saacl"})
        # ATS (tau_min 0.1, tau_max 1, one period over the default 2000 steps): train/tau at this step.
        assert out["tau"] == pytest.approx(0.1 + 0.45 * (1 + math.cos(2 * math.pi * step / 2000)))
        assert torch.equal(batch["unlabeled"]["image"], image)  # the strong view is a new tensor
        student = method.net.state_dict()
        for k, v in method.teacher.state_dict().items():
            if v.is_floating_point():
                assert torch.allclose(v, 0.99 * teacher_before[k] + 0.01 * student[k], atol=1e-6), k
        assert all(p.grad is None for p in method.teacher.parameters())
        assert all(p.grad is None for p in method.teacher_rep_head.parameters())
    assert int(method.saacl_queue.count) > 0


def test_actionpp_state_dict_round_trip_keeps_centers_and_queue(acdc_volumes, tmp_path) -> None:
    method, samplers, opt = setup(acdc_volumes, tmp_path, "actionpp", *FAST3)
    train_step(method, opt, batch_of(samplers, 0), 0)
    assert method.centers.class_means.abs().sum() > 0
    state = method.state_dict()
    assert {"centers.centers", "centers.class_means", "centers.assignment", "saacl_queue.keys"} <= set(state)
    fresh, _, _ = setup(acdc_volumes, tmp_path, "actionpp", *FAST3)
    fresh.load_state_dict(state)
    for key in (
        "centers.class_means",
        "centers.assignment",
        "saacl_queue.keys",
        "saacl_queue.labels",
        "teacher.net.conv_0.conv_0.conv.weight",
    ):
        assert torch.equal(fresh.state_dict()[key], state[key]), key
    cos = method.centers.centers @ method.centers.centers.T  # 4 classes, rep_dim 16: the regular simplex
    assert torch.allclose(cos, torch.full((4, 4), -1 / 3).fill_diagonal_(1.0), atol=1e-5)


def test_init_without_teacher_weights_copies_the_student(acdc_volumes, tmp_path) -> None:
    method, _, _ = setup(acdc_volumes, tmp_path, "actionpp", *FAST3)
    donor = {k: torch.randn_like(v) for k, v in method.net.state_dict().items() if v.is_floating_point()}
    method.load_state_dict({f"net.{k}": v for k, v in donor.items()}, strict=False)  # what --init does
    for k, v in method.teacher.state_dict().items():
        assert torch.equal(v, method.net.state_dict()[k]), k


def test_zero_weights_skip_terms_mean_teacher_and_action(acdc_volumes, tmp_path) -> None:
    mt, samplers, opt = setup(
        acdc_volumes, tmp_path, "actionpp", "method.anco.weight=0", "method.saacl.weight=0"
    )
    assert mt.rep_head is None and mt.centers is None
    out = train_step(mt, opt, batch_of(samplers, 0), 0)
    assert_finite(out, {"loss", "sup", "unsup", "tau"})
    assert "anco" not in out and "saacl" not in out
    action, samplers, opt = setup(
        acdc_volumes,
        tmp_path,
        "actionpp",
        *FAST3,
        "method.saacl.weight=0",
        "method.schedule.kind=constant",
        "method.mix=cutmix",
        "method.saacl.denominator=batch",
    )
    assert action.centers is None and action.teacher_rep_head is None
    out = train_step(action, opt, batch_of(samplers, 0), 0)
    assert "anco" in out and "saacl" not in out and out["tau"] == 0.5


def test_saacl_batch_denominator_and_rep_scale(acdc_volumes, tmp_path) -> None:
    method, samplers, opt = setup(
        acdc_volumes,
        tmp_path,
        "actionpp",
        *FAST3,
        "method.saacl.denominator=batch",
        "method.rep_scale=2",
        "method.unsup_weighting=mask",
        "method.inference=teacher",
    )
    assert method.saacl_queue is None and method.inference_network() is method.teacher
    out = train_step(method, opt, batch_of(samplers, 0), 0)
    assert_finite(out, {"anco", "saacl", "unsup"})


def test_pretraining_stages_freeze_and_unfreeze_the_right_modules(acdc_volumes, tmp_path) -> None:
    method, samplers, opt = setup(
        acdc_volumes, tmp_path, "pretrain_actionpp", *FAST12, "method.stage1_steps=1"
    )
    encoder = ("conv_0", "down_1", "down_2", "down_3", "down_4")

    def snapshot() -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in method.named_parameters() if not n.startswith("teacher")}

    before = snapshot()
    batch = batch_of(samplers, 0)
    image = batch["labeled"]["image"].clone()
    out = train_step(method, opt, batch, 0)  # stage 1
    assert torch.equal(batch["labeled"]["image"], image)  # the teacher's jitter does not leak into the batch
    assert_finite(out, {"loss", "global", "tau", "tau_student", "tau_teacher"})
    assert out["stage"] == 1.0 and "local" not in out and "sup" not in out
    trainable = {
        n.split(".")[2] if n.startswith("net.net.") else n.split(".")[0]
        for n, p in method.named_parameters()
        if p.requires_grad
    }
    assert trainable == {*encoder, "global_proj", "global_pred"}
    after = snapshot()
    for n in before:
        moved = not torch.equal(before[n], after[n])
        in_encoder = n.startswith(tuple(f"net.net.{m}." for m in encoder)) or n.startswith("global_")
        assert moved == in_encoder or not moved and in_encoder, n  # frozen modules never move
    assert any(not torch.equal(before[n], after[n]) for n in before if n.startswith("net.net.down_"))
    out = train_step(method, opt, batch_of(samplers, 1), 1)  # stage 2
    assert_finite(out, {"loss", "global", "local", "sup"})
    assert out["stage"] == 2.0
    assert all(p.requires_grad for n, p in method.named_parameters() if not n.startswith("teacher"))
    assert all(
        not p.requires_grad and p.grad is None
        for n, p in method.named_parameters()
        if n.startswith("teacher")
    )
    assert int(method.local_queue.count) == 4 and int(method.global_queue.count) == 8


def test_three_dimensional_maps_use_the_same_code_path(tmp_path) -> None:
    spec = DataSpec(
        in_channels=1, num_classes=2, class_names=("bg", "LA"), spatial_dims=3, patch_size=(32, 32, 32)
    )
    common = [
        "data.spatial_dims=3",
        "data.patch_size=[32, 32, 32]",
        "model.features=[4, 4, 8, 8, 16, 4]",
        f"output={tmp_path}",
    ]
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(2, 1, 32, 32, 32, generator=g) > 0.7).long()
    batch = {
        "labeled": {"image": torch.randn(2, 1, 32, 32, 32, generator=g), "label": labels},
        "unlabeled": {"image": torch.randn(2, 1, 32, 32, 32, generator=g)},
    }
    for name, extra in (
        ("actionpp", [*FAST3, "method.mix=cutmix"]),
        (
            "pretrain_actionpp",
            [
                "method.window=16",
                "method.window_stride=8",
                "method.window_pool=4",
                "method.global_dim=16",
                "method.stage1_steps=0",
            ],
        ),
    ):
        cfg = build_config({"method": {"name": name}}, [*common, *extra])
        method = build_method(cfg, spec)
        out = method(batch, 0)
        out["loss"].backward()
        method.on_step_end(0)
        assert all(math.isfinite(float(v.detach()) if torch.is_tensor(v) else v) for v in out.values())


def test_bad_settings_fail_with_messages(acdc_volumes, tmp_path) -> None:
    with pytest.raises(ConfigError, match="window_pool"):
        build_config({"method": {"name": "pretrain_actionpp", "window": 30, "window_pool": 4}})
    with pytest.raises(ConfigError, match="applies_to"):
        build_config({"method": {"name": "actionpp", "schedule": {"applies_to": ["anko"]}}})
    with pytest.raises(ConfigError, match="larger than data.patch_size"):
        setup(acdc_volumes, tmp_path, "pretrain_actionpp", "method.window=128")


def test_pretrain_then_finetune_through_the_engine(
    shared_data: Path, output_dir: Path, tmp_path: Path
) -> None:
    import json

    from medcl.engine.run import train
    from medcl.runtime.checkpoint import load_checkpoint

    ids = [f"patient00{i}_frame0{f}" for i in (3, 4, 5) for f in (1, 2)]
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"labeled": ids[:2], "unlabeled": ids[2:4], "val": ids[4:5], "test": []}))
    common = [
        *SMALL,
        f"data.path={shared_data / 'ACDC'}",
        f"data.splits={splits}",
        f"output={output_dir}",
        "train.steps=2",
        "train.threads=1",
        "val.every=2",
        "val.hd95=false",
        "val.overlays=0",
        "tracking.log_model=false",
    ]
    pre = train(
        build_config(
            {"method": {"name": "pretrain_actionpp"}},
            [*common, *FAST12, "method.stage1_steps=1", "tracking.run_name=pre"],
        ),
        progress=False,
    )
    assert pre.best_dice is not None  # validated on the val case, which never trained
    cfg = build_config(
        {"method": {"name": "actionpp"}}, [*common, *FAST3, f"init={pre.run_dir}", "tracking.run_name=ft"]
    )
    method = build_method(cfg, data_spec(cfg, load_dataset(shared_data / "ACDC")))
    from medcl.engine.run import init_weights

    init_weights(method, str(pre.run_dir), cfg)
    saved = load_checkpoint(pre.last_checkpoint)["model"]
    for key in ("net.net.conv_0.conv_0.conv.weight", "teacher.net.conv_0.conv_0.conv.weight"):
        assert torch.equal(method.state_dict()[key], saved[key]), key
    result = train(cfg, progress=False)
    assert result.steps == 2 and result.best_dice is not None


def test_feature_queue_is_fifo_and_ema_update_follows_the_formula() -> None:
    from medcl.methods.teacher import FeatureQueue, ema_update, frozen_copy

    q = FeatureQueue(4, (2,), labels=True, init="empty")
    q.push(torch.arange(6.0).view(3, 2), torch.tensor([0, 1, 2]))
    q.push(torch.full((2, 2), 9.0), torch.tensor([3, 3]))  # wraps: overwrites slot 0
    assert q.labels.tolist() == [3, 1, 2, 3] and q.keys[0].tolist() == [9.0, 9.0] and int(q.ptr) == 1
    student = torch.nn.Linear(3, 2)
    teacher = frozen_copy(student)
    old = teacher.weight.clone()
    with torch.no_grad():
        student.weight.add_(1.0)
    ema_update(teacher, student, 0.9)
    assert torch.allclose(teacher.weight, 0.9 * old + 0.1 * student.weight)
    assert not teacher.weight.requires_grad
