"""Load Qwen2.5-VL / Qwen2-VL / Qwen3-VL / Qwen3.5 models and tokenizers from a local directory only, and
build any such architecture on the meta device (no weights) to check its shape and size.

There is no model hub on our machines; every call uses `local_files_only=True` and runs with the hub's
offline flag on, so a wrong path fails at once with a clear message instead of a network timeout.
The tiny random model written by `vt_model.tiny.write_tiny_model` loads through exactly this path.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # transformers is imported inside the functions (~3 s)
    import torch
    from transformers import PretrainedConfig, PreTrainedModel, PreTrainedTokenizerBase

# config.json model_type -> transformers class name (looked up lazily: Qwen3-VL exists only in newer
# transformers releases).
MODEL_CLASSES = {
    "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
    "qwen2_vl": "Qwen2VLForConditionalGeneration",
    "qwen3_vl": "Qwen3VLForConditionalGeneration",
    "qwen3_vl_moe": "Qwen3VLMoeForConditionalGeneration",
    "qwen3_5": "Qwen3_5ForConditionalGeneration",
    "qwen3_5_moe": "Qwen3_5MoeForConditionalGeneration",
}
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
_DTYPES = {
    "float32": "float32", "fp32": "float32", "float": "float32",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float16": "float16", "fp16": "float16", "half": "float16",
}


@contextlib.contextmanager
def hub_offline() -> Iterator[None]:
    """Set HF_HUB_OFFLINE for the duration of a call, restoring the previous state afterwards.

    huggingface_hub reads the variable once at import, so its module-level flag is switched too;
    `local_files_only=True` is what keeps loading local, this makes any stray hub call fail fast.
    """
    import huggingface_hub.constants as hub_constants

    old_env, old_flag = os.environ.get("HF_HUB_OFFLINE"), hub_constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = old_flag
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


def _model_dir(path: str | os.PathLike[str]) -> Path:
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(
            f"model directory {str(directory)!r} does not exist (models load from local directories "
            "only; there is no model hub here). Write a tiny one with `vt-model tiny DIR`."
        )
    if not (directory / "config.json").is_file():
        raise FileNotFoundError(f"{directory} has no config.json; it is not a saved model directory")
    return directory


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype | str | None:
    """"float32" / "bf16" / "auto" / a torch.dtype / None -> what from_pretrained takes."""
    import torch

    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return "auto"
    try:
        return getattr(torch, _DTYPES[str(dtype).lower()])
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {sorted(set(_DTYPES))} or 'auto'") from None


def model_class(model_type: str) -> type[PreTrainedModel]:
    """The transformers class for a config.json model_type, with a clear error when unsupported."""
    import transformers

    if model_type not in MODEL_CLASSES:
        raise ValueError(f"unsupported model_type {model_type!r}; supported: {sorted(MODEL_CLASSES)}")
    name = MODEL_CLASSES[model_type]
    cls = getattr(transformers, name, None)
    if cls is None:
        raise ValueError(
            f"model_type {model_type!r} needs transformers.{name}, which transformers "
            f"{transformers.__version__} does not have"
        )
    return cls


def check_attn_implementation(attn_implementation: str) -> None:
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(
            f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}"
        )
    if attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
        raise ImportError(
            "attn_implementation='flash_attention_2' needs the flash-attn package (CUDA only), which is "
            "not installed; use 'sdpa' (default) or 'eager'"
        )


def load_model(
    path: str | os.PathLike[str],
    *,
    dtype: str | torch.dtype | None = "float32",
    attn_implementation: str = "sdpa",
    gradient_checkpointing: bool = False,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
) -> PreTrainedModel:
    """A Qwen-VL model from a local directory, its class picked from config.json's model_type.

    dtype: "float32" | "bfloat16" | "float16" (or aliases, a torch.dtype, "auto").
    gradient_checkpointing: enabled non-reentrant (works with frozen inputs and LoRA; stack.md §3).
    trust_remote_code: only for directories whose model_type is not a built-in Qwen-VL and whose
    config.json has an `auto_map` (code shipped inside the directory); loaded via
    AutoModelForImageTextToText.
    device: move the model there after loading (None: stay on CPU).
    """
    directory = _model_dir(path)
    check_attn_implementation(attn_implementation)
    model_type = json.loads((directory / "config.json").read_text()).get("model_type")
    if model_type in MODEL_CLASSES:
        cls = model_class(model_type)
    elif trust_remote_code:
        from transformers import AutoModelForImageTextToText as cls
    else:
        raise ValueError(
            f"{directory}/config.json has model_type {model_type!r}; supported: {sorted(MODEL_CLASSES)} "
            "(pass trust_remote_code=True for a directory that ships its own modelling code)"
        )
    kwargs: dict[str, Any] = {
        "local_files_only": True,
        "attn_implementation": attn_implementation,
        "dtype": resolve_dtype(dtype),
    }
    if trust_remote_code:
        kwargs["trust_remote_code"] = True
    with hub_offline():
        model = cls.from_pretrained(str(directory), **kwargs)
    if gradient_checkpointing:
        # transformers 5.2x renamed it (the old name warns); older releases only have the old name
        enable = getattr(model, "activation_checkpointing_enable", None)
        if enable is not None:
            enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if device is not None:
        model = model.to(device)
    return model


def load_tokenizer(
    path: str | os.PathLike[str], *, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """The tokenizer of a local model directory, with its chat template.

    Released Qwen-VL checkpoints keep the VL chat template in the processor's chat_template.json;
    when the tokenizer itself has none, that one is attached.
    """
    from transformers import AutoTokenizer

    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise FileNotFoundError(
            f"tokenizer directory {str(directory)!r} does not exist (local directories only)"
        )
    with hub_offline():
        tokenizer = AutoTokenizer.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=trust_remote_code
        )
    template_file = directory / "chat_template.json"
    if getattr(tokenizer, "chat_template", None) is None and template_file.is_file():
        tokenizer.chat_template = json.loads(template_file.read_text())["chat_template"]
    return tokenizer


def build_on_meta(config: PretrainedConfig | str | os.PathLike[str]) -> tuple[PreTrainedModel, int]:
    """Instantiate an architecture on the meta device (no memory, no weights) -> (model, n_params).

    config: a transformers config, or a local directory / config.json path. Shared (tied) tensors
    are counted once, as `model.parameters()` yields them once.
    """
    import torch

    if not hasattr(config, "model_type"):
        from transformers import AutoConfig

        location = Path(config)
        with hub_offline():
            config = AutoConfig.from_pretrained(
                str(location.parent if location.is_file() else location), local_files_only=True
            )
    cls = model_class(config.model_type)
    with torch.device("meta"):
        model = cls(config)
    return model, sum(p.numel() for p in model.parameters())
