"""``medcl config list|show|init``: the configs (and workflows) that ship with medcl."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medcl.errors import ConfigError


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``config`` to the top-level parser.

    Args:
        subparsers: The object returned by ``ArgumentParser.add_subparsers``.
    """
    p = subparsers.add_parser(
        "config",
        help="list, show or copy the configs and workflows shipped with medcl",
        description="The configs (configs/<dataset>/<method>.yaml) and workflows that ship with medcl, by "
        "name. Every command that takes a config also takes a shipped name (medcl train hippocampus/demo).",
    )
    sub = p.add_subparsers(dest="config_command", metavar="ACTION")
    sub.required = True
    ls = sub.add_parser("list", help="list the shipped configs and workflows")
    ls.set_defaults(func=_list)
    show = sub.add_parser(
        "show",
        help="print a config resolved (its 'extends' chain merged), or a workflow",
        description="Print the config NAME (a shipped name or a YAML file) as medcl reads it: when it says "
        "'extends: <config>', the configs it extends are merged under it and the result is printed, with a "
        "first comment line naming the chain. --raw prints the file as written.",
    )
    show.add_argument(
        "name", metavar="NAME", help="e.g. hippocampus/supervised (see `medcl config list`) or a YAML file"
    )
    show.add_argument("--workflow", action="store_true", help="NAME is a workflow (e.g. demo)")
    show.add_argument(
        "--raw", action="store_true", help="print the file as written, without resolving 'extends'"
    )
    show.set_defaults(func=_show)
    init = sub.add_parser(
        "init", help="copy a shipped config or workflow to a file of your own, to edit and pass to medcl"
    )
    init.add_argument("name", metavar="NAME", help="e.g. hippocampus/supervised (see `medcl config list`)")
    init.add_argument("-o", "--output", required=True, metavar="YAML", help="the new file, e.g. my.yaml")
    init.add_argument("--workflow", action="store_true", help="NAME is a workflow (e.g. demo)")
    init.add_argument("--force", action="store_true", help="replace the file if it exists")
    init.set_defaults(func=_init)


def _list(args: argparse.Namespace) -> int:
    from medcl.shipped import shipped_dir, shipped_names

    for kind, use in (("configs", "medcl train NAME --data DIR"), ("workflows", "medcl run NAME")):
        print(f"{kind} ({use}):")
        for name in shipped_names(kind):
            text = _first_comment(shipped_dir(kind) / f"{name}.yaml")
            text = text if len(text) <= 78 else text[:75].rstrip() + "..."
            print(f"  {name:<28} {text}".rstrip())
    return 0


def _show(args: argparse.Namespace) -> int:
    from medcl.shipped import find_file

    path = find_file("workflows" if args.workflow else "configs", args.name)
    if args.workflow or args.raw:
        sys.stdout.write(path.read_text())
        return 0
    import yaml

    from medcl.config_files import read_config_chain

    merged, chain = read_config_chain(path)
    if len(chain) == 1:
        print(f"# {args.name}: resolved config (it extends no other config, so this is the file as written)")
        sys.stdout.write(path.read_text())
        return 0
    parents = " -> ".join(_display_name(p) for p in chain[1:])
    print(f"# {args.name}: resolved config = {_display_name(chain[0])} merged over {parents}")
    print(f"# (`medcl config show {args.name} --raw` prints the file as written)")
    sys.stdout.write(yaml.dump(merged, Dumper=_flow_list_dumper(), sort_keys=False))
    return 0


def _flow_list(dumper, data: list) -> object:
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


def _flow_list_dumper() -> type:
    """A safe YAML dumper writing sections as blocks and lists inline (``patch_size: [64, 64]``), as the
    shipped files do."""
    import yaml

    class Dumper(yaml.SafeDumper):
        pass

    Dumper.add_representer(list, _flow_list)
    return Dumper


def _display_name(path: Path) -> str:
    """A config's shipped name (``hippocampus/supervised``) if it is one, else its path."""
    from medcl.shipped import shipped_dir

    root = shipped_dir("configs").resolve()
    resolved = path.resolve()
    if resolved.is_relative_to(root):
        return resolved.relative_to(root).with_suffix("").as_posix()
    return str(path)


def _init(args: argparse.Namespace) -> int:
    from medcl.shipped import shipped_path

    kind = "workflows" if args.workflow else "configs"
    source = shipped_path(kind, args.name)
    target = Path(args.output).expanduser()
    if target.exists() and not args.force:
        raise ConfigError(f"{target} exists; pass --force to replace it")
    text = source.read_text()
    if kind == "workflows":
        note = (
            f"# Copied from the shipped workflow {args.name!r}: relative paths below are relative to this file;\n"
            "# the shipped configs are reached by name (config: hippocampus/demo).\n"
        )
        text = note + _workflow_paths_to_names(text)
    else:
        text = _extends_to_name(text, source)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    use = f"medcl run {target}" if kind == "workflows" else f"medcl train {target} --data DIR"
    print(f"wrote {target} (from {args.name}); edit it, then: {use}")
    return 0


def _first_comment(path: Path) -> str:
    """The first comment line of a YAML file, as a one-line description."""
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
        if line.strip():
            break
    return ""


def _workflow_paths_to_names(text: str) -> str:
    """``config: ../configs/x/y.yaml`` -> ``config: x/y``: a copied workflow still finds the shipped configs."""
    import re

    return re.sub(r"(config:\s*)(?:\.\./)?configs/([\w/.-]+?)\.yaml", r"\1\2", text)


def _extends_to_name(text: str, source: Path) -> str:
    """``extends: supervised.yaml`` -> ``extends: hippocampus/supervised``: a copied config still finds its parent.

    A relative ``extends`` of a shipped config names a file beside it; in a copy elsewhere that file is missing,
    so the value becomes the parent's shipped name.
    """
    import re

    from medcl.config_files import read_mapping, resolve_extends
    from medcl.shipped import shipped_dir

    value = read_mapping(source).get("extends")
    if not isinstance(value, str):
        return text
    parent = resolve_extends(value, source).resolve()
    root = shipped_dir("configs").resolve()
    if not parent.is_relative_to(root):
        return text
    name = parent.relative_to(root).with_suffix("").as_posix()
    return re.sub(r"^extends:[ \t]*[^#\n]*?([ \t]*#.*)?$", rf"extends: {name}\1", text, count=1, flags=re.M)
