"""Which cases are labeled, unlabeled, validation and test: making, saving, loading and checking splits.

A splits file is JSON::

    {"labeled": [...], "unlabeled": [...], "val": [...], "test": [...], "meta": {...}}

``labeled`` cases train with their labels; ``unlabeled`` cases train without them (a labeled-dataset case
placed here has its label ignored); ``val`` picks checkpoints; ``test`` is for the final report only. The
SSL4MIS-style ``{"train": [...], "val": [...]}`` file shipped with ACDC is read too (``train`` becomes
``labeled``).

Splits are drawn over *groups* of cases so that, for instance, both ACDC frames of one patient land in the same
subset (``group_by=r"patient\\d+"``); without ``group_by`` each case is its own group.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import medcl
from medcl.data.dataset import DatasetInfo
from medcl.errors import ConfigError, DataError
from medcl.runtime.files import write_text_atomic

SUBSETS = ("labeled", "unlabeled", "val", "test")
_MEDCL_KEYS = (*SUBSETS, "meta")
_TRAIN_VAL_KEYS = ("train", "val", "test", "note")
_SHOW_IDS = 5


@dataclass
class Splits:
    """Case ids per subset, plus how they were made.

    Attributes:
        labeled: Cases trained with their labels.
        unlabeled: Cases trained without labels.
        val: Validation cases (checkpoint selection).
        test: Held-out test cases.
        meta: Provenance: seed, group_by, requested amounts, source dataset, medcl version, source format.
        path: The file the splits were loaded from or saved to, ``None`` if neither (used in messages).
    """

    labeled: list[str]
    unlabeled: list[str] = field(default_factory=list)
    val: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = field(default=None, compare=False, repr=False)

    @classmethod
    def load(cls, path: str | Path) -> Splits:
        """Read a splits file in medcl's format or the SSL4MIS ``{"train", "val"}`` format.

        Args:
            path: The JSON file.

        Returns:
            The splits, with ``path`` set; for a train/val file ``meta["source_format"]`` is ``"train/val"``.

        Raises:
            DataError: The file is missing or not valid JSON, has an unknown top-level key, a subset that is
                not a list of strings, or a case in two subsets (or twice in one).
        """
        path = Path(path).expanduser()
        if not path.is_file():
            what = "is a folder, not a file" if path.is_dir() else "does not exist"
            raise DataError(f"Splits file {path} {what}.")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise DataError(
                f"Splits file {path} is not valid JSON: {err.msg} at line {err.lineno}, column {err.colno}."
            ) from err
        except (OSError, UnicodeDecodeError) as err:
            raise DataError(f"Cannot read splits file {path}: {err}.") from err
        if not isinstance(data, dict):
            raise DataError(f"Splits file {path} must hold a JSON object, not a {type(data).__name__}.")

        train_val = "train" in data
        allowed = _TRAIN_VAL_KEYS if train_val else _MEDCL_KEYS
        for key in data:
            if key not in allowed:
                raise DataError(
                    f"Splits file {path} has the unknown key {key!r}; allowed keys are "
                    f"{', '.join(_MEDCL_KEYS)} (medcl format) or {', '.join(_TRAIN_VAL_KEYS)} (train/val format)."
                )
        if train_val:
            subsets = {"labeled": "train", "unlabeled": None, "val": "val", "test": "test"}
        else:
            subsets = {name: name for name in SUBSETS}
        lists = {name: _id_list(data, key, path) if key else [] for name, key in subsets.items()}

        meta = data.get("meta", {})
        if not isinstance(meta, dict):
            raise DataError(f"'meta' in splits file {path} must be an object, got {meta!r}.")
        meta = dict(meta)
        if train_val:
            meta["source_format"] = "train/val"
            if "note" in data:
                meta["note"] = data["note"]

        splits = cls(**lists, meta=meta, path=path)
        splits._check_disjoint()
        return splits

    def save(self, path: str | Path) -> None:
        """Write the splits as JSON (indent 1), atomically: a temporary file renamed over ``path``.

        Args:
            path: Destination file; its folder is created if needed. ``self.path`` is set to it.

        Raises:
            DataError: The file cannot be written.
        """
        path = Path(path).expanduser()
        try:
            write_text_atomic(path, json.dumps(self.to_dict(), indent=1) + "\n")
        except OSError as err:
            raise DataError(f"Cannot write splits file {path}: {err.strerror or err}.") from err
        self.path = path

    def with_labeled(self, n: int, *, group_by: str | None = None, seed: int | None = None) -> Splits:
        """Keep ``n`` groups of the labeled cases labeled and move the rest to ``unlabeled``.

        The label-fraction protocols of the semi-supervised papers take the *first* N patients of the training
        list (SSL4MIS, MCSC, ACTION); that is the default. With ``seed`` the N groups are drawn at random
        instead. Groups (e.g. ``patient\\d+`` for the two ACDC frames of a patient) stay together.

        Raises:
            ConfigError: ``n`` is below 1 or above the number of labeled groups.
        """
        groups = _group_cases(list(self.labeled), group_by)
        keys = list(groups)
        if not 1 <= n <= len(keys):
            raise ConfigError(
                f"--labeled {n}: the labeled pool of {self.path or 'the splits'} has {len(keys)} group(s)"
                + (f" (group_by {group_by!r})" if group_by else "")
            )
        if seed is not None:
            keys = sorted(keys)
            random.Random(seed).shuffle(keys)
        keep = {case for key in keys[:n] for case in groups[key]}
        meta = {
            **self.meta,
            "labeled_groups": n,
            "labeled_group_by": group_by,
            "labeled_selection": "first" if seed is None else f"random seed {seed}",
        }
        return Splits(
            labeled=[c for c in self.labeled if c in keep],
            unlabeled=[*self.unlabeled, *[c for c in self.labeled if c not in keep]],
            val=list(self.val),
            test=list(self.test),
            meta=meta,
            path=self.path,
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form: the four subsets and ``meta``."""
        return {
            "labeled": list(self.labeled),
            "unlabeled": list(self.unlabeled),
            "val": list(self.val),
            "test": list(self.test),
            "meta": dict(self.meta),
        }

    def check_against(self, info: DatasetInfo) -> None:
        """Check that every id exists in the dataset and that labeled, val and test cases have labels.

        Args:
            info: The dataset the splits will be used with.

        Raises:
            DataError: Naming the splits file (when known), the subset, up to five offending ids and their
                count.
        """
        labeled_ids = {c.id for c in info.cases}
        unlabeled_ids = {c.id for c in info.unlabeled}
        where = f"Splits file {self.path}" if self.path is not None else "The splits"
        for name in SUBSETS:
            ids = getattr(self, name)
            unknown = [i for i in ids if i not in labeled_ids and i not in unlabeled_ids]
            if unknown:
                raise DataError(
                    f"{where}: {len(unknown)} id(s) of {name!r} are not in dataset {info.root}: "
                    f"{_preview(unknown)}."
                )
            if name != "unlabeled":
                no_label = [i for i in ids if i in unlabeled_ids]
                if no_label:
                    raise DataError(
                        f"{where}: {len(no_label)} case(s) of {name!r} have no label in dataset {info.root}: "
                        f"{_preview(no_label)}; move them to 'unlabeled'."
                    )

    def _check_disjoint(self) -> None:
        where = f"splits file {self.path}" if self.path is not None else "the splits"
        seen: dict[str, str] = {}
        for name in SUBSETS:
            for case_id in getattr(self, name):
                if case_id in seen:
                    if seen[case_id] == name:
                        raise DataError(f"Case {case_id!r} is listed twice in {name!r} of {where}.")
                    raise DataError(
                        f"Case {case_id!r} is in both {seen[case_id]!r} and {name!r} of {where}; "
                        "a case may belong to one subset only."
                    )
                seen[case_id] = name


def parse_amount(text: str | int, total: int, what: str) -> int:
    """Turn ``"10%"``, ``"12"`` or ``12`` into a count out of ``total``.

    A percentage is rounded half up and gives at least 1 when it is above 0.

    Args:
        text: A percentage (``"10%"``, ``"2.5%"``) or a count (``"12"``, ``12``).
        total: What a percentage is of, and the largest allowed count.
        what: The option's name for messages (``"--labeled"``).

    Returns:
        The count, ``0 <= count <= total``.

    Raises:
        ConfigError: ``text`` is not a count or a percentage, is negative, or is above 100%.
        DataError: The count is larger than ``total``.
    """
    if isinstance(text, bool) or not isinstance(text, (str, int)):
        raise ConfigError(f"{what} must be a count like 12 or a percentage like '10%', got {text!r}.")
    if isinstance(text, int):
        count = text
    else:
        value = text.strip()
        if value.endswith("%"):
            try:
                percent = float(value[:-1])
            except ValueError:
                percent = math.nan
            if not math.isfinite(percent) or not 0 <= percent <= 100:
                raise ConfigError(f"{what} must be a percentage between 0% and 100%, got {text!r}.")
            count = math.floor(percent / 100 * total + 0.5)
            if percent > 0:
                count = max(count, 1)
        elif re.fullmatch(r"[+-]?\d+", value):
            count = int(value)
        else:
            raise ConfigError(f"{what} must be a count like 12 or a percentage like '10%', got {text!r}.")
    if count < 0:
        raise ConfigError(f"{what} must not be negative, got {text!r}.")
    if count > total:
        raise DataError(f"{what} asks for {count} but there are only {total}.")
    return count


def make_splits(
    info: DatasetInfo,
    *,
    labeled: str | int,
    val: str | int = 0,
    test: str | int = 0,
    seed: int = 0,
    group_by: str | None = None,
) -> Splits:
    """Draw labeled/val/test groups at random (seeded) from the labeled cases of a dataset.

    Groups are sorted by key, shuffled with ``random.Random(seed)``, then taken in the order test, val,
    labeled; the labeled cases left over go to ``unlabeled`` (their labels are not used for training), as do
    all of ``info.unlabeled``. Amounts count groups, not cases.

    Args:
        info: The dataset.
        labeled: Labeled groups, a count or a percentage of the groups (``"10%"``); at least 1.
        val: Validation groups.
        test: Test groups.
        seed: Seed of the shuffle; the same seed gives the same splits.
        group_by: Regular expression searched in each case id; cases with the same key (the first capture
            group if the pattern has one, else the whole match) stay together, e.g. ``r"patient\\d+"``.

    Returns:
        The splits, each subset sorted by id, with ``meta`` recording how they were made.

    Raises:
        ConfigError: ``group_by`` is not a valid regular expression, an amount is malformed, or
            ``labeled`` is 0.
        DataError: A case id does not match ``group_by``, or the amounts add up to more than the groups.
    """
    groups = _group_cases([c.id for c in info.cases], group_by)
    total = len(groups)
    n_test = parse_amount(test, total, "test")
    n_val = parse_amount(val, total, "val")
    n_labeled = parse_amount(labeled, total, "labeled")
    if n_labeled == 0:
        raise ConfigError(f"labeled must select at least one group, got {labeled!r}.")
    unit = "groups" if group_by else "cases"
    if n_test + n_val + n_labeled > total:
        raise DataError(
            f"Asked for {n_labeled} labeled + {n_val} val + {n_test} test = {n_test + n_val + n_labeled} "
            f"{unit}, but dataset {info.root} has only {total} labeled {unit}."
        )

    keys = sorted(groups)
    random.Random(seed).shuffle(keys)
    taken = {
        "test": keys[:n_test],
        "val": keys[n_test : n_test + n_val],
        "labeled": keys[n_test + n_val : n_test + n_val + n_labeled],
        "unlabeled": keys[n_test + n_val + n_labeled :],
    }
    ids = {name: sorted(i for key in chosen for i in groups[key]) for name, chosen in taken.items()}
    ids["unlabeled"] = sorted(ids["unlabeled"] + [c.id for c in info.unlabeled])
    meta = {
        "seed": seed,
        "group_by": group_by,
        "requested": {"labeled": labeled, "val": val, "test": test},
        "groups": {name: len(chosen) for name, chosen in taken.items()},
        "num_groups": total,
        "dataset": str(info.root),
        "dataset_name": info.name,
        "medcl_version": medcl.__version__,
    }
    return Splits(
        labeled=ids["labeled"], unlabeled=ids["unlabeled"], val=ids["val"], test=ids["test"], meta=meta
    )


def _group_cases(case_ids: list[str], group_by: str | None) -> dict[str, list[str]]:
    """Group key -> case ids."""
    if group_by is None:
        return {case_id: [case_id] for case_id in case_ids}
    try:
        pattern = re.compile(group_by)
    except re.error as err:
        raise ConfigError(f"group_by {group_by!r} is not a valid regular expression: {err}.") from err
    groups: dict[str, list[str]] = {}
    for case_id in case_ids:
        match = pattern.search(case_id)
        if match is None:
            raise DataError(
                f"Case id {case_id!r} does not match group_by {group_by!r}; every case needs a group."
            )
        key = match.group(1) if pattern.groups and match.group(1) is not None else match.group(0)
        groups.setdefault(key, []).append(case_id)
    return groups


def _id_list(data: dict[str, Any], key: str, path: Path) -> list[str]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise DataError(
            f"{key!r} in splits file {path} must be a list of case ids, got {type(value).__name__}."
        )
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise DataError(
                f"{key!r} in splits file {path} must hold case ids (strings); item {index} is {item!r}."
            )
    return list(value)


def _preview(ids: list[str], limit: int = _SHOW_IDS) -> str:
    shown = ", ".join(ids[:limit])
    return shown + (", ..." if len(ids) > limit else "")
