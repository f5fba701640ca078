"""SFT training throughput on CPU with the tiny model: tokens/s, samples/s and peak memory (RSS per
rank), for one process and for two processes under DDP (gloo), printed with the machine they ran on.

    .venv/bin/python experiments/perf/sft_throughput.py                 # 1 process vs 2 DDP processes
    .venv/bin/python experiments/perf/sft_throughput.py --zero2 --steps 60 --out runs/perf/sft.json
    OMP_WAIT_POLICY=PASSIVE .venv/bin/python experiments/perf/sft_throughput.py   # idle OpenMP threads sleep

Each layout runs the real app (`python -m vt_sft.cli experiment=tiny_cpu ...`) on the synthetic shards,
with the same global batch (micro-batch × processes), the paper's prompt and 16 frames per clip.
Throughput is measured from the step log between the end of the warm-up steps and the last step:
tokens are every attention position (text and video), summed over ranks. Peak memory is each rank's
maximum RSS (DataLoader workers excluded; the runs use none). Timings on a shared machine vary with its
load, which is printed too. On few cores, OMP_WAIT_POLICY=PASSIVE keeps idle OpenMP threads of one
rank from spinning on the cores the other rank (or a data worker) needs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def machine() -> dict[str, object]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        mem = int(next(x for x in Path("/proc/meminfo").read_text().splitlines()
                       if x.startswith("MemTotal")).split()[1]) / 2**20
    except (OSError, StopIteration):
        mem = float("nan")
    import torch

    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "memory_gib": round(mem, 1),
            "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "load_average_1m": os.getloadavg()[0], "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")}


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def measure(run_dir: Path, warmup: int) -> dict[str, float]:
    steps = read_jsonl(run_dir / "logs" / "steps.jsonl")
    timed = [s for s in steps if s["step"] > warmup]
    start = next(s["time"] for s in steps if s["step"] == warmup)
    seconds = timed[-1]["time"] - start
    tokens, samples = sum(s["tokens"] for s in timed), sum(s["samples"] for s in timed)
    ranks = [json.loads(p.read_text()) for p in sorted((run_dir / "logs").glob("summary-rank*.json"))]
    return {"steps_timed": len(timed), "seconds": seconds, "tokens_per_s": tokens / seconds,
            "samples_per_s": samples / seconds, "seconds_per_step": seconds / len(timed),
            "tokens_per_step": tokens / len(timed), "final_loss": steps[-1]["loss"],
            "peak_rss_mib_per_rank": [round(r["peak_rss_mib"]) for r in ranks]}


def run(name: str, overrides: list[str], work: Path, steps: int, warmup: int) -> dict[str, object]:
    run_dir = work / name.replace(" ", "_")
    command = [sys.executable, "-m", "vt_sft.cli", "experiment=tiny_cpu",
               f"paths.assets_dir={work / 'assets'}", f"trainer.max_steps={steps}", "logger=[csv]",
               "callbacks.progress=null", "callbacks.checkpoint=null", "export=false",
               f"hydra.run.dir={run_dir}", *overrides]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env=dict(os.environ))
    if proc.returncode:
        raise SystemExit(f"{name} failed:\n{proc.stderr[-4000:]}")
    return {"layout": name, "overrides": overrides, "wall_s": round(time.perf_counter() - started, 1),
            **measure(run_dir, warmup)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5, help="steps excluded from the timing")
    parser.add_argument("--global-batch", type=int, default=4)
    parser.add_argument("--zero2", action="store_true", help="also ZeRO-2 on 2 CPU processes")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
    layouts = [("1 process", ["trainer/strategy=cpu", "trainer.devices=1",
                              f"batch.micro_batch_per_device={args.global_batch}"]),
               ("2 processes DDP", ["trainer/strategy=ddp", "trainer.devices=2",
                                    f"batch.micro_batch_per_device={args.global_batch // 2}"])]
    if args.zero2:
        layouts.append(("2 processes ZeRO-2", ["trainer/strategy=deepspeed_z2_cpu", "trainer.devices=2",
                                               f"batch.micro_batch_per_device={args.global_batch // 2}"]))
    info = machine()
    with tempfile.TemporaryDirectory(prefix="vt-sft-perf-") as tmp:
        results = [run(name, overrides, Path(tmp), args.steps, args.warmup) for name, overrides in layouts]
    report = {"machine": info, "steps": args.steps, "warmup": args.warmup, "global_batch": args.global_batch,
              "results": results}
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB, torch {info['torch']} "
          f"({info['torch_threads']} threads), GPU: {info['gpu']}, load average (1 min) at start: "
          f"{info['load_average_1m']:.1f}, OMP_WAIT_POLICY={info['OMP_WAIT_POLICY']}")
    print(f"tiny Qwen2.5-VL (stack.md §5), synthetic shards, 16 frames, global batch {args.global_batch}, "
          f"{args.steps} steps ({args.warmup} warm-up steps not timed)\n")
    print("| layout | tokens/s | samples/s | s/step | tokens/step | peak RSS per rank (MiB) | wall (s) |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        rss = ", ".join(map(str, r["peak_rss_mib_per_rank"]))
        print(f"| {r['layout']} | {r['tokens_per_s']:.0f} | {r['samples_per_s']:.2f} | "
              f"{r['seconds_per_step']:.3f} | {r['tokens_per_step']:.0f} | {rss} | {r['wall_s']} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
