"""Resume after SIGKILL: a run killed (SIGKILL to its whole process group: every rank and data worker)
after its first checkpoint and restarted with resume=auto in the same directory ends with exactly the
weights of an uninterrupted run of the same length, and its data stream neither repeats nor skips a
sample. Once on one process with a DataLoader worker, once under ZeRO-2 on two processes (DeepSpeed's
own sharded checkpoint plus our per-rank RNG and stream files).

The stream is shuffled (seeded per epoch) and spans more than one epoch, so the restored position
covers the shuffle buffer, the worker cursor and the epoch counter.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch

STEPS, EVERY = 40, 5
LAYOUTS = {
    "one_process": {"world": 1, "micro": 2, "args": ["data.num_workers=1"]},
    "zero2_two_processes": {"world": 2, "micro": 1,
                            "args": ["trainer/strategy=deepspeed_z2_cpu", "trainer.devices=2"]},
}


def _args(sft, layout, run_dir) -> list[str]:
    return [*sft.overrides, f"trainer.max_steps={STEPS}", f"batch.micro_batch_per_device={layout['micro']}",
            f"callbacks.checkpoint.every_n_steps={EVERY}", "callbacks.checkpoint.keep_last=null",
            *layout["args"], f"hydra.run.dir={run_dir}"]


def _kill_after_first_checkpoint(sft, args, run_dir, timeout=240) -> int:
    """Start a run, SIGKILL it as soon as a complete checkpoint exists; returns the checkpoint's step.
    The run is niced so that this poller, not the run, gets the CPU on a busy machine: it must see the
    first checkpoint while the run still has most of its steps ahead."""
    from vt_model.training.checkpointing import complete_checkpoints

    command = ["nice", "-n", "19", sys.executable, "-m", "vt_sft.cli", *args]
    proc = subprocess.Popen(command, cwd=sft.root, text=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            found = complete_checkpoints(run_dir / "checkpoints")
            if found:
                os.killpg(proc.pid, signal.SIGKILL)  # every rank and data worker, no cleanup
                proc.wait(30)
                return found[0][0]
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"the run ended (exit {proc.returncode}) before it could be killed after a "
                         f"checkpoint: {proc.stderr.read()[-3000:]}")


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(run_dir / "hf_model" / "model.safetensors")


def _keys_by_step(sft, run_dir, rank) -> dict[int, list[str]]:
    """step -> keys a rank trained in it; a resumed run's records of a replayed step replace the
    killed run's."""
    out: dict[int, list[str]] = {}
    for record in sft.read_jsonl(run_dir / "logs" / f"samples-rank{rank}.jsonl"):
        if record["window_pos"] == 0:
            out[record["step"]] = []
        out[record["step"]] = out.get(record["step"], []) + record["keys"]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param("one_process"),
                                  pytest.param("zero2_two_processes", marks=pytest.mark.distributed)])
def test_sigkill_then_resume_auto_equals_an_uninterrupted_run(sft, tmp_path, name):
    layout = LAYOUTS[name]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    sft.run_cli(_args(sft, layout, straight))
    step = _kill_after_first_checkpoint(sft, _args(sft, layout, killed), killed)
    assert step == EVERY and not (killed / "hf_model").exists()
    resumed = sft.run_cli(_args(sft, layout, killed))
    assert f"step-{step:08d}" in resumed.stdout + resumed.stderr  # it said where it resumed from

    # Same final weights, to the bit (CPU, same seed, deterministic kernels), and the same loss curve.
    reference, result = _weights(straight), _weights(killed)
    assert reference.keys() == result.keys()
    different = [key for key in reference if not torch.equal(reference[key], result[key])]
    assert not different, different[:5]
    assert sft.step_losses(killed) == sft.step_losses(straight)

    # The data: the same keys at every step on every rank, every sample once per epoch.
    epoch = sft.num_train_clips // layout["world"]  # per rank; one question per clip
    for rank in range(layout["world"]):
        keys = _keys_by_step(sft, killed, rank)
        assert keys == _keys_by_step(sft, straight, rank)
        assert sorted(keys) == list(range(1, STEPS + 1))
        assert {len(k) for k in keys.values()} == {layout["micro"]}
        order = [k for s in range(1, STEPS + 1) for k in keys[s]]
        second = order[epoch:2 * epoch]
        assert len(order) > epoch  # the run crosses an epoch boundary
        assert len(set(order[:epoch])) == epoch and len(set(second)) == len(second)
