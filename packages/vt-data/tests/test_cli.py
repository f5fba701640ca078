"""The `vt-data` command end to end in real subprocesses: exit codes, per-line reports and JSON output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

EXTERNAL = Path(__file__).resolve().parents[3] / "tests" / "data"


def vt_data(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vt_data.cli", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=300)


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    done = vt_data("synth", "--out", str(out), "--num-train-clips", "6", "--num-test-clips", "3", "--quiet")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["splits"]["train"]["samples"] == 6
    return out


def test_validate_clean_exits_zero(synth_dir):
    done = vt_data("validate", str(synth_dir / "train.jsonl"), "--video-root", str(synth_dir))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "6 records checked, 0 with problems" in done.stderr


def test_validate_reports_each_bad_line_and_exits_one(synth_dir, tmp_path):
    lines = (synth_dir / "train.jsonl").read_text().splitlines()
    bad = [json.loads(line) for line in lines]
    bad[1]["solution"] = "<answer>Z</answer>"
    bad[1]["answer"] = "Z"
    bad[3]["path"] = "videos/missing.mp4"
    file = tmp_path / "bad.jsonl"
    file.write_text("\n".join(json.dumps(b) for b in bad) + "\n")
    done = vt_data("validate", str(file), "--video-root", str(synth_dir))
    assert done.returncode == 1
    report = done.stdout.splitlines()
    assert any(line.startswith(f"{file}:2: field 'solution'") for line in report), report
    assert any(line.startswith(f"{file}:4: field 'path'") and "missing.mp4" in line for line in report)
    assert not any(f"{file}:1:" in line for line in report)


def test_shard_then_stats_counts_every_record(synth_dir, tmp_path):
    done = vt_data("shard", str(synth_dir / "train.jsonl"), "--video-root", str(synth_dir),
                   "--out", str(tmp_path / "shards"), "--max-count", "4", "--quiet")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["total"] == 6
    stats = json.loads(vt_data("stats", str(tmp_path / "shards")).stdout)
    summary = stats[str(tmp_path / "shards")]
    assert summary["records"] == 6 and summary["traced"] == 6 and summary["invalid"] == 0


def test_probe_prints_facts_and_fails_cleanly_on_garbage(synth_dir, tmp_path):
    clip = next((synth_dir / "videos").glob("*.mp4"))
    facts = json.loads(vt_data("probe", str(clip)).stdout)
    assert facts["width"] == 56 and facts["total_frames"] == 32
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(b"not a video at all" * 10)
    done = vt_data("probe", str(garbage))
    assert done.returncode == 1 and str(garbage) in done.stderr


def test_convert_real_video_holmes_and_bad_source(tmp_path):
    file = EXTERNAL / "Video-Holmes" / "Pipeline" / "example_questions" / "RSmjqss0XKQ.json"
    out = tmp_path / "holmes.jsonl"
    done = vt_data("convert", "video_holmes", str(file), "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["written"] == 8
    assert vt_data("validate", str(out)).returncode == 0
    unknown = vt_data("convert", "nope", str(file), "--out", str(out))
    assert unknown.returncode == 2 and "known:" in unknown.stderr
    missing = vt_data("convert", "video_holmes", str(tmp_path / "absent.json"), "--out", str(out))
    assert missing.returncode == 2 and "absent.json" in missing.stderr and "Traceback" not in missing.stderr


def test_synth_flags_set_the_traced_regime(tmp_path):
    done = vt_data("synth", "--out", str(tmp_path), "--num-train-clips", "10", "--num-test-clips", "2",
                   "--traced-types", "span_colour,first_colour", "--traced-fraction", "1.0", "--quiet")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (tmp_path / "train.jsonl").read_text().splitlines()]
    traced = {r["question_type"] for r in records if r["process"]}
    answer_only = {r["question_type"] for r in records if not r["process"]}
    assert traced == {"span_colour", "first_colour"}
    assert answer_only == {"after_colour", "before_colour", "last_colour"}
    bad = vt_data("synth", "--out", str(tmp_path / "x"), "--traced-types", "nope", "--quiet")
    assert bad.returncode == 2 and "nope" in bad.stderr


def test_shard_select_splits_traced_from_answer_only(tmp_path):
    data = tmp_path / "data"
    done = vt_data("synth", "--out", str(data), "--num-train-clips", "12", "--num-test-clips", "2",
                   "--num-segments", "1,2", "--seconds-per-segment", "4",
                   "--question-types", "span_colour,last_colour", "--traced-types", "span_colour", "--quiet")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    assert {len(r["video_segments"]) for r in records} == {1, 2}  # each clip draws its segment count
    assert all(r["duration"] == 8.0 for r in records)
    traced = {r["problem_id"] for r in records if r["process"]}
    counts = {}
    for select in ("traced", "answer-only"):
        out = tmp_path / select
        done = vt_data("shard", str(data / "train.jsonl"), "--video-root", str(data), "--out", str(out),
                       "--select", select, "--quiet")
        assert done.returncode == 0, done.stderr
        counts[select] = json.loads(done.stdout)["total"]
    assert counts == {"traced": len(traced), "answer-only": len(records) - len(traced)}
    assert 0 < len(traced) < len(records)
    none = vt_data("shard", str(data / "test.jsonl"), "--video-root", str(data), "--out",
                   str(tmp_path / "none"), "--select", "traced", "--quiet")
    assert none.returncode == 1 and "no traced records" in none.stderr
