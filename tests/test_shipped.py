"""The configs and workflows shipped with medcl, by name: lookup, a file before a name, errors that list names."""

from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
import tomllib

from medcl.errors import ConfigError
from medcl.shipped import find_file, shipped_dir, shipped_names, shipped_path

REPO = Path(__file__).resolve().parents[1]


def test_names_are_the_yaml_files_of_the_source_folders() -> None:
    names = shipped_names("configs")
    assert names == sorted(names)
    assert {"hippocampus/supervised", "hippocampus/demo", "acdc/cpu/mcsc"} <= set(names)
    assert len(names) == len(list((REPO / "configs").rglob("*.yaml")))
    assert "demo" in shipped_names("workflows")
    assert shipped_dir("configs").resolve() == (REPO / "configs").resolve()


@pytest.mark.parametrize(
    "name",
    ["hippocampus/demo", "hippocampus/demo.yaml", "configs/hippocampus/demo.yaml", "/hippocampus/demo.yml"],
)
def test_every_spelling_of_a_shipped_name(name: str) -> None:
    path = shipped_path("configs", name)
    assert path.resolve() == (REPO / "configs" / "hippocampus" / "demo.yaml").resolve()


def test_a_file_wins_over_a_shipped_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hippocampus").mkdir()
    mine = tmp_path / "hippocampus" / "demo.yaml"
    mine.write_text("train: {steps: 3}\n")
    assert find_file("configs", "hippocampus/demo.yaml") == Path("hippocampus/demo.yaml")  # the local file
    assert find_file("configs", str(mine)) == mine
    assert find_file("configs", "hippocampus/demo") == shipped_path("configs", "hippocampus/demo")
    # A path as the docs write it works from any folder: there is no configs/ here, so it is the shipped one.
    assert find_file("configs", "configs/hippocampus/supervised.yaml") == shipped_path(
        "configs", "hippocampus/supervised"
    )
    assert find_file("workflows", "demo") == shipped_dir("workflows") / "demo.yaml"


def test_an_unknown_name_lists_the_closest_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError) as err:
        shipped_path("configs", "hippocampus/nope")
    message = str(err.value)
    assert message.startswith(
        "no shipped config named 'hippocampus/nope'; `medcl config list` shows them all"
    )
    # The folder's own configs first (not its cpu/ subfolder's), at most 8 of them.
    listed = message.split("(e.g. ")[1].rstrip(")").split(", ")
    assert len(listed) == 8 and all(n.startswith("hippocampus/") and n.count("/") == 1 for n in listed)
    with pytest.raises(
        ConfigError, match=r"\(e\.g\. acdc/supervised, hippocampus/supervised, la2018/supervised"
    ):
        shipped_path("configs", "x/supervised")  # same file name in another folder
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError) as err:
        find_file("workflows", "nope.yaml")
    assert str(err.value).startswith(
        "workflow file not found: nope.yaml (and no shipped workflow named 'nope.yaml'"
    )
    assert "demo" in str(err.value)


def test_package_data_ships_every_config_and_workflow() -> None:
    """pyproject's package-data globs cover every YAML of configs/ and workflows/ (what a wheel holds)."""
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"][
        "medcl"
    ]
    files = [f"_shipped/configs/{n}.yaml" for n in shipped_names("configs")]
    files += [f"_shipped/workflows/{n}.yaml" for n in shipped_names("workflows")]
    assert len(files) == len(list((REPO / "configs").rglob("*.yaml"))) + len(
        list((REPO / "workflows").glob("*.yaml"))
    )
    missed = [
        f for f in files if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)
    ]
    assert not missed
