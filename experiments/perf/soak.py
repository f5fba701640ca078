"""Soak: the smoke pipeline (tiny SFT on 2 DDP processes, then GRPO from its model) run to completion
under repeated random faults, then checked against uninterrupted runs. Not a test; results in
experiments/perf/README.md ("Soak").

    .venv/bin/python experiments/perf/soak.py --out runs/soak --seed 0 --max-faults 12 \
        --sft-steps 120 --grpo-steps 24

For each stage: an uninterrupted reference run, then the same command in another run directory, started
again and again (what a requeue does) while this script injects a random fault into each attempt once the
attempt has trained a step or two past where it resumed (a random 0-`--max-delay` s later):
- `sigkill_all`: SIGKILL to every process of the run (a node lost, an OOM kill), no cleanup;
- `sigkill_rank`: SIGKILL to one training process only (the other must exit with a RankLostError);
- `sigusr1`: SIGUSR1 to one training process (a preemption warning: checkpoint at the next step, exit 75).
When the run finishes (exit 0, no fault pending) the stage checks:
- the final weights equal the reference's, bit for bit;
- the sample-key log, every rank's and every step's last record, equals the reference's: no step missing,
  none repeated, and within each epoch no key twice;
and records per fault: the step the attempt had logged, the checkpoint the next attempt resumed from, the
steps computed twice (the work the fault cost) and the seconds from the fault to the next attempt's first
new step. The whole record goes to `<out>/soak.json`, a Markdown table to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
KINDS = ("sigkill_all", "sigkill_rank", "sigusr1")


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    out = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a line cut short by a SIGKILL
    return out


def last_step(run_dir: Path, log: str, since: float = 0.0) -> int:
    """The highest step logged (only records written after the wall time `since`; 0 if none)."""
    return max((r["step"] for r in read_jsonl(run_dir / "logs" / log) if r["time"] > since), default=0)


def latest_checkpoint(run_dir: Path) -> int:
    from vt_model.training.checkpointing import complete_checkpoints

    found = complete_checkpoints(run_dir / "checkpoints")
    return found[-1][0] if found else 0


# ------------------------------------------------------------------------------------------ processes


def training_processes(root_pid: int) -> list[int]:
    """The run's training ranks: the launched process (rank 0) and the ranks Lightning started from it
    (not DataLoader workers, which are forks of a rank: their command line is the same, but they do
    not carry the LOCAL_RANK their rank was started with)."""
    import psutil

    ranks = [root_pid]
    try:
        for child in psutil.Process(root_pid).children():
            if child.environ().get("LOCAL_RANK", "0") != "0":
                ranks.append(child.pid)
    except psutil.Error:
        pass
    return ranks


def group_alive(pgid: int) -> bool:
    import psutil

    for proc in psutil.process_iter(["pid", "status"]):
        try:
            if os.getpgid(proc.pid) == pgid and proc.info["status"] != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def wait_group(proc: subprocess.Popen, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None and not group_alive(proc.pid):
            return True
        time.sleep(0.2)
    return False


# ------------------------------------------------------------------------------------------ a stage


class Stage:
    def __init__(self, name: str, module: str, args: list[str], log: str, out: Path, env: dict[str, str]):
        self.name, self.module, self.args, self.log, self.out, self.env = name, module, args, log, out, env

    def command(self, run_dir: Path) -> list[str]:
        return [sys.executable, "-m", self.module, *self.args, f"hydra.run.dir={run_dir}"]

    def reference(self) -> tuple[Path, float]:
        run_dir = self.out / f"{self.name}_reference"
        started = time.perf_counter()
        if not (run_dir / "hf_model").is_dir():
            with open(self.out / f"{self.name}_reference.log", "w") as fh:
                subprocess.run(self.command(run_dir), cwd=ROOT, env=self.env, stdout=fh,
                               stderr=subprocess.STDOUT, check=True)
        return run_dir, time.perf_counter() - started

    def chaos(self, rng: random.Random, max_faults: int, max_delay: float) -> tuple[Path, list[dict], float]:
        run_dir = self.out / f"{self.name}_chaos"
        faults: list[dict] = []
        started = time.perf_counter()
        attempt = 0
        while True:
            attempt += 1
            log_path = self.out / f"{self.name}_chaos.attempt{attempt}.log"
            since, start_checkpoint = time.time(), latest_checkpoint(run_dir)
            with open(log_path, "w") as fh:
                proc = subprocess.Popen(self.command(run_dir), cwd=ROOT, env=self.env, stdout=fh,
                                        stderr=subprocess.STDOUT, start_new_session=True)
            fault = None
            if len(faults) < max_faults:
                fault = self._inject(proc, run_dir, start_checkpoint, since, rng, max_delay)
            if fault is None:
                if not wait_group(proc, 900) or proc.returncode != 0:
                    raise RuntimeError(f"{self.name}: attempt {attempt} ended with {proc.returncode}; "
                                       f"see {log_path}")
                break
            ended = wait_group(proc, 180)
            if not ended:
                os.killpg(proc.pid, signal.SIGKILL)
                wait_group(proc, 60)
            log_text = log_path.read_text(errors="replace")
            fault.update({"attempt": attempt, "exit": proc.returncode, "hung": not ended,
                          "exit_s": round(time.time() - fault["wall"], 1) if ended else None,
                          "logged_step": max(start_checkpoint, last_step(run_dir, self.log, since)),
                          "resumed_from": latest_checkpoint(run_dir),
                          "rank_lost_error": "RankLostError" in log_text})
            fault["steps_recomputed"] = fault["logged_step"] - fault["resumed_from"]
            faults.append(fault)
            print(f"[{self.name}] fault {len(faults)}: {fault}", flush=True)
        # Seconds from each fault until the run logged a step past where the fault found it: exit, restart
        # (imports, model, resume) and the recomputed steps.
        records = read_jsonl(run_dir / "logs" / self.log)
        for fault in faults:
            later = [r["time"] for r in records
                     if r["time"] > fault["wall"] and r["step"] > fault["logged_step"]]
            fault["seconds_until_past_it"] = round(min(later) - fault["wall"], 1) if later else None
        return run_dir, faults, time.perf_counter() - started

    def _inject(self, proc, run_dir: Path, resumed_from: int, since: float, rng: random.Random,
                max_delay: float) -> dict | None:
        """Wait until the attempt (started at wall time `since`) trained past its resume point, then a
        random delay, then a random fault. None when the attempt finished first."""
        target = resumed_from + rng.choice((1, 2))
        while last_step(run_dir, self.log, since) < target:  # this attempt's own records
            if proc.poll() is not None:
                return None
            time.sleep(0.1)
        deadline = time.monotonic() + rng.uniform(0, max_delay)
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return None
            time.sleep(0.05)
        ranks = training_processes(proc.pid)
        kind = rng.choice(KINDS if len(ranks) > 1 else ("sigkill_all", "sigusr1"))
        rank = rng.randrange(len(ranks))
        step = last_step(run_dir, self.log, since)
        wall = time.time()
        if kind == "sigkill_all":
            os.killpg(proc.pid, signal.SIGKILL)
        elif kind == "sigkill_rank":
            os.kill(ranks[rank], signal.SIGKILL)
        else:
            os.kill(ranks[rank], signal.SIGUSR1)
        return {"kind": kind, "rank": None if kind == "sigkill_all" else rank, "started_from": resumed_from,
                "step_at_fault": step, "wall": wall}


# ------------------------------------------------------------------------------------------ checks


def weights_equal(a: Path, b: Path) -> bool:
    import torch
    from safetensors.torch import load_file

    x, y = load_file(a / "hf_model" / "model.safetensors"), load_file(b / "hf_model" / "model.safetensors")
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def keys_by_step(run_dir: Path, rank: int) -> dict[int, list[str]]:
    """step -> keys of that step (its last attempt's records: a replayed step replaces the earlier)."""
    out: dict[int, list[str]] = {}
    for record in read_jsonl(run_dir / "logs" / f"samples-rank{rank}.jsonl"):
        if record.get("window_pos", 0) == 0:
            out[record["step"]] = []
        out[record["step"]] = out.get(record["step"], []) + record["keys"]
    return out


def check_keys(reference: Path, chaos: Path, ranks: int, steps: int, epoch: int) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for rank in range(ranks):
        ref, got = keys_by_step(reference, rank), keys_by_step(chaos, rank)
        order = [k for s in range(1, steps + 1) for k in got.get(s, [])]
        repeats = sum(len(chunk) - len(set(chunk)) for chunk in
                      (order[i:i + epoch] for i in range(0, len(order), epoch)))
        result[f"rank{rank}"] = {"equal_to_reference": got == ref,
                                 "gaps": [s for s in range(1, steps + 1) if s not in got],
                                 "repeats_within_an_epoch": repeats}
    return result


# ------------------------------------------------------------------------------------------ main


def run_stage(stage: Stage, rng: random.Random, args, ranks: int, steps: int, epoch: int) -> dict[str, Any]:
    reference, ref_seconds = stage.reference()
    chaos, faults, chaos_seconds = stage.chaos(rng, args.max_faults, args.max_delay)
    return {"reference_seconds": round(ref_seconds, 1), "chaos_seconds": round(chaos_seconds, 1),
            "faults": faults, "weights_equal": weights_equal(reference, chaos),
            "keys": check_keys(reference, chaos, ranks, steps, epoch)}


def print_report(report: dict[str, Any]) -> bool:
    print(f"\n{report['machine']}; total {report['total_seconds']} s")
    print("| stage | fault | kind | rank | step at fault | exit | exited after (s) | resumed from "
          "| steps recomputed | s until past it |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    ok = True
    for name, stage in report["stages"].items():
        for i, f in enumerate(stage["faults"], 1):
            print(f"| {name} | {i} | {f['kind']} | {f['rank']} | {f['step_at_fault']} | {f['exit']} "
                  f"| {f['exit_s']} | {f['resumed_from']} | {f['steps_recomputed']} "
                  f"| {f['seconds_until_past_it']} |")
    for name, stage in report["stages"].items():
        print(f"{name}: weights equal {stage['weights_equal']}; keys {stage['keys']}; reference "
              f"{stage['reference_seconds']} s, with faults {stage['chaos_seconds']} s")
        ok = ok and stage["weights_equal"] and all(
            k["equal_to_reference"] and not k["gaps"] and not k["repeats_within_an_epoch"]
            for k in stage["keys"].values())
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(ROOT / "runs" / "soak"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-faults", type=int, default=6, help="per stage")
    parser.add_argument("--max-delay", type=float, default=4.0,
                        help="seconds after the attempt passed its resume point")
    parser.add_argument("--sft-steps", type=int, default=60)
    parser.add_argument("--grpo-steps", type=int, default=16)
    args = parser.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    env = {**os.environ, "VT_ROOT": str(ROOT), "OMP_WAIT_POLICY": "PASSIVE", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "TORCH_EXTENSIONS_DIR": str(ROOT / ".cache" / "torch_extensions")}

    from vt_model.training.assets import ensure_synthetic_shards, ensure_tiny_model

    assets = out / "assets"
    ensure_tiny_model(assets / "qwen25vl-tiny")
    ensure_synthetic_shards(assets / "synthetic", num_train_clips=48, num_test_clips=4, workers=1)
    common = [f"paths.assets_dir={assets}", "data.num_frames=4", "data.template=direct", "data.num_workers=1",
              "logger=[csv]", "callbacks.progress=null", "callbacks.checkpoint.keep_last=2",
              "callbacks.peers.heartbeat_s=0.5"]
    # SFT: 2 DDP processes (48 clips: 24 per rank and epoch), a checkpoint every 10 steps.
    sft = Stage("sft", "vt_sft.cli", [
        "experiment=tiny_cpu", *common, f"trainer.max_steps={args.sft_steps}",
        "batch.micro_batch_per_device=4",
        "callbacks.checkpoint.every_n_steps=10", "trainer/strategy=ddp", "trainer.devices=2",
        "trainer.strategy.timeout.seconds=60"], "steps.jsonl", out, env)
    # GRPO: one process from the reference SFT model (the chaos SFT model is checked equal to it).
    grpo = Stage("grpo", "vt_grpo.cli", [
        "experiment=tiny_cpu_grpo", *common, f"init_from={out / 'sft_reference' / 'hf_model'}",
        f"trainer.max_steps={args.grpo_steps}", "callbacks.checkpoint.every_n_steps=2",
        "grpo.prompts_per_step=4", "grpo.generations_per_prompt=4", "grpo.micro_batch_per_device=8",
        "grpo.max_completion_length=48", "module.optimizer.lr=5e-4"], "grpo.jsonl", out, env)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f} at start"
    report: dict[str, Any] = {"machine": machine, "seed": args.seed, "stages": {}}
    started = time.perf_counter()
    report["stages"]["sft"] = run_stage(sft, rng, args, ranks=2, steps=args.sft_steps, epoch=24)
    report["stages"]["grpo"] = run_stage(grpo, rng, args, ranks=1, steps=args.grpo_steps, epoch=48)
    report["stages"]["grpo"]["policy_moved_kl_max"] = max(
        (r.get("kl", 0.0) for r in read_jsonl(out / "grpo_reference" / "logs" / "grpo.jsonl")), default=0.0)
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    (out / "soak.json").write_text(json.dumps(report, indent=1) + "\n")
    sys.exit(0 if print_report(report) else 1)


if __name__ == "__main__":
    main()
