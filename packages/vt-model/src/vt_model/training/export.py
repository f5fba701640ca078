"""The final model of a training stage (SFT or GRPO) in Hugging Face format: a standalone directory
(weights with any LoRA merged, config, tokenizer, preprocessing configs) that `vt_model.loading.load_model`
and the next stages read like a released checkpoint. The directory appears atomically (written next to
it, then renamed).

Under ZeRO-3 the parameters are partitioned across ranks: every rank joins the gather, rank 0 writes.
Under DDP and ZeRO-1/2 every rank holds full parameters, and only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Any

import torch


def _gathered(model: torch.nn.Module):
    """All ZeRO-3 partitioned parameters gathered for the duration (a no-op otherwise)."""
    params = [p for p in model.parameters() if hasattr(p, "ds_id")]
    if not params:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(params, modifier_rank=None)


def export_hf(trainer: Any, model: torch.nn.Module, tokenizer: Any, out_dir: str | os.PathLike,
              source_dir: str | os.PathLike | None = None) -> Path | None:
    """Write `model` to `out_dir` (collective under ZeRO-3). Returns the directory on rank 0, else None.
    The training model is merged in place (training is over), so no second copy is held."""
    from vt_model.adapters import save_pretrained

    out = Path(out_dir)
    with _gathered(model):
        if trainer.is_global_zero:
            tmp = out.with_name(f".{out.name}.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            save_pretrained(model, tokenizer, tmp, merge_lora=True, source_dir=source_dir, in_place=True)
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
    trainer.strategy.barrier("vt_export")
    return out if trainer.is_global_zero else None
