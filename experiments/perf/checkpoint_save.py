"""How long a checkpoint takes to write, against the preemption grace period (README "Preemption and
requeue"; callbacks.checkpoint.preemption.grace_period_s, 120 s by default).

    .venv/bin/python experiments/perf/checkpoint_save.py --gib 4 --out /tmp/vt-ckpt-bench

1. The tiny model's full training state (weights + AdamW moments, what model.ckpt holds on one
   process), written with torch.save and fsynced, median of 5.
2. The 7B-shaped state: its size is counted on the meta device (no memory used) from the released
   Qwen2.5-VL-7B architecture (vt_model.model_configs) under the paper's SFT layout, bf16 weights with
   fp32 master weights and two fp32 Adam moments (ZeRO-2/3: 2 + 4 + 8 = 14 bytes per trainable
   parameter, split over the ranks); a random tensor of `--gib` GiB is then written and fsynced on this
   machine's disk to get its write rate, and the 7B write time is that rate applied to the whole state
   (one disk shared by all ranks) and to one rank's share (when every rank has its own bandwidth).
Prints a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import time
from pathlib import Path

import torch


def timed_save(obj, path: Path) -> float:
    started = time.perf_counter()
    with open(path, "wb") as fh:
        torch.save(obj, fh)
        fh.flush()
        os.fsync(fh.fileno())
    return time.perf_counter() - started


def tiny_state(tmp: Path) -> dict:
    from vt_model.loading import load_model
    from vt_model.tiny import write_tiny_model

    write_tiny_model(tmp / "tiny-model", seed=0)  # the tests' and the demo's tiny model
    model = load_model(tmp / "tiny-model")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    sum(p.float().pow(2).sum() for p in model.parameters()).backward()
    optimizer.step()  # the moments exist
    return {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict()}


def seven_b_bytes(world_size: int) -> dict:
    from transformers import Qwen2_5_VLForConditionalGeneration

    from vt_model.model_configs import qwen25vl_7b_config

    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(qwen25vl_7b_config())
    params = sum(p.numel() for p in model.parameters())
    # The paper's SFT trains the language model, the vision tower stays frozen (conf/model/qwen25vl_7b.yaml).
    trainable = sum(p.numel() for n, p in model.named_parameters() if ".visual." not in f".{n}")
    total = 2 * params + 12 * trainable  # bf16 weights of everything + fp32 master and Adam m, v
    return {"parameters": params, "trainable": trainable, "bytes": total,
            "bytes_per_rank": total / world_size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gib", type=float, default=4.0, help="size of the disk-rate probe")
    parser.add_argument("--world-size", type=int, default=8)
    parser.add_argument("--out", default="/tmp/vt-ckpt-bench")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        state = tiny_state(out)
        tiny_seconds = [timed_save(state, out / "tiny.pt") for _ in range(5)]
        tiny_bytes = (out / "tiny.pt").stat().st_size
        probe = torch.randn(int(args.gib * 2**30 // 4))
        probe_seconds = timed_save(probe, out / "probe.pt")
        probe_bytes = (out / "probe.pt").stat().st_size
        del probe
        rate = probe_bytes / probe_seconds
        seven = seven_b_bytes(args.world_size)
        summary = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
            "tiny": {"bytes": tiny_bytes, "seconds_median": round(statistics.median(tiny_seconds), 4)},
            "disk_probe": {"bytes": probe_bytes, "seconds": round(probe_seconds, 2),
                           "gib_per_s": round(rate / 2**30, 3)},
            "seven_b": {**seven, "gib": round(seven["bytes"] / 2**30, 1),
                        "gib_per_rank": round(seven["bytes_per_rank"] / 2**30, 1),
                        "seconds_one_disk": round(seven["bytes"] / rate, 1),
                        "seconds_per_rank_bandwidth": round(seven["bytes_per_rank"] / rate, 1)},
        }
        print(json.dumps(summary, indent=1))
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
