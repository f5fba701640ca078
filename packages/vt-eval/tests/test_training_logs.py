"""vt_eval.training_logs: reading a training log (a resumed run's repeated steps, a torn last line) and the
reward functions it names."""

from __future__ import annotations

import json

import pytest

from vt_eval.training_logs import read_step_log, reward_names


def test_step_log_keeps_the_last_line_per_step_and_drops_a_torn_tail(tmp_path):
    path = tmp_path / "steps.jsonl"
    lines = [
        {"step": 1, "loss": 3.0},
        {"step": 2, "loss": 2.0},
        {"step": 3, "loss": 9.0},
        {"step": 3, "loss": 1.5},
        {"step": 4, "loss": 1.0},
    ]  # resumed after step 2: step 3 redone
    path.write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 5, "lo')
    records = read_step_log(path)
    assert [(r["step"], r["loss"]) for r in records] == [(1, 3.0), (2, 2.0), (3, 1.5), (4, 1.0)]
    path.write_text('{"step": 1, "loss": 1.0}\n{"step": 2, "lo\n{"step": 3, "loss": 1.0}\n')
    with pytest.raises(ValueError, match=r"steps.jsonl:2"):
        read_step_log(path)


def test_reward_names():
    records = [
        {
            "step": 1,
            "reward_mean": 1.0,
            "reward/accuracy_mean": 1.0,
            "reward/accuracy_std": 0.0,
            "reward/format_mean": 1.0,
            "reward_std": 0.1,
        }
    ]
    assert reward_names(records) == ["accuracy", "format"]
