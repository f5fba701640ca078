"""Atomic writes: the target changes only when a write completes, fsync when asked, JSON and JSONL bytes."""

import json
import os

import pytest

from vt_data.files import (
    atomic_open,
    atomic_path,
    temporary_sibling,
    write_bytes_atomic,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)


def test_the_target_is_replaced_on_success_and_parents_are_created(tmp_path):
    target = tmp_path / "a" / "b" / "out.txt"
    write_text_atomic(target, "old\n")
    with atomic_open(target) as fh:
        fh.write("new ")
        assert target.read_text() == "old\n"  # nothing is visible before the block ends
        fh.write("text\n")
    assert target.read_text() == "new text\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.txt"]


@pytest.mark.parametrize("how", ["open", "path"])
def test_an_error_in_the_block_keeps_the_old_content_and_leaves_no_temporary_file(tmp_path, how):
    target = tmp_path / "out.bin"
    write_bytes_atomic(target, b"old")
    with pytest.raises(RuntimeError, match="boom"):
        if how == "open":
            with atomic_open(target, "wb") as fh:
                fh.write(b"half of the new")
                raise RuntimeError("boom")
        else:
            with atomic_path(target) as tmp:
                tmp.write_bytes(b"half of the new")
                raise RuntimeError("boom")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_an_error_before_the_first_write_creates_nothing(tmp_path):
    target = tmp_path / "never.json"
    with pytest.raises(ValueError), atomic_open(target):
        raise ValueError
    assert list(tmp_path.iterdir()) == []


def test_the_temporary_file_is_a_hidden_per_process_sibling(tmp_path):
    tmp = temporary_sibling(tmp_path / "x.json")
    assert tmp.parent == tmp_path and tmp.name.startswith(".x.json.") and str(os.getpid()) in tmp.name


@pytest.mark.parametrize("how", ["open", "path"])
def test_fsync_syncs_the_written_file_before_it_replaces_the_target(tmp_path, monkeypatch, how):
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "entry.json"
    if how == "open":
        with atomic_open(target, fsync=True) as fh:
            json.dump({"reply": "paid for"}, fh)
    else:
        with atomic_path(target, fsync=True) as tmp:
            tmp.write_text('{"reply": "paid for"}')
    assert json.loads(target.read_text()) == {"reply": "paid for"}
    assert len(synced) == 1
    if isinstance(synced[0], str):  # the temporary file, not the target: the rename comes after
        assert synced[0].endswith(".tmp")
    write_text_atomic(tmp_path / "t.txt", "x", fsync=True)
    write_bytes_atomic(tmp_path / "t.bin", b"x", fsync=True)
    assert len(synced) == 3


def test_no_fsync_unless_asked(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("fsync without fsync=True"))
    write_text_atomic(tmp_path / "t.txt", "x")
    write_jsonl_atomic(tmp_path / "t.jsonl", [1])


def test_only_whole_file_modes(tmp_path):
    with pytest.raises(ValueError, match="mode 'w' or 'wb'"), atomic_open(tmp_path / "x", "a"):
        pass


def test_jsonl_counts_its_lines_and_keeps_non_ascii(tmp_path):
    rows = [{"q": "café?", "n": 1}, [1, 2], "text", None]
    target = tmp_path / "rows.jsonl"
    assert write_jsonl_atomic(target, iter(rows)) == 4
    text = target.read_text(encoding="utf-8")
    assert text == '{"q": "café?", "n": 1}\n[1, 2]\n"text"\nnull\n'
    assert [json.loads(line) for line in text.splitlines()] == rows
    assert write_jsonl_atomic(target, []) == 0 and target.read_text() == ""


def test_jsonl_from_a_failing_generator_keeps_the_old_file(tmp_path):
    target = tmp_path / "rows.jsonl"
    write_jsonl_atomic(target, [{"a": 1}])

    def rows():
        yield {"a": 2}
        raise OSError("source went away")

    with pytest.raises(OSError):
        write_jsonl_atomic(target, rows())
    assert target.read_text() == '{"a": 1}\n' and len(list(tmp_path.iterdir())) == 1


def test_json_is_indented_with_a_final_newline(tmp_path):
    target = write_json_atomic(tmp_path / "r.json", {"name": "é", "n": [1]}, indent=1)
    assert target.read_text(encoding="utf-8") == '{\n "name": "é",\n "n": [\n  1\n ]\n}\n'
    write_json_atomic(target, {"p": tmp_path}, default=str)
    assert json.loads(target.read_text()) == {"p": str(tmp_path)}
