"""``medcl data check`` and ``medcl data split``: validate a dataset folder and write a splits file."""

from __future__ import annotations

import argparse

from medcl.errors import DataError

_LAYOUT = "DIR holds dataset.json, imagesTr/ and labelsTr/ (MSD or nnU-Net v2 layout)."


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``data`` with its ``check`` and ``split`` subcommands to the top-level parser.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers``.
    """
    parser = subparsers.add_parser(
        "data",
        help="check a dataset folder or split it into labeled/unlabeled/val/test",
        description="Dataset tools: `check` opens every file and reports problems; `split` writes splits.json.",
    )
    sub = parser.add_subparsers(dest="data_command", metavar="{check,split}")
    sub.required = True

    check = sub.add_parser(
        "check",
        help="open every image and label and report problems",
        description="Read every case of a dataset and report errors (unreadable files, non-3D images, NaN, "
        "unknown label values, image/label shape or spacing mismatch) and warnings (orientation, anisotropy, "
        f"empty labels). Exit status 1 if any error is found. {_LAYOUT}",
    )
    check.add_argument("dir", metavar="DIR", nargs="?", help="the dataset folder to check")
    check.add_argument(
        "--images",
        action="append",
        metavar="IMG_DIR",
        help="check a folder of unlabeled images instead of a dataset (no dataset.json, no label checks; "
        "searched recursively, DICOM series folders included; repeatable): what `medcl pretrain --images` reads",
    )
    _add_unlabeled_dir(check)
    check.add_argument(
        "--no-progress",
        action="store_true",
        help="do not draw the progress bar; use it in batch jobs and CI logs",
    )
    check.add_argument(
        "--json",
        metavar="OUT",
        help="also write every case's shape, spacing, labels and problems to this JSON file; use it to keep a "
        "record or to inspect shapes and spacings (default: not written)",
    )
    check.add_argument(
        "--workers",
        type=int,
        default=1,
        metavar="N",
        help="cases read in parallel (default 1); raise to 4-8 for large 3D volumes on a machine with many cores",
    )
    check.set_defaults(func=run_check)

    split = sub.add_parser(
        "split",
        help="draw labeled/val/test cases at random (seeded) and write splits.json",
        description="Draw test, then val, then labeled cases (or groups of cases) at random from the labeled "
        "cases of DIR; the rest, and every unlabeled image, become the unlabeled pool. "
        f"Amounts are a count (12) or a percentage of the cases or groups (10%). {_LAYOUT}",
    )
    split.add_argument("dir", metavar="DIR", help="the dataset folder to split")
    split.add_argument(
        "--labeled",
        required=True,
        metavar="N|P%",
        help="cases (or groups) trained with their labels, e.g. 10%% or 7; the semi-supervised setting is "
        "usually 5-20%% (ACDC papers use 1, 3 or 7 patients)",
    )
    split.add_argument(
        "--val",
        default="0",
        metavar="N|P%",
        help="validation cases for choosing the checkpoint (default 0); use 10-20%% or at least a handful, "
        "more if validation Dice jumps between evaluations",
    )
    split.add_argument(
        "--test",
        default="0",
        metavar="N|P%",
        help="held-out test cases never seen in training (default 0); set it when the dataset has no separate "
        "test set",
    )
    split.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the random draw (default 0); the same seed gives the same splits, change it to repeat an "
        "experiment on a different draw",
    )
    split.add_argument(
        "--group-by",
        metavar="REGEX",
        help="keep cases whose ids share this pattern's match (or first capture group) in the same subset, "
        "e.g. 'patient\\d+' for the two ACDC frames of a patient; needed whenever several cases come from "
        "one subject (default: every case on its own)",
    )
    _add_unlabeled_dir(split)
    split.add_argument(
        "-o",
        "--output",
        required=True,
        metavar="JSON",
        help="where to write the splits file; must be outside the dataset folder",
    )
    split.add_argument(
        "--force",
        action="store_true",
        help="overwrite the output file if it exists (by default an existing file is kept and this is an error)",
    )
    split.set_defaults(func=run_split)


def _add_unlabeled_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--unlabeled-dir",
        metavar="D",
        help="an extra folder of unlabeled images (absolute, or relative to DIR); add it when you have scans "
        "without labels beyond imagesTs/",
    )


def run_check(args: argparse.Namespace) -> int:
    """Run ``medcl data check``: print the problem table and summary, optionally write JSON.

    Args:
        args: Parsed arguments (``dir``, ``unlabeled_dir``, ``no_progress``, ``json``, ``workers``).

    Returns:
        1 if any case has an error, else 0.

    Raises:
        MedclError: The dataset cannot be loaded or the JSON report cannot be written.
    """
    from medcl.data.check_report import format_report, write_report_json
    from medcl.data.dataset import load_dataset, refuse_writing_inside
    from medcl.data.validate import check_dataset

    images = getattr(args, "images", None)
    if images and (args.dir or args.unlabeled_dir):
        raise DataError(
            "give either DIR (a dataset; extra unlabeled folders with --unlabeled-dir) or --images IMG_DIR "
            "(folders of unlabeled images), not both"
        )
    if not images and not args.dir:
        raise DataError(
            "give the dataset folder DIR to check, or --images IMG_DIR for a folder of unlabeled images"
        )
    # Files that cannot be opened (a symbolic link loop) are reported in the table, not as one error.
    if images:
        from medcl.data.image_folder import load_image_folders

        info = load_image_folders(images, keep_unreadable=True)
    else:
        info = load_dataset(args.dir, unlabeled_dir=args.unlabeled_dir, keep_unreadable=True)
    for folder in info.image_folders if args.json else []:
        refuse_writing_inside(folder, args.json, "--json")
    if args.json:
        refuse_writing_inside(info.root, args.json, "--json")
    workers = getattr(args, "workers", 1)
    reports = check_dataset(info, progress=not args.no_progress, workers=workers)
    print(format_report(reports, info))
    if info.skipped:
        shown = ", ".join(str(p) for p in info.skipped[:3])
        more = ", ..." if len(info.skipped) > 3 else ""
        print(f"{len(info.skipped)} file(s) skipped, not images: {shown}{more}")
    if args.json:
        write_report_json(reports, info, args.json)
        print(f"report written to {args.json}")
    return 1 if any(r.errors for r in reports) else 0


def run_split(args: argparse.Namespace) -> int:
    """Run ``medcl data split``: make seeded splits, write them and print the counts per subset.

    Args:
        args: Parsed arguments (``dir``, ``labeled``, ``val``, ``test``, ``seed``, ``group_by``,
            ``unlabeled_dir``, ``output``, ``force``).

    Returns:
        0.

    Raises:
        MedclError: The dataset cannot be loaded, the amounts do not fit, or the output path is inside the
            dataset folder or exists without ``--force``.
    """
    from medcl.services.split import split_dataset, subset_sizes

    result = split_dataset(
        args.dir,
        args.output,
        labeled=args.labeled,
        val=args.val,
        test=args.test,
        seed=args.seed,
        group_by=args.group_by,
        unlabeled_dir=args.unlabeled_dir,
        overwrite=args.force,
    )
    groups = result.splits.meta["groups"]
    for name, n in subset_sizes(result.splits).items():
        line = f"{name:<10} {n:>5} cases"
        if args.group_by and name != "unlabeled":
            line += f" ({groups[name]} groups)"
        if name == "unlabeled" and result.info.unlabeled:
            line += f" (incl. {len(result.info.unlabeled)} images without labels)"
        print(line)
    print(f"splits written to {result.path}")
    return 0
