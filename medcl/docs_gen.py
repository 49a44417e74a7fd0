"""Generate the configuration reference of ``docs/configuration.md`` from the typed config.

Every key of :class:`medcl.config.Config` and of each method's ``Params`` model (:data:`medcl.methods.METHODS`)
becomes a table row: the dotted key, what it accepts (from its type and bounds), its default and its
description (the ``Field(description=...)`` in the code). The rows are written between two markers of the
page, so the code is the single source of truth and the prose around the tables stays hand-written::

    python -m medcl.docs_gen           # rewrite the generated part of docs/configuration.md
    python -m medcl.docs_gen --check   # exit 1 if the page is stale (what the test runs)
"""

from __future__ import annotations

import argparse
import inspect
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo

BEGIN = "<!-- BEGIN GENERATED: configuration reference (python -m medcl.docs_gen); do not edit by hand -->"
END = "<!-- END GENERATED: configuration reference -->"
PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"

#: Descriptions of fields that have no ``Field(description=...)`` of their own.
_SECTION_NOTES: dict[str, str] = {}


def _value(value: Any) -> str:
    """A default as it would be written in YAML: ``null``, ``true``, ``[64, 64]``, ``{name: supervised}``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, BaseModel):
        return _value(value.model_dump(mode="json"))
    return str(value)


def _type(annotation: Any) -> str:
    """What a key accepts, in words: ``int``, ``one of a, b``, ``list of int``, ``float or null``, ``step count``."""
    from medcl.schedules import StepCount

    if annotation is StepCount:
        return "step count"
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(_value(a) for a in args)
    if origin is typing.Annotated:
        return _type(args[0])
    if origin in (typing.Union, types.UnionType):
        parts = [_type(a) for a in args if a is not type(None)]
        text = " or ".join(dict.fromkeys(parts))
        return f"{text} or null" if type(None) in args else text
    if origin is list:
        return f"list of {_type(args[0])}" if args else "list"
    if origin is tuple:
        kinds = dict.fromkeys(_type(a) for a in args if a is not Ellipsis)
        return f"{len(args)} {next(iter(kinds))}s" if len(kinds) == 1 and Ellipsis not in args else "list"
    if origin is dict:
        return "mapping"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _bounds(field: FieldInfo) -> str:
    """``>= 0``, ``> 0, < 1``: the numeric bounds a field validates."""
    signs = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
    found = []
    for meta in field.metadata:
        for name, sign in signs.items():
            bound = getattr(meta, name, None)
            if bound is not None:
                found.append(f"{sign} {bound}")
    return ", ".join(found)


def _accepts(field: FieldInfo) -> str:
    """The type in words with its bounds before any ``or null``: ``float > 0 or null``."""
    from medcl.schedules import _FractionOfRun

    annotation = field.annotation
    optional = type(None) in typing.get_args(annotation)
    if any(isinstance(m, _FractionOfRun) for m in field.metadata):  # pydantic unwraps StepCount's Annotated
        text = "step count"
    else:
        text = _type(annotation).removesuffix(" or null")
    bounds = _bounds(field)
    text = f"{text} {bounds}" if bounds else text
    return f"{text} or null" if optional else text


def rows(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """``(key, accepts, default, description)`` for every key of ``model``, sections flattened to dotted keys."""
    out: list[tuple[str, str, str, str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if inspect.isclass(annotation) and issubclass(annotation, BaseModel):
            out.extend(rows(annotation, f"{prefix}{name}."))
            continue
        accepts = _accepts(field)
        default = _value(field.get_default(call_default_factory=True))
        description = field.description or _SECTION_NOTES.get(f"{prefix}{name}", "")
        out.append((f"{prefix}{name}", accepts, default, description))
    return out


def _cell(text: str) -> str:
    """One table cell: on one line, with the characters Markdown would read as a column or an HTML tag escaped."""
    return " ".join(re.sub(r"<(?=[A-Za-z/!])", r"\\<", text.replace("|", "\\|")).split())


def _table(rows_: list[tuple[str, str, str, str]]) -> list[str]:
    lines = ["| key | accepts | default | description |", "| --- | --- | --- | --- |"]
    lines += [f"| `{k}` | {_cell(a)} | `{_cell(d)}` | {_cell(text)} |" for k, a, d, text in rows_]
    return lines


def _first_line(doc: str | None) -> str:
    return " ".join((doc or "").strip().split("\n\n")[0].split()).replace("``", "`")


def reference() -> str:
    """The generated Markdown: the run-wide keys, then one table per registered method."""
    from medcl.config import Config
    from medcl.methods import METHODS

    lines = [
        BEGIN,
        "",
        "Every key, what it accepts, its default and what it does (generated from `medcl/config.py`; a *step "
        "count* is an integer number of steps or a fraction of `train.steps`, see below):",
        "",
        *_table(rows(Config)),
    ]
    for name, cls in METHODS.items():
        module = cls.__module__.replace(".", "/") + ".py"
        lines += [
            "",
            f"### `method.name: {name}`",
            "",
            f"{_first_line(cls.__doc__)} Keys of `{cls.Params.__name__}` in `{module}`:",
            "",
            *_table([row for row in rows(cls.Params, "method.") if row[0] != "method.name"]),
        ]
    return "\n".join([*lines, "", END])


def render(page: str) -> str:
    """``page`` with the text between the markers replaced by :func:`reference`.

    Raises:
        ValueError: The page lacks one of the markers, or has them in the wrong order.
    """
    start, stop = page.find(BEGIN), page.find(END)
    if start < 0 or stop < start:
        raise ValueError(
            f"the page has no generated section: put the lines\n{BEGIN}\n{END}\nwhere it belongs"
        )
    return page[:start] + reference() + page[stop + len(END) :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m medcl.docs_gen", description="Regenerate the configuration reference."
    )
    parser.add_argument("--page", type=Path, default=PAGE, help=f"the page (default {PAGE})")
    parser.add_argument("--check", action="store_true", help="only report whether the page is up to date")
    args = parser.parse_args(argv)
    old = args.page.read_text(encoding="utf-8")
    new = render(old)
    if args.check:
        if new != old:
            print(f"{args.page} is stale: run `python -m medcl.docs_gen`", file=sys.stderr)
            return 1
        print(f"{args.page} is up to date")
        return 0
    if new != old:
        args.page.write_text(new, encoding="utf-8")
        print(f"rewrote the configuration reference in {args.page}")
    else:
        print(f"{args.page} was already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
