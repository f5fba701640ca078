"""Resume after SIGKILL: a GRPO run killed (SIGKILL, the whole process group) after its first
checkpoint and restarted with resume=auto in the same directory ends with exactly the weights of an
uninterrupted run of the same length, with the same rewards at every step, and its prompt stream
neither repeats nor skips a prompt.

Exactness needs everything a step depends on restored: weights, optimizer and scheduler state, the
global step (Lightning's checkpoint), the RNG states that drive sampling (generation RNG included),
and the prompt stream's position after the last prompt the step drew, through a DataLoader worker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

STEPS, EVERY = 6, 3
RUN = [
    "grpo.prompts_per_step=2",
    "grpo.generations_per_prompt=4",
    "grpo.micro_batch_per_device=4",
    "grpo.max_completion_length=32",
    "grpo.max_prompt_draws_per_step=4",
    "module.optimizer.lr=5e-4",
    f"trainer.max_steps={STEPS}",
    f"callbacks.checkpoint.every_n_steps={EVERY}",
    "callbacks.checkpoint.keep_last=null",
    "data.num_workers=1",
]


def _args(grpo, run_dir) -> list[str]:
    return [*grpo.overrides, *RUN, f"hydra.run.dir={run_dir}"]


def _kill_after_first_checkpoint(grpo, run_dir, timeout=300) -> int:
    """Start a run, SIGKILL it as soon as a complete checkpoint exists; returns the checkpoint's step."""
    from vt_model.training.checkpointing import complete_checkpoints

    proc = subprocess.Popen(
        [sys.executable, "-m", "vt_grpo.cli", *_args(grpo, run_dir)],
        cwd=grpo.root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        env=grpo.env,
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            found = complete_checkpoints(run_dir / "checkpoints")
            if found:
                os.killpg(proc.pid, signal.SIGKILL)  # the trainer and its data worker, no cleanup
                proc.wait(30)
                return found[0][0]
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(
        f"no checkpoint to kill after (exit {proc.returncode}): {proc.stderr.read()[-3000:]}"
    )


def _last_per_step(records) -> dict[int, dict]:
    """step -> its last record (a resumed run rewrites the steps the killed run did after its checkpoint)."""
    return {r["step"]: r for r in records}


@pytest.mark.slow
def test_sigkill_then_resume_auto_equals_an_uninterrupted_run(grpo, tmp_path):
    from safetensors.torch import load_file

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    grpo.run_cli(_args(grpo, straight))
    step = _kill_after_first_checkpoint(grpo, killed)
    assert step == EVERY and not (killed / "hf_model").exists()
    resumed = grpo.run_cli(_args(grpo, killed))
    assert f"step-{step:08d}" in resumed.stdout + resumed.stderr  # it said where it resumed from

    # Same final weights, to the bit (CPU, same seed, deterministic kernels).
    reference, result = (load_file(d / "hf_model" / "model.safetensors") for d in (straight, killed))
    assert reference.keys() == result.keys()
    different = [name for name in reference if not torch.equal(reference[name], result[name])]
    assert not different, different[:5]

    # Same rollouts: the rewards and the prompts of every step.
    metrics = {d: _last_per_step(grpo.read_jsonl(d / "logs" / "grpo.jsonl")) for d in (straight, killed)}
    assert sorted(metrics[killed]) == list(range(1, STEPS + 1))
    for s in range(1, STEPS + 1):
        for key in ("reward_mean", "loss", "kl", "groups_drawn"):
            assert metrics[killed][s][key] == metrics[straight][s][key], (s, key)
    keys = {
        d: {
            s: r["keys"]
            for s, r in _last_per_step(grpo.read_jsonl(d / "logs" / "samples-rank0.jsonl")).items()
        }
        for d in (straight, killed)
    }
    assert keys[killed] == keys[straight]
    order = [k for s in range(1, STEPS + 1) for k in keys[killed][s]]
    assert (
        len(order) >= 2 * STEPS and len(set(order)) == len(order) < grpo.num_train_clips
    )  # one epoch: no repeat
