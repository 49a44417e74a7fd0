"""What ``medcl infer`` (and a workflow's infer stage) segments: input paths expanded into cases, and the
mask file each case is written to."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from medcl.data.dataset import IMAGE_EXTENSIONS
from medcl.data.discovery import image_extension, image_files
from medcl.errors import MedclError
from medcl.inference.outputs import NIFTI_SUFFIXES, image_suffix

_CHANNEL = re.compile(r"_\d{4}$")


@dataclass
class InputCase:
    """One case to segment: its name and one path per channel (or a DICOM folder)."""

    name: str
    paths: list[Path]


def _strip(name: str) -> str:
    """``name`` without its image extension (unchanged for other files, e.g. a DICOM folder)."""
    ext = image_extension(name)
    return name[: -len(ext)] if ext else name


def _is_dicom_dir(path: Path) -> bool:
    return path.is_dir() and any(
        p.suffix.lower() == ".dcm" or p.suffix == ""
        for p in path.iterdir()
        if p.is_file() and not p.name.startswith(".")  # not .DS_Store and other hidden files
    )


def _read_list(path: Path) -> list[str]:
    """Non-empty, non-comment lines of a ``.txt`` input list (UTF-8, with or without a byte-order mark)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise MedclError(
            f"input list {path} is not UTF-8 text (byte 0x{err.object[err.start]:02x} at offset "
            f"{err.start}); save it as UTF-8, one image path per line"
        ) from None
    except OSError as err:
        raise MedclError(f"cannot read input list {path}: {err.strerror or err}") from None
    return [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]


def _check_given_once(files: list[Path]) -> None:
    """Raise if one file (or DICOM folder) is given twice, directly, through a folder or in a list."""
    seen: dict[Path, Path] = {}
    for f in files:
        key = f.resolve()
        if key in seen:
            spellings = "" if seen[key] == f else f" (as {seen[key]} and as {f})"
            raise MedclError(f"input {f} is given twice{spellings}; give each image once")
        seen[key] = f


def collect_inputs(items: list[str]) -> list[InputCase]:
    """Expand files, folders and .txt lists into cases; nnU-Net ``_0000`` channel files are grouped.

    Args:
        items: Image files, folders of images, DICOM series folders and ``.txt`` lists of image paths (UTF-8,
            one path per line, relative to the list's folder; ``#`` starts a comment line).

    Returns:
        The cases, sorted by name.

    Raises:
        MedclError: An input is missing, a folder holds no image, a list is unreadable or not UTF-8, the same
            file is given twice, or no image is found at all.
    """
    files: list[Path] = []
    for item in items:
        path = Path(item).expanduser()
        if not path.exists():
            raise MedclError(f"input not found: {path}")
        if path.suffix == ".txt":
            lines = _read_list(path)
            files += [(path.parent / ln) if not Path(ln).is_absolute() else Path(ln) for ln in lines]
        elif path.is_dir() and (found := image_files(path)):
            files += [p for p, _ in found]
        elif path.is_dir():
            if not _is_dicom_dir(path):
                raise MedclError(
                    f"{path} holds no image files ({', '.join(IMAGE_EXTENSIONS)}) and no DICOM series"
                )
            files.append(path)
        else:
            files.append(path)
    _check_given_once(files)
    cases: dict[str, list[Path]] = {}
    for f in files:
        name = f.name if f.is_dir() else _strip(f.name)
        # nnU-Net channel files CASE_0000, CASE_0001 ... form one case named CASE.
        base = _CHANNEL.sub("", name) if _CHANNEL.search(name) else name
        cases.setdefault(base, []).append(f)
    out = [InputCase(name, sorted(paths)) for name, paths in sorted(cases.items())]
    if not out:
        raise MedclError(f"no input images found in {', '.join(items)}")
    return out


def output_path(case: InputCase, out_dir: Path, fmt: str) -> Path:
    """The mask file of ``case`` in ``out_dir``: the input's format, or NIfTI for ``fmt="nifti"``, DICOM series
    and MetaImage headers."""
    first = case.paths[0]
    suffix = image_suffix(first)
    if fmt == "nifti" or suffix in ("", ".dcm", ".mhd"):
        suffix = ".nii.gz" if suffix not in NIFTI_SUFFIXES else suffix
    return out_dir / f"{case.name}{suffix}"
