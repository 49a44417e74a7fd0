"""The configuration reference in docs/configuration.md is generated from the typed config (issue 14)."""

from __future__ import annotations

import pytest

from medcl.config import Config
from medcl.docs_gen import BEGIN, END, PAGE, main, reference, render, rows
from medcl.methods import METHODS


def test_the_committed_reference_is_up_to_date() -> None:
    page = PAGE.read_text(encoding="utf-8")
    assert render(page) == page, "docs/configuration.md is stale: run `python -m medcl.docs_gen`"


def test_every_key_of_the_config_and_of_every_method_is_a_row() -> None:
    text = reference()
    for key, *_ in rows(Config):
        assert f"| `{key}` |" in text
    for name, cls in METHODS.items():
        section = text.split(f"### `method.name: {name}`", 1)[1].split("### ", 1)[0]
        for key in set(cls.Params.model_fields) - {"name"}:  # method.name: the run-wide table
            assert f"| `method.{key}" in section, (name, key)
    row = next(r for r in rows(Config) if r[0] == "optim.grad_clip")
    assert row == (
        "optim.grad_clip",
        "float > 0 or null",
        "12.0",
        Config.model_fields["optim"].annotation.model_fields["grad_clip"].description,
    )
    assert next(r for r in rows(Config) if r[0] == "optim.warmup_steps")[1] == "step count"


def test_check_mode_reports_a_stale_page_and_writing_fixes_it(tmp_path, capsys) -> None:
    page = tmp_path / "configuration.md"
    page.write_text(f"# intro\n\n{BEGIN}\nold table\n{END}\n\nprose after\n")
    assert main(["--page", str(page), "--check"]) == 1
    assert "is stale" in capsys.readouterr().err
    assert main(["--page", str(page)]) == 0
    assert main(["--page", str(page), "--check"]) == 0
    text = page.read_text(encoding="utf-8")
    assert (
        text.startswith("# intro\n\n")
        and text.endswith(f"{END}\n\nprose after\n")
        and "old table" not in text
    )
    with pytest.raises(ValueError, match="no generated section"):
        render("# no markers\n")
