"""Atomic checkpoints with exact resume: model, optimizer, scheduler, loop counters (Lightning's own
checkpoint), plus per-rank RNG states and data-stream positions (ours).

Layout of `dirpath` (one run's checkpoints):

    step-00000100/               a complete checkpoint (it has meta.json)
        model.ckpt               Lightning's checkpoint: a file (single device, DDP), a directory (DeepSpeed)
        rank-00000.pt ...        per global rank: RNG states (torch, numpy, python, CUDA), the stream
                                 position, and where the rank ran (node rank, local rank, host)
        meta.json                written last: step, world size, nodes, and the size of every file above;
                                 its presence (with those files at those sizes) marks the checkpoint complete
    .tmp-step-00000200/          being written; renamed to step-00000200 only once every rank is done

Writing is atomic: every rank writes into the temporary directory, a barrier, then rank 0 writes
meta.json and renames the directory (a rename within one filesystem is atomic). A process killed at any
moment leaves either the previous complete checkpoint or the new one, never a half-written one that
`resume=auto` could pick. Old complete checkpoints beyond `keep_last` are deleted after the rename.
`dirpath` must be one filesystem that every rank sees (as Lightning's and DeepSpeed's checkpoints need).
A directory whose files do not match its meta.json (copied or synced in part) is skipped with a warning.

Nodes. Data positions and RNG states belong to global ranks, so a checkpoint needs the same world size to
resume, not the same split into nodes (2 nodes × 4 and 1 node × 8 read each other's checkpoints).

A write that fails (the disk or quota is full, ...) raises `CheckpointWriteError` on the rank it failed on:
it says what happened, the free space left, and which complete checkpoint a rerun resumes from; the
partial directory is removed to give the space back. The other ranks then fail at their next collective
(vt_model.training.resilience names the lost rank).

Preemption (vt_model.training.resilience.Preemption): at every optimizer-step boundary the ranks agree
whether a preemption signal arrived; if so, each saves this step's checkpoint (unless the periodic one
just did) and the run stops there, `preempted_step` telling the app to exit for a requeue.

Loading: Lightning's checkpoint loads with `torch.load(weights_only=True)` (the app passes
`weights_only=True` to `Trainer.fit`; everything we put in it is plain tensors, numbers and strings), and
so do the per-rank files. The one exception is DeepSpeed: its engine reads its own files with
`weights_only=False` internally, whatever Lightning is told.

Checkpoints are taken at optimizer-step boundaries, in `on_train_batch_end`, the point Lightning's own
ModelCheckpoint uses, so Lightning's loop restoration treats them as it treats its own.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import re
import shutil
import socket
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback

log = logging.getLogger(__name__)

MODEL_CKPT = "model.ckpt"
META = "meta.json"
FORMAT = "vt-ckpt/2"  # /2 adds num_nodes and the file sizes to meta.json; /1 still loads
STEP_DIR = re.compile(r"^step-(\d{8})$")
RESUME_OFF = (None, False, "null", "none", "None", "off", "")


# ------------------------------------------------------------------------------------------ RNG states


def capture_rng_state() -> dict[str, Any]:
    """torch (CPU and every CUDA device), numpy's legacy global and python's RNG, as tensors, numbers and
    tuples only (so the file loads with weights_only=True)."""
    np_state = np.random.get_state(legacy=False)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"bit_generator": np_state["bit_generator"],
                  "key": torch.from_numpy(np.asarray(np_state["state"]["key"], dtype=np.int64)),
                  "pos": int(np_state["state"]["pos"]),
                  "has_gauss": int(np_state["has_gauss"]), "gauss": float(np_state["gauss"])},
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state({"bit_generator": np_state["bit_generator"],
                         "state": {"key": np_state["key"].numpy().astype(np.uint32), "pos": np_state["pos"]},
                         "has_gauss": np_state["has_gauss"], "gauss": np_state["gauss"]})
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------ finding checkpoints


def step_dir_name(step: int) -> str:
    return f"step-{step:08d}"


def rank_file_name(rank: int) -> str:
    return f"rank-{rank:05d}.pt"


def checkpoint_files(path: Path) -> dict[str, int]:
    """Relative path -> size of every file under a checkpoint directory but meta.json."""
    return {f.relative_to(path).as_posix(): f.stat().st_size for f in sorted(path.rglob("*"))
            if f.is_file() and f.name != META}


def incomplete_reason(path: Path) -> str | None:
    """Why `path` is not a complete checkpoint (None: it is): no meta.json, or files that do not match
    the sizes meta.json recorded (meta of format vt-ckpt/1 recorded none)."""
    try:
        meta = read_meta(path)
    except FileNotFoundError:
        return f"no {META}"
    except (OSError, ValueError) as exc:
        return f"unreadable {META}: {exc}"
    expected = meta.get("files")
    if expected is None:
        return None
    actual = checkpoint_files(path)
    wrong = [name for name, size in expected.items() if actual.get(name) != size]
    if wrong:
        return f"{len(wrong)} file(s) missing or of another size than {META} says (first: {wrong[0]})"
    return None


def complete_checkpoints(dirpath: str | os.PathLike) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints in `dirpath`, oldest first."""
    root = Path(dirpath)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        match = STEP_DIR.match(child.name)
        if not match or not (child / META).is_file():
            continue  # being written (.tmp-*), being deleted (.del-*), or cut short before meta.json
        reason = incomplete_reason(child)
        if reason is None:
            found.append((int(match.group(1)), child))
        else:
            log.warning("skipping checkpoint %s: %s", child, reason)
    return sorted(found)


def find_latest_checkpoint(dirpath: str | os.PathLike) -> Path | None:
    found = complete_checkpoints(dirpath)
    return found[-1][1] if found else None


def resolve_resume(setting: Any, dirpath: str | os.PathLike) -> Path | None:
    """The checkpoint directory to resume from.

    "auto": the latest complete checkpoint in this run's `dirpath` (none: a fresh start).
    null/none/false: a fresh start; refused if `dirpath` already holds complete checkpoints, so two runs
    never mix in one directory.
    A path: a checkpoint directory, a checkpoints directory, or a run directory (its `checkpoints/`);
    the latest complete checkpoint found there.
    """
    if setting in RESUME_OFF:
        existing = complete_checkpoints(dirpath)
        if existing:
            raise FileExistsError(f"{dirpath} already holds checkpoints (latest: {existing[-1][1].name}); "
                                  "use resume=auto to continue that run, or a new run directory")
        return None
    if setting == "auto":
        return find_latest_checkpoint(dirpath)
    path = Path(str(setting)).expanduser()
    if (path / META).is_file():
        return path
    for candidate in (path, path / "checkpoints"):
        latest = find_latest_checkpoint(candidate)
        if latest is not None:
            return latest
    raise FileNotFoundError(f"resume={setting!r}: no complete checkpoint there (looked for {META} in "
                            f"{path}, {path}/step-*, {path}/checkpoints/step-*)")


def read_meta(checkpoint: str | os.PathLike) -> dict[str, Any]:
    return json.loads((Path(checkpoint) / META).read_text())


# ------------------------------------------------------------------------------------------- callback


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, quota, I/O error); the previous one is intact."""


class AtomicCheckpoint(Callback):
    """Save every `every_n_steps` optimizer steps and at `max_steps`, atomically (module docstring);
    restore per-rank RNG states and stream positions when the run resumes from `resume_from`.
    `preemption`: a `vt_model.training.resilience.Preemption` (or None): a checkpoint at the step
    boundary after one of its signals, then the run stops (`preempted_step`).

    The stream position saved is the `stream_state` entry of the last micro-batch trained (see
    `vt_model.training.streaming`); on resume it is handed to `trainer.datamodule.load_stream_state`.
    """

    def __init__(self, dirpath: str | os.PathLike, every_n_steps: int | None = 100, keep_last: int | None = 2,
                 save_final: bool = True, preemption: Any = None):
        if every_n_steps is not None and every_n_steps < 0:
            raise ValueError("every_n_steps must be >= 0 or None")
        if keep_last is not None and keep_last < 1:
            raise ValueError("keep_last must be >= 1 or None (keep all)")
        self.dirpath = Path(dirpath)
        self.every_n_steps = every_n_steps or 0
        self.keep_last = keep_last
        self.save_final = save_final
        self.preemption = preemption
        self.preempted_step: int | None = None
        self.resume_from: Path | None = None
        self._seen_step = -1
        self._saved_step = -1
        self._stream_state: dict[str, Any] | None = None
        self._rank_state: dict[str, Any] | None = None

    # -- resume -----------------------------------------------------------------------------------
    def resolve(self, setting: Any) -> Path | None:
        """Resolve a `resume` setting against this run's checkpoints and remember it; returns the
        Lightning checkpoint to pass to `Trainer.fit(ckpt_path=...)`, or None."""
        self.resume_from = resolve_resume(setting, self.dirpath)
        return None if self.resume_from is None else self.resume_from / MODEL_CKPT

    def on_fit_start(self, trainer, pl_module) -> None:
        chosen = str(self.resume_from) if self.resume_from is not None else None
        # Every rank resolved resume=auto by itself; a disagreement would restore mixed states.
        if trainer.world_size > 1 and trainer.strategy.broadcast(chosen, src=0) != chosen:
            raise RuntimeError(f"rank {trainer.global_rank} chose resume checkpoint {chosen}, rank 0 another")
        self._seen_step = self._saved_step = trainer.global_step
        if self.resume_from is None:
            return
        meta = read_meta(self.resume_from)
        if meta["world_size"] != trainer.world_size:
            raise RuntimeError(f"{self.resume_from} was written by {meta['world_size']} ranks; this run has "
                               f"{trainer.world_size} (data positions and RNG states are per rank)")
        if meta.get("num_nodes", trainer.num_nodes) != trainer.num_nodes:
            log.info("%s was written on %d node(s), this run has %d: the same %d global ranks resume",
                     self.resume_from, meta["num_nodes"], trainer.num_nodes, trainer.world_size)
        path = self.resume_from / rank_file_name(trainer.global_rank)
        self._rank_state = torch.load(path, map_location="cpu", weights_only=True)
        self._stream_state = self._rank_state.get("stream")
        datamodule = trainer.datamodule
        if self._stream_state is not None:
            if datamodule is None or not hasattr(datamodule, "load_stream_state"):
                raise RuntimeError("resuming needs a datamodule with load_stream_state(state)")
            datamodule.load_stream_state(self._stream_state)
        self._seen_step = self._saved_step = int(meta["step"])
        log.info("resuming from %s (step %d)", self.resume_from, meta["step"])

    def on_train_start(self, trainer, pl_module) -> None:
        # After Lightning's own seeding and restoration: the next training step sees the RNG exactly as
        # the uninterrupted run did after this checkpoint's step.
        if self._rank_state is not None:
            restore_rng_state(self._rank_state["rng"])
            self._rank_state = None
        if self.preemption is not None:
            # Take the signals back from the SIGTERM handler Lightning composed in trainer.fit (resilience).
            self.preemption.install()

    # -- saving -----------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if isinstance(batch, dict) and "stream_state" in batch:
            self._stream_state = batch["stream_state"]
        step = trainer.global_step
        if step == self._seen_step:
            return  # inside an accumulation window: no optimizer step happened
        self._seen_step = step
        periodic = self.every_n_steps and step % self.every_n_steps == 0
        final = trainer.max_steps > 0 and step >= trainer.max_steps
        if periodic or (final and self.save_final):
            self.save(trainer, step)
        # One all-reduce per step, after the periodic save: a signal that arrived while it was written
        # stops the run here, with nothing more to write.
        if self.preemption is not None and self.preemption.agree(trainer) and not final:
            self.save(trainer, step)  # returns at once when this step's checkpoint exists
            self.preempted_step = step
            self.preemption.saved(step)
            trainer.should_stop = True

    def save(self, trainer, step: int) -> Path:
        """Write the checkpoint of `step` (collective: every rank must call it)."""
        final_dir = self.dirpath / step_dir_name(step)
        tmp_dir = self.dirpath / f".tmp-{step_dir_name(step)}"
        if final_dir.exists():  # e.g. the checkpoint this run resumed from; never overwritten
            return final_dir
        if self.preemption is not None:
            self.preemption.saving(True)
        try:
            seconds = self._write(trainer, step, tmp_dir, final_dir)
        finally:
            if self.preemption is not None:
                self.preemption.saving(False)
        if self.preemption is not None:
            self.preemption.note_save(seconds, step)
        self._saved_step = step
        return final_dir

    def _write(self, trainer, step: int, tmp_dir: Path, final_dir: Path) -> float:
        strategy = trainer.strategy
        if trainer.is_global_zero:
            shutil.rmtree(tmp_dir, ignore_errors=True)  # left by a run killed while saving
            tmp_dir.mkdir(parents=True)
        strategy.barrier("vt_checkpoint_mkdir")
        started = time.perf_counter()
        try:
            # The full state (weights_only=False means "not only weights"); collective: DDP writes on
            # rank 0, DeepSpeed on every rank.
            trainer.save_checkpoint(tmp_dir / MODEL_CKPT, weights_only=False)
            rank_state = {"step": step, "rank": trainer.global_rank, "world_size": trainer.world_size,
                          "node_rank": trainer.node_rank, "local_rank": trainer.local_rank,
                          "num_nodes": trainer.num_nodes, "host": socket.gethostname(),
                          "rng": capture_rng_state(), "stream": self._stream_state}
            torch.save(rank_state, tmp_dir / rank_file_name(trainer.global_rank))
        except Exception as exc:
            raise self._write_failed(trainer, step, tmp_dir, exc) from exc
        strategy.barrier("vt_checkpoint_written")
        if trainer.is_global_zero:
            seconds = round(time.perf_counter() - started, 3)
            meta = {"format": FORMAT, "step": step, "world_size": trainer.world_size,
                    "num_nodes": trainer.num_nodes, "strategy": type(strategy).__name__,
                    "saved_at": time.time(), "seconds": seconds, "files": checkpoint_files(tmp_dir)}
            try:
                _write_synced(tmp_dir / META, json.dumps(meta, indent=1) + "\n")
                os.replace(tmp_dir, final_dir)
            except Exception as exc:
                raise self._write_failed(trainer, step, tmp_dir, exc) from exc
            _fsync_dir(self.dirpath)
        if trainer.is_global_zero:
            self._prune()
        strategy.barrier("vt_checkpoint_renamed")
        return time.perf_counter() - started

    def _write_failed(self, trainer, step: int, tmp_dir: Path, exc: Exception) -> CheckpointWriteError:
        """The error to raise when this rank could not write its part of the checkpoint of `step`."""
        code = getattr(exc, "errno", None)
        try:
            free = shutil.disk_usage(self.dirpath).free
        except OSError:
            free = -1
        full = code in (errno.ENOSPC, errno.EDQUOT) or 0 <= free < 2**20
        if trainer.is_global_zero:
            shutil.rmtree(tmp_dir, ignore_errors=True)  # give the space back; it never became a checkpoint
        latest = find_latest_checkpoint(self.dirpath)
        what = ("the disk is full" if code == errno.ENOSPC else "the disk quota is exceeded"
                if code == errno.EDQUOT else "no space is left on the file system" if full
                else "the write failed")
        return CheckpointWriteError(
            code or errno.EIO,
            f"checkpoint of step {step} not written to {self.dirpath} by rank {trainer.global_rank}: {what} "
            f"({type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); "
            f"{free if free >= 0 else 'unknown'} bytes free. The partial directory was removed; "
            + (f"the latest complete checkpoint, {latest.name}, is intact and a rerun resumes from it."
               if latest is not None else "there is no earlier complete checkpoint."))

    def _prune(self) -> None:
        if self.keep_last is None:
            return
        for _, path in complete_checkpoints(self.dirpath)[:-self.keep_last]:
            # Rename first so that a crash mid-delete never leaves a "complete" but partial checkpoint.
            doomed = path.with_name(f".del-{path.name}")
            os.replace(path, doomed)
            shutil.rmtree(doomed, ignore_errors=True)

    def state_dict(self) -> dict[str, Any]:
        return {"saved_step": self._saved_step}


def checkpoints_last(callbacks: list[Any]) -> list[Any]:
    """The callbacks with AtomicCheckpoint moved to the end, as Lightning moves its own checkpoint
    callbacks: a step becomes resumable only after every other callback (the step log) recorded it, so
    a kill right after the checkpoint loses nothing that the resumed run will not redo."""
    return ([c for c in callbacks if not isinstance(c, AtomicCheckpoint)]
            + [c for c in callbacks if isinstance(c, AtomicCheckpoint)])


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
