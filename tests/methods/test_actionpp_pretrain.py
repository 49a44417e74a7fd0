"""ACTION/ACTION++ stages 1-2 on real ACDC slices: stages, frozen modules, queues, 3D, pretrain -> finetune."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import mlflow
import pytest
import torch

from medcl.data.dataset import load_dataset
from medcl.engine.data_setup import data_spec
from medcl.errors import ConfigError
from medcl.methods import METHODS, build_method
from medcl.services.configs import build_config
from medcl.tracking.mlflow_tracking import resolve_store

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pretraining_stages_freeze_and_unfreeze_the_right_modules(acdc) -> None:
    method, samplers, opt = acdc.setup("pretrain_actionpp", *acdc.FAST12, "method.stage1_steps=1")
    encoder = ("conv_0", "down_1", "down_2", "down_3", "down_4")

    def snapshot() -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in method.named_parameters() if not n.startswith("teacher")}

    before = snapshot()
    batch = acdc.batch(samplers, 0)
    image = batch["labeled"]["image"].clone()
    out = acdc.step(method, opt, batch, 0)  # stage 1
    assert torch.equal(batch["labeled"]["image"], image)  # the teacher's jitter does not leak into the batch
    acdc.assert_finite(out, {"loss", "global", "tau", "tau_student", "tau_teacher"})
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
    assert int(method.local_queue.count) == 0 and int(method.global_queue.count) == 4
    out = acdc.step(method, opt, acdc.batch(samplers, 1), 1)  # stage 2
    acdc.assert_finite(out, {"loss", "global", "local", "sup"})
    assert out["stage"] == 2.0
    assert all(p.requires_grad for n, p in method.named_parameters() if not n.startswith("teacher"))
    assert all(
        not p.requires_grad and p.grad is None
        for n, p in method.named_parameters()
        if n.startswith("teacher")
    )
    assert int(method.local_queue.count) == 4 and int(method.global_queue.count) == 8


def test_teacher_embeddings_enter_the_queues_after_the_step(acdc) -> None:
    method, samplers, _ = acdc.setup("pretrain_actionpp", *acdc.FAST12, "method.stage1_steps=0")
    keys = method.global_queue.keys.clone()
    out = method(acdc.batch(samplers, 0), 0)
    assert torch.equal(method.global_queue.keys, keys)  # the loss of this step saw the old queue only
    assert [push.queue for push in method.pending_pushes] == [method.global_queue, method.local_queue]
    out["loss"].backward()
    method.on_step_end(0)
    assert int(method.global_queue.count) == 4 and int(method.local_queue.count) == 4
    assert method.pending_pushes == []


def test_the_student_global_embedding_reports_its_collapse_statistics(acdc) -> None:
    """emb_cos_mean / emb_std of the student's global projection, as the Chaitanya stages log them, so a
    global KL of ~0 can be told apart from a collapsed encoder."""
    method, samplers, _ = acdc.setup("pretrain_actionpp", *acdc.FAST12, "method.stage1_steps=1")
    batch = acdc.batch(samplers, 0)
    out = method(batch, 0)
    images = torch.cat([batch["labeled"]["image"], batch["unlabeled"]["image"]])  # the step's student batch
    with torch.no_grad():
        u = torch.nn.functional.normalize(
            method.global_proj(method.net(images, return_features=True).embedding), dim=1
        )
    n = u.shape[0]
    expected = (u @ u.T)[~torch.eye(n, dtype=torch.bool)].mean()
    assert {"emb_cos_mean", "emb_std"} <= type(method).metrics
    assert float(out["emb_cos_mean"]) == pytest.approx(float(expected), abs=1e-4)
    assert float(out["emb_std"]) == pytest.approx(float(u.std(dim=0).mean()), abs=1e-4)


def test_pretraining_methods_declare_their_kind() -> None:
    kinds = {name: cls.kind for name, cls in METHODS.items()}
    assert {n for n, k in kinds.items() if k == "pretrain"} == {
        "pretrain_global",
        "pretrain_local",
        "pretrain_actionpp",
    }
    assert METHODS["pretrain_actionpp"].validates  # stage 2 segments the labeled slices: it validates


def test_three_dimensional_maps_use_the_same_code_path(step_3d) -> None:
    out = step_3d(
        "pretrain_actionpp",
        "method.window=16",
        "method.window_stride=8",
        "method.window_pool=4",
        "method.global_dim=16",
        "method.stage1_steps=0",
    )
    assert all(math.isfinite(float(v.detach()) if torch.is_tensor(v) else v) for v in out.values())


def test_bad_settings_fail_with_messages(acdc) -> None:
    with pytest.raises(ConfigError, match="window_pool"):
        build_config({"method": {"name": "pretrain_actionpp", "window": 30, "window_pool": 4}})
    with pytest.raises(ConfigError, match="applies_to"):
        build_config({"method": {"name": "pretrain_actionpp", "schedule": {"applies_to": ["anco"]}}})
    with pytest.raises(ConfigError, match="larger than data.patch_size"):
        acdc.setup("pretrain_actionpp", "method.window=128")


def test_pretrain_then_finetune_through_the_engine(
    acdc, shared_data: Path, output_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from medcl.engine.resume import init_weights
    from medcl.engine.run import train
    from medcl.runtime.checkpoint import load_checkpoint

    ids = [f"patient00{i}_frame0{f}" for i in (3, 4, 5) for f in (1, 2)]
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"labeled": ids[:2], "unlabeled": ids[2:4], "val": ids[4:5], "test": []}))
    common = [
        *acdc.SMALL,
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
            [*common, *acdc.FAST12, "method.stage1_steps=1", "tracking.run_name=pre"],
        ),
        progress=False,
    )
    assert pre.best_dice is not None  # validated on the val case, which never trained
    cfg = build_config(
        {"method": {"name": "actionpp"}},
        [*common, *acdc.FAST3, f"init={pre.run_dir}", "tracking.run_name=ft"],
    )
    method = build_method(cfg, data_spec(cfg, load_dataset(shared_data / "ACDC")))
    init_weights(method, str(pre.run_dir), cfg)
    saved = load_checkpoint(pre.last_checkpoint)["model"]
    for key in ("net.net.conv_0.conv_0.conv.weight", "teacher.net.conv_0.conv_0.conv.weight"):
        assert torch.equal(method.state_dict()[key], saved[key]), key
    result = train(cfg, progress=False)
    assert result.steps == 2 and result.best_dice is not None
    # Stage 2 read the labels of ids[:2]: the checkpoints say so, and a run started from them inherits it.
    assert load_checkpoint(pre.last_checkpoint)["label_cases"] == {"ACDC": sorted(ids[:2])}
    assert load_checkpoint(result.best_checkpoint)["label_cases"] == {"ACDC": sorted(ids[:2])}
    assert "was trained with the labels" not in caplog.text  # same labeled cases: nothing to warn about

    # Fine-tuning on ids[1] only, with ids[0] unlabeled: the pretraining has seen a label this run withholds.
    fewer = tmp_path / "fewer.json"
    fewer.write_text(json.dumps({"labeled": ids[1:2], "unlabeled": [ids[0], *ids[2:4]], "val": ids[4:5]}))
    leak = build_config(
        {"method": {"name": "actionpp"}},
        [*common, *acdc.FAST3, f"data.splits={fewer}", f"init={pre.run_dir}", "tracking.run_name=leak"],
    )
    with caplog.at_level(logging.WARNING, logger="medcl.engine.resume"):
        leaked = train(leak, progress=False)
    assert f"labels of 1 case(s) ({ids[0]}) that this run treats as unlabeled" in caplog.text
    assert load_checkpoint(leaked.best_checkpoint)["label_cases"] == {
        "ACDC": sorted(ids[:2])
    }  # own + inherited
    uri = resolve_store(leak.tracking.uri, leak.output, create=False)[0]
    tags = mlflow.MlflowClient(uri).get_run(leaked.run_id).data.tags
    assert tags["medcl.init_label_overlap"] == "unlabeled:1"
