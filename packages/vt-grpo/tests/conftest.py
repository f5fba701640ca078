"""Shared fixtures for the vt-grpo tests: one tiny model, one synthetic shard set and one briefly
SFT'd tiny model (the GRPO start policy) per session, plus helpers to run the `vt-grpo` app in a
subprocess (the resume test kills it) or in-process through Hydra's compose API.

The start policy is fine-tuned here with a few lines of plain torch over vt-model's own SFT encoding
(`encode_sft_example` / `collate_sft`), because vt-grpo's tests may not depend on vt-sft: 100 steps at
lr 3e-3 leave the tiny model producing a valid trace for ~10-30 % of its samples at temperature 1,
which is where GRPO has a signal to climb (a random model scores 0 everywhere: every group would have
zero variance).
"""

from __future__ import annotations

import contextlib
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

# The tiny model is latency-bound: one intra-op thread is as fast on an idle machine and up to 10x
# faster on shared, loaded cores, where OpenMP threads spin waiting for each other (measured: a
# 32-completion generate call 0.2 s on 1 thread, 0.2-4.8 s on 2). Applied to these tests only.
THREADS_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
NUM_TRAIN_CLIPS = 48
FRAMES = 4
TEMPLATE = "direct"
SFT_STEPS, SFT_LR, SFT_BATCH = 100, 3e-3, 8


@contextlib.contextmanager
def one_thread():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _one_thread():
    with one_thread():
        yield


def brief_sft(
    tiny_dir: Path,
    data_dir: Path,
    out: Path,
    *,
    steps: int = SFT_STEPS,
    lr: float = SFT_LR,
    batch: int = SFT_BATCH,
    frames: int = FRAMES,
    template: str = TEMPLATE,
    seed: int = 0,
) -> Path:
    """Supervised fine-tuning of the tiny model on the synthetic traces (assistant tokens only), saved
    as a standalone HF directory like vt-sft's export."""
    import torch

    from vt_data.records import load_records
    from vt_data.video import read_video
    from vt_model.adapters import save_pretrained
    from vt_model.collate import collate_sft, encode_sft_example, model_inputs
    from vt_model.loading import load_model, load_tokenizer
    from vt_model.processing import VideoProcessorConfig

    torch.manual_seed(seed)
    tokenizer, model = load_tokenizer(tiny_dir), load_model(tiny_dir)  # trained on one thread (below)
    records = load_records(data_dir / "train.jsonl")
    processor = VideoProcessorConfig(
        num_frames=frames, max_frames=frames, min_pixels=56 * 56, max_pixels=100352
    )
    examples = [
        encode_sft_example(
            tokenizer, r, read_video(data_dir / r.path, num_frames=frames), processor, template
        )
        for r in records
    ]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(examples), (batch,), generator=generator).tolist()
        loss = model(**model_inputs(collate_sft([examples[i] for i in idx], tokenizer.pad_token_id))).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return save_pretrained(model, tokenizer, out, source_dir=tiny_dir)


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Path:
    """tiny model + synthetic shards (the tiny experiments' own `prepare` functions) + the SFT'd model."""
    from vt_model.training.assets import ensure_synthetic_shards, ensure_tiny_model

    root = tmp_path_factory.mktemp("grpo-assets")
    ensure_tiny_model(root / "qwen25vl-tiny")
    ensure_synthetic_shards(root / "synthetic", num_train_clips=NUM_TRAIN_CLIPS, num_test_clips=4, workers=1)
    with one_thread():
        brief_sft(root / "qwen25vl-tiny", root / "synthetic", root / "sft")
    return root


def run_cli(args: list[str], *, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess:
    """`python -m vt_grpo.cli ARGS` from the repository root; output captured, returned on failure."""
    proc = subprocess.run(
        [sys.executable, "-m", "vt_grpo.cli", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **THREADS_ENV},
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"vt-grpo {' '.join(args)} exited {proc.returncode}\n"
            f"--- stdout ---\n{proc.stdout[-6000:]}\n--- stderr ---\n{proc.stderr[-6000:]}"
        )
    return proc


def compose(overrides: list[str], name: str = "grpo"):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from vt_model.training.app import config_dir, register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=config_dir(), version_base="1.3"):
        return hydra_compose(name, overrides=overrides)


def read_jsonl(path: Path) -> list[dict]:
    """JSON lines; a last line cut short by a kill is ignored."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


class GRPORunner:
    """What the tests need (a fixture, since `--import-mode=importlib` makes conftest unimportable)."""

    root = ROOT
    env = {**os.environ, **THREADS_ENV}
    frames = FRAMES
    template = TEMPLATE
    num_train_clips = NUM_TRAIN_CLIPS

    def __init__(self, assets: Path):
        self.assets = assets
        self.sft_dir = assets / "sft"
        self.tiny_dir = assets / "qwen25vl-tiny"
        self.shards = assets / "synthetic" / "shards" / "train"
        # Small, fast and the same everywhere: the SFT'd start policy, its frames and prompt template,
        # CSV logs only, no tqdm noise in the test logs.
        self.overrides = [
            "experiment=tiny_cpu_grpo",
            f"paths.assets_dir={assets}",
            f"init_from={self.sft_dir}",
            f"data.num_frames={FRAMES}",
            f"data.template={TEMPLATE}",
            "logger=[csv]",
            "callbacks.progress=null",
        ]

    run_cli = staticmethod(lambda *a, **k: run_cli(*a, **k))
    compose = staticmethod(lambda *a, **k: compose(*a, **k))
    read_jsonl = staticmethod(lambda *a, **k: read_jsonl(*a, **k))


@pytest.fixture(scope="session")
def grpo(assets) -> GRPORunner:
    return GRPORunner(assets)
