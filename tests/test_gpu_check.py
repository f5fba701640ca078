"""experiments/perf/gpu_check.py stays ready for the GPU machine: its dry run builds the paper-shape plan
(7B and 3B from the real configs on the meta device, 960 video + 512 text tokens), and the same code
paths run end to end on CPU with the tiny model (SFT step under DeepSpeed ZeRO-2, a GRPO step and
evaluation through the hf rollout engine), writing the JSON and Markdown named after the device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "perf" / "gpu_check.py"


def _run(args: list[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_dry_run_prints_the_paper_plan_and_writes_nothing(tmp_path):
    proc = _run(["--dry-run", "--out", str(tmp_path / "out")])
    assert proc.returncode == 0, proc.stderr[-2000:]
    plan = json.loads(proc.stdout[proc.stdout.index("{"):])
    assert plan["video"] == {"frames": 16, "source": [360, 640], "resized": [224, 420], "video_tokens": 960,
                             "patches": 3840}
    assert plan["text_tokens"] == 512 and plan["checks"] == ["sft", "grpo", "eval", "tests"]
    assert plan["models"]["7b"]["params"]["total"] == 8_292_166_656
    assert plan["models"]["3b"]["params"]["total"] == 3_754_622_976
    tokens = plan["models"]["7b"]["sft_tokens_per_sample"]
    assert tokens == 1472
    # model FLOPs: 6 x the LM's matmul parameters (untied lm_head in, embedding table out) per token,
    # the frozen vision tower's forward 2 x params per patch, causal attention 6 x layers x hidden x T^2
    expected = 6 * (7_615_616_512 - 544_997_376) * tokens + 2 * 676_550_144 * 3840 + 6 * 28 * 3584 * tokens**2
    assert plan["models"]["7b"]["sft_flops_per_sample"] == pytest.approx(expected, rel=1e-12)
    assert plan["sft"]["model"] == "7b" and plan["grpo"]["models"] == ["3b", "7b"]
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cpu_smoke_run_exercises_every_check_and_reports_them(tmp_path):
    out = tmp_path / "results"
    proc = _run(["--device", "cpu", "--shape", "tiny", "--out", str(out), "--checks", "sft", "grpo", "eval",
                 "--text-tokens", "64", "--new-tokens", "8", "--prompts", "2", "--group", "2",
                 "--eval-samples", "4", "--sft-steps", "1"])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (report_file,) = out.glob("gpu_check-CPU*.json")
    report = json.loads(report_file.read_text())
    assert report["errors"] == {}
    sft = report["results"]["sft"]
    assert sft["status"] == "ok" and sft["tokens_per_s"] > 0 and sft["model"] == "tiny"
    hf = report["results"]["grpo"]["tiny"]["hf"]
    assert 0 < hf["completion_tokens"] <= 2 * 2 * 8 and hf["step_s"] >= hf["rollout_s"] > 0
    assert report["results"]["eval"]["hf"]["samples"] == 4
    vllm = report["results"]["grpo"]["tiny"]["vllm"]
    assert "completion_tokens" in vllm or vllm["status"].startswith("not run: vllm")
    markdown = report_file.with_suffix(".md").read_text()
    assert "| sft | tokens_per_s |" in markdown and "| grpo tiny hf | completion_tokens_per_s |" in markdown
