"""Shared fixtures for the vt-sft tests: one tiny model and one synthetic shard set per session, and
helpers to run the `vt-sft` app in a subprocess (DDP and DeepSpeed relaunch the script per rank, so
distributed runs cannot live inside pytest) or in-process through Hydra's compose API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
# DeepSpeed JIT-compiles an op on first use (~25 s); a persistent, gitignored cache pays it once.
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(ROOT / ".cache" / "torch_extensions"))
os.environ.setdefault("VT_ROOT", str(ROOT))
# Idle OpenMP threads sleep instead of spinning: on 2 cores a spinning trainer starves its DataLoader
# worker and the second DDP rank (a 30-step run took 36 s spinning, 9 s passive).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Small, fast and the same everywhere: 8 frames, no TensorBoard, no tqdm noise in the test logs.
FAST = ["experiment=tiny_cpu", "data.num_frames=8", "data.template=direct", "data.num_workers=0",
        "logger=[csv]", "callbacks.progress=null"]
NUM_TRAIN_CLIPS = 48


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Path:
    """tiny model + synthetic shards, built by the same `prepare` functions the tiny_cpu experiment uses."""
    from vt_model.training.assets import ensure_synthetic_shards, ensure_tiny_model

    root = tmp_path_factory.mktemp("assets")
    ensure_tiny_model(root / "qwen25vl-tiny")
    ensure_synthetic_shards(root / "synthetic", num_train_clips=NUM_TRAIN_CLIPS, num_test_clips=4, workers=1)
    return root


class SFTRunner:
    """What the tests need (a fixture, since `--import-mode=importlib` makes conftest unimportable)."""

    fast = FAST
    num_train_clips = NUM_TRAIN_CLIPS
    root = ROOT

    def __init__(self, assets: Path):
        self.assets = assets
        self.overrides = [*FAST, f"paths.assets_dir={assets}"]

    run_cli = staticmethod(lambda *a, **k: run_cli(*a, **k))
    compose = staticmethod(lambda *a, **k: compose(*a, **k))
    read_jsonl = staticmethod(lambda *a, **k: read_jsonl(*a, **k))
    step_losses = staticmethod(lambda *a, **k: step_losses(*a, **k))


@pytest.fixture(scope="session")
def sft(assets) -> SFTRunner:
    return SFTRunner(assets)


def run_cli(args: list[str], *, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m vt_sft.cli ARGS` from the repository root; output captured, returned on failure."""
    proc = subprocess.run([sys.executable, "-m", "vt_sft.cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ))
    if check and proc.returncode != 0:
        raise AssertionError(f"vt-sft {' '.join(args)} exited {proc.returncode}\n"
                             f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}")
    return proc


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from vt_model.training.app import config_dir, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose("sft", overrides=overrides)


def read_jsonl(path: Path) -> list[dict]:
    """JSON lines; a last line cut short by a kill is ignored."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def step_losses(run_dir: Path) -> dict[int, float]:
    """step -> loss, the last record of each step winning (a resumed run rewrites replayed steps)."""
    return {r["step"]: r["loss"] for r in read_jsonl(Path(run_dir) / "logs" / "steps.jsonl")}
