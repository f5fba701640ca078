"""Where GRPO's rollouts come from: the rollout engine interface and its implementations, chosen by config
(`conf/rollout/{hf,vllm}.yaml`, `rollout=vllm` on the command line).

A rollout engine samples G completions for each prompt of a round and is told after every optimizer
step that the policy's weights changed:

* `HFRolloutEngine` ("hf", CPU and GPU): `vt_model.generation.generate` on the training model itself,
  one vision-tower pass and ONE language-model prefill per prompt (the KV cache repeated G times).
  Colocated by construction: it reads the live weights, so `after_update` has nothing to do.
* `VLLMRolloutEngine` ("vllm", `vt-grpo[vllm]`): a vLLM engine inside the training process, one per rank
  (`vt_grpo.vllm_rollout`).

Whatever the engine, the loss uses log-probs recomputed by the training model on the rollout batch
(`vt_grpo.rollout.build_rollout_batch` then `sequence_logprobs`); the engine's own per-token log-probs
are kept as `Group.logprobs` and only logged beside them (`train/rollout_logp_gap_max`): a health
metric of "rollout and training saw the same inputs and weights".
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class RolloutEngine(Protocol):
    """What GRPOModule needs from a rollout engine.

    generate: prompts (`vt_model.prompts.encode_prompt` outputs) -> a `vt_model.generation.
        GenerationOutput` with G = settings.generations_per_prompt completions per prompt (prompt-major),
        their per-token log-probs under the sampling engine, and `finished` flags. `forced_prefixes`
        (guided spans, `vt_grpo.rollout`): None, or one entry per completion, the token ids it must
        start with (None: free); an engine that cannot force tokens refuses them.
    reads_policy_weights: True when generation runs on the training model's own parameters (then the
        module gathers them under ZeRO-3 around `generate`); False when the engine holds its own copy.
    after_update: the policy's weights changed (called after every optimizer step, on every rank).
    stats: engine figures for the step's log (seconds spent syncing weights, ...); may be empty.
    """

    name: str
    reads_policy_weights: bool

    def generate(self, model: Any, tokenizer: Any, prompts: Sequence[Mapping[str, Any]],
                 settings: Any, forced_prefixes: Sequence[Sequence[int] | None] | None = None) -> Any: ...

    def after_update(self, model: Any, wrapped: Any = None) -> None: ...

    def stats(self) -> dict[str, float]: ...


class HFRolloutEngine:
    """Rollouts with transformers on the training model (see the module docstring).

    prefill: "shared" (one prefill per prompt, the default) or "per_completion" (transformers'
    `generate` over the G copies of each prompt: the slower reference path, kept for comparisons).
    """

    name = "hf"
    reads_policy_weights = True

    def __init__(self, prefill: str = "shared"):
        if prefill not in ("shared", "per_completion"):
            raise ValueError(f"prefill must be 'shared' or 'per_completion', got {prefill!r}")
        self.prefill = prefill

    def generate(self, model: Any, tokenizer: Any, prompts: Sequence[Mapping[str, Any]], settings: Any,
                 forced_prefixes: Sequence[Sequence[int] | None] | None = None):
        from vt_model.generation import generate

        return generate(
            model,
            tokenizer,
            list(prompts),
            num_return_sequences=settings.generations_per_prompt,
            do_sample=True,
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            max_new_tokens=settings.max_completion_length,
            return_logprobs=True,
            prefill=self.prefill,
            span_temperature=getattr(settings, "span_temperature", None),
            forced_prefixes=forced_prefixes,
        )

    def after_update(self, model: Any, wrapped: Any = None) -> None:
        """Nothing to do: generation reads the training model's parameters directly."""

    def stats(self) -> dict[str, float]:
        return {}


def build_rollout_engine(engine: RolloutEngine | Callable[[], RolloutEngine] | str | None) -> RolloutEngine:
    """An engine object as given, a factory called (configs pass `_partial_` ones, so the engine is built
    on its rank at set-up), "hf" / "vllm" by name (default settings), or None -> `HFRolloutEngine()`."""
    if callable(engine) and not isinstance(engine, RolloutEngine) and not isinstance(engine, type):
        engine = engine()
    if engine is None or engine == "hf":
        return HFRolloutEngine()
    if engine == "vllm":
        from vt_grpo.vllm_rollout import VLLMRolloutEngine

        return VLLMRolloutEngine()
    if isinstance(engine, str):
        raise ValueError(f"unknown rollout engine {engine!r}; choose 'hf' or 'vllm'")
    if not isinstance(engine, RolloutEngine):
        raise TypeError(f"a rollout engine needs name, reads_policy_weights, generate, after_update and "
                        f"stats; got {type(engine).__name__}")
    return engine


__all__ = ["HFRolloutEngine", "RolloutEngine", "build_rollout_engine"]
