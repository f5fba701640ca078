"""The `vllm` generation engine (optional extra; GPU only; not tested in this repo), and the vLLM
construction a rollout engine can reuse: `build_vllm_llm` and `vllm_sampling_params`."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from vt_data.records import VideoQA
from vt_model.engines import Completion


def import_vllm() -> Any:
    """The vllm module, or an ImportError that says how to get it."""
    try:
        import vllm
    except ImportError:
        raise ImportError(
            "backend='vllm' needs the vllm package, which is not installed (an optional "
            "extra: pip install 'vt-eval[vllm]' on a GPU machine); use backend='hf'"
        ) from None
    return vllm


def build_vllm_llm(
    model_path: str | os.PathLike, *, dtype: str, max_model_len: int, seed: int, video_config: Any
) -> Any:
    """A `vllm.LLM` for one video per prompt, resized by vLLM's Qwen2.5-VL processor to the pixel budget
    of `video_config` (min/max_pixels passed through)."""
    vllm = import_vllm()
    return vllm.LLM(
        model=str(model_path),
        dtype=dtype,
        max_model_len=max_model_len,
        seed=seed,
        limit_mm_per_prompt={"video": 1},
        mm_processor_kwargs={
            "min_pixels": video_config.min_pixels,
            "max_pixels": video_config.max_pixels,
        },
    )


def vllm_sampling_params(sampling: Mapping[str, Any], *, seed: int) -> Any:
    """`vllm.SamplingParams` equal to `vt_model.generation.generate`'s keyword arguments `sampling`
    (greedy when not do_sample; top_k 0, "off", is vLLM's -1)."""
    vllm = import_vllm()
    return vllm.SamplingParams(
        temperature=sampling["temperature"] if sampling["do_sample"] else 0.0,
        top_p=sampling["top_p"],
        top_k=sampling["top_k"] or -1,
        max_tokens=sampling["max_new_tokens"],
        seed=seed,
    )


class VLLMEngine:
    """A small adapter to vLLM (optional extra `vt-eval[vllm]`; GPU only; not tested in this repo).

    The prompt is our rendered prompt (one `<|video_pad|>`, which vLLM expands) and the frames are the
    ones vt_data decoded, so frame sampling matches the `hf` backend; the resize to the pixel budget is
    done by vLLM's Qwen2.5-VL processor (`build_vllm_llm`)."""

    name = "vllm"

    def __init__(
        self,
        model_path: str | os.PathLike,
        tokenizer: Any,
        video_config: Any,
        *,
        sampling: Mapping[str, Any],
        include_timestamps: bool = False,
        seed: int = 0,
        device: str = "cuda",
        dtype: str = "bfloat16",
        max_model_len: int = 32768,
        **_: Any,
    ):
        import_vllm()  # fail before anything else when vLLM is missing
        self.tokenizer, self.include_timestamps = tokenizer, include_timestamps
        self.llm = build_vllm_llm(
            model_path, dtype=dtype, max_model_len=max_model_len, seed=seed, video_config=video_config
        )
        self.params = vllm_sampling_params(sampling, seed=seed)
        self.num_parameters = None

    def prepare(
        self, record: VideoQA, template: str, clip: Any, *, prompt_text: str | None = None
    ) -> dict[str, Any]:
        """vLLM's prompt dict: `prompt_text` as given, rendered here when it is missing or when the frame
        timestamps (known only once the video is decoded) belong in it."""
        from vt_model.prompts import build_messages, render_prompt

        text = prompt_text
        if self.include_timestamps or text is None:
            text = render_prompt(
                self.tokenizer,
                build_messages(
                    record,
                    template,
                    timestamps=clip.timestamps,
                    include_timestamps=self.include_timestamps,
                ),
            )
        return {"prompt": text, "multi_modal_data": {"video": clip.frames}}

    def generate(self, prepared: Sequence[dict[str, Any]]) -> list[Completion]:
        outs = self.llm.generate(list(prepared), self.params, use_tqdm=False)
        return [
            Completion(
                text=o.outputs[0].text,
                num_tokens=len(o.outputs[0].token_ids),
                finished=o.outputs[0].finish_reason == "stop",
                num_prompt_tokens=len(o.prompt_token_ids or []),
            )
            for o in outs
        ]
