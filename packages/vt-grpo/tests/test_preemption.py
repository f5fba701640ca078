"""A preemption signal during a GRPO rollout, under ZeRO-3 on two CPU processes: SIGUSR1 reaches rank 0
while it generates step 2's completions (vt_model.training.faults sends it from the policy's first forward
pass of that step, in eval mode); both ranks finish the step, save one checkpoint of it (DeepSpeed's
sharded state plus our per-rank RNG and prompt-stream files) and exit 75. The requeued run resumes there
and ends with weights bit-identical to an uninterrupted run, the same rewards, losses and prompts at every
step, and no prompt drawn twice (vt_model.training.resilience)."""

from __future__ import annotations

import pytest
import torch

STEPS, PREEMPT_AT = 4, 2
RUN = ["grpo.prompts_per_step=4", "grpo.generations_per_prompt=4", "grpo.micro_batch_per_device=4",
       "grpo.max_completion_length=48", "module.optimizer.lr=5e-4", f"trainer.max_steps={STEPS}",
       "callbacks.checkpoint.every_n_steps=0", "callbacks.checkpoint.keep_last=null",
       "trainer/strategy=deepspeed_z3_cpu", "trainer.devices=2", "trainer.strategy.timeout.seconds=120"]
FAULT = ("+callbacks.faults={_target_: vt_model.training.faults.FaultInjection, "
         "dirpath: ${paths.run_dir}/faults, "
         f"faults: [{{step: {PREEMPT_AT}, at: forward, signal: SIGUSR1, rank: 0}}]}}")


def _last_per_step(records) -> dict[int, dict]:
    return {r["step"]: r for r in records}


@pytest.mark.slow
@pytest.mark.distributed
def test_a_signal_mid_rollout_under_zero3_checkpoints_and_the_requeued_run_is_bit_identical(grpo, tmp_path):
    from safetensors.torch import load_file

    from vt_model.training.checkpointing import complete_checkpoints

    straight, run = tmp_path / "straight", tmp_path / "preempted"
    grpo.run_cli([*grpo.overrides, *RUN, f"hydra.run.dir={straight}"])
    args = [*grpo.overrides, *RUN, FAULT, f"hydra.run.dir={run}"]
    preempted = grpo.run_cli(args, check=False)
    assert preempted.returncode == 75, preempted.stderr[-3000:]
    fired = (run / "faults" / "fault-0-rank0.fired").read_text()
    assert f"SIGUSR1 at forward of step {PREEMPT_AT}" in fired and "eval mode" in fired  # mid-rollout
    assert [s for s, _ in complete_checkpoints(run / "checkpoints")] == [PREEMPT_AT]
    assert max(r["step"] for r in grpo.read_jsonl(run / "logs" / "grpo.jsonl")) == PREEMPT_AT
    resumed = grpo.run_cli(args)
    assert f"step-{PREEMPT_AT:08d}" in resumed.stdout + resumed.stderr

    reference, result = (load_file(d / "hf_model" / "model.safetensors") for d in (straight, run))
    different = [name for name in reference if not torch.equal(reference[name], result[name])]
    assert reference.keys() == result.keys() and not different, different[:5]
    metrics = {d: _last_per_step(grpo.read_jsonl(d / "logs" / "grpo.jsonl")) for d in (straight, run)}
    assert sorted(metrics[run]) == list(range(1, STEPS + 1))
    assert max(metrics[straight][s]["kl"] for s in range(1, STEPS + 1)) > 0  # the policy moved
    for s in range(1, STEPS + 1):
        for key in ("reward_mean", "loss", "kl", "groups_drawn"):
            assert metrics[run][s][key] == metrics[straight][s][key], (s, key)
    for rank in range(2):
        keys = {d: {s: r["keys"] for s, r in _last_per_step(
            grpo.read_jsonl(d / "logs" / f"samples-rank{rank}.jsonl")).items()} for d in (straight, run)}
        assert keys[run] == keys[straight]
        order = [k for s in range(1, STEPS + 1) for k in keys[run][s]]
        assert len(set(order)) == len(order)  # within one epoch: no prompt twice
