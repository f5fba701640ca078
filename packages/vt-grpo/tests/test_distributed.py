"""The same GRPO steps under different strategies give the same run: one device vs ZeRO-3 on one
process, and DDP vs ZeRO-3 on 2 CPU processes (gloo), with every step split into 2 micro-batches per
rank. Checked on the per-step metrics (the KL to the start policy measures how far the weights moved).

This caught a real bug: DeepSpeed closes a micro-step in `engine.forward()`, which GRPO's direct model
passes bypass, so ZeRO-3 kept only the last micro-batch's gradient until the module announced each
micro-batch itself (`GRPOModule._start_micro_batch`). ZeRO-3 rollouts run on gathered weights with
DeepSpeed's hooks lifted (`vt_grpo.policy.gathered_for_generation`); step 3 checks that training goes on
exactly after the hooks were put back. On 2 ranks it also checks that the ranks draw disjoint prompts
and run the same number of rollout rounds (lockstep)."""

from __future__ import annotations

import pytest

STEPS = 3
RUN = ["grpo.prompts_per_step=4", "grpo.generations_per_prompt=4", "grpo.micro_batch_per_device=4",
       "grpo.max_completion_length=48", "module.optimizer.lr=5e-4", f"trainer.max_steps={STEPS}",
       "callbacks.checkpoint=null", "export=false"]
KEYS = ("reward_mean", "kl", "loss", "groups_drawn", "rollout_rounds")


def _run(grpo, tmp_path, name, extra):
    run_dir = tmp_path / name
    grpo.run_cli([*grpo.overrides, *RUN, *extra, f"hydra.run.dir={run_dir}"])
    return run_dir, grpo.read_jsonl(run_dir / "logs" / "grpo.jsonl")


def _assert_same(a, b, label):
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
    assert max(r["kl"] for r in a) > 1e-3, label  # the policy moved: the comparison is not trivial
    for ra, rb in zip(a, b, strict=True):
        for key in KEYS:
            assert rb[key] == pytest.approx(ra[key], rel=1e-4, abs=1e-7), (label, ra["step"], key)


@pytest.mark.slow
@pytest.mark.distributed
def test_zero3_matches_one_device_and_ddp(grpo, tmp_path):
    _, single = _run(grpo, tmp_path, "single", [])
    _, zero3 = _run(grpo, tmp_path, "zero3", ["trainer/strategy=deepspeed_z3_cpu"])
    _assert_same(single, zero3, "1 process: single device vs ZeRO-3")

    two = ["trainer.devices=2"]
    ddp_dir, ddp = _run(grpo, tmp_path, "ddp", ["trainer/strategy=ddp", *two])
    _, zero3_2 = _run(grpo, tmp_path, "zero3x2", ["trainer/strategy=deepspeed_z3_cpu", *two])
    _assert_same(ddp, zero3_2, "2 processes: DDP vs ZeRO-3")

    keys = [grpo.read_jsonl(ddp_dir / "logs" / f"samples-rank{r}.jsonl") for r in (0, 1)]
    assert [len(k) for k in keys] == [STEPS, STEPS]
    for step0, step1 in zip(*keys, strict=True):
        assert len(step0["keys"]) == len(step1["keys"])  # lockstep: the same rounds of the same size
    drawn = [{k for r in rank for k in r["keys"]} for rank in keys]
    assert not drawn[0] & drawn[1]  # each rank draws from its own part of the stream
