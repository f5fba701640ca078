"""SFT under what clusters do, with real processes and real signals (vt_model.training.resilience; the
signals come from vt_model.training.faults, which sends them to its own process at a chosen point):

1. One process, requeued three times: SIGUSR1 mid-step (a checkpoint at that step's end, exit 75),
   SIGTERM while a periodic checkpoint is written (the write completes, the run stops at that step: no
   extra step, no second write), SIGKILL while a checkpoint is written (a partial directory is left,
   newer than any complete one: a loader taking the newest directory fails here); the fourth run ends
   with weights bit-identical to an uninterrupted run, the same loss at every step and the same samples.
2. Two "nodes" of one process each on localhost, launched as srun would (SLURM variables set by hand):
   world size, node ranks, per-rank data and batch sizes are those of the one-node two-process run; a
   SIGUSR1 on rank 1 only stops both ranks at the same step and rank 0 requeues the job (a fake
   `scontrol`), Lightning's own SLURM requeue stays out of it; SIGKILL of rank 1 makes rank 0 exit within
   a bounded time with an error naming rank 1; the third launch resumes and ends equal to the one-node
   run (the DDP invariance test's tolerance; in practice bit-identical).
3. ZeRO-2 on two processes (DeepSpeed's sharded checkpoint): SIGUSR1 on rank 1 in the first micro-batch
   of a step with accumulation 2; both ranks finish the step, save it and exit 75; the requeued run
   ends bit-identical to an uninterrupted ZeRO-2 run, with the same samples on every rank.
4. The disk fills while a checkpoint is written (a small tmpfs over the checkpoint directory: mounted
   as root, else in a user namespace): the error says so, the previous checkpoint stays complete and
   loadable, and the rerun resumes from it.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

STEPS, EVERY = 12, 5


def _faults(*faults: dict) -> str:
    """A Hydra override adding vt_model.training.faults.FaultInjection with these faults."""
    items = ", ".join("{" + ", ".join(f"{k}: {v}" for k, v in f.items()) + "}" for f in faults)
    return ("+callbacks.faults={_target_: vt_model.training.faults.FaultInjection, "
            "dirpath: ${paths.run_dir}/faults, faults: [" + items + "]}")


def _weights(run_dir):
    from safetensors.torch import load_file

    return load_file(run_dir / "hf_model" / "model.safetensors")


def _steps(run_dir) -> list[int]:
    from vt_model.training.checkpointing import complete_checkpoints

    return [step for step, _ in complete_checkpoints(run_dir / "checkpoints")]


def _keys_by_step(sft, run_dir, rank) -> dict[int, list[str]]:
    """step -> keys a rank trained in it, a rerun's records of a replayed step replacing earlier ones."""
    out: dict[int, list[str]] = {}
    for record in sft.read_jsonl(run_dir / "logs" / f"samples-rank{rank}.jsonl"):
        if record["window_pos"] == 0:
            out[record["step"]] = []
        out[record["step"]] = out.get(record["step"], []) + record["keys"]
    return out


@pytest.mark.slow
def test_signals_and_kills_mid_step_and_mid_write_then_requeues_end_bit_identical(sft, tmp_path):
    straight, run = tmp_path / "straight", tmp_path / "preempted"
    base = [*sft.overrides, "data.num_workers=1", f"trainer.max_steps={STEPS}",
            "batch.micro_batch_per_device=2",
            f"callbacks.checkpoint.every_n_steps={EVERY}", "callbacks.checkpoint.keep_last=null"]
    sft.run_cli([*base, f"hydra.run.dir={straight}"])
    faults = _faults({"step": 3, "at": "backward", "signal": "SIGUSR1"},
                     {"step": 5, "at": "save", "signal": "SIGTERM"},
                     {"step": 10, "at": "save", "signal": "SIGKILL"})
    args = [*base, faults, f"hydra.run.dir={run}"]

    first = sft.run_cli(args, check=False)  # SIGUSR1 during step 3: checkpoint at its end, exit 75
    assert first.returncode == 75, first.stderr[-3000:]
    assert _steps(run) == [3] and max(sft.step_losses(run)) == 3 and not (run / "hf_model").exists()
    second = sft.run_cli(args, check=False)  # SIGTERM while step 5's periodic checkpoint is written
    assert second.returncode == 75, second.stderr[-3000:]
    assert _steps(run) == [3, 5] and max(sft.step_losses(run)) == 5  # stopped there: no step 6
    assert "step-00000003" in second.stdout + second.stderr
    third = sft.run_cli(args, check=False)  # SIGKILL while step 10's checkpoint is written
    assert third.returncode == -signal.SIGKILL
    partial = run / "checkpoints" / ".tmp-step-00000010"
    assert _steps(run) == [3, 5] and partial.is_dir() and not (partial / "meta.json").exists()
    assert max((run / "checkpoints").iterdir(), key=lambda p: p.stat().st_mtime_ns) == partial
    last = sft.run_cli(args)
    assert "step-00000005" in last.stdout + last.stderr  # resumed from the last complete checkpoint

    reference, result = _weights(straight), _weights(run)
    assert reference.keys() == result.keys()
    different = [key for key in reference if not torch.equal(reference[key], result[key])]
    assert not different, different[:5]
    assert sft.step_losses(run) == sft.step_losses(straight)
    keys = _keys_by_step(sft, run, 0)
    assert keys == _keys_by_step(sft, straight, 0) and sorted(keys) == list(range(1, STEPS + 1))
    order = [k for s in range(1, STEPS + 1) for k in keys[s]]
    epoch = sft.num_train_clips
    assert len(set(order[:epoch])) == len(order[:epoch])  # no sample twice, none skipped, in its epoch


# ------------------------------------------------------------------------------------- two nodes

NODE_STEPS, NODE_EVERY = 8, 2
JOB_ID = "4242"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _launch_nodes(sft, args: list[str], tmp_path, name: str, timeout: float = 300) -> list[dict]:
    """One process per "node", with the variables srun sets for task r of 2 tasks on 2 nodes; returns
    per rank: returncode, output, and the time it ended."""
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = {**os.environ, "SLURM_JOB_ID": JOB_ID, "SLURM_JOB_NAME": "vt-two-nodes", "SLURM_NTASKS": "2",
               "SLURM_NNODES": "2", "SLURM_NTASKS_PER_NODE": "1", "SLURM_PROCID": str(rank),
               "SLURM_NODEID": str(rank), "SLURM_LOCALID": "0", "SLURM_NODELIST": "127.0.0.1",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
               "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
               "SCONTROL_LOG": str(tmp_path / "scontrol.log")}
        out = open(tmp_path / f"{name}.rank{rank}.log", "w+")
        proc = subprocess.Popen([sys.executable, "-m", "vt_sft.cli", *args], cwd=sft.root, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        procs.append((proc, out))
    ended: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    try:
        while len(ended) < 2 and time.monotonic() < deadline:
            for rank, (proc, _) in enumerate(procs):
                if rank not in ended and proc.poll() is not None:
                    ended[rank] = time.monotonic()
            time.sleep(0.05)
    finally:
        for proc, _ in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    assert len(ended) == 2, f"{name}: a node did not finish in {timeout} s"
    results = []
    for rank, (proc, out) in enumerate(procs):
        out.seek(0)
        results.append({"returncode": proc.returncode, "output": out.read(), "ended": ended[rank]})
        out.close()
    return results


@pytest.mark.slow
@pytest.mark.distributed
def test_two_nodes_survive_preemption_and_a_lost_rank_and_equal_one_node(sft, tmp_path):
    from vt_model.training.checkpointing import read_meta

    fake = tmp_path / "bin" / "scontrol"
    fake.parent.mkdir()
    fake.write_text('#!/bin/sh\necho "$@" >> "$SCONTROL_LOG"\n')
    fake.chmod(0o755)
    base = [*sft.overrides, f"trainer.max_steps={NODE_STEPS}", "batch.micro_batch_per_device=1",
            f"callbacks.checkpoint.every_n_steps={NODE_EVERY}", "callbacks.checkpoint.keep_last=null",
            "trainer/strategy=ddp", "trainer.strategy.timeout.seconds=60", "callbacks.peers.heartbeat_s=0.5"]
    one_node, two_nodes = tmp_path / "one_node", tmp_path / "two_nodes"
    sft.run_cli([*base, "trainer.devices=2", f"hydra.run.dir={one_node}"])  # Lightning starts rank 1

    nodes = [*base, "trainer.devices=1", "trainer.num_nodes=2", f"hydra.run.dir={two_nodes}",
             _faults({"step": 3, "at": "backward", "signal": "SIGUSR1", "rank": 1},
                     {"step": 6, "at": "backward", "signal": "SIGKILL", "rank": 1})]
    # 1. SIGUSR1 reaches rank 1 only: both ranks stop after step 3, with one checkpoint, and rank 0
    # requeues the job once; Lightning's SLURM auto-requeue (hpc_ckpt_*.ckpt) never runs.
    preempted = _launch_nodes(sft, nodes, tmp_path, "preempted")
    assert [r["returncode"] for r in preempted] == [75, 75], preempted[0]["output"][-3000:]
    assert _steps(two_nodes) == [2, 3]
    assert (tmp_path / "scontrol.log").read_text().splitlines() == [f"requeue {JOB_ID}"]
    assert not list(two_nodes.rglob("hpc_ckpt*"))
    checkpoint = two_nodes / "checkpoints" / "step-00000003"
    assert read_meta(checkpoint)["world_size"] == 2 and read_meta(checkpoint)["num_nodes"] == 2
    for rank in range(2):
        state = torch.load(checkpoint / f"rank-{rank:05d}.pt", weights_only=True)
        placement = (state["rank"], state["node_rank"], state["local_rank"], state["num_nodes"])
        assert placement == (rank, rank, 0, 2)

    # 2. Rank 1 is SIGKILLed in step 6: rank 0 does not hang; it names rank 1 and exits.
    lost = _launch_nodes(sft, nodes, tmp_path, "lost")
    assert lost[1]["returncode"] == -signal.SIGKILL and lost[0]["returncode"] == 1
    assert "RankLostError: rank 1 (node 1, local rank 0" in lost[0]["output"], lost[0]["output"][-3000:]
    assert "step-00000004" in lost[0]["output"]  # where the rerun resumes
    assert lost[0]["ended"] - lost[1]["ended"] < 30
    assert _steps(two_nodes) == [2, 3, 4]

    # 3. The requeued job resumes and ends as the one-node run did.
    resumed = _launch_nodes(sft, nodes, tmp_path, "resumed")
    assert [r["returncode"] for r in resumed] == [0, 0], resumed[0]["output"][-3000:]
    assert "step-00000004" in resumed[0]["output"]
    config = (two_nodes / "config.yaml").read_text()
    assert "world_size: 2" in config and "num_nodes: 2" in config
    one, two = sft.step_losses(one_node), sft.step_losses(two_nodes)
    assert sorted(two) == list(range(1, NODE_STEPS + 1))
    curve = np.array([[one[s], two[s]] for s in range(1, NODE_STEPS + 1)])
    print("two nodes vs one node: max |relative difference| of the loss",
          float(np.max(np.abs(curve[:, 1] / curve[:, 0] - 1))))
    np.testing.assert_allclose(curve[:, 1], curve[:, 0], rtol=2e-5, atol=1e-6)  # the DDP invariance test's
    for name, value in _weights(two_nodes).items():
        torch.testing.assert_close(value, _weights(one_node)[name], rtol=2e-5, atol=1e-6)
    records = {d: {r["step"]: r for r in sft.read_jsonl(d / "logs" / "steps.jsonl")}
               for d in (one_node, two_nodes)}
    assert all(records[two_nodes][s]["samples"] == records[one_node][s]["samples"] == 2
               for s in range(1, NODE_STEPS + 1))  # global batch = micro 1 × accumulation 1 × 2 ranks
    for rank in range(2):  # the same rank reads the same part of the stream on either layout
        assert _keys_by_step(sft, two_nodes, rank) == _keys_by_step(sft, one_node, rank)


# ------------------------------------------------------------------------------------- ZeRO-2

ZERO2_STEPS, ZERO2_PREEMPT_AT = 4, 2


@pytest.mark.slow
@pytest.mark.distributed
def test_a_signal_mid_step_under_zero2_checkpoints_and_the_requeued_run_is_bit_identical(sft, tmp_path):
    straight, run = tmp_path / "straight", tmp_path / "preempted"
    # Accumulation 2: the signal lands in the first micro-batch of a step, the checkpoint must wait for
    # DeepSpeed's optimizer step after the second.
    base = [*sft.overrides, f"trainer.max_steps={ZERO2_STEPS}", "batch.micro_batch_per_device=1",
            "batch.grad_accum=2", "callbacks.checkpoint.every_n_steps=0",
            "callbacks.checkpoint.keep_last=null",
            "trainer/strategy=deepspeed_z2_cpu", "trainer.devices=2", "trainer.strategy.timeout.seconds=120"]
    args = [*base, f"hydra.run.dir={run}",
            _faults({"step": ZERO2_PREEMPT_AT, "at": "backward", "signal": "SIGUSR1", "rank": 1})]

    # The uninterrupted run alongside the preempted one: a launch leaves a core idle for much of its time
    # (rank 1 starts importing only once rank 0 has; start-up, exit), so the two overlap well.
    command = [sys.executable, "-m", "vt_sft.cli", *base, f"hydra.run.dir={straight}"]
    with open(tmp_path / "straight.log", "w+") as log:
        uninterrupted = subprocess.Popen(command, cwd=sft.root, stdout=log, stderr=subprocess.STDOUT)
        try:
            preempted = sft.run_cli(args, check=False)  # rank 1 only is told; both stop after that step
            uninterrupted.wait(300)
        finally:
            uninterrupted.kill()
            uninterrupted.wait()
        log.seek(0)
        assert uninterrupted.returncode == 0, log.read()[-3000:]
    assert preempted.returncode == 75, preempted.stderr[-3000:]
    fired = (run / "faults" / "fault-0-rank1.fired").read_text()
    assert f"SIGUSR1 at backward of step {ZERO2_PREEMPT_AT}" in fired
    assert _steps(run) == [ZERO2_PREEMPT_AT] and max(sft.step_losses(run)) == ZERO2_PREEMPT_AT
    checkpoint = run / "checkpoints" / f"step-{ZERO2_PREEMPT_AT:08d}"
    assert (checkpoint / "model.ckpt").is_dir()  # DeepSpeed's sharded state, not Lightning's one file
    assert not (run / "hf_model").exists()
    resumed = sft.run_cli(args)
    assert f"step-{ZERO2_PREEMPT_AT:08d}" in resumed.stdout + resumed.stderr

    reference, result = _weights(straight), _weights(run)
    assert reference.keys() == result.keys()
    different = [key for key in reference if not torch.equal(reference[key], result[key])]
    assert not different, different[:5]
    assert sft.step_losses(run) == sft.step_losses(straight)
    for rank in range(2):  # every micro-batch of every step once, as in the uninterrupted run
        keys = _keys_by_step(sft, run, rank)
        assert keys == _keys_by_step(sft, straight, rank) and sorted(keys) == list(range(1, ZERO2_STEPS + 1))
        order = [k for s in range(1, ZERO2_STEPS + 1) for k in keys[s]]
        assert len(order) == 2 * ZERO2_STEPS and len(set(order)) == len(order)


# ------------------------------------------------------------------------------------- disk full


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs as the run's checkpoint directory, gone afterwards. As root it is mounted in place;
    otherwise in a user and mount namespace of our own (`unshare --user --map-root-user --mount`, no
    privilege needed where the kernel allows user namespaces), held by a sleeping process: the test
    reaches the tmpfs through that process's view of the file system, /proc/<pid>/root, and meets the
    same ENOSPC."""
    mount = tmp_path / "run" / "checkpoints"
    mount.mkdir(parents=True)
    command = ["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mount)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode == 0:
        try:
            yield mount
        finally:
            subprocess.run(["umount", "-l", str(mount)], check=False)
        return
    try:
        holder = subprocess.Popen(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c",
                                   f"{shlex.join(command)} && echo mounted && exec sleep 3600"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        pytest.skip(f"cannot mount a tmpfs: not root ({done.stderr.strip()}) and no unshare ({exc})")
    try:
        if holder.stdout.readline().strip() != "mounted":
            holder.kill()
            pytest.skip(f"cannot mount a tmpfs: not root ({done.stderr.strip()}) and no user namespace "
                        f"({holder.communicate()[1].strip()})")
        yield Path(f"/proc/{holder.pid}/root") / mount.relative_to(mount.anchor)
    finally:
        holder.kill()  # the last process of the namespace: its tmpfs goes with it
        holder.wait()


@pytest.mark.slow
def test_a_full_disk_during_a_checkpoint_keeps_the_previous_one_and_says_so(sft, small_disk):
    from vt_model.training.checkpointing import CheckpointWriteError
    from vt_sft.cli import train

    run_dir = small_disk.parent

    def run(steps):
        return train(sft.compose([*sft.overrides, f"trainer.max_steps={steps}",
                                  "batch.micro_batch_per_device=2", "callbacks.checkpoint.every_n_steps=2",
                                  "callbacks.checkpoint.keep_last=null",
                                  "export=false", f"paths.run_dir={run_dir}"]))

    run(2)
    first = small_disk / "step-00000002"
    size = sum(f.stat().st_size for f in first.rglob("*"))
    free = os.statvfs(small_disk).f_bavail * os.statvfs(small_disk).f_frsize
    filler = small_disk / "filler"
    with open(filler, "wb") as fh:  # leave room for half a checkpoint
        fh.write(b"\0" * (free - size // 2))

    with pytest.raises(CheckpointWriteError) as failed:
        run(4)
    message = str(failed.value)
    assert "checkpoint of step 4" in message, message
    assert "the disk is full" in message or "no space is left" in message, message
    assert "step-00000002, is intact" in message
    assert _steps(run_dir) == [2] and not list(small_disk.glob(".tmp-*"))  # the partial write is gone
    torch.load(first / "model.ckpt", weights_only=True)  # still loadable

    filler.unlink()
    summary = run(4)
    assert summary["global_step"] == 4 and summary["resumed_from"].endswith("step-00000002")
    assert json.loads((small_disk / "step-00000004" / "meta.json").read_text())["step"] == 4
