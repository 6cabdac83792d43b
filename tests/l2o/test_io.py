import json

import pytest
import torch

from l2o.io import atomic_write, exclusive_lock, stale_temporaries


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


def test_written_files_get_the_mode_a_plain_open_would_leave(tmp_path):
    """mkstemp creates 0600; the written file follows the umask (new) or keeps its mode."""
    import os
    import stat

    mode = lambda p: stat.S_IMODE(p.stat().st_mode)
    old = os.umask(0o027)
    try:
        atomic_write(tmp_path / "new.txt", "x")
        assert mode(tmp_path / "new.txt") == 0o640
        os.umask(0o002)
        atomic_write(tmp_path / "group.txt", "x")
        assert mode(tmp_path / "group.txt") == 0o664
        (tmp_path / "group.txt").chmod(0o600)
        atomic_write(tmp_path / "group.txt", "y")  # an existing file keeps its own mode
        assert mode(tmp_path / "group.txt") == 0o600
    finally:
        os.umask(old)


def test_the_first_bytes_tell_a_text_file_from_a_torch_file(tmp_path):
    from l2o.io import not_a_torch_file

    torch.save({"w": torch.ones(1)}, tmp_path / "zip.pt")
    torch.save({"w": 1}, tmp_path / "legacy.pt", _use_new_zipfile_serialization=False)
    (tmp_path / "config.yaml").write_text("task:\n  name: mnist_mlp_relu\n")
    (tmp_path / "blob").write_bytes(b"\x00\xffgarbage")
    (tmp_path / "empty").write_bytes(b"")
    assert not_a_torch_file(tmp_path / "zip.pt") is None
    assert not_a_torch_file(tmp_path / "legacy.pt") is None
    assert "text file (it begins 'task:" in not_a_torch_file(tmp_path / "config.yaml")
    assert "begins with the bytes" in not_a_torch_file(tmp_path / "blob")
    assert "empty" in not_a_torch_file(tmp_path / "empty")


def test_exclusive_lock_makes_a_second_holder_wait(tmp_path):
    """The second holder enters only after the first leaves; the lock file's folder is made."""
    import threading
    import time

    lock, events = tmp_path / "new" / ".x.lock", []
    inside = threading.Event()

    def second():
        inside.wait()
        with exclusive_lock(lock):
            events.append("second in")

    thread = threading.Thread(target=second)
    thread.start()
    with exclusive_lock(lock):
        inside.set()
        time.sleep(0.2)  # the second thread is waiting on the lock by now
        events.append("first out")
    thread.join()
    assert events == ["first out", "second in"]
