"""Prompt templates as data and the ONE prompt builder used by SFT, rollouts and evaluation.

method.md §3 describes the Video-Thinker prompt; the wording below is the project's own. method.md §10.3
is the flaw we avoid: the released SFT script glued `Options:` to the question while the eval script
put it on its own line. Here every stage calls `build_messages` -> `render_prompt` -> `encode_prompt`,
and a golden-string test (tests/test_prompts.py) pins the rendered text.

User-turn layout (one layout, always):

    <video item>
    [Sampled frames at 00:00, 00:02, ... (only with include_timestamps=True)]
    {question}
    Options:
    A. ...
    B. ...
    {instruction}

The video is a content item of the user turn; the chat template (the model family's, saved with its
tokenizer) renders it as `<|vision_start|><|video_pad|><|vision_end|>` and `encode_prompt` lets the
family of the preprocessed video expand it (vt_model.families): Qwen2.5-VL repeats the single
`<|video_pad|>` once per video token; Qwen3-VL writes one `<t seconds>` block per frame pair.

`<time>` spans and the family's own clock. Both are absolute video time, from the clip's first frame
(vt_data.timespan's MM:SS; the frame timestamps the preprocessing receives). Qwen2.5-VL carries time
only in its temporal M-RoPE ids (`second_per_grid_ts`); the optional `Sampled frames at MM:SS, ...`
line (include_timestamps) is the only text clock. Qwen3-VL prints it: the block of frames 2k and 2k+1
is preceded by `<t_k seconds>`, t_k = the midpoint of their two timestamps printed to 0.1 s (16 frames
at 0.5, 1.0, ... s give `<0.8 seconds>`, `<1.8 seconds>`, ...). A trace span `<time>MM:SS-MM:SS</time>`
covering [a, b] seconds therefore covers the blocks whose t_k lies in [a, b] (give or take half a frame
interval at each end: a block shows two frames around t_k); 01:05 is `<65.0 seconds>`. The templates
below stay the same for every family: the per-family part of the prompt is its chat template and video
layout, so the same trace text means the same seconds under both clocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vt_data.records import VideoQA
from vt_data.timespan import format_time
from vt_model.processing import VideoInputs, mm_token_type_ids

VIDEO_PAD = "<|video_pad|>"
IMAGE_PAD = "<|image_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


@dataclass(frozen=True)
class PromptTemplate:
    """One prompt family, as data.

    system:        the system message (None -> the chat template's default system turn).
    user_suffix:   the instruction after the options of a multiple-choice question.
    open_suffix:   the instruction for a question without options (None -> user_suffix).
    option_header: the line that introduces the options; it always stands on its own line.
    timestamps_prefix: the start of the optional frame-time line (include_timestamps=True).
    """

    name: str
    system: str | None
    user_suffix: str
    option_header: str = "Options:"
    open_suffix: str | None = None
    timestamps_prefix: str = "The frames shown were sampled at these times (MM:SS):"

    def suffix_for(self, record: VideoQA) -> str:
        return self.user_suffix if record.options else (self.open_suffix or self.user_suffix)


# --- the registry ------------------------------------------------------------------------------
# Our wording of what method.md §3 describes: expert analyst; per key segment a <time> span, the visual
# clues in <caption>, their meaning in <think>, in that order; natural interjections; self-check;
# further reasoning after the segments; the single option letter in <answer>.
_VIDEO_THINKER_SYSTEM = (
    "You are an expert video analyst. Answer questions about a video using only what can be seen in it.\n"
    "Work through the video segment by segment. For every segment that matters for the question, write "
    "three tags in this order:\n"
    "<time>start-end</time> with the segment's time span as MM:SS-MM:SS,\n"
    "<caption>...</caption> with the key visual details visible in that span,\n"
    "<think>...</think> with what those details mean for the question.\n"
    "Reason out loud the way a person would, with natural remarks such as \"hmm\", \"wait\" or "
    "\"let me check that again\". Double-check your reading of the video when it is uncertain; when the "
    "answer is plain, conclude without detours.\n"
    "After the segments, keep reasoning in plain text to connect what you observed to the answer, then "
    "finish with the answer inside <answer></answer> tags."
)
_VIDEO_THINKER_SUFFIX = (
    "Analyse the key segments of the video with <time>, <caption> and <think> tags, reason your way to a "
    "conclusion, and write only the single letter of the correct option inside <answer></answer>. "
    "Follow the format given in the system message."
)
_VIDEO_THINKER_OPEN = (
    "Analyse the key segments of the video with <time>, <caption> and <think> tags, reason your way to a "
    "conclusion, and write only the final answer inside <answer></answer>. "
    "Follow the format given in the system message."
)

# Video-R1 style: all reasoning inside one <think> block, then the answer (our wording).
_VIDEO_R1_SUFFIX = (
    "Think about the question step by step inside <think></think> tags, then give only the letter of the "
    "correct option inside <answer></answer> tags."
)
_VIDEO_R1_OPEN = (
    "Think about the question step by step inside <think></think> tags, then give only the final answer "
    "inside <answer></answer> tags."
)

_COMPACT_SUFFIX = ("For each key segment give <time>, <caption> and <think>, then the option letter in "
                   "<answer></answer>.")
_COMPACT_OPEN = ("For each key segment give <time>, <caption> and <think>, then the answer in "
                 "<answer></answer>.")

TEMPLATES: dict[str, PromptTemplate] = {
    "video_thinker": PromptTemplate(
        name="video_thinker",
        system=_VIDEO_THINKER_SYSTEM,
        user_suffix=_VIDEO_THINKER_SUFFIX,
        open_suffix=_VIDEO_THINKER_OPEN,
    ),
    "video_r1": PromptTemplate(
        name="video_r1",
        system=None,  # Video-R1 puts its whole instruction in the user turn
        user_suffix=_VIDEO_R1_SUFFIX,
        open_suffix=_VIDEO_R1_OPEN,
    ),
    # The video_thinker format with a one-line instruction and the chat template's default system turn:
    # a ~75-token text prompt instead of ~420 (question and options included), for tiny models trained
    # on a CPU, where every prompt token costs time (the `tiny_cpu` experiment, `make demo`). Not a
    # paper setting.
    "compact": PromptTemplate(
        name="compact",
        system=None,
        user_suffix=_COMPACT_SUFFIX,
        open_suffix=_COMPACT_OPEN,
    ),
    "direct": PromptTemplate(
        name="direct",
        system=None,
        user_suffix="Answer with the letter of the correct option only, inside <answer></answer>.",
        open_suffix="Answer inside <answer></answer> only.",
    ),
}


def get_template(template: str | PromptTemplate) -> PromptTemplate:
    """A template by name (or the template itself); KeyError naming the known ones."""
    if isinstance(template, PromptTemplate):
        return template
    try:
        return TEMPLATES[template]
    except KeyError:
        known = ", ".join(sorted(TEMPLATES))
        raise KeyError(f"unknown prompt template {template!r}; known: {known}") from None


def register_template(template: PromptTemplate, *, replace: bool = False) -> PromptTemplate:
    if template.name in TEMPLATES and not replace:
        raise ValueError(f"prompt template {template.name!r} already registered")
    TEMPLATES[template.name] = template
    return template


# --- messages ----------------------------------------------------------------------------------
def format_timestamps(timestamps: Sequence[float] | np.ndarray | torch.Tensor) -> str:
    """Frame times -> "00:00, 00:02.5, ...". Rounded to 0.1 s first, so decoder jitter such as
    2.0333 s does not print as a 15-digit fraction; MM:SS is the unit `<time>` spans use."""
    values = np.asarray(timestamps, dtype=np.float64).reshape(-1)
    return ", ".join(format_time(round(max(float(t), 0.0), 1)) for t in values)


def user_text(record: VideoQA, template: str | PromptTemplate, *, timestamps=None,
              include_timestamps: bool = False) -> str:
    """The text part of the user turn (see the module docstring for the layout)."""
    template = get_template(template)
    lines: list[str] = []
    if include_timestamps:
        if timestamps is None or len(timestamps) == 0:
            raise ValueError("include_timestamps=True needs the sampled frame timestamps")
        lines.append(f"{template.timestamps_prefix} {format_timestamps(timestamps)}")
    lines.append(record.problem.strip())
    if record.options:
        lines.append(template.option_header)
        lines.extend(option.strip() for option in record.options)
    lines.append(template.suffix_for(record))
    return "\n".join(lines)


def build_messages(record: VideoQA, template: str | PromptTemplate = "video_thinker", *, timestamps=None,
                   include_timestamps: bool = False) -> list[dict[str, Any]]:
    """Chat messages for one record: [system?], user = [video item, text]. No assistant turn."""
    template = get_template(template)
    messages: list[dict[str, Any]] = []
    if template.system is not None:
        messages.append({"role": "system", "content": [{"type": "text", "text": template.system}]})
    video_item: dict[str, Any] = {"type": "video"}
    if record.path:
        video_item["video"] = record.path  # informational; the template only looks at the type
    messages.append({
        "role": "user",
        "content": [
            video_item,
            {"type": "text", "text": user_text(record, template, timestamps=timestamps,
                                               include_timestamps=include_timestamps)},
        ],
    })
    return messages


def render_prompt(tokenizer, messages: list[dict[str, Any]]) -> str:
    """The prompt string through the tokenizer's chat template, ending with the generation prompt
    (`<|im_start|>assistant\\n`)."""
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError("the tokenizer has no chat_template; load one saved with the Qwen2.5-VL template")
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    if not isinstance(text, str):  # some versions return a list for a single conversation
        text = text[0]
    return text


# --- token ids ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpecialIds:
    """The special-token ids every encoder and mask needs, read by name from the tokenizer
    (never hard-coded: the tiny tokenizer's ids differ from Qwen's)."""

    video_pad: int
    image_pad: int
    vision_start: int
    vision_end: int
    im_start: int
    im_end: int
    pad: int

    @property
    def vision(self) -> tuple[int, ...]:
        """Ids that belong to the vision block and must never carry a label."""
        return (self.video_pad, self.image_pad, self.vision_start, self.vision_end)


def special_ids(tokenizer) -> SpecialIds:
    def one(token: str) -> int:
        tid = tokenizer.convert_tokens_to_ids(token)
        if tid is None or tid == getattr(tokenizer, "unk_token_id", None) or not isinstance(tid, int):
            raise ValueError(f"the tokenizer has no {token!r} token")
        return tid

    pad = tokenizer.pad_token_id
    if pad is None:
        pad = one("<|endoftext|>")
    return SpecialIds(video_pad=one(VIDEO_PAD), image_pad=one(IMAGE_PAD), vision_start=one(VISION_START),
                      vision_end=one(VISION_END), im_start=one(IM_START), im_end=one(IM_END), pad=int(pad))


def tokenize(tokenizer, text: str) -> list[int]:
    """Plain ids of `text` (Qwen adds no BOS; add_special_tokens=False makes that explicit)."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def encode_prompt(tokenizer, record: VideoQA, video_inputs: VideoInputs,
                  template: str | PromptTemplate = "video_thinker", *, timestamps=None,
                  include_timestamps: bool = False) -> dict[str, Any]:
    """Tokenised prompt for one record and its preprocessed video (of any vt_model.families family).

    Returns input_ids (L,), attention_mask (L,), mm_token_type_ids (L,) (0 text, 1 image, 2 video),
    pixel_values_videos (N, D), the family's per-video keys (Qwen2.5-VL: video_grid_thw (1, 3),
    second_per_grid_ts (1,); Qwen3-VL: video_grid_thw), plus `prompt_text` and `num_video_tokens`.
    The video placeholder is expanded by the video's family (Qwen2.5-VL: `num_video_tokens` copies of
    <|video_pad|>). Raises if the rendered prompt does not hold exactly one video placeholder (e.g. a
    question whose text contains a special-token string).
    """
    from vt_model.families import get_family

    family = get_family(video_inputs.family)
    ids = special_ids(tokenizer)
    text = render_prompt(tokenizer, build_messages(record, template, timestamps=timestamps,
                                                   include_timestamps=include_timestamps))
    raw = tokenize(tokenizer, text)
    n_video, n_image = raw.count(ids.video_pad), raw.count(ids.image_pad)
    if n_video != 1 or n_image != 0:
        raise ValueError(f"record {record_label(record)}: the prompt must hold exactly one {VIDEO_PAD} "
                         f"and no {IMAGE_PAD}, got {n_video} and {n_image}")
    expanded = torch.tensor(family.encode_video_prompt(tokenizer, text, [video_inputs]),
                            dtype=torch.long)  # (L,)
    video = family.collate_videos([video_inputs])
    return {
        "input_ids": expanded,
        "attention_mask": torch.ones_like(expanded),
        "mm_token_type_ids": mm_token_type_ids(expanded, image_token_id=ids.image_pad,
                                               video_token_id=ids.video_pad),
        "pixel_values_videos": video.pop("pixel_values_videos"),
        "video_grid_thw": video.pop("video_grid_thw").reshape(1, 3).long(),
        **video,  # the family's other per-video keys (Qwen2.5-VL: second_per_grid_ts (1,) float32)
        "num_video_tokens": int(video_inputs.num_video_tokens),
        "prompt_text": text,
    }


def record_label(record: VideoQA) -> str:
    """How errors name a record: its key, plus the problem_id when there is one."""
    pid = f" (problem_id {record.problem_id})" if record.problem_id is not None else ""
    return f"{record.key}{pid}"


__all__ = [
    "PromptTemplate", "TEMPLATES", "get_template", "register_template", "build_messages", "render_prompt",
    "encode_prompt", "user_text", "format_timestamps", "SpecialIds", "special_ids", "tokenize",
    "record_label",
]
