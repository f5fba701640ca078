"""A vt-model model as the curation pipeline's hindsight checker (vt_data.curate's LocalChecker slot):
given a question, its options and a trace's (time, caption) evidence, answer with one option letter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from vt_data.curate.models import CheckReply, CheckRequest, Usage
from vt_data.trace import extract_answer

# Our own wording; the checker must answer from the evidence alone (method.md §5.2 step 5).
CHECK_SYSTEM = ("You check whether a video question can be answered from notes about the video. "
                "Use only the notes. Reply with the single option letter inside <answer></answer>.")


def check_prompt(request: CheckRequest) -> str:
    """The user turn: the notes (one line per time span and caption), the question and its options."""
    notes = "\n".join(f"[{time}] {caption}" for time, caption in request.evidence) or "(no notes)"
    options = "\n".join(request.options)
    return f"Notes:\n{notes}\n\nQuestion: {request.question}\nOptions:\n{options}"


@dataclass
class ModelChecker:
    """Greedy answers from a local Qwen2.5-VL (tiny here, 7B on a GPU) loaded by `load_model`.

    Config: `vt-curate checker=local checker._target_=vt_model.checker.ModelChecker
    checker.model_path=/models/Qwen2.5-VL-7B-Instruct`. With `video_path` set in a request (the stage
    lets the checker see the video), frames are read and the video goes into the prompt.
    """

    model_path: str
    dtype: str = "float32"
    device: str = "cpu"
    max_new_tokens: int = 32
    num_frames: int = 16
    name: str = ""

    def __post_init__(self) -> None:
        self.name = self.name or f"local:{self.model_path}"
        self._loaded: tuple[Any, Any] | None = None

    def _model(self):
        if self._loaded is None:
            from vt_model.loading import load_model, load_tokenizer

            model = load_model(self.model_path, dtype=self.dtype, device=self.device).eval()
            self._loaded = (model, load_tokenizer(self.model_path))
        return self._loaded

    def _encode(self, request: CheckRequest, tokenizer) -> dict[str, Any]:
        from vt_model.families import family_from_pretrained
        from vt_model.processing import mm_token_type_ids
        from vt_model.prompts import special_ids, tokenize

        family = family_from_pretrained(self.model_path)  # its preprocessing and video layout

        content: list[dict[str, Any]] = [{"type": "text", "text": check_prompt(request)}]
        video = None
        if request.video_path:
            from vt_data.video import read_video

            clip = read_video(request.video_path, num_frames=self.num_frames, max_frames=self.num_frames)
            config = family.video_config_from_pretrained(self.model_path)
            video = family.preprocess_video(clip.frames, clip.timestamps, config)
            content.insert(0, {"type": "video"})
        messages = [{"role": "system", "content": CHECK_SYSTEM}, {"role": "user", "content": content}]
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = special_ids(tokenizer)
        raw = (tokenize(tokenizer, text) if video is None
               else family.encode_video_prompt(tokenizer, text, [video]))
        input_ids = torch.tensor(raw, dtype=torch.long)
        prompt = {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                  "mm_token_type_ids": mm_token_type_ids(input_ids, image_token_id=ids.image_pad,
                                                         video_token_id=ids.video_pad)}
        if video is not None:
            prompt.update(family.collate_videos([video]))  # pixels, video_grid_thw (1, 3), ...
        return prompt

    def check(self, request: CheckRequest) -> CheckReply:
        from vt_model.generation import generate

        model, tokenizer = self._model()
        prompt = self._encode(request, tokenizer)
        out = generate(model, tokenizer, [prompt], do_sample=False, max_new_tokens=self.max_new_tokens)
        text = out.texts[0][0]
        usage = Usage(prompt_tokens=int(prompt["input_ids"].numel()),
                      completion_tokens=int(out.sequences[0][0].numel()))
        return CheckReply(answer=extract_answer(text, mode="strict"), text=text, usage=usage)
