"""vt_eval.plots: the smoothing of training curves, and the one way a plot is saved (atomically, in the
format its file name says)."""

from __future__ import annotations

import pytest

from vt_eval.plots import category_accuracy, moving_average


def test_moving_average():
    assert moving_average([1.0, 2.0, 3.0, 4.0], 2) == pytest.approx([1.0, 1.5, 2.5, 3.5])
    assert moving_average([5.0, 1.0], 1) == [5.0, 1.0]
    with pytest.raises(ValueError):
        moving_average([1.0], 0)


def test_a_plot_replaces_its_file_atomically(tmp_path):
    path = tmp_path / "plots" / "categories.png"
    path.parent.mkdir()
    path.write_bytes(b"old")
    summary = {"n": 4, "accuracy": 0.5, "accuracy_lenient": 0.75, "per_category": {"a": {"n": 4}}}
    assert category_accuracy(summary, path, title="t") == path
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in path.parent.iterdir()] == ["categories.png"]  # no temporary file left
