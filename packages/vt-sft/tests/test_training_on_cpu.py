"""Training on CPU with the tiny model: the loss falls, and the loss curve does not depend on the layout
of the same global batches (1 process × micro-batch 2, 2 DDP processes × 1, ZeRO-2 on 2 processes,
ZeRO-2 with accumulation 2).

vt-data cuts each epoch into contiguous per-rank ranges, so which samples meet in one optimizer step
depends on the world size. To feed every layout the same global batches, the invariance test writes
the shards in the order that gives each layout step s the same samples (`layout_order`), with
shuffling off. The optimizer is plain SGD without clipping: Adam would hide a wrong gradient scale.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

STEPS = 8
SGD = ["module.optimizer._target_=torch.optim.SGD", "~module.optimizer.betas", "~module.optimizer.eps",
       "module.optimizer.lr=0.3", "module.scheduler=null", "trainer.gradient_clip_val=0",
       "data.shuffle=false", f"trainer.max_steps={STEPS}", "export=false", "callbacks.checkpoint=null"]


def layout_order(records: list, world_size: int, per_rank_step: int) -> list:
    """Records reordered so that a layout with `world_size` ranks taking `per_rank_step` samples per
    optimizer step (micro-batch × accumulation) trains records[s*G:(s+1)*G] at step s (G = global batch),
    given vt-data's contiguous per-rank split without shuffling."""
    global_batch = world_size * per_rank_step
    ranks: list[list] = [[] for _ in range(world_size)]
    for start in range(0, len(records) - global_batch + 1, global_batch):
        chunk = records[start:start + global_batch]
        for r in range(world_size):
            ranks[r] += chunk[r * per_rank_step:(r + 1) * per_rank_step]
    return [record for rank in ranks for record in rank]


def test_layout_order_is_the_identity_for_one_process():
    assert layout_order(list(range(8)), 1, 2) == list(range(8))
    assert layout_order(list(range(8)), 2, 1) == [0, 2, 4, 6, 1, 3, 5, 7]
    assert layout_order(list(range(8)), 2, 2) == [0, 1, 4, 5, 2, 3, 6, 7]


@pytest.mark.slow
def test_loss_decreases_and_the_run_exports_a_loadable_model(sft, tmp_path):
    from vt_model.loading import load_model
    from vt_sft.cli import train

    run_dir = tmp_path / "run"
    cfg = sft.compose([*sft.overrides, "logger=[csv,tensorboard]", "trainer.max_steps=30",
                       "batch.micro_batch_per_device=2", f"paths.run_dir={run_dir}"])
    summary = train(cfg)
    losses = [sft.step_losses(run_dir)[s] for s in range(1, 31)]
    assert summary["global_step"] == 30 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-5:]) < losses[0] - 0.5, losses
    # The composed config is saved resolved, the loggers wrote, the final model loads like a checkpoint.
    assert (run_dir / "config.yaml").read_text().count(str(run_dir)) > 0
    assert any((run_dir / "csv").rglob("metrics.csv")) and any((run_dir / "tensorboard").rglob("events.*"))
    exported = load_model(run_dir / "hf_model")
    original = load_model(sft.assets / "qwen25vl-tiny")
    pairs = zip(exported.named_parameters(), original.named_parameters(), strict=True)
    changed = [n for (n, a), (_, b) in pairs if not a.detach().equal(b.detach())]
    assert len(changed) > 0.9 * len(list(original.parameters()))  # everything trains in the tiny model
    assert (run_dir / "checkpoints" / "step-00000030" / "meta.json").is_file()


@pytest.fixture(scope="module")
def layout_shards(sft, tmp_path_factory):
    from vt_data.records import load_records
    from vt_data.shards.writer import write_shards

    records = load_records(sft.assets / "synthetic" / "train.jsonl")[:2 * STEPS]
    root = tmp_path_factory.mktemp("layouts")
    out = {}
    for name, world_size, per_rank_step in (("w1", 1, 2), ("w2", 2, 1)):
        write_shards(layout_order(records, world_size, per_rank_step), sft.assets / "synthetic", root / name,
                     max_count=5, progress=False)
        out[name] = root / name
    return out


@pytest.mark.slow
@pytest.mark.distributed
def test_loss_curve_is_invariant_to_the_data_parallel_layout(sft, layout_shards, tmp_path):
    from vt_sft.cli import train

    def curve(run_dir):
        losses = sft.step_losses(run_dir)
        assert sorted(losses) == list(range(1, STEPS + 1)), losses
        return np.array([losses[s] for s in range(1, STEPS + 1)])

    base = [*sft.overrides, *SGD]
    # (micro-batch 2, accumulation 1, 1 process): in-process.
    train(sft.compose([*base, f"data.train_shards={layout_shards['w1']}", "batch.micro_batch_per_device=2",
                       f"paths.run_dir={tmp_path / 'single'}"]))
    runs = {
        # (micro-batch 1, accumulation 1, 2 processes): DDP over gloo.
        "ddp": ["trainer/strategy=ddp", "trainer.devices=2", f"data.train_shards={layout_shards['w2']}"],
        # the same layout under ZeRO-2 (our CPU DeepSpeed strategy).
        "zero2": ["trainer/strategy=deepspeed_z2_cpu", "trainer.devices=2",
                  f"data.train_shards={layout_shards['w2']}"],
        # ZeRO-2 on 1 process with accumulation 2: DeepSpeed divides by its accumulation after Lightning did.
        "zero2_accum": ["trainer/strategy=deepspeed_z2_cpu", "batch.grad_accum=2",
                        f"data.train_shards={layout_shards['w1']}"],
    }
    for name, extra in runs.items():
        sft.run_cli([*base, "batch.micro_batch_per_device=1", *extra, f"hydra.run.dir={tmp_path / name}"])
    single = curve(tmp_path / "single")
    assert single[-1] < single[0]  # it trains, so the comparison is not between two flat lines
    for name in runs:
        print(name, "max |relative difference| to the single-process curve:",
              float(np.max(np.abs(curve(tmp_path / name) / single - 1))))
    for name in runs:
        np.testing.assert_allclose(curve(tmp_path / name), single, rtol=2e-5, atol=1e-6, err_msg=name)
    # Both ranks trained: each logged its own keys, and together they saw the step's samples.
    keys = [sft.read_jsonl(tmp_path / "ddp" / "logs" / f"samples-rank{r}.jsonl") for r in (0, 1)]
    assert [len(k) for k in keys] == [STEPS, STEPS]
    assert not {x for r in keys[0] for x in r["keys"]} & {x for r in keys[1] for x in r["keys"]}
