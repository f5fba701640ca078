"""vt_model.training.resilience and the checkpoint completeness rule, in one process and without a trainer:
preemption signals are only recorded by the handler, handed over after the checkpoint (to the handler
that owned the signal before, else `scontrol requeue` on rank 0), and given back when no step boundary
comes within the grace period; a checkpoint counts only when its meta.json and files agree; a rank whose
heartbeat stopped, or whose process is gone, is named; a killed rank's forked workers die with it, so
its connections close at once. The runs with real processes are in vt-sft's
and vt-grpo's test_preemption.py."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest

pytest.importorskip("lightning")

from vt_model.training.checkpointing import complete_checkpoints, find_latest_checkpoint  # noqa: E402
from vt_model.training.resilience import (  # noqa: E402
    PeerWatch,
    Preemption,
    children_die_with_this_process,
)

ONE_RANK = SimpleNamespace(world_size=1)


@pytest.fixture
def previous_handler():
    """A Python handler on SIGUSR1 and SIGUSR2 (as submitit's would be), recording its calls."""
    calls: list[int] = []
    before = {s: signal.signal(s, lambda signum, frame: calls.append(signum))
              for s in (signal.SIGUSR1, signal.SIGUSR2)}
    yield calls
    for s, handler in before.items():
        signal.signal(s, handler)


def test_the_signal_is_recorded_then_handed_to_the_previous_handler_after_the_checkpoint(previous_handler):
    preemption = Preemption(signals=["USR1", "SIGUSR2"], grace_period_s=60)
    preemption.install()
    try:
        assert not preemption.agree(ONE_RANK)
        os.kill(os.getpid(), signal.SIGUSR1)
        assert preemption.requested and previous_handler == []  # only recorded: nothing else yet
        assert preemption.agree(ONE_RANK) and preemption.agreed == {signal.SIGUSR1}
        preemption.saved(7)
        with pytest.raises(SystemExit) as stopped:
            preemption.exit(global_rank=0)
        assert stopped.value.code == 75
        assert previous_handler == [signal.SIGUSR1]  # submitit's handler would requeue here
    finally:
        preemption.restore()
    os.kill(os.getpid(), signal.SIGUSR2)  # given back
    assert previous_handler == [signal.SIGUSR1, signal.SIGUSR2]


def test_without_a_previous_handler_rank_zero_requeues_the_slurm_job(tmp_path, monkeypatch):
    log = tmp_path / "scontrol.log"
    fake = tmp_path / "bin" / "scontrol"
    fake.parent.mkdir()
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    before = signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # no Python handler to hand over to
    try:
        for rank, signum in ((1, signal.SIGUSR1), (0, signal.SIGTERM), (0, signal.SIGUSR1)):
            preemption = Preemption(signals=["SIGUSR1", "SIGTERM"], grace_period_s=60)
            preemption.install()
            preemption.received[signum] = time.time()  # as the handler records it
            preemption.agree(ONE_RANK)
            with pytest.raises(SystemExit):
                preemption.exit(global_rank=rank)
            preemption.restore()
    finally:
        signal.signal(signal.SIGUSR1, before)
    # Rank 1 never requeues; SIGTERM (a preemption SLURM requeues itself, or a cancel) is not requeued.
    assert log.read_text().splitlines() == ["requeue 4242"]


def test_without_a_step_boundary_in_the_grace_period_the_signal_goes_back(previous_handler):
    preemption = Preemption(signals=["SIGUSR1"], grace_period_s=0.5)
    preemption.install()
    try:
        started = time.monotonic()
        os.kill(os.getpid(), signal.SIGUSR1)
        while not previous_handler and time.monotonic() - started < 5:
            time.sleep(0.01)  # a step that never ends
        assert previous_handler == [signal.SIGUSR1]  # re-raised for the previous handler: it requeues
        assert 0.4 < time.monotonic() - started < 2.0
    finally:
        preemption.restore()


def test_a_forked_child_ignores_the_inherited_handler():
    preemption = Preemption(signals=["SIGUSR1"])
    preemption.install()
    try:
        pid = os.fork()
        if pid == 0:  # a DataLoader worker: the signal must neither kill it nor matter
            os.kill(os.getpid(), signal.SIGUSR1)
            os._exit(3 if preemption.requested else 0)
        assert os.waitpid(pid, 0)[1] == 0
        assert not preemption.requested
    finally:
        preemption.restore()


def _checkpoint(root, step, files, meta=True, sizes=None):
    path = root / f"step-{step:08d}"
    path.mkdir(parents=True)
    for name, data in files.items():
        (path / name).write_bytes(data)
    if meta:
        recorded = sizes if sizes is not None else {n: len(d) for n, d in files.items()}
        (path / "meta.json").write_text(json.dumps({"format": "vt-ckpt/2", "step": step, "files": recorded}))
    return path


def test_only_checkpoints_whose_files_match_their_meta_are_complete(tmp_path):
    root = tmp_path / "checkpoints"
    good = _checkpoint(root, 2, {"model.ckpt": b"x" * 100, "rank-00000.pt": b"r" * 10})
    _checkpoint(root, 4, {"model.ckpt": b"x" * 40, "rank-00000.pt": b"r" * 10},
                sizes={"model.ckpt": 100, "rank-00000.pt": 10})  # cut short after its meta was written
    _checkpoint(root, 6, {"model.ckpt": b"x" * 100}, sizes={"model.ckpt": 100, "rank-00000.pt": 10})
    _checkpoint(root, 8, {"model.ckpt": b"x" * 100}, meta=False)
    (root / ".tmp-step-00000010").mkdir()  # being written
    (root / ".tmp-step-00000010" / "model.ckpt").write_bytes(b"x" * 7)
    assert [step for step, _ in complete_checkpoints(root)] == [2]
    assert find_latest_checkpoint(root) == good
    newest = max(root.iterdir(), key=lambda p: p.stat().st_mtime_ns)
    assert newest != good  # a loader taking the newest directory would load a partial checkpoint


def test_peer_watch_names_the_rank_whose_heartbeat_stopped_or_whose_process_is_gone():
    import torch.distributed as dist

    server = dist.TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    here = socket.gethostname()
    peers = [{"rank": 0, "node_rank": 0, "local_rank": 0, "host": here, "pid": os.getpid()},
             {"rank": 1, "node_rank": 1, "local_rank": 0, "host": "another-node", "pid": 1},
             {"rank": 2, "node_rank": 1, "local_rank": 1, "host": here, "pid": int(dead.stdout)}]
    watches = [PeerWatch(heartbeat_s=0.1) for _ in range(2)]
    for rank, watch in enumerate(watches):
        watch.start(dist.TCPStore("127.0.0.1", server.port, is_master=False), rank, peers)
    try:
        assert watches[0].lost_ranks() == {2: f"its process (pid {int(dead.stdout)}) is gone"}
        watches[1].stop()
        started = time.monotonic()
        lost = watches[0].lost_ranks()
        assert sorted(lost) == [1, 2] and "heartbeat stopped" in lost[1]
        assert time.monotonic() - started < 2.0
        assert "rank 1 (node 1, local rank 0, pid 1 on another-node)" in watches[0].explain(
            lost, RuntimeError("Connection reset by peer"), None)
    finally:
        for watch in watches:
            watch.stop()


def test_a_killed_rank_takes_its_forked_worker_and_so_its_connections_with_it():
    # A DataLoader worker forked by a rank holds copies of the rank's sockets. Left to torch, an orphaned
    # worker exits only when its watchdog notices, up to 5 s later: until then its peer's collectives see
    # the connection open (the soak's slow detections, experiments/perf/README.md).
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    ready, tell = os.pipe()
    rank = os.fork()
    if rank == 0:  # a rank connected to its peer (this test), forking a worker that waits for requests
        try:
            _connection = socket.create_connection(listener.getsockname())  # held open
            children_die_with_this_process()
            worker = os.fork()
            if worker == 0:
                time.sleep(30)
                os._exit(0)
            os.write(tell, f"{worker}\n".encode())
            time.sleep(30)
        finally:
            os._exit(1)
    os.close(tell)
    peer, _ = listener.accept()
    worker = int(os.read(ready, 64))
    try:
        os.kill(rank, signal.SIGKILL)
        os.waitpid(rank, 0)
        peer.settimeout(3)
        started = time.monotonic()
        assert peer.recv(1) == b""  # closed: no process holds the rank's end of the connection any more
        assert time.monotonic() - started < 1.0
    finally:
        try:
            os.kill(worker, signal.SIGKILL)  # only there if the test failed
        except ProcessLookupError:
            pass
        for closable in (peer, listener):
            closable.close()
        os.close(ready)
