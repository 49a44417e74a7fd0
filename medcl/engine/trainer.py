"""The one engine: step-based training of any :class:`~medcl.methods.Method`.

Per step: next batch -> ``method(batch, step)`` (networks at ``train.precision``: bf16 autocast on CPUs and GPUs
that have it, see :mod:`medcl.precision`) -> backward (loss scaling for fp16) -> gradient clipping -> optimiser
and LR-schedule step -> ``method.on_step_end``. Losses stay on the device as tensors; every
``train.log_every`` steps (and before validating or saving) they are checked for NaN/inf and their means go
to MLflow, one host sync per window.
every ``val.every`` steps (and at the end) the inference network is validated on whole 3D volumes with a
sliding window, per-class Dice/HD95 are logged with overlays, and ``best.pt`` follows ``val/dice_mean``;
``last.pt`` is written every ``train.checkpoint_every`` steps and when the run is interrupted.
Checkpoints hold everything ``--resume`` needs to continue to the same result.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

import medcl
from medcl.config import Config
from medcl.data.sampling import TrainBatches, step_loader
from medcl.engine.optim import build_optimizer, build_scheduler
from medcl.errors import MedclError
from medcl.evaluation.metrics import case_metrics
from medcl.inference.window import make_inferer, predict_volume
from medcl.methods.base import DataSpec, Method
from medcl.precision import resolve_precision, set_compute_dtype
from medcl.runtime import distributed as dist
from medcl.runtime.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from medcl.runtime.device import resolve_device
from medcl.schedules import report_schedule
from medcl.tracking.mlflow_tracking import NullTracker

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What ``fit`` reports back (and ``medcl train`` prints)."""

    run_id: str | None
    run_dir: Path
    steps: int
    best_step: int | None
    best_dice: float | None
    best_per_class: dict[str, dict[str, float]] = field(default_factory=dict)
    best_checkpoint: Path | None = None
    last_checkpoint: Path | None = None
    seconds: float = 0.0
    model_uri: str | None = None
    #: Of ``seconds``: waiting for the next batch (sampling when ``data.num_workers`` is 0, else the loader
    #: workers falling behind) and validating.
    loader_seconds: float = 0.0
    validation_seconds: float = 0.0
    #: ``val/dice_mean`` of the last validation (the final model's, when validation ran at the last step).
    final_dice: float | None = None


def overlay(image: np.ndarray, label: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Side-by-side RGB uint8 picture: image | ground truth | prediction, for one 2D slice."""
    from skimage.color import label2rgb

    lo, hi = np.percentile(image, [1, 99])
    gray = np.clip((image - lo) / max(hi - lo, 1e-6), 0, 1)
    panels = [np.stack([gray] * 3, -1)]
    for mask in (label, pred):
        panels.append(label2rgb(mask, image=gray, alpha=0.35, bg_label=0, image_alpha=1.0))
    pic = np.concatenate([np.rot90(p) for p in panels], axis=1)
    zoom = min(8, max(1, 192 // min(pic.shape[:2])))  # small slices are enlarged (nearest) for the UI
    pic = pic.repeat(zoom, axis=0).repeat(zoom, axis=1)
    return (np.clip(pic, 0, 1) * 255).astype(np.uint8)


class Trainer:
    """Trains one method for ``cfg.train.steps`` steps.

    Args:
        cfg: the validated run config.
        method: the method (networks + losses); moved to the device here.
        spec: data facts (classes, channels, patch size).
        batches: the step-indexed training batches (labeled and unlabeled streams).
        val_volumes: preprocessed validation cases (``image``, ``label`` MetaTensors, ``case_id``).
        run_dir: folder of this run's checkpoints.
        tracker: an MLflow tracker, or a :class:`NullTracker`.
        progress: show a tqdm bar.
    """

    def __init__(
        self,
        cfg: Config,
        method: Method,
        spec: DataSpec,
        batches: TrainBatches,
        val_volumes: list[dict[str, Any]],
        run_dir: Path,
        tracker: Any = None,
        progress: bool = True,
        label_cases: dict[str, list[str]] | None = None,
    ) -> None:
        self.cfg = cfg
        self.spec = spec
        self.batches = batches
        self.val_volumes = val_volumes[: cfg.val.max_cases] if cfg.val.max_cases else val_volumes
        self.run_dir = Path(run_dir)
        self.tracker = tracker or NullTracker()
        self.progress = progress and dist.is_main()
        self.device = resolve_device(cfg.train.device)
        self.method = method.to(self.device)
        self.model: torch.nn.Module = method
        if dist.is_distributed():
            ids = [self.device.index or 0] if self.device.type == "cuda" else None
            self.model = DistributedDataParallel(method, device_ids=ids)
        self.optimizer = build_optimizer(method.param_groups(), cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.train.steps, cfg.optim)
        # Step counts in steps (fractions resolved against train.steps), logged once with one warning for any
        # that does not end within the run; run.py logs them as MLflow params ``<key>_resolved``.
        self.schedule_params: dict[str, int] = (
            report_schedule(getattr(method, "schedule_steps", {}), cfg.train.steps) if dist.is_main() else {}
        )
        self.precision = resolve_precision(cfg.train.precision, self.device)
        set_compute_dtype(method, self.precision.dtype)
        log.info(
            "precision: %s on %s (train.precision=%s)", self.precision.name, self.device, cfg.train.precision
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision.needs_scaler)
        self.inferer = make_inferer(
            spec.spatial_dims,
            spec.patch_size,
            slice_axis=cfg.data.slice_axis,
            overlap=cfg.val.overlap,
            mode=cfg.val.mode,
            sw_batch_size=cfg.val.sw_batch_size,
        )
        self.step = 0
        self.best_dice: float | None = None
        self.best_step: int | None = None
        self.best_per_class: dict[str, dict[str, float]] = {}
        self.final_dice: float | None = None
        #: Dataset name -> cases whose labels shaped the weights (:func:`medcl.engine.resume.label_cases`),
        #: saved in every checkpoint; a run started with ``--init`` from this one is checked against it.
        self.label_cases = label_cases or {}

    # ---------------------------------------------------------------- checkpoints
    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    def state(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "method": self.cfg.method_name,
            "config": self.cfg.model_dump(mode="json"),
            "data_spec": {
                "in_channels": self.spec.in_channels,
                "num_classes": self.spec.num_classes,
                "class_names": list(self.spec.class_names),
                "spatial_dims": self.spec.spatial_dims,
                "patch_size": list(self.spec.patch_size),
                "modality": self.spec.modality,
            },
            "model": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "best": {"dice": self.best_dice, "step": self.best_step, "per_class": self.best_per_class},
            "mlflow_run_id": self.tracker.run_id,
            "label_cases": self.label_cases,
            "medcl_version": medcl.__version__,
        }

    def save(self, name: str) -> Path | None:
        if not dist.is_main():
            return None
        return save_checkpoint(self.state(), self.ckpt_dir / name)

    def load(self, path: str | Path) -> None:
        """Restore everything from a checkpoint written by :meth:`save` (``--resume``)."""
        state = load_checkpoint(path, map_location=self.device)
        self.method.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.step = int(state["step"])
        best = state.get("best", {})
        self.best_dice, self.best_step = best.get("dice"), best.get("step")
        self.best_per_class = best.get("per_class") or {}

    # ---------------------------------------------------------------- validation
    @torch.inference_mode()
    def validate(self) -> dict[str, float]:
        """Dice/HD95 per class on whole val volumes; logs metrics and overlays; returns the metrics.

        A method with several :meth:`~medcl.methods.base.Method.validation_networks` has each validated
        (``val/<name>/...``); the one it then selects as its inference network is also reported as ``val/*``.
        """
        if not self.val_volumes:
            return {}
        networks = self.method.validation_networks()
        if not networks:
            metrics, pictures = self._validate_network(self.method.inference_network())
        else:
            results = {name: self._validate_network(net, name) for name, net in networks.items()}
            self.method.select_network({name: m["val/dice_mean"] for name, (m, _) in results.items()})
            chosen = self.method.inference_network()
            selected = next(name for name, net in networks.items() if net is chosen)
            metrics, pictures = dict(results[selected][0]), results[selected][1]
            for name, (m, _) in results.items():
                metrics.update({k.replace("val/", f"val/{name}/", 1): v for k, v in m.items()})
            metrics[f"val/selected/{selected}"] = 1.0
        self.tracker.log_metrics(metrics, step=self.step)
        for i, pic in enumerate(pictures):
            self.tracker.log_image(pic, key=f"val/overlay_{i}", step=self.step)
        return metrics

    def _validate_network(
        self, net: torch.nn.Module, name: str = ""
    ) -> tuple[dict[str, float], list[np.ndarray]]:
        """One network's ``val/*`` metrics over the val volumes, and its overlay pictures.

        A second progress bar (under the training bar, removed when done) counts the volumes: validating
        whole 3D volumes can take minutes, during which the training bar would stand still.
        """
        was_training = net.training
        net.eval()
        names = self.spec.class_names[1:]
        dice, hd = [], []
        pictures = []
        volumes = tqdm(
            self.val_volumes,
            desc=f"validate {name}".strip(),
            unit="vol",
            leave=False,
            disable=not self.progress,
            dynamic_ncols=True,
        )
        for i, vol in enumerate(volumes):
            image, label = vol["image"], vol["label"]
            probs = predict_volume(net, image, self.inferer, self.device)
            pred = probs.argmax(0).cpu()
            spacing = [float(s) for s in image.pixdim] if hasattr(image, "pixdim") else None
            m = case_metrics(pred, label[0], self.spec.num_classes, spacing, hd95=self.cfg.val.hd95)
            dice.append(m["dice"])
            hd.append(m.get("hd95", np.full(len(names), np.nan)))
            if i < self.cfg.val.overlays:
                axis = self.cfg.data.slice_axis if self.spec.spatial_dims == 2 else 2
                lab = label[0].numpy()
                fg = (lab > 0).sum(axis=tuple(a for a in range(3) if a != axis))
                k = int(fg.argmax())
                take = [slice(None)] * 3
                take[axis] = k
                pictures.append(
                    overlay(image[0].numpy()[tuple(take)], lab[tuple(take)], pred.numpy()[tuple(take)])
                )
        if was_training:
            net.train()
        dice_arr, hd_arr = np.stack(dice), np.stack(hd)
        metrics = {"val/dice_mean": float(dice_arr.mean())}
        for j, name in enumerate(names):
            metrics[f"val/dice/{name}"] = float(dice_arr[:, j].mean())
            with np.errstate(all="ignore"):
                metrics[f"val/hd95/{name}"] = (
                    float(np.nanmean(hd_arr[:, j])) if np.isfinite(hd_arr[:, j]).any() else float("nan")
                )
        if self.cfg.val.hd95 and np.isfinite(hd_arr).any():
            metrics["val/hd95_mean"] = float(np.nanmean(hd_arr))
        return metrics, pictures

    def _after_validation(self, metrics: dict[str, float]) -> None:
        if not metrics:
            return
        score = metrics["val/dice_mean"]
        self.final_dice = score
        line = " ".join(f"{k.removeprefix('val/')}={v:.4f}" for k, v in metrics.items() if "dice" in k)
        log.info("step %d validation: %s", self.step, line)
        if self.best_dice is None or score > self.best_dice:
            self.best_dice, self.best_step = score, self.step
            self.best_per_class = {
                name: {
                    "dice": metrics[f"val/dice/{name}"],
                    "hd95": metrics.get(f"val/hd95/{name}", float("nan")),
                }
                for name in self.spec.class_names[1:]
            }
            self.save("best.pt")
            self.tracker.log_metrics({"val/best_dice_mean": score}, step=self.step)

    # ---------------------------------------------------------------- training
    def _train_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor | float]:
        """One optimiser step; returns the step's losses as detached tensors (no host sync here)."""
        batch = _to_device(batch, self.device)
        # The networks run at self.precision inside their forward (medcl.precision); losses are float32.
        out = self.model(batch, self.step)
        loss = out["loss"]
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.cfg.optim.grad_clip:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.method.parameters(), self.cfg.optim.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.method.on_step_end(self.step)
        values: dict[str, torch.Tensor | float] = {}
        for key, value in out.items():
            is_loss = torch.is_tensor(value) and key not in self.method.metrics
            name = "loss" if key == "loss" else (f"loss_{key}" if is_loss else key)
            values[name] = value.detach().float() if torch.is_tensor(value) else float(value)
        return values

    def _flush(self, window: dict[str, list[torch.Tensor | float]], first_step: int) -> dict[str, float]:
        """Mean of each logged value over the window; one host sync per window, not per step.

        Raises:
            MedclError: When the loss was NaN or infinite at some step of the window (named).
        """
        keys = sorted(window)
        stacked = {k: torch.stack([torch.as_tensor(v, dtype=torch.float32) for v in window[k]]) for k in keys}
        bad = (~torch.isfinite(stacked["loss"])).nonzero()
        if len(bad):
            step = first_step + int(bad[0, 0])
            raise MedclError(
                f"the training loss became {float(stacked['loss'][bad[0, 0]])} at step {step}; lower optim.lr "
                f"(now {self.cfg.optim.lr}) or check the data with `medcl data check`"
            )
        # On the device: NCCL reduces CUDA tensors only.
        avg = dist.all_reduce_mean(torch.stack([stacked[k].mean().to(self.device) for k in keys])).cpu()
        return {f"train/{k}": float(v) for k, v in zip(keys, avg, strict=True)}

    def fit(self) -> TrainResult:
        """Train from ``self.step`` to ``cfg.train.steps``; validate and checkpoint on the way."""
        total = self.cfg.train.steps
        start_time = time.perf_counter()
        loader = step_loader(
            self.batches, self.step, total, self.cfg.data.num_workers, pin_memory=self.device.type == "cuda"
        )
        bar = tqdm(
            total=total, initial=self.step, disable=not self.progress, desc="train", dynamic_ncols=True
        )
        window: dict[str, list[torch.Tensor | float]] = defaultdict(list)
        window_start = self.step
        loader_seconds = validation_seconds = 0.0
        self.method.train()
        batches = iter(loader)
        try:
            while True:
                tick = time.perf_counter()
                batch = next(batches, None)
                if batch is None:
                    break
                loader_seconds += time.perf_counter() - tick
                values = self._train_step(batch)
                self.step += 1
                for k, v in values.items():
                    window[k].append(v)
                bar.update(1)
                log_now = self.step % self.cfg.train.log_every == 0 or self.step == total
                validate_now = self.step % self.cfg.val.every == 0 or self.step == total
                save_now = self.step % self.cfg.train.checkpoint_every == 0 or self.step == total
                # Losses are checked for NaN/inf before anything is logged, validated or saved.
                if log_now or validate_now or save_now:
                    means = self._flush(window, window_start)
                if log_now:
                    means["train/lr"] = self.optimizer.param_groups[0]["lr"]
                    self.tracker.log_metrics(means, step=self.step)
                    bar.set_postfix(loss=f"{means['train/loss']:.4f}")
                    window.clear()
                    window_start = self.step
                if validate_now:
                    tick = time.perf_counter()
                    if dist.is_main():
                        self._after_validation(self.validate())
                    dist.barrier()
                    validation_seconds += time.perf_counter() - tick
                if save_now:
                    self.save("last.pt")
        except KeyboardInterrupt:
            if self.step > 0:
                path = self.save("last.pt")
                log.warning("interrupted at step %d; checkpoint written to %s", self.step, path)
            raise
        finally:
            bar.close()
        return TrainResult(
            run_id=self.tracker.run_id,
            run_dir=self.run_dir,
            steps=self.step,
            best_step=self.best_step,
            best_dice=self.best_dice,
            best_per_class=self.best_per_class,
            best_checkpoint=self.ckpt_dir / "best.pt" if self.best_step is not None else None,
            last_checkpoint=self.ckpt_dir / "last.pt",
            seconds=time.perf_counter() - start_time,
            loader_seconds=loader_seconds,
            validation_seconds=validation_seconds,
            final_dice=self.final_dice,
        )


def _to_device(batch: Any, device: torch.device) -> Any:
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch
