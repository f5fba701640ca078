"""The paper's reference numbers, as data for reports.

Source: Video-Thinker (Wang et al., arXiv 2510.23473), Table 1 "main results, 16 frames", accuracy in %,
as transcribed in shared/docs/method.md §9.1. Every model was run by the authors with the Video-Thinker
prompt at ≤128×28×28 pixels per frame (method.md §9.1, §10 item 4): compare our numbers under the
`video_thinker` protocol with them.

Columns are keyed by our benchmark names (conf/benchmark/*.yaml), so a run of benchmark `vrbench`
lines up with the paper's "VRB" column. The in-domain columns (ANet ... LVB) are the paper's own 1:9
held-out splits of Video-Thinker-10K, which are not public: our `vt10k_*` splits are built the same way
but are not the same questions, so those comparisons are indicative only (benchmarks.md §4).
"""

from __future__ import annotations

import re

PAPER_SOURCE = "Video-Thinker (arXiv 2510.23473) Table 1, 16 frames; via shared/docs/method.md §9.1"
PAPER_PROTOCOL = "video_thinker"

# Our benchmark name -> the paper's column label, in the paper's column order.
PAPER_COLUMNS: dict[str, str] = {
    "video_holmes": "V-Holmes",
    "cg_bench_reasoning": "CG-R",
    "vrbench": "VRB",
    "vt10k_activitynet": "ANet",
    "vt10k_star": "STAR",
    "vt10k_scalelong": "SL",
    "vt10k_youcook2": "YC2",
    "vt10k_lvbench": "LVB",
}
IN_DOMAIN = ("vt10k_activitynet", "vt10k_star", "vt10k_scalelong", "vt10k_youcook2", "vt10k_lvbench")

_ROWS = """
InternVL-2.5-8B           20.52 19.39 26.74 45.52 49.85 26.81 40.84 23.91
InternVL-3-8B             18.67 24.23 41.14 48.56 51.34 29.34 51.15 25.93
Qwen2.5-VL-7B-Instruct    34.02 27.10 63.42 70.96 69.25 40.06 63.74 33.33
Qwen2.5-Omni-7B           29.99 23.85 49.04 63.92 59.40 36.91 54.58 31.65
Temporal-R1-7B            33.81 25.27 60.92 70.88 70.15 39.75 63.74 32.66
Open-R1-Video-7B          21.83 16.46 50.15 55.76 44.48 31.86 50.76 26.94
TW-GRPO-7B                33.32 22.11 53.46 70.00 71.04 39.12 63.74 29.97
Video-R1-7B               38.54 27.81 69.25 76.00 67.76 47.32 65.65 34.68
Time-R1-7B                34.73 28.28 66.48 72.00 70.44 44.47 64.50 32.65
VideoChat-R1-7B           35.65 29.26 67.65 70.88 73.13 40.69 69.08 32.99
VideoChat-R1-Thinking-7B  37.45 29.44 67.81 70.88 71.64 41.95 66.79 35.01
GRPO-CARE-7B              34.34 27.49 66.39 70.96 71.34 40.69 68.32 33.33
Video-Thinker-SFT-7B      31.52 24.95 62.40 70.80 64.18 43.22 56.11 35.69
Video-Thinker-7B          43.22 33.25 80.69 78.72 70.66 49.53 73.66 37.04
"""

# model -> {our benchmark name: accuracy %}
PAPER_TABLE1: dict[str, dict[str, float]] = {
    parts[0]: dict(zip(PAPER_COLUMNS, (float(v) for v in parts[1:]), strict=True))
    for parts in (line.split() for line in _ROWS.strip().splitlines())
}

# The rows a report shows by default (the base model, the strongest baseline, and the method's two stages).
DEFAULT_PAPER_ROWS = ("Qwen2.5-VL-7B-Instruct", "Video-R1-7B", "Video-Thinker-SFT-7B", "Video-Thinker-7B")

# Other spellings of the paper's models (our config names, HF repository names).
_ALIASES = {
    "qwen25vl7b": "Qwen2.5-VL-7B-Instruct",
    "qwen25vl7binstruct": "Qwen2.5-VL-7B-Instruct",
    "videor1": "Video-R1-7B",
    "videor17b": "Video-R1-7B",
    "videothinker": "Video-Thinker-7B",
    "videothinker7b": "Video-Thinker-7B",
    "videothinkersft": "Video-Thinker-SFT-7B",
    "videothinkersft7b": "Video-Thinker-SFT-7B",
}


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def paper_model(name: str | None) -> str | None:
    """The paper's row for a model name or alias ("qwen25vl_7b", "Video-R1/Video-R1-7B", ...), else None.
    A path-like name is matched by its last component."""
    if not name:
        return None
    tail = _norm(str(name).rstrip("/").rsplit("/", 1)[-1])
    for row in PAPER_TABLE1:
        if _norm(row) == tail:
            return row
    return _ALIASES.get(tail)


def paper_value(model: str | None, benchmark: str) -> float | None:
    """The paper's accuracy (%) of `model` (any spelling `paper_model` knows) on our `benchmark`."""
    row = paper_model(model)
    return PAPER_TABLE1.get(row, {}).get(benchmark) if row else None


__all__ = [
    "PAPER_SOURCE",
    "PAPER_PROTOCOL",
    "PAPER_COLUMNS",
    "PAPER_TABLE1",
    "DEFAULT_PAPER_ROWS",
    "IN_DOMAIN",
    "paper_model",
    "paper_value",
]
