"""Which prediction file is scored against which reference file (``medcl evaluate --pred --gt``).

A case id is a file name without its extension (``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.mhd``); label
files carry no nnU-Net channel suffix, so ``case_0000.nii.gz`` is the case ``case_0000``. Hidden files and
files with other extensions are ignored. As nnU-Net's ``evaluate_folder``, every predicted case id is a case:
it is paired with the reference of the same id, or becomes a :class:`~medcl.evaluation.report.CaseProblem`
(several files for the id, no reference); reference ids without a prediction are only listed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medcl.data.discovery import IMAGE_EXTENSIONS, case_id_from_path, image_files
from medcl.errors import DataError
from medcl.evaluation.report import CaseProblem

__all__ = ["FilePair", "FolderPairing", "pair_folders"]


@dataclass(frozen=True)
class FilePair:
    """A predicted case and its reference.

    Attributes:
        case: Case id.
        prediction: The prediction file.
        reference: The reference label file of the same case id.
    """

    case: str
    prediction: Path
    reference: Path


@dataclass
class FolderPairing:
    """The cases of a prediction folder, paired with a reference folder.

    Attributes:
        pred_dir: The prediction folder, resolved.
        gt_dir: The reference folder, resolved.
        cases: One entry per predicted case id, in id order: its :class:`FilePair`, or the
            :class:`~medcl.evaluation.report.CaseProblem` that keeps it from being scored.
        not_predicted: Reference case ids without a prediction, sorted.
    """

    pred_dir: Path
    gt_dir: Path
    cases: list[FilePair | CaseProblem] = field(default_factory=list)
    not_predicted: list[str] = field(default_factory=list)


def pair_folders(pred_dir: str | Path, gt_dir: str | Path) -> FolderPairing:
    """Pair every prediction file with the reference label file of the same case id (no file is read).

    Args:
        pred_dir: Folder of predicted label maps.
        gt_dir: Folder of reference label maps.

    Returns:
        The pairing; a case id claimed by several files (in either folder) or without a reference is a problem
        in it, never raised.

    Raises:
        DataError: A folder is missing, both are the same folder, or the prediction folder holds no label
            file.
    """
    pred_dir, gt_dir = _folder(pred_dir, "Prediction"), _folder(gt_dir, "Reference")
    if pred_dir == gt_dir:
        raise DataError(f"--pred and --gt are the same folder {pred_dir}; give the reference labels' folder.")
    preds, pred_dupes = _label_files(pred_dir)
    refs, ref_dupes = _label_files(gt_dir)
    if not preds and not pred_dupes:
        raise DataError(f"{pred_dir} holds no prediction file ({', '.join(IMAGE_EXTENSIONS)}).")
    case_ids = sorted(set(preds) | set(pred_dupes))
    pairing = FolderPairing(pred_dir, gt_dir)
    pairing.not_predicted = sorted((set(refs) | set(ref_dupes)) - set(case_ids))
    for case_id in case_ids:
        dupes = pred_dupes.get(case_id, []) + ref_dupes.get(case_id, [])
        if dupes:
            names = ", ".join(p.name for p in dupes)
            pairing.cases.append(
                CaseProblem(case_id, dupes[0], f"several files for one case ({names}); keep one.")
            )
        elif case_id not in refs:
            pairing.cases.append(
                CaseProblem(case_id, preds[case_id], f"prediction has no reference label in {gt_dir}.")
            )
        else:
            pairing.cases.append(FilePair(case_id, preds[case_id], refs[case_id]))
    return pairing


def _folder(path: str | Path, what: str) -> Path:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        state = "is not a folder" if folder.exists() else "does not exist"
        raise DataError(f"{what} folder {folder} {state}.")
    return folder.resolve()


def _label_files(folder: Path) -> tuple[dict[str, Path], dict[str, list[Path]]]:
    """Case id -> label file, and case id -> all its files for ids claimed by more than one file."""
    by_id: dict[str, list[Path]] = {}
    for path, _ in image_files(folder):
        by_id.setdefault(case_id_from_path(path, strip_channel=False), []).append(path)
    files = {case_id: paths[0] for case_id, paths in by_id.items()}
    dupes = {case_id: paths for case_id, paths in by_id.items() if len(paths) > 1}
    return files, dupes
