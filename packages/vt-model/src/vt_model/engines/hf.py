"""The `hf` generation engine: vt_model's batched generation (left padding, each video encoded once) on
CPU or one GPU."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from vt_data.records import VideoQA
from vt_model.engines import Completion


class HFEngine:
    """`vt_model.generation.generate` over a model loaded by `vt_model.loading.load_model`.

    sampling: the keyword arguments of `generate` (do_sample, temperature, top_p, top_k, max_new_tokens).
    include_timestamps: whether the prompt states each frame's time. seed: accepted for the common engine
    signature and unused: this backend draws from torch's global generator, which the caller seeds."""

    name = "hf"

    def __init__(
        self,
        model_path: str | os.PathLike,
        tokenizer: Any,
        video_config: Any,
        *,
        sampling: Mapping[str, Any],
        include_timestamps: bool = False,
        seed: int | None = None,
        device: str = "cpu",
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
    ):
        from vt_model.loading import load_model

        self.tokenizer, self.video_config = tokenizer, video_config
        self.sampling, self.include_timestamps = dict(sampling), include_timestamps
        self.device = device
        self.model = load_model(
            model_path, dtype=dtype, attn_implementation=attn_implementation, device=device
        ).eval()
        self.num_parameters = sum(p.numel() for p in self.model.parameters())

    def prepare(
        self, record: VideoQA, template: str, clip: Any, *, prompt_text: str | None = None
    ) -> dict[str, Any]:
        """Model inputs for one prompt (`prompt_text` is not needed: the prompt is encoded here)."""
        from vt_model.families import get_family
        from vt_model.prompts import encode_prompt

        # the family the video config belongs to (read from the model directory by the runner)
        inputs = get_family(self.video_config.family).preprocess_video(clip.frames, clip.timestamps,
                                                                        self.video_config)
        return encode_prompt(
            self.tokenizer,
            record,
            inputs,
            template,
            timestamps=clip.timestamps,
            include_timestamps=self.include_timestamps,
        )

    def generate(self, prepared: Sequence[dict[str, Any]]) -> list[Completion]:
        from vt_model.generation import generate

        out = generate(self.model, self.tokenizer, list(prepared), num_return_sequences=1, **self.sampling)
        return [
            Completion(
                text=out.texts[i][0],
                num_tokens=len(out.sequences[i][0]),
                finished=bool(out.finished[i][0]),
                num_prompt_tokens=out.prompt_lengths[i],
            )
            for i in range(len(prepared))
        ]
