"""Chaitanya pretraining methods on real Hippocampus volumes, and the pretrain -> finetune chain."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest
import torch

from medcl.cli import main
from medcl.data.dataset import load_dataset
from medcl.data.sampling import preprocess_volumes
from medcl.data.transforms import volume_transforms
from medcl.engine.data_setup import data_spec
from medcl.errors import ConfigError
from medcl.methods import build_method
from medcl.methods.pretrain import embedding_stats
from medcl.runtime.checkpoint import load_checkpoint
from medcl.services.configs import build_config

REPO = Path(__file__).resolve().parents[2]
SMALL = ["model.features=[8, 8, 16, 32, 64, 8]", "method.volumes_per_batch=2"]


def method_and_batch(hippocampus: Path, name: str, *extra: str):
    cfg = build_config({"method": {"name": name}}, [*SMALL, *extra])
    info = load_dataset(hippocampus)
    torch.manual_seed(0)
    method = build_method(cfg, data_spec(cfg, info))
    vols = preprocess_volumes(
        info.cases[:3], volume_transforms(cfg.data, "mri", with_label=False), with_label=False, progress=False
    )
    sampler = method.build_sampler("images", vols, stream_index=0)
    return method, sampler


def test_global_stage_trains_encoder_and_head_only(hippocampus: Path) -> None:
    method, sampler = method_and_batch(hippocampus, "pretrain_global")
    trainable = {
        n.split(".")[2] if n.startswith("net.net.") else n.split(".")[0]
        for n, p in method.named_parameters()
        if p.requires_grad
    }
    assert trainable == {"conv_0", "down_1", "down_2", "down_3", "down_4", "global_head"}
    batch = {"images": sampler.sample(0, 0, 0)}
    assert batch["images"]["image"].shape[0] == 2 * 4 * 3  # m volumes x S partitions x 3 views
    opt = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(12):
        out = method(batch, step)
        assert torch.isfinite(out["loss"]) and out["tau"] == 0.1
        assert -1.0 <= out["emb_cos_mean"] <= 1.0 and out["emb_std"] >= 0
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(float(out["loss"].detach()))
    assert losses[-1] < losses[0]


def test_local_stage_leaves_the_encoder_unchanged(hippocampus: Path) -> None:
    method, sampler = method_and_batch(hippocampus, "pretrain_local", "method.regions=grid13")
    encoder = {
        n: p.detach().clone()
        for n, p in method.named_parameters()
        if n.startswith(("net.net.conv_0.", "net.net.down_"))
    }
    decoder = {n: p.detach().clone() for n, p in method.named_parameters() if ".upcat_4." in n}
    params = [p for p in method.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.1)
    for step in range(3):
        out = method({"images": sampler.sample(0, 0, step)}, step)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    for n, p in method.named_parameters():
        if n in encoder:
            assert torch.equal(p, encoder[n]), n
    assert any(not torch.equal(dict(method.named_parameters())[n], v) for n, v in decoder.items())
    assert method.feature_key == "scale_2"  # third decoder block of four, coarsest first
    trainable = {
        n.split(".")[2] for n, p in method.named_parameters() if p.requires_grad and n.startswith("net.net.")
    }
    assert trainable == {"upcat_4", "upcat_3", "upcat_2"}


def test_local_stage_owns_the_window_embedding_the_loss_has_no_state(tmp_path: Path) -> None:
    from medcl.methods import DataSpec

    spec = DataSpec(1, 3, ("bg", "a", "b"), 2, (64, 64))
    method = build_method(build_config({"method": {"name": "pretrain_local"}}, SMALL), spec)
    assert list(method.loss_fn.parameters()) == [] and list(method.loss_fn.buffers()) == []
    weight = method.region_head.linear.weight  # (embed_dim, C * K^2), trained with the decoder
    assert weight.shape == (128, method.local_head.channels * 9) and weight.requires_grad
    assert any(p is weight for p in method.param_groups()[0]["params"])
    # A checkpoint from before the move names the embedding loss_fn.proj.weight: it still loads.
    state = dict(method.state_dict())
    old = torch.randn_like(state.pop("region_head.linear.weight"))
    method.load_state_dict({**state, "loss_fn.proj.weight": old})
    assert torch.equal(method.region_head.linear.weight, old)
    # ... and --init from such a checkpoint copies it too (the rename happens before the shape match).
    from medcl.engine.resume import init_weights
    from medcl.runtime.checkpoint import save_checkpoint

    cfg = build_config({"method": {"name": "pretrain_local"}}, SMALL)
    older = torch.randn_like(old)
    path = save_checkpoint({"model": {**state, "loss_fn.proj.weight": older}}, tmp_path / "old.pt")
    fresh = build_method(cfg, spec)
    init_weights(fresh, str(path), cfg)
    assert torch.equal(fresh.region_head.linear.weight, older)
    means = build_method(
        build_config({"method": {"name": "pretrain_local"}}, [*SMALL, "method.embed_dim=null"]), spec
    )
    assert means.region_head is None  # windows are embedded by their mean


def test_embedding_stats_detect_collapse() -> None:
    collapsed = embedding_stats(torch.ones(6, 4))
    assert collapsed["emb_cos_mean"] == pytest.approx(1.0) and collapsed["emb_std"] == pytest.approx(0.0)
    spread = embedding_stats(torch.eye(4))
    assert spread["emb_cos_mean"] == pytest.approx(0.0)


def test_pretraining_rejects_3d_and_unknown_encoders() -> None:
    from medcl.methods import DataSpec

    spec = DataSpec(1, 3, ("bg", "a", "b"), 3, (32, 32, 32))
    with pytest.raises(ConfigError, match="2D slices"):
        build_method(
            build_config(
                {"method": {"name": "pretrain_global"}}, ["data.spatial_dims=3", "data.patch_size=[32,32,32]"]
            ),
            spec,
        )
    spec2 = DataSpec(1, 3, ("bg", "a", "b"), 2, (64, 64))
    with pytest.raises(ConfigError, match="supported: basicunet, swinunetr"):
        build_method(build_config({"method": {"name": "pretrain_local"}}, ["model.name=unet"]), spec2)


def test_pretrain_then_finetune_chain_on_real_data(
    hippocampus: Path, output_dir: Path, tmp_path: Path, capsys
) -> None:
    ids = sorted(p.name.removesuffix(".nii.gz") for p in (hippocampus / "imagesTr").glob("*.nii.gz"))
    splits = tmp_path / "splits.json"
    splits.write_text(json.dumps({"labeled": ids[:8], "unlabeled": ids[8:14], "val": ids[14:16], "test": []}))
    common = [
        "--data",
        hippocampus,
        "--splits",
        splits,
        "--runs",
        output_dir,
        "--no-progress",
        "--set",
        "model.features=[8, 8, 16, 32, 64, 8]",
        "--set",
        "method.volumes_per_batch=2",
    ]
    cfgs = REPO / "configs" / "hippocampus"
    assert (
        main(
            [
                str(a)
                for a in [
                    "pretrain",
                    cfgs / "pretrain_global.yaml",
                    "--steps",
                    2,
                    "--strategy",
                    "GD-",
                    "--partitions",
                    3,
                    *common,
                    "--set",
                    "tracking.run_name=g",
                ]
            ]
        )
        == 0
    )
    assert (
        main(
            [
                str(a)
                for a in [
                    "pretrain",
                    cfgs / "pretrain_local.yaml",
                    "--steps",
                    2,
                    "--init",
                    output_dir / "runs" / "g",
                    *common,
                    "--set",
                    "tracking.run_name=l",
                ]
            ]
        )
        == 0
    )
    ft = [
        "finetune",
        cfgs / "finetune.yaml",
        "--data",
        hippocampus,
        "--splits",
        splits,
        "--runs",
        output_dir,
        "--no-progress",
        "--set",
        "model.features=[8, 8, 16, 32, 64, 8]",
        "--labeled",
        2,
        "--steps",
        2,
        "--init",
        output_dir / "runs" / "l",
        "--set",
        "tracking.run_name=f",
        "--set",
        "tracking.log_model=false",
    ]
    assert main([str(a) for a in ft]) == 0
    capsys.readouterr()

    g = load_checkpoint(output_dir / "runs" / "g" / "checkpoints" / "last.pt")
    loc = load_checkpoint(output_dir / "runs" / "l" / "checkpoints" / "last.pt")
    f_state = load_checkpoint(output_dir / "runs" / "f" / "checkpoints" / "last.pt")
    assert g["config"]["method"]["strategy"] == "GD-" and g["config"]["method"]["partitions"] == 3
    enc = "net.net.down_1.convs.conv_0.conv.weight"
    torch.testing.assert_close(g["model"][enc], loc["model"][enc])  # local stage kept the global encoder
    assert not any(k.startswith(("global_head", "local_head")) for k in f_state["model"])  # heads dropped

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{output_dir / 'mlflow.db'}")
    runs = {
        r.info.run_name: r
        for r in client.search_runs([client.get_experiment_by_name("hippocampus-chaitanya").experiment_id])
    }
    assert runs["l"].data.tags["medcl.init_from"] == runs["g"].info.run_id
    assert runs["f"].data.params["init_from"] == runs["l"].info.run_id
    assert runs["f"].data.params["data.n_labeled"] == "2"
    assert runs["g"].data.params["data.n_labeled"] == "8" and runs["g"].data.params["data.n_unlabeled"] == "6"
    assert {"train/loss_global", "train/tau", "train/emb_cos_mean", "train/emb_std"} <= set(
        runs["g"].data.metrics
    )
    assert "val/dice_mean" in runs["f"].data.metrics and "val/dice_mean" not in runs["g"].data.metrics
    assert [a.path for a in client.list_artifacts(runs["g"].info.run_id, "checkpoints")] == [
        "checkpoints/last.pt"
    ]
