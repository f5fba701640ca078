"""Evaluation throughput (samples/s) of `vt_eval.runner.evaluate` with batched generation against
one-sample-at-a-time generation, in one run.

    python experiments/perf/eval_throughput.py --samples 32 --batch 8 --new-tokens 32 --repeats 3

A tiny random Qwen2.5-VL (vt_model.tiny; --hidden / --layers change its size) and vt-data's synthetic
test set (--samples clips of 56x56, 16 frames each, kept at 56x56 by the `tiny_cpu` protocol's pixel
floor: 32 video tokens per sample) are written to a temporary directory. After one warm-up evaluation,
each round evaluates the whole set twice into fresh directories: `--batch` prompts per generate call,
then 1. Reported per mode (median over --repeats rounds, and best):

* samples/s end to end: samples over the runner's loop time (video decoding on --workers threads,
  preprocessing, prompt encoding, generation, scoring, fsynced JSONL writes; not model loading);
* samples/s of generation alone (the time inside `generate`).

The random model rarely emits a stop token, so every completion runs to --new-tokens in both modes (the
script prints the generated token totals, which should match) and both modes do the same decoding
work. The machine line matters: other processes on a shared machine skew the figures. Not a test.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
from pathlib import Path


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=32, help="synthetic test clips (one question each)")
    parser.add_argument("--batch", type=int, default=8, help="batch size of the batched mode")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="video-decoding threads of the runner")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--hidden", type=int, default=64, help="tiny LM hidden size")
    parser.add_argument("--layers", type=int, default=2, help="tiny LM layers")
    parser.add_argument("--device", default="cpu")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import __version__ as transformers_version

    from vt_data.synthetic import build_tiny_dataset
    from vt_eval.benchmarks import load_benchmark
    from vt_eval.protocol import get_protocol
    from vt_eval.runner import evaluate
    from vt_model.tiny import write_tiny_model

    with tempfile.TemporaryDirectory() as directory:
        root = Path(directory)
        build = write_tiny_model(root / "model", hidden=args.hidden, layers=args.layers)
        build_tiny_dataset(root / "data", num_train_clips=0, num_test_clips=args.samples)
        bench = load_benchmark("synthetic", root / "data")
        protocol = get_protocol("tiny_cpu", max_new_tokens=args.new_tokens)

        def run(batch_size: int, name: str, limit: int | None = None) -> dict:
            results = evaluate(
                root / "model",
                bench,
                protocol,
                root / name,
                batch_size=batch_size,
                limit=limit,
                num_workers=args.workers,
                device=args.device,
                label="tiny",
            )
            (invocation,) = results["run"]["ranks"][0]["invocations"]
            lines = [json.loads(x) for x in (root / name / "predictions.jsonl").read_text().splitlines()]
            return {
                "loop": invocation["loop_seconds"],
                "generate": invocation["generate_seconds"],
                "n": invocation["generated"],
                "tokens": sum(x["num_output_tokens"] for x in lines),
                "prompt_tokens": lines[0]["num_prompt_tokens"],
            }

        run(args.batch, "warmup", limit=args.batch)  # first-call allocations, lazy imports, decoder init
        rounds: dict[int, list[dict]] = {args.batch: [], 1: []}
        for r in range(args.repeats):
            for batch_size in (args.batch, 1):
                rounds[batch_size].append(run(batch_size, f"b{batch_size}-r{r}"))

    print(
        f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
        f"cpu_count={os.cpu_count()} | affinity={len(os.sched_getaffinity(0))} | "
        f"torch threads={torch.get_num_threads()} | device={args.device} | torch {torch.__version__} | "
        f"transformers {transformers_version} | load avg {os.getloadavg()[0]:.2f} (1 min)"
    )
    first = rounds[1][0]
    print(
        f"model: tiny Qwen2.5-VL, {build['num_parameters']:,} params (hidden {args.hidden}, "
        f"{args.layers} layers) | {args.samples} synthetic samples, 16 frames of 56x56 -> 32 video tokens, "
        f"prompt ~{first['prompt_tokens']} tokens | up to {args.new_tokens} new tokens | "
        f"decode workers {args.workers} | {args.repeats} rounds"
    )
    figures = {}
    for batch_size, runs in rounds.items():
        end_to_end = [r["n"] / r["loop"] for r in runs]
        generation = [r["n"] / r["generate"] for r in runs]
        figures[batch_size] = (statistics.median(end_to_end), statistics.median(generation))
        print(
            f"batch {batch_size:2d}: {figures[batch_size][0]:7.2f} samples/s end to end "
            f"(best {max(end_to_end):.2f}), "
            f"{figures[batch_size][1]:7.2f} samples/s in generate (best {max(generation):.2f}); "
            f"generated tokens per round {[r['tokens'] for r in runs]}"
        )
    print(
        f"speed-up batch {args.batch} / batch 1: {figures[args.batch][0] / figures[1][0]:.2f}x end to end, "
        f"{figures[args.batch][1] / figures[1][1]:.2f}x in generate (medians)"
    )


if __name__ == "__main__":
    main()
