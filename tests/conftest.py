"""Root test settings: the DeepSpeed JIT cache (TORCH_EXTENSIONS_DIR) on a persistent, gitignored path
so its ~25 s op build happens once, VT_ROOT so configs resolve from any working directory, and passive
OpenMP waiting so CPU test processes do not starve each other."""

from __future__ import annotations

import os
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("VT_ROOT", str(ROOT))
# Idle OpenMP threads sleep instead of spinning: on 2 cores a spinning trainer starves its DataLoader
# worker and the second DDP rank (a 30-step run took 36 s spinning, 9 s passive).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
