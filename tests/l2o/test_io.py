import json

import pytest
import torch

from l2o.io import atomic_write, stale_temporaries


def test_writes_bytes_text_and_callables(tmp_path):
    atomic_write(tmp_path / "a.bin", b"\x00\x01")
    atomic_write(tmp_path / "b.txt", "héllo\n")
    atomic_write(tmp_path / "c.json", lambda fh: json.dump({"x": 1}, fh), text=True)
    atomic_write(tmp_path / "d.pt", lambda fh: torch.save({"w": torch.ones(2)}, fh))
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    assert json.loads((tmp_path / "c.json").read_text()) == {"x": 1}
    assert torch.load(tmp_path / "d.pt", weights_only=True)["w"].sum() == 2
    assert stale_temporaries(tmp_path) == []


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "keep.txt"
    atomic_write(target, "old")

    def explode(fh):
        fh.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, explode)
    assert target.read_text() == "old"
    assert stale_temporaries(tmp_path) == []


def test_refuses_a_directory_target(tmp_path):
    (tmp_path / "best.pt").mkdir()
    with pytest.raises(IsADirectoryError, match=r"best\.pt"):
        atomic_write(tmp_path / "best.pt", b"x")
