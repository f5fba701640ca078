"""Build the model a training stage trains: load from a local directory, then freeze the vision tower
and/or wrap the language model in LoRA. Configs pass this as a `_partial_` factory, so composing and
checking a config never loads weights; the LightningModule calls it in `configure_model`.
"""

from __future__ import annotations

import os
from typing import Any

from vt_model.adapters import LoraSettings, apply_lora, count_parameters
from vt_model.adapters import freeze_vision as _freeze_vision
from vt_model.loading import load_model


def build_model(path: str | os.PathLike, *, dtype: str = "float32", attn_implementation: str = "sdpa",
                gradient_checkpointing: bool = False, freeze_vision: bool = False, freeze_merger: bool = True,
                lora: LoraSettings | dict[str, Any] | None = None):
    """Load `path` and prepare it for training.

    freeze_vision: full fine-tuning with the vision blocks frozen (and the merger too unless
    freeze_merger=False). lora: LoRA on the language model (LoraSettings or its fields); its own
    `train_vision` / `train_merger` flags decide the vision side, and freeze_* are ignored.
    """
    model = load_model(path, dtype=dtype, attn_implementation=attn_implementation,
                       gradient_checkpointing=gradient_checkpointing)
    if lora is not None:
        settings = lora if isinstance(lora, LoraSettings) else LoraSettings(**lora)
        if gradient_checkpointing:
            # Frozen embeddings give checkpointed blocks inputs without grad; peft's hook fixes that.
            model.enable_input_require_grads()
        model = apply_lora(model, settings)
    elif freeze_vision:
        _freeze_vision(model, freeze_merger=freeze_merger)
    model.train()  # from_pretrained returns eval mode; HF only checkpoints activations in train mode
    trainable, total = count_parameters(model)
    if trainable == 0:
        raise ValueError(f"{path}: no trainable parameter after freezing / LoRA")
    return model
