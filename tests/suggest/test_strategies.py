"""`medcl.suggest.strategies`: which trained model supports `disagreement`, and the error when it does not."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcl.errors import ConfigError
from medcl.inference.predictor import Predictor
from medcl.suggest import PoolCase, check_strategy, paired_networks, suggest, supported_strategies


def test_disagreement_needs_two_networks(tmp_path: Path, tiny_checkpoint) -> None:
    supervised = Predictor.load(str(tiny_checkpoint(tmp_path / "sup.pt")), device="cpu")
    assert paired_networks(supervised.method) == {}
    assert supported_strategies(supervised.method) == ["entropy", "tta", "diverse", "random"]
    with pytest.raises(ConfigError) as err:
        check_strategy("disagreement", supervised.method, "sup.pt")
    message = str(err.value)
    assert "sup.pt (method supervised) has one" in message
    assert "strategies this model supports: entropy, tta, diverse, random" in message
    with pytest.raises(ConfigError, match="supports: entropy, tta"):
        suggest(supervised, [PoolCase("x", [tmp_path / "never_read.nii.gz"])], "disagreement", 1)


def test_student_teacher_checkpoint_pairs_student_and_teacher(
    tmp_path: Path, tiny_checkpoint, pool_of, ids
) -> None:
    """actionpp stores student (net) and EMA teacher; at initialisation they are equal: zero disagreement."""
    ckpt = tiny_checkpoint(tmp_path / "st.pt", "actionpp", ["method.anco.weight=0", "method.saacl.weight=0"])
    predictor = Predictor.load(str(ckpt), device="cpu", precision="fp32")
    assert set(paired_networks(predictor.method)) == {"student", "teacher"}
    assert "disagreement" in supported_strategies(predictor.method)
    result = suggest(predictor, pool_of(ids[:2]), "disagreement", 1)
    assert [r.score for r in result.rows] == [0.0, 0.0]
