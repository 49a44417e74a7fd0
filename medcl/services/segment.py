"""Segment input images into an output folder with a Predictor: ``medcl infer`` and a workflow's ``infer`` stage.

Each case's mask is written on the case's own grid and geometry (:func:`medcl.inference.predictor.write_labels`),
named after the input (:func:`medcl.inference.inputs.output_path`). A case that fails (unreadable, an existing
mask without ``overwrite``, a mask that would replace its own input) is recorded and the others go on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medcl.errors import MedclError, one_line

#: What a case may fail with without stopping the others; anything else (a bug) propagates.
CASE_ERRORS = (MedclError, OSError, RuntimeError, ValueError)


@dataclass
class SegmentedCase:
    """One mask written.

    Attributes:
        name: The case name (the input's, without suffix or channel number).
        mask: The mask file.
        seconds: Time to segment the case and write its files.
        counts: Voxels per class (background first).
    """

    name: str
    mask: Path
    seconds: float
    counts: np.ndarray


@dataclass
class SegmentResult:
    """The outcome of :func:`segment_cases`.

    Attributes:
        out_dir: The output folder.
        written: The cases whose mask was written, in input order.
        failures: ``(case name, message on one line)`` of each case that failed.
    """

    out_dir: Path
    written: list[SegmentedCase] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def seconds(self) -> float:
        """Total time of the written cases."""
        return sum(case.seconds for case in self.written)

    @property
    def masks(self) -> dict[str, str]:
        """Case name -> mask file."""
        return {case.name: str(case.mask) for case in self.written}


def uncertainty_path(mask: Path) -> Path:
    """``<case>_uncertainty<suffix>`` beside the mask ``<case><suffix>``, in the mask's format."""
    from medcl.inference.outputs import image_suffix

    suffix = image_suffix(mask)
    return mask.with_name(mask.name[: len(mask.name) - len(suffix)] + "_uncertainty" + suffix)


def segment_cases(
    predictor: Any,
    cases: Sequence[Any],
    out_dir: str | Path,
    *,
    fmt: str = "same",
    tta: bool = False,
    postprocess: str | None = None,
    probabilities: bool = False,
    uncertainty: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    desc: str = "infer",
    on_error: Callable[[str, Exception], None] | None = None,
) -> SegmentResult:
    """Segment every case with ``predictor`` and write its mask (and maps) into ``out_dir``.

    Args:
        predictor: A :class:`~medcl.inference.predictor.Predictor`.
        cases: :class:`~medcl.inference.inputs.InputCase` s (:func:`~medcl.inference.inputs.collect_inputs`).
        out_dir: The output folder, created if needed.
        fmt: ``"same"`` (the input's format; DICOM series become NIfTI) or ``"nifti"``.
        tta: Average over flips.
        postprocess: ``"lcc"``: keep the largest connected component per class; None: nothing.
        probabilities: Also write ``<case>_probabilities.npz`` (float16 ``probabilities``, ``class_names``).
        uncertainty: Also write ``<case>_uncertainty<suffix>`` (:func:`uncertainty_path`).
        overwrite: Replace existing output files; without it an existing file fails its case.
        progress: Draw a progress bar.
        desc: The progress bar's label.
        on_error: Called with the case name and the exception of each failed case, as it fails.

    Returns:
        The written cases and the failures.
    """
    from tqdm.auto import tqdm

    from medcl.inference.inputs import output_path
    from medcl.inference.outputs import write_labels, write_map

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = predictor.class_names
    result = SegmentResult(out_dir)
    for case in tqdm(cases, desc=desc, unit="case", disable=not progress, dynamic_ncols=True):
        target = output_path(case, out_dir, fmt)
        try:
            if target.exists() and not overwrite:
                raise MedclError(f"{target} exists; pass --overwrite to replace it")
            if any(target.resolve() == p.resolve() for p in case.paths):
                raise MedclError(f"{target} would overwrite its own input")
            start = time.perf_counter()
            unc_target = uncertainty_path(target) if uncertainty else None
            if unc_target is not None and unc_target.exists() and not overwrite:
                raise MedclError(f"{unc_target} exists; pass --overwrite to replace it")
            seg = predictor.segment(
                case.paths,
                tta=tta,
                postprocess=postprocess,
                probabilities=probabilities,
                uncertainty=uncertainty,
            )
            write_labels(seg.labels, case.paths[0], target)
            if unc_target is not None and seg.uncertainty is not None:
                write_map(seg.uncertainty, case.paths[0], unc_target)
            if seg.probabilities is not None:
                np.savez_compressed(
                    out_dir / f"{case.name}_probabilities.npz",
                    probabilities=seg.probabilities.astype(np.float16),
                    class_names=np.array(names),
                )
            counts = np.bincount(seg.labels.ravel(), minlength=len(names))
            result.written.append(SegmentedCase(case.name, target, time.perf_counter() - start, counts))
        except CASE_ERRORS as exc:  # one bad case must not stop the others
            result.failures.append((case.name, one_line(exc)))
            if on_error is not None:
                on_error(case.name, exc)
    return result


def log_segmentation(
    run: Any, result: SegmentResult, settings: dict[str, Any], *, log_masks: bool = True
) -> None:
    """Log a segmentation into ``run`` (a :class:`~medcl.tracking.client_runs.ClientRun`).

    Params: ``settings`` (model, TTA, post-processing) as text; metrics ``infer/n_cases`` and
    ``infer/seconds``; ``masks.json`` (case -> mask file, and the failures); with ``log_masks`` the masks as
    artifacts under ``masks/``.
    """
    run.log_params({key: str(value) for key, value in settings.items()})
    run.log_metrics({"infer/n_cases": len(result.written), "infer/seconds": round(result.seconds, 3)})
    failed = [f"{name}: {message}" for name, message in result.failures]
    run.log_text(json.dumps({"masks": result.masks, "failed": failed}, indent=1), "masks.json")
    if log_masks:
        for path in result.masks.values():
            run.log_artifact(path, "masks")
