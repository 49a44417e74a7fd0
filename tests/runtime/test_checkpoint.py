"""Atomic checkpoint writes, safe loading, RNG round trips."""

from __future__ import annotations

import errno
import io
import os
import random
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from medcl.errors import MedclError
from medcl.runtime.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state


def test_checkpoint_round_trip_is_weights_only(tmp_path: Path) -> None:
    state = {"step": 3, "model": {"w": torch.arange(4.0)}, "rng": rng_state(), "config": {"a": [1, 2]}}
    path = save_checkpoint(state, tmp_path / "ckpt" / "last.pt")
    loaded = load_checkpoint(path)
    assert loaded["step"] == 3 and torch.equal(loaded["model"]["w"], torch.arange(4.0))
    # Only the final file is left: the temporary file was renamed, not copied.
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]
    # weights_only loading rejects arbitrary objects outright.
    torch.save({"format": "medcl-checkpoint/1", "evil": object()}, tmp_path / "evil.pt")
    with pytest.raises(MedclError, match="cannot read checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_failed_write_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = save_checkpoint({"step": 1}, tmp_path / "last.pt")

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        save_checkpoint({"step": 2, "bad": Boom()}, path)
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_bad_checkpoints_are_reported(tmp_path: Path) -> None:
    with pytest.raises(MedclError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pt")
    with pytest.raises(MedclError, match="not a medcl checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    (tmp_path / "trunc.pt").write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(MedclError, match="trunc.pt"):
        load_checkpoint(tmp_path / "trunc.pt")


class _FullDisk(io.FileIO):
    """A file on a disk that fills up after ``room`` bytes, as a real ENOSPC write failure."""

    room = 1000

    def write(self, data) -> int:
        if self.tell() + len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return super().write(data)


@pytest.mark.parametrize("at", ["start", "end"])  # torch fails mid-write / the last flush fails
def test_disk_full_is_a_medcl_error_and_keeps_the_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str
) -> None:
    state = {"step": 2, "w": torch.zeros(100_000)}
    buffer = io.BytesIO()
    torch.save({"format": "medcl-checkpoint/1", **state}, buffer)
    room = 1000 if at == "start" else len(buffer.getvalue()) - 100
    path = save_checkpoint({"step": 1}, tmp_path / "last.pt")
    monkeypatch.setattr(_FullDisk, "room", room)
    monkeypatch.setattr(os, "fdopen", lambda fd, mode="r", *a, **k: io.BufferedWriter(_FullDisk(fd, "wb")))
    with pytest.raises(
        MedclError, match=r"cannot write checkpoint .*last\.pt: No space left on device"
    ) as info:
        save_checkpoint(state, path)
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_save_removes_temporaries_of_killed_writes(tmp_path: Path) -> None:
    now = time.time()
    stale = tmp_path / ".last.pt.k1ll3d_9.tmp"  # what mkstemp named a write killed with kill -9
    newer = tmp_path / ".last.pt.newer123.tmp"  # a write that started after this one: not ours to delete
    other = tmp_path / ".best.pt.k1ll3d_9.tmp"  # another checkpoint's temporary
    for file, mtime in ((stale, now - 3600), (newer, now + 3600), (other, now - 3600)):
        file.write_bytes(b"half a checkpoint")
        os.utime(file, (mtime, mtime))
    (tmp_path / "notes.tmp").write_text("not a checkpoint temporary")
    save_checkpoint({"step": 1}, tmp_path / "last.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".best.pt.k1ll3d_9.tmp", ".last.pt.newer123.tmp", "last.pt", "notes.tmp"]
    )


@pytest.mark.parametrize(
    "content",
    [
        b"PK\x03\x04garbage",  # not a zip archive
        b"hello world\n",  # text
        "first half",  # a real checkpoint cut in two
        "evil",  # a pickled object weights_only refuses
    ],
)
def test_unloadable_checkpoint_is_one_line_that_never_suggests_weights_only_false(
    tmp_path: Path, content: bytes | str
) -> None:
    path = tmp_path / "model.pt"
    if content == "evil":
        torch.save({"format": "medcl-checkpoint/1", "evil": object()}, path)
    elif content == "first half":
        save_checkpoint({"w": torch.zeros(1000)}, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(MedclError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert message.startswith(f"cannot read checkpoint {path}: it is not a medcl checkpoint or it is damaged")
    assert "\n" not in message and "weights_only" not in message


def test_empty_checkpoint_says_it_is_empty(tmp_path: Path) -> None:
    (tmp_path / "last.pt").write_bytes(b"")
    with pytest.raises(MedclError, match=r"cannot read checkpoint .*last\.pt: the file is empty \(0 bytes\)"):
        load_checkpoint(tmp_path / "last.pt")


def test_rng_state_restores_every_generator(tmp_path: Path) -> None:
    state = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    save_checkpoint({"rng": state}, tmp_path / "r.pt")
    set_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_checkpoints_and_masks_follow_the_umask(tmp_path: Path, hippocampus: Path, umask: int) -> None:
    from medcl.inference.outputs import write_labels

    old = os.umask(umask)
    try:
        ckpt = save_checkpoint({"x": torch.zeros(1)}, tmp_path / "last.pt")
        reference = hippocampus / "labelsTr" / "hippocampus_001.nii.gz"
        mask = write_labels(np.zeros((35, 51, 35), np.uint8), reference, tmp_path / "m.nii.gz")
    finally:
        os.umask(old)
    for path in (ckpt, mask):
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, oct(path.stat().st_mode)
