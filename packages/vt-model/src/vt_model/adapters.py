"""LoRA on the language model, vision freezing, parameter counts and standalone saving.

The paper never says LoRA or full fine-tuning, nor whether the vision tower is frozen (method.md §6,
§11): both are settings here. LoRA targets the language model's attention and MLP projections through a
*regex* (stack.md §7): a plain name list such as ["q_proj", "proj"] also hits the vision blocks' `qkv`
/ `proj` layers. Vision tower and merger stay frozen unless their flags say otherwise; when trainable
they are trained fully (requires_grad on the base weights, no adapter), so a merged save carries them.

`save_pretrained` always writes a *standalone* HF directory (merged weights, tokenizer, preprocessing
configs) that `vt_model.loading.load_model` reads like any checkpoint: evaluation and the GRPO
reference model never need peft.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

# The language model's attention and MLP projections, any depth; never `model.visual.*`.
LM_LINEAR_REGEX = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"
# Files a model directory carries besides weights / config / tokenizer (processing.py writes the first two;
# released Qwen-VL checkpoints keep the VL chat template and processor settings in the others).
PREPROCESSING_FILES = ("video_preprocessor_config.json", "preprocessor_config.json", "processor_config.json",
                       "chat_template.json", "chat_template.jinja")


@dataclass
class LoraSettings:
    """r, alpha, dropout: the LoRA hyper-parameters (scale = alpha / r).

    target_regex: full-match regex over module names (peft's string form of target_modules).
    train_vision: the vision blocks (patch embed + transformer blocks) are trainable, fully.
    train_merger: the vision-to-language merger is trainable, fully.
    """

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_regex: str = LM_LINEAR_REGEX
    train_vision: bool = False
    train_merger: bool = False

    def __post_init__(self) -> None:
        if self.r < 1:
            raise ValueError(f"LoRA rank must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _visual(model):
    base = _base(model)
    visual = getattr(getattr(base, "model", base), "visual", None)
    if visual is None:
        raise ValueError(f"{type(base).__name__} has no vision tower at .model.visual")
    return visual


def set_vision_trainable(model, *, vision: bool, merger: bool) -> None:
    """requires_grad of the vision blocks (everything under .visual except the merger) and of the merger."""
    visual = _visual(model)
    for name, p in visual.named_parameters():
        p.requires_grad_(merger if name.startswith("merger.") else vision)


def apply_lora(model, settings: LoraSettings | None = None):
    """Wrap `model` in a peft LoRA model (language model projections only by default).

    All base weights are frozen by peft; the vision blocks / merger are then made trainable if their
    flags ask for it. Returns the PeftModel.
    """
    from peft import LoraConfig, get_peft_model

    settings = settings or LoraSettings()
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=settings.target_regex, bias="none", task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    lora_in_vision = [n for n, _ in _visual(peft_model).named_parameters() if "lora_" in n]
    if lora_in_vision:
        raise ValueError(f"target_regex {settings.target_regex!r} put adapters into the vision tower "
                         f"({lora_in_vision[0]}, ...); set train_vision instead")
    set_vision_trainable(peft_model, vision=settings.train_vision, merger=settings.train_merger)
    return peft_model


def freeze_vision(model, freeze_merger: bool = True):
    """For full fine-tuning: freeze the vision blocks (and the merger unless freeze_merger=False);
    everything else keeps its requires_grad. Returns the model."""
    set_vision_trainable(model, vision=False, merger=not freeze_merger)
    return model


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared tensors count once."""
    trainable = total = 0
    for p in model.parameters():
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


def lora_parameter_count(model, settings: LoraSettings | None = None) -> int:
    """What LoRA adds: r * (in + out) for every nn.Linear whose name full-matches the regex (works on
    the plain model and on the peft-wrapped one)."""
    import re

    settings = settings or LoraSettings()
    pattern = re.compile(settings.target_regex)
    total = 0
    for name, module in _base(model).named_modules():
        layer = getattr(module, "base_layer", module)  # a peft LoRA layer wraps the original Linear
        if isinstance(layer, torch.nn.Linear) and pattern.fullmatch(name):
            total += settings.r * (layer.in_features + layer.out_features)
    return total


def merged_model(model, *, in_place: bool = False):
    """A plain transformers model with the LoRA deltas folded into the base weights.

    in_place=False (default) merges a deep copy, so a model still being trained keeps its adapters;
    in_place=True saves the memory of the copy but leaves `model` unloaded.
    """
    if not hasattr(model, "merge_and_unload"):
        return model
    target = model if in_place else copy.deepcopy(model)
    return target.merge_and_unload()


def merged_named_tensors(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(checkpoint name, tensor) of the model as it would be saved with its LoRA deltas merged, one
    tensor at a time, without touching the trained weights.

    For an inference engine that loads weights by checkpoint name (vLLM's `reload_weights`). Merging in
    place and unmerging afterwards (peft's merge_adapter / unmerge_adapter) would leave W + BA - BA in
    the training weights, which in bf16 is not W; here each merged weight is a new tensor
    (base + the adapter's delta) and the model is left as it was. A plain model yields its state dict.
    """
    if not hasattr(model, "get_base_model"):
        yield from model.state_dict().items()
        return
    base = model.get_base_model()
    adapter = getattr(model, "active_adapter", "default")
    lora_layers = {name: module for name, module in base.named_modules()
                   if hasattr(module, "base_layer") and hasattr(module, "get_delta_weight")}
    for name, tensor in base.state_dict().items():
        if "lora_" in name:
            continue
        owner, _, leaf = name.rpartition(".")
        if owner.endswith(".base_layer") and owner[: -len(".base_layer")] in lora_layers:
            layer_name = owner[: -len(".base_layer")]
            if leaf == "weight":
                with torch.no_grad():
                    tensor = tensor + lora_layers[layer_name].get_delta_weight(adapter).to(tensor.dtype)
            name = f"{layer_name}.{leaf}"
        yield name, tensor


def save_pretrained(model, tokenizer, out_dir: str | Path, merge_lora: bool = True, *,
                    source_dir: str | Path | None = None, in_place: bool = False) -> Path:
    """Write a standalone HF model directory: weights (LoRA merged), config, generation config,
    tokenizer (with chat template), and the preprocessing files of `source_dir` (default: the directory
    the model was loaded from, `config._name_or_path`) that are not already there.

    merge_lora=False with a peft model writes the adapter only (peft's format, not standalone).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = _base(model)
    source = Path(source_dir) if source_dir is not None else Path(str(base.config._name_or_path or ""))
    if hasattr(model, "merge_and_unload") and not merge_lora:
        model.save_pretrained(out_dir)
    else:
        merged_model(model, in_place=in_place).save_pretrained(out_dir, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    if str(source) and source.is_dir() and source.resolve() != out_dir.resolve():
        for name in PREPROCESSING_FILES:
            if (source / name).is_file() and not (out_dir / name).exists():
                shutil.copy2(source / name, out_dir / name)
    return out_dir


def trainable_parameter_names(model) -> list[str]:
    return [n for n, p in model.named_parameters() if p.requires_grad]


__all__ = [
    "LM_LINEAR_REGEX", "LoraSettings", "apply_lora", "freeze_vision", "set_vision_trainable",
    "count_parameters", "lora_parameter_count", "merged_model", "merged_named_tensors", "save_pretrained",
    "trainable_parameter_names",
]
