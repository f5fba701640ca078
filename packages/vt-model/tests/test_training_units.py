"""vt_model.training pieces that need no Trainer: batch sizes, loss scale, schedules, RNG capture,
checkpoint discovery and resume resolution, Lightning relaunch argv, and the resumable step batches
over a real shard stream. Tests of modules that import Lightning skip where the `train` extra
(lightning, deepspeed, hydra) is not installed."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from vt_model.training.app import relaunch_argv
from vt_model.training.batching import BatchSizes, product, reduction_scale
from vt_model.training.schedules import WarmupCosine, warmup_cosine

# ----------------------------------------------------------------------------------------- batch sizes


def test_batch_sizes_derive_and_check_the_global_batch():
    sizes = BatchSizes(micro_batch_per_device=1, grad_accum=2, world_size=8, global_batch=16)
    assert sizes.samples_per_step == 16 and sizes.samples_per_rank_step == 2
    assert BatchSizes.from_global(16, micro_batch_per_device=1, world_size=8).grad_accum == 2
    with pytest.raises(ValueError, match="global_batch=16"):
        BatchSizes(micro_batch_per_device=2, grad_accum=2, world_size=8, global_batch=16)
    with pytest.raises(ValueError, match="not a multiple"):
        BatchSizes.from_global(12, micro_batch_per_device=1, world_size=8)
    with pytest.raises(ValueError, match="positive integer"):
        BatchSizes(micro_batch_per_device=0)


def test_steps_for_epochs_drops_partial_micro_batches_only():
    sizes = BatchSizes(micro_batch_per_device=3, grad_accum=2, world_size=2)
    assert sizes.steps_for_epochs(samples_per_rank=10, epochs=1) == 1  # 3 micro-batches -> 1 step
    assert sizes.steps_for_epochs(samples_per_rank=10, epochs=2) == 3  # windows span the epoch boundary
    with pytest.raises(ValueError, match="fewer than one step"):
        sizes.steps_for_epochs(samples_per_rank=5, epochs=1)


def test_reduction_scale_undoes_rank_and_accumulation_averaging():
    assert reduction_scale(4, 2) == 8.0
    # DeepSpeed divides by its accumulation once more after Lightning did.
    assert reduction_scale(4, 2, strategy_divides_by_accum=True) == 16.0
    assert product(8, 2) == 16


# ------------------------------------------------------------------------------------------- schedules


def test_warmup_cosine_shape_and_state_round_trip():
    multiplier = WarmupCosine(total_steps=100, warmup_steps=3, min_ratio=0.1)
    values = [multiplier(s) for s in range(101)]
    assert values[:3] == pytest.approx([0.25, 0.5, 0.75])
    assert values[3] == pytest.approx(1.0) and values[100] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(values[3:], values[4:], strict=False))
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = warmup_cosine(optimizer, 100, warmup_ratio=0.03)
    for _ in range(7):
        optimizer.step()
        scheduler.step()
    state = scheduler.state_dict()
    # The multiplier's settings are saved (a lambda's would be dropped) and load with weights_only.
    assert state["lr_lambdas"][0] == {"total_steps": 100, "warmup_steps": 3, "min_ratio": 0.0}
    fresh = warmup_cosine(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), 5)
    fresh.load_state_dict(state)
    assert fresh.lr_lambdas[0].total_steps == 100 and fresh.get_last_lr() == scheduler.get_last_lr()


# ------------------------------------------------------------------------------------------ RNG states


def test_rng_state_round_trips_through_a_weights_only_file(tmp_path):
    pytest.importorskip("lightning")
    from vt_model.training.checkpointing import capture_rng_state, restore_rng_state

    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    state = capture_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.save(state, tmp_path / "rng.pt")
    torch.manual_seed(9), np.random.seed(9), random.seed(9)
    restore_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    assert torch.equal(torch.rand(3), expected[0])
    assert np.array_equal(np.random.rand(3), expected[1]) and random.random() == expected[2]


# ---------------------------------------------------------------------------------- checkpoint discovery


def _fake_checkpoint(root, step, complete=True):
    pytest.importorskip("lightning")
    from vt_model.training.checkpointing import META, step_dir_name

    path = root / step_dir_name(step)
    path.mkdir(parents=True)
    if complete:
        (path / META).write_text(json.dumps({"step": step, "world_size": 1}))
    return path


def test_resume_auto_picks_the_latest_complete_checkpoint(tmp_path):
    pytest.importorskip("lightning")
    from vt_model.training.checkpointing import find_latest_checkpoint, resolve_resume

    root = tmp_path / "checkpoints"
    assert resolve_resume("auto", root) is None  # nothing yet: a fresh start
    _fake_checkpoint(root, 5)
    ten = _fake_checkpoint(root, 10)
    _fake_checkpoint(root, 15, complete=False)  # killed while writing: never chosen
    (root / ".tmp-step-00000020").mkdir()
    assert find_latest_checkpoint(root) == ten
    assert resolve_resume("auto", root) == ten
    assert resolve_resume(str(tmp_path), tmp_path / "elsewhere") == ten  # a run directory
    assert resolve_resume(str(root / "step-00000005"), root).name == "step-00000005"
    with pytest.raises(FileExistsError, match="resume=auto"):
        resolve_resume(None, root)
    with pytest.raises(FileNotFoundError):
        resolve_resume(str(tmp_path / "missing"), root)


# ------------------------------------------------------------------------------------ relaunch argv


def test_relaunch_argv_runs_exactly_this_job():
    argv = ["vt-sft", "-m", "--config-dir", "/x/conf", "experiment=tiny_cpu", "module.optimizer.lr=1e-3,1e-4",
            "hydra/launcher=submitit_local"]
    out = relaunch_argv(argv, ["experiment=tiny_cpu", "module.optimizer.lr=0.001"],
                        ["hydra/launcher=submitit_local", "hydra.searchpath=[file:///y]", "hydra.run.dir=/r"])
    assert out == ["vt-sft", "--config-dir", "/x/conf", "experiment=tiny_cpu", "module.optimizer.lr=0.001",
                   "hydra.searchpath=[file:///y]"]


# ------------------------------------------------------------------------------- resumable step batches


@pytest.fixture(scope="module")
def small_shards(tmp_path_factory):
    """10 samples of tiny clips in 3 shards."""
    from vt_data.records import VideoQA
    from vt_data.shards.writer import write_shards
    from vt_data.video import encode_video

    root = tmp_path_factory.mktemp("stream")
    encode_video(np.zeros((8, 32, 32, 3), dtype=np.uint8), root / "clip.mp4", 4)
    records = [VideoQA(problem=f"q{i}?", path="clip.mp4", data_source="s", problem_id=i,
                       options=["A. a", "B. b"], solution="<answer>A</answer>") for i in range(10)]
    write_shards(records, root, root / "shards", max_count=4, progress=False)
    return root / "shards"


def _keys_batch(samples):
    return {"keys": [s["key"] for s in samples], "n": len(samples)}


def _step_batches(shards, micro, accum):
    from vt_data.shards.stream import StreamConfig, make_loader
    from vt_model.training.streaming import StepBatches

    config = StreamConfig(shards, num_frames=2, max_frames=2, shuffle=True, shuffle_buffer=4, seed=7)
    loader = make_loader(config, batch_size=micro, collate_fn=_keys_batch)
    return StepBatches(loader, micro_batch=micro, grad_accum=accum, count_fn=lambda b: 10 * b["n"])


def _take(iterable, n):
    out = []
    for batch in iterable:
        out.append(batch)
        if len(out) == n:
            return out
    raise AssertionError("stream ended")


def test_step_batches_group_windows_and_drop_partial_batches(small_shards):
    batches = _take(_step_batches(small_shards, micro=3, accum=2), 6)
    assert [b["window_pos"] for b in batches] == [0, 1, 0, 1, 0, 1]
    assert all(b["window_count"] == 60 for b in batches)
    first_epoch = [k for b in batches[:3] for k in b["keys"]]
    assert len(set(first_epoch)) == 9  # 10 samples: 3 full micro-batches, the 1-sample rest dropped
    assert all(len(b["keys"]) == 3 for b in batches)


def test_step_batches_resume_continues_after_the_last_trained_batch(small_shards):
    reference = _take(_step_batches(small_shards, micro=2, accum=1), 9)  # crosses an epoch boundary
    for stop in (3, 5, 7):
        resumed = _step_batches(small_shards, micro=2, accum=1)
        resumed.load_stream_state(reference[stop - 1]["stream_state"])
        again = _take(resumed, 9 - stop)
        assert [b["keys"] for b in again] == [b["keys"] for b in reference[stop:]], stop


# ----------------------------------------------------------------------------------------- build_model


def test_build_model_full_with_frozen_vision_or_lora(tmp_path):
    from vt_model.adapters import count_parameters
    from vt_model.training.assets import ensure_tiny_model
    from vt_model.training.models import build_model

    path = ensure_tiny_model(tmp_path / "tiny")
    assert ensure_tiny_model(tmp_path / "tiny") == path and (path / ".complete").is_file()  # idempotent
    full = build_model(path, freeze_vision=True)
    trainable, total = count_parameters(full)
    assert full.training  # from_pretrained's eval mode would switch off gradient checkpointing
    assert trainable == total - sum(p.numel() for p in full.model.visual.parameters())
    lora = build_model(path, lora={"r": 4, "alpha": 8}, gradient_checkpointing=True)
    names = [n for n, p in lora.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n and "visual" not in n for n in names)
