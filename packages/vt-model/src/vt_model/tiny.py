"""A tiny random model of any family (vt_model.families; Qwen2.5-VL by default) written as a complete
local model directory: random weights, config and generation config, the offline tokenizer with the
family's chat template (vt_model.offline_tokenizers), the video / image preprocessor configs and a
record of how it was built (the config: vt_model.model_configs).

Nothing here touches a model hub (there is none on our machines, shared/docs/stack.md §4, §5, §13).
A tiny directory loads through exactly the same `vt_model.loading.load_model` path as a real checkpoint.

    python -m vt_model.cli tiny runs/tiny-model --hidden 128 --layers 4
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from vt_model.families import DEFAULT_FAMILY, ModelFamily, get_family
from vt_model.offline_tokenizers import build_tokenizer, special_token_ids
from vt_model.processing import VideoProcessorConfig

TINY_BUILD_FILE = "vt_model_tiny.json"


def write_tiny_model(
    out_dir: str | Path,
    *,
    vocab: str = "tiny",
    seed: int = 0,
    extra_corpus: Iterable[str] = (),
    video_config: VideoProcessorConfig | None = None,
    family: str | ModelFamily = DEFAULT_FAMILY,
    **sizes: Any,
) -> dict[str, Any]:
    """Write a complete local model directory: random tiny weights of `family` (a family name or
    model_type, e.g. "qwen2_5_vl", "qwen3_vl") + config + generation config (save_pretrained), the
    offline tokenizer with the family's chat template, the video / image preprocessor configs, and
    vt_model_tiny.json recording how it was built. Returns that record.

    `sizes` are the family's tiny-config keywords (`vt_model.model_configs.qwen25vl_tiny_config`,
    `qwen3vl_tiny_config`: hidden, layers, ...). The default video config is the family's
    `tiny_video_config()`: 16 frames with a fast pixel floor, so small synthetic clips (e.g. 56x56) stay
    about their size instead of being upscaled to ~336x336.
    """
    import torch

    family = get_family(family)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = family.prepare_tokenizer(build_tokenizer(vocab, [*family.tiny_corpus(), *extra_corpus]))
    config = family.tiny_config(tokenizer, **sizes)
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = family.model_class()(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    video_config = video_config or family.tiny_video_config()
    video_config.save_pretrained(out_dir)
    record = {
        "family": family.name,
        "vocab": vocab,
        "seed": seed,
        "sizes": sizes,
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "tokenizer_size": len(tokenizer),
        "vocab_size": config.text_config.vocab_size,
        "token_ids": special_token_ids(tokenizer),
        "video_processor": video_config.to_dict(),
    }
    (out_dir / TINY_BUILD_FILE).write_text(json.dumps(record, indent=2) + "\n")
    return record
