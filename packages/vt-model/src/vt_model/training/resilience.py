"""What makes a training run survive what clusters do: a preemption signal turns into a checkpoint at the
next step boundary and an exit that gets the job requeued (`Preemption`), a lost rank is named within a
bounded time instead of hanging the others (`PeerWatch`, `RankLostError`), and `fit` runs
`trainer.fit` with both (the `vt-sft` and `vt-grpo` apps call it).

Preemption. SLURM warns a job before it ends it: `--signal=USR1@120` (Lightning's `SLURMEnvironment`),
submitit's `USR2@<signal_delay_s>` (our `hydra/launcher=slurm`), and `SIGTERM` on preemption or at the
time limit, each followed by SIGKILL once the grace period is over. The handler only records the signal
(no I/O inside a signal handler); at every optimizer-step boundary the ranks agree with one all-reduce of
that flag, so all of them stop at the same step, save one complete checkpoint (`AtomicCheckpoint`) and
leave `trainer.fit`. `fit` then hands over:
- to the handler that owned the signal before ours, when it is a Python one: submitit's requeues the job
  (rank 0) with its own time-out count;
- otherwise, for a requeue signal (USR1/USR2) under SLURM, rank 0 runs `scontrol requeue $SLURM_JOB_ID`;
  SIGTERM is not requeued by us (SLURM requeues a preempted job itself, and a cancelled job must stay
  cancelled);
and exits with `exit_code` (75, EX_TEMPFAIL: "checkpoint saved, run again to continue").

Our handlers are installed before `trainer.fit`, so Lightning's `SLURMEnvironment` finds SIGUSR1 taken
and skips its own auto-requeue (which would save a mid-step `hpc_ckpt_*.ckpt` from inside the handler and
requeue at once). Lightning also composes its SIGTERM handler with ours in `trainer.fit`; that one
broadcasts from inside the handler and raises `SIGTERMException` at the next batch, so the checkpoint
callback re-installs ours at `on_train_start` (`Preemption.install`), and Lightning restores them at its
teardown.

If no step boundary comes within the grace period (a step longer than the grace), there is no new
checkpoint to save: shortly before the grace period ends the watchdog steps aside, restores the signal's
previous handler and raises the signal again, so the launcher does what it would have done without us
(submitit still requeues; the rerun resumes from the last periodic checkpoint).

Lost ranks. With gloo a killed peer closes its sockets and the next collective fails at once; with NCCL
a collective waits up to the process group's timeout (`trainer.strategy.timeout`, bounded in
conf/trainer/strategy/*.yaml). Either way the failing rank's error does not say which rank went away.
`PeerWatch` keeps a heartbeat counter per rank in a store next to the process group's (a `TCPStore`
client of MASTER_ADDR:MASTER_PORT); when `trainer.fit` fails, the ranks whose counter stopped, or whose
process is gone on this host, are named in a `RankLostError`. A killed rank's connections close only
when no process holds them: its forked DataLoader workers hold copies, and torch's worker notices its
parent is gone only between batches, after waiting up to 5 s for the next request. So during `fit` the
children a rank forks die with it (`children_die_with_this_process`), and the others notice at once.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from datetime import timedelta
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback

log = logging.getLogger(__name__)

EX_TEMPFAIL = 75  # sysexits.h: a temporary failure; the user is invited to retry
# The watchdog steps aside this long before the grace period ends (at least 5 s), leaving the previous
# handler time to requeue.
STEP_ASIDE_MARGIN = 0.1
HEARTBEAT_KEY = "vt/heartbeat/{rank}"


def collective_timeout(seconds: float) -> timedelta:
    """The strategies' collective timeout from a config value in seconds (a plain function, so config
    checks can bind its signature: `datetime.timedelta` has none to inspect)."""
    if not seconds > 0:
        raise ValueError(f"a collective timeout must be > 0 seconds, got {seconds}")
    return timedelta(seconds=float(seconds))


def signal_number(sig: str | int | signal.Signals) -> signal.Signals:
    """`SIGUSR1`, `USR1`, 10 or signal.SIGUSR1 -> signal.SIGUSR1."""
    if isinstance(sig, int):
        return signal.Signals(sig)
    name = str(sig).upper()
    name = name if name.startswith("SIG") else f"SIG{name}"
    try:
        return signal.Signals[name]
    except KeyError:
        raise ValueError(f"unknown signal {sig!r}") from None


def slurm_job_id() -> str | None:
    """The id `scontrol requeue` takes: `<array job>_<task>` for an array task, else SLURM_JOB_ID."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array is not None and "SLURM_ARRAY_TASK_ID" in os.environ:
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


# ------------------------------------------------------------------------------------------ preemption


class Preemption:
    """Signals that ask for a checkpoint at the next step boundary and an exit (module docstring).

    signals: the signals to catch. grace_period_s: seconds between the first signal and SIGKILL (SLURM's
    `--signal=...@<s>`, submitit's `signal_delay_s`); a checkpoint that takes longer is reported, and
    without a step boundary in time the watchdog steps aside. exit_code: the exit status after the
    preemption checkpoint. requeue_signals: the signals after which rank 0 requeues the SLURM job itself
    when no earlier Python handler owned the signal (`requeue: false` never requeues).
    """

    def __init__(self, signals: Iterable[str | int] = ("SIGUSR1", "SIGUSR2", "SIGTERM"),
                 grace_period_s: float = 120.0, exit_code: int = EX_TEMPFAIL,
                 requeue_signals: Iterable[str | int] = ("SIGUSR1", "SIGUSR2"), requeue: bool = True):
        if grace_period_s <= 0:
            raise ValueError("grace_period_s must be > 0")
        self.signals = [signal_number(s) for s in signals]
        self.grace_period_s = float(grace_period_s)
        self.exit_code = int(exit_code)
        self.requeue_signals = {signal_number(s) for s in requeue_signals}
        self.requeue = requeue
        self.received: dict[int, float] = {}  # signal -> time it first arrived
        self.longest_save_s = 0.0
        self._pid = os.getpid()
        self._previous: dict[int, Any] = {}
        self._wake = threading.Event()  # a signal arrived
        self._settled = threading.Event()  # the checkpoint is saved, or we stepped aside, or we are done
        self._saving = threading.Event()
        self._watchdog: threading.Thread | None = None
        self._stepped_aside = False
        self.agreed: set[int] = set()  # the signals some rank received (after `agree`)

    # -- handlers ----------------------------------------------------------------------------------
    def install(self) -> None:
        """Put our handler on every signal (main thread only). The first call remembers the handlers it
        replaces, for the hand-over; later calls (at on_train_start) only take the signals back from
        Lightning's handlers."""
        if threading.current_thread() is not threading.main_thread():
            log.warning("preemption signals not handled: install() runs outside the main thread")
            return
        first = not self._previous
        for signum in self.signals:
            current = signal.getsignal(signum)
            if first:
                # Lightning's composed handlers are its own business (restored at its teardown), never ours
                # to call: they broadcast from inside the handler.
                lightning = type(current).__module__.startswith("lightning")
                self._previous[signum] = signal.SIG_DFL if lightning else current
            if current != self._on_signal:
                signal.signal(signum, self._on_signal)
        if self._watchdog is None:
            self._pid = os.getpid()
            self._watchdog = threading.Thread(target=self._watch, name="vt-preemption-watchdog", daemon=True)
            self._watchdog.start()

    def restore(self) -> None:
        """Give every signal back to the handler it had before `install`, and stop the watchdog."""
        self._settled.set()
        self._wake.set()
        if threading.current_thread() is threading.main_thread():
            for signum, handler in self._previous.items():
                if signal.getsignal(signum) == self._on_signal:
                    signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}
        self._watchdog = None

    def _on_signal(self, signum: int, frame: Any) -> None:
        # Only record (a handler may interrupt a write or hold a lock). A forked DataLoader worker inherits
        # this handler; it has nothing to save.
        if os.getpid() != self._pid:
            return
        if self._stepped_aside:
            self._pass_on(signum, frame)
            return
        self.received.setdefault(signum, time.time())
        self._wake.set()

    @property
    def requested(self) -> bool:
        return bool(self.received)

    def describe(self) -> str:
        """The signals this rank received, else those another rank did."""
        here = sorted(self.received, key=self.received.get)
        if here:
            return ", ".join(signal.Signals(s).name for s in here)
        return "on another rank: " + ", ".join(signal.Signals(s).name for s in sorted(self.agreed))

    # -- the step boundary -------------------------------------------------------------------------
    def agree(self, trainer) -> bool:
        """Collective: whether any rank received a signal (one all-reduce of a flag per signal; every rank
        calls it at every optimizer-step boundary, so all of them stop at the same step). The signals
        received anywhere are kept in `agreed`: rank 0 requeues even when only another rank was told."""
        local = [1.0 if signum in self.received else 0.0 for signum in self.signals]
        if trainer.world_size > 1:
            import torch

            flags = torch.tensor(local, device=trainer.strategy.root_device)
            local = trainer.strategy.reduce(flags, reduce_op="sum").tolist()
        self.agreed = {signum for signum, flag in zip(self.signals, local, strict=True) if flag > 0}
        return bool(self.agreed)

    def saving(self, active: bool) -> None:
        """Called around every checkpoint write: the watchdog never steps aside in the middle of one."""
        (self._saving.set if active else self._saving.clear)()

    def note_save(self, seconds: float, step: int) -> None:
        """Record a checkpoint's write time; warn when it would not fit in the grace period."""
        self.longest_save_s = max(self.longest_save_s, seconds)
        if seconds > 0.5 * self.grace_period_s:
            log.warning("checkpoint of step %d took %.1f s, over half the %.0f s grace period: a preemption "
                        "checkpoint may not finish in time (raise grace_period_s and the launcher's "
                        "signal delay together)", step, seconds, self.grace_period_s)

    def saved(self, step: int) -> None:
        self._settled.set()
        log.warning("preempted (%s): checkpoint of step %d saved; exiting with %d to be requeued",
                    self.describe(), step, self.exit_code)

    # -- after trainer.fit -------------------------------------------------------------------------
    def exit(self, global_rank: int) -> None:
        """Hand the signals some rank received over (module docstring); raise SystemExit(exit_code)."""
        self._settled.set()
        signals = sorted(self.agreed | set(self.received), key=lambda s: self.received.get(s, float("inf")))
        handed = False
        for signum in signals:
            previous = self._previous.get(signum)
            if callable(previous):
                log.info("handing %s to the handler installed before ours (%r)", signal.Signals(signum).name,
                         previous)
                handed = handed or signum in self.requeue_signals
                previous(signum, None)  # submitit's requeues (rank 0) and exits
        if not handed and self.requeue and self.requeue_signals & set(signals):
            self.request_requeue(global_rank)
        raise SystemExit(self.exit_code)

    @staticmethod
    def request_requeue(global_rank: int) -> bool:
        """Rank 0 under SLURM: `scontrol requeue <job>`. Returns whether SLURM accepted it."""
        job = slurm_job_id()
        if global_rank != 0 or job is None:
            if job is None and global_rank == 0:
                log.info("not under SLURM: nothing to requeue; run the same command again to resume")
            return False
        try:
            result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.error("could not requeue SLURM job %s: %s", job, exc)
            return False
        if result.returncode != 0:
            log.error("scontrol requeue %s failed (%d): %s", job, result.returncode, result.stderr.strip())
            return False
        log.warning("requeued SLURM job %s", job)
        return True

    # -- the grace period --------------------------------------------------------------------------
    def _watch(self) -> None:
        self._wake.wait()
        if self._settled.is_set() or not self.received:
            return
        first = min(self.received.values())
        log.warning("received %s: every rank saves a checkpoint at the next step boundary (grace period "
                    "%.0f s)", self.describe(), self.grace_period_s)
        margin = max(5.0, STEP_ASIDE_MARGIN * self.grace_period_s) if self.grace_period_s > 10 else (
            STEP_ASIDE_MARGIN * self.grace_period_s)
        if self._settled.wait(max(0.0, first + self.grace_period_s - margin - time.time())):
            return
        if self._saving.is_set():  # let a write in progress finish: stepping aside now would waste it
            self._settled.wait(max(0.0, first + self.grace_period_s - time.time()))
            if self._settled.is_set():
                return
        self.step_aside()

    def step_aside(self) -> None:
        """No checkpoint in the grace period: raise the signals again, for their previous handlers."""
        log.error("no step boundary within the %.0f s grace period: no preemption checkpoint; handing %s "
                  "back to its previous handler (a rerun resumes from the last periodic checkpoint)",
                  self.grace_period_s, self.describe())
        self._settled.set()
        self._stepped_aside = True
        received = sorted(self.received, key=self.received.get)
        if self.requeue and self.requeue_signals & set(received) and not any(
                callable(self._previous.get(s)) for s in received):
            self.request_requeue(_launch_rank())
        for signum in received:
            # Handlers run in the main thread: re-delivered, the signal reaches `_pass_on` there.
            os.kill(os.getpid(), signum)

    def _pass_on(self, signum: int, frame: Any) -> None:
        """What the signal would have done without us: the previous Python handler, or the default action."""
        previous = self._previous.get(signum, signal.SIG_DFL)
        if callable(previous):
            previous(signum, frame)
        elif previous != signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)


def _launch_rank() -> int:
    for key in ("RANK", "SLURM_PROCID"):
        if key in os.environ:
            return int(os.environ[key])
    return 0


# ------------------------------------------------------------------------------------------- lost ranks


class RankLostError(RuntimeError):
    """A collective failed because another rank went away (its process died or stopped answering)."""


def _process_alive(pid: int) -> bool:
    """Whether a process of this host runs (a zombie, killed but not yet reaped, counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in ("Z", "X")


class PeerWatch(Callback):
    """Heartbeats of every rank, and the names of the ranks that went away when `trainer.fit` fails.

    At fit start (world size > 1) the ranks exchange who they are (rank, node, local rank, host, pid) and
    each starts a thread adding 1 to its counter in the rendezvous store every `heartbeat_s` seconds.
    `lost_ranks()` then names the ranks whose process is gone on this host at once, and the others whose
    counter did not move for 3 heartbeats; an unreachable store means its host, rank 0, is gone.
    """

    def __init__(self, heartbeat_s: float = 2.0):
        if heartbeat_s <= 0:
            raise ValueError("heartbeat_s must be > 0")
        self.heartbeat_s = float(heartbeat_s)
        self.peers: list[dict[str, Any]] = []
        self.rank = 0
        self.store: Any = None
        self.store_address = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def on_fit_start(self, trainer, pl_module) -> None:
        if trainer.world_size == 1:
            return
        import torch.distributed as dist

        me = {"rank": trainer.global_rank, "node_rank": trainer.node_rank, "local_rank": trainer.local_rank,
              "host": socket.gethostname(), "pid": os.getpid()}
        gathered: list[Any] = [None] * trainer.world_size
        dist.all_gather_object(gathered, me)
        self.start(connect_store(timeout_s=max(10.0, 3 * self.heartbeat_s)), trainer.global_rank, gathered)

    def start(self, store: Any, rank: int, peers: list[dict[str, Any]]) -> None:
        """Beat for `rank` into `store` from a daemon thread (what on_fit_start does; tests call it)."""
        self.store, self.rank, self.peers = store, rank, list(peers)
        self.store_address = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        self._stop.clear()
        self._beat()
        self._thread = threading.Thread(target=self._run, name="vt-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        self.store.add(HEARTBEAT_KEY.format(rank=self.rank), 1)

    def _run(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._beat()
            except Exception:  # the store's host is gone: lost_ranks() will say so
                return

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.heartbeat_s + 5)
            self._thread = None

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self.stop()

    def lost_ranks(self) -> dict[int, str]:
        """rank -> why it counts as lost (empty: every other rank is alive). Takes up to 3 heartbeats."""
        if not self.peers or self.store is None:
            return {}
        others = [p for p in self.peers if p["rank"] != self.rank]
        here = socket.gethostname()
        lost = {p["rank"]: f"its process (pid {p['pid']}) is gone" for p in others
                if p["host"] == here and not _process_alive(p["pid"])}
        try:
            before = {p["rank"]: self._count(p["rank"]) for p in others if p["rank"] not in lost}
            if before:
                time.sleep(3 * self.heartbeat_s)
            for rank, count in before.items():
                if self._count(rank) == count:
                    lost[rank] = f"its heartbeat stopped (no beat in {3 * self.heartbeat_s:.0f} s)"
        except Exception as exc:
            if 0 != self.rank:
                lost.setdefault(0, f"the rendezvous store it hosts ({self.store_address}) no longer answers "
                                   f"({type(exc).__name__}); under torchrun the store is the node-0 agent's")
        return dict(sorted(lost.items()))

    def _count(self, rank: int) -> int:
        return int(self.store.add(HEARTBEAT_KEY.format(rank=rank), 0))

    def describe(self, rank: int) -> str:
        peer = next((p for p in self.peers if p["rank"] == rank), None)
        if peer is None:
            return f"rank {rank}"
        return (f"rank {rank} (node {peer['node_rank']}, local rank {peer['local_rank']}, pid {peer['pid']} "
                f"on {peer['host']})")

    def explain(self, lost: dict[int, str], error: BaseException, latest: Path | None) -> str:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        names = "; ".join(f"{self.describe(rank)} is lost: {why}" for rank, why in lost.items())
        resume = (f"the latest complete checkpoint is {latest.name}" if latest is not None
                  else "no complete checkpoint yet")
        return (f"{names}. Rank {self.rank} stopped because a collective failed: {type(error).__name__}: "
                f"{first_line[:300]}. See the lost rank's own log for why it ended; {resume}, and running "
                "the same command again resumes from it.")


def connect_store(timeout_s: float = 30.0) -> Any:
    """A client of the process group's rendezvous store (MASTER_ADDR:MASTER_PORT)."""
    import torch.distributed as dist

    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                         timeout=timedelta(seconds=timeout_s), wait_for_workers=False)


# ------------------------------------------------------------------------------------- forked children

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Read in a child right after a fork: whether to ask for PR_SET_PDEATHSIG, the parent, the fork's thread.
_orphans: dict[str, Any] = {"on": False, "prctl": None, "parent": 0, "main_thread": False}


def _before_fork() -> None:
    _orphans["parent"] = os.getpid()
    _orphans["main_thread"] = threading.current_thread() is threading.main_thread()


def _after_fork_in_child() -> None:
    # The signal goes when the forking *thread* ends: only the main thread lives as long as the process.
    if not (_orphans["on"] and _orphans["main_thread"]):
        return
    _orphans["prctl"](_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    if os.getppid() != _orphans["parent"]:  # the parent died before the prctl took effect
        os._exit(1)


def children_die_with_this_process(enabled: bool = True) -> None:
    """While enabled, a child this process forks from its main thread (a DataLoader worker) is killed
    when this process dies (Linux's PR_SET_PDEATHSIG; elsewhere nothing changes). An orphaned worker of
    a SIGKILLed rank would otherwise keep that rank's sockets open (gloo's connections, the rendezvous
    store) until torch's worker watchdog notices, 0-5 s later or more: the other ranks' collectives would
    wait that long to fail. Children started by `subprocess` are not affected."""
    if not sys.platform.startswith("linux"):
        return
    if _orphans["prctl"] is None:
        _orphans["prctl"] = ctypes.CDLL(None, use_errno=True).prctl  # loaded here, not in the child
        os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    _orphans["on"] = enabled


# ------------------------------------------------------------------------------------------------- fit


def fit(trainer, module, datamodule=None, ckpt_path: str | os.PathLike | None = None, **kwargs: Any) -> None:
    """`trainer.fit` with the preemption and lost-rank behaviour above. The trainer's `AtomicCheckpoint`
    (if any) brings the `Preemption`, its `PeerWatch` callback (if any) the heartbeats. After a
    preemption checkpoint this raises SystemExit(preemption.exit_code); a failure caused by a lost rank
    becomes a `RankLostError` naming it."""
    from vt_model.training.checkpointing import AtomicCheckpoint, find_latest_checkpoint

    checkpoint = next((c for c in trainer.callbacks if isinstance(c, AtomicCheckpoint)), None)
    preemption = checkpoint.preemption if checkpoint is not None else None
    watch = next((c for c in trainer.callbacks if isinstance(c, PeerWatch)), None)
    if preemption is not None:
        preemption.install()
    try:
        children_die_with_this_process()  # the DataLoader workers forked in trainer.fit
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, **kwargs)
        except Exception as exc:
            lost = watch.lost_ranks() if watch is not None else {}
            if lost:
                latest = find_latest_checkpoint(checkpoint.dirpath) if checkpoint is not None else None
                raise RankLostError(watch.explain(lost, exc, latest)) from exc
            raise
        finally:
            if watch is not None:
                watch.stop()
        if checkpoint is not None and checkpoint.preempted_step is not None:
            preemption.exit(trainer.global_rank)
    finally:
        children_die_with_this_process(False)
        if preemption is not None:
            preemption.restore()
