"""GRPO rollouts with vLLM inside the training process (`rollout=vllm`; optional extra `vt-grpo[vllm]`).

One engine per rank, colocated with the policy (on several GPUs each rank passes
`distributed_executor_backend="external_launcher"` through `engine_options`, so every rank drives its own
engine over its own prompts). The engine is built at the first rollout from the policy's start
directory (`model_path`, default the policy's `config._name_or_path`) and immediately given the live
policy weights, so a resumed run samples from the resumed policy.

Per round (`generate`):
1. the prompts' videos go through the TRAINING model's vision tower once (`encode_videos`); vLLM gets
   those features as `video_embeds` with our prompt ids and what the policy's model family needs to
   expand them (`ModelFamily.vllm_embeds_request`: Qwen2.5-VL the grid and `second_per_grid_ts`,
   Qwen3-VL the grid and the `<t seconds>` times, its DeepStack features packed beside the merged
   ones): the engine sees the same features, video tokens and timing as the loss (`requests` builds
   them; the tests send them with greedy settings too);
2. before sending, every prompt's M-RoPE ids are checked against vLLM's rule
   (`ModelFamily.vllm_position_mismatch`: Qwen2.5-VL's float64 temporal ids) and, after generation,
   the prompt ids vLLM ran against ours (`check_prompt_parity`): any difference raises
   `RolloutInputMismatch` naming the prompt, instead of training on inputs the rollout did not see;
3. `n = G` completions per prompt with vLLM's sampler (temperature / top-p / top-k as the settings, the
   vision placeholders biased out, stop at `<|im_end|>`), prefix caching on; per-token log-probs of the
   sampled tokens, renormalised without the placeholders as `generate` records them
   (`vt_model.engines.vllm.sampled_logprobs`), are kept for the gap metric only (the loss recomputes
   them with the training model);
4. with sleep mode (on CUDA), the engine sleeps (level 1: KV cache freed, weights offloaded) while the
   policy trains.

After each update (`after_update`): wake the engine, stream the policy's weights with LoRA deltas merged
(`vt_model.adapters.merged_named_tensors`; gathered first under ZeRO-3) into every worker, reset the
prefix cache and the encoder cache (`vt_model.engines.vllm.push_weights`). Known traps this avoids:
weights not re-synced after sleep (TRL #5312/#5313: we push after every wake), stale prefix KV (reset),
the multimodal encoder cache growing or going stale (reset).
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any


class VLLMRolloutEngine:
    """See the module docstring. Options: model_path (the start directory; default the policy's own),
    dtype ("auto": the policy's), max_model_len (None: the model's own), gpu_memory_utilization (the
    engine's share of the GPU, the rest is the trainer's), enable_sleep_mode (None: on with CUDA),
    enforce_eager, seed, engine_options (passed to `vllm.LLM`)."""

    name = "vllm"
    reads_policy_weights = False

    def __init__(self, *, model_path: str | os.PathLike | None = None, dtype: str = "auto",
                 max_model_len: int | None = None, gpu_memory_utilization: float = 0.3,
                 enable_sleep_mode: bool | None = None, enforce_eager: bool = False, seed: int = 0,
                 video_config: Any = None, engine_options: Mapping[str, Any] | None = None):
        from vt_model.engines.vllm import import_vllm

        import_vllm()  # fail at construction (config time), not at the first rollout
        self.model_path = None if model_path is None else str(model_path)
        self.dtype, self.max_model_len = dtype, max_model_len
        self.gpu_memory_utilization, self.enforce_eager = gpu_memory_utilization, enforce_eager
        self.enable_sleep_mode, self.seed = enable_sleep_mode, int(seed)
        self.video_config, self.engine_options = video_config, dict(engine_options or {})
        self.llm: Any = None
        self._asleep = False
        self._calls = 0
        self._sync_seconds = 0.0

    # ------------------------------------------------------------------------------ engine life cycle
    def _build(self, model: Any) -> None:
        import torch

        from vt_model.engines.vllm import build_vllm_llm
        from vt_model.families import family_for_config

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        path = self.model_path or getattr(base.config, "_name_or_path", None)
        if not path or not os.path.isdir(path):
            raise ValueError(f"the vLLM rollout engine needs the policy's model directory (model_path); "
                             f"got {path!r}")
        dtype = self.dtype
        if dtype == "auto":
            dtype = str(next(base.parameters()).dtype).removeprefix("torch.")
        if self.enable_sleep_mode is None:
            self.enable_sleep_mode = torch.cuda.is_available()
        video_config = self.video_config or family_for_config(base.config).video_config_from_pretrained(path)
        self.llm = build_vllm_llm(
            path, dtype=dtype, max_model_len=self.max_model_len, seed=self.seed, video_config=video_config,
            gpu_memory_utilization=self.gpu_memory_utilization, enable_sleep_mode=self.enable_sleep_mode,
            enable_mm_embeds=True, enforce_eager=self.enforce_eager, **self.engine_options)
        self._push(model)  # a resumed policy is not the directory's weights

    def _wake(self) -> None:
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False

    def _sleep(self) -> None:
        if self.enable_sleep_mode and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def _push(self, model: Any) -> None:
        from vt_model.adapters import merged_named_tensors
        from vt_model.engines.vllm import push_weights

        start = time.perf_counter()
        self._wake()
        push_weights(self.llm, ((name, tensor.detach()) for name, tensor in merged_named_tensors(model)))
        self._sync_seconds += time.perf_counter() - start

    def after_update(self, model: Any, wrapped: Any = None) -> None:
        """The policy changed: load it into the engine (gathered under ZeRO-3, LoRA merged)."""
        if self.llm is None:
            return  # built, with the then-current weights, at the first rollout
        from vt_grpo.policy import gathered_for_generation

        with gathered_for_generation(model, wrapped):
            self._push(model)

    def close(self) -> None:
        """Free the engine (its GPU memory and worker processes): vLLM's `LLM` has no close of its own;
        its engine core client's `shutdown` stops the core (and its processes, when it has them)."""
        if self.llm is not None:
            core = getattr(getattr(self.llm, "llm_engine", None), "engine_core", None)
            if hasattr(core, "shutdown"):
                core.shutdown()
            self.llm = None

    def stats(self) -> dict[str, float]:
        out = {"rollout_weight_sync_s": self._sync_seconds}
        self._sync_seconds = 0.0
        return out

    # ------------------------------------------------------------------------------ rollouts
    def requests(self, model: Any, tokenizer: Any, prompts: Sequence[Mapping[str, Any]]) -> list[dict]:
        """The vLLM requests of `prompts` (`encode_prompt` outputs): each video's features from the
        training model's vision tower with our ids (`ModelFamily.vllm_embeds_request`). Raises
        `RolloutInputMismatch` naming the prompt when vLLM would place its position ids differently
        from ours (`ModelFamily.vllm_position_mismatch`)."""
        import torch

        from vt_model.collate import collate_prompts
        from vt_model.engines.vllm import RolloutInputMismatch
        from vt_model.families import family_for_config
        from vt_model.generation import encode_videos
        from vt_model.prompts import special_ids

        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        family = family_for_config(base.config)
        for i, prompt in enumerate(prompts):  # before the vision tower runs: refusing costs nothing
            reason = family.vllm_position_mismatch(base.config, prompt)
            if reason:
                raise RolloutInputMismatch(f"prompt {i}: {reason}")
        batch = collate_prompts(list(prompts), special_ids(tokenizer).pad)
        device = next(model.parameters()).device
        with torch.no_grad():
            features = encode_videos(model, batch["pixel_values_videos"].to(device),
                                     batch["video_grid_thw"].to(device))
        return [family.vllm_embeds_request(tokenizer, prompt, feature.float().cpu())
                for prompt, feature in zip(prompts, features, strict=True)]

    def generate(self, model: Any, tokenizer: Any, prompts: Sequence[Mapping[str, Any]], settings: Any,
                 forced_prefixes: Sequence[Sequence[int] | None] | None = None):
        import torch

        from vt_model.engines.vllm import check_prompt_parity, sampled_logprobs, vllm_sampling_params
        from vt_model.generation import GenerationOutput, placeholder_ids
        from vt_model.prompts import special_ids

        if forced_prefixes is not None:  # n = G samples share one request: no per-completion prefix
            raise ValueError("grpo.guided_span_share needs rollout=hf: the vLLM engine samples a prompt's G "
                             "completions as one request and cannot write a span into some of them")
        if getattr(settings, "span_temperature", None) is not None:
            raise ValueError("grpo.span_temperature needs rollout=hf: vLLM samples every token at one "
                             "temperature")
        if self.llm is None:
            self._build(model)
        self._wake()
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        ids = special_ids(tokenizer)
        suppressed = placeholder_ids(base.config)
        requests = self.requests(model, tokenizer, prompts)
        params = vllm_sampling_params(
            {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p,
             "top_k": settings.top_k, "max_new_tokens": settings.max_completion_length},
            seed=self.seed + self._calls, n=settings.generations_per_prompt,
            stop_token_ids=[ids.im_end, ids.pad], suppressed_ids=suppressed, logprob_token_ids=suppressed)
        self._calls += 1
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        sequences, texts, logprobs, finished = [], [], [], []
        for i, (prompt, out) in enumerate(zip(prompts, outputs, strict=True)):
            check_prompt_parity(prompt["input_ids"].tolist(), out.prompt_token_ids, f"prompt {i}")
            tokens = [torch.tensor(list(c.token_ids), dtype=torch.long) for c in out.outputs]
            sequences.append(tokens)
            texts.append([tokenizer.decode(t, skip_special_tokens=True) for t in tokens])
            logprobs.append([sampled_logprobs(c, suppressed) for c in out.outputs])
            finished.append([c.finish_reason == "stop" for c in out.outputs])
        self._sleep()
        return GenerationOutput(sequences=sequences, texts=texts, logprobs=logprobs,
                                prompt_lengths=[int(p["attention_mask"].sum()) for p in prompts],
                                finished=finished)


__all__ = ["VLLMRolloutEngine"]
