"""GRPOSettings: every knob of a GRPO step in one small dataclass, with the batch sizes named without
ambiguity (style.md A2) and everything else derived from them and checked.

The three batch knobs:

    prompts_per_step        prompts (groups) that enter one optimizer update, summed over all ranks
    generations_per_prompt  G, completions sampled per prompt
    micro_batch_per_device  completions in one forward/backward on one device

Derived (per step, all ranks): completions_per_step = prompts_per_step × G. Per rank:
prompts_per_rank = prompts_per_step / world_size, completions_per_rank = prompts_per_rank × G,
micro_batches_per_rank = completions_per_rank / micro_batch_per_device. Sizes that do not divide are
refused with a message that names the numbers, never rounded.

Zero-variance groups (all G rewards equal) carry no signal. With `skip_zero_variance` they are dropped
and more prompts are drawn, up to `max_prompt_draws_per_step` prompts per step over all ranks, so that
each update keeps its planned `prompts_per_step` informative groups (learnability.md: the one lever that
consistently added accuracy on the CPU prototype). When the cap is reached first, the step is filled up
with zero-variance groups, which contribute only the KL term; every update therefore has the same size
on every rank (ranks stay in lockstep under DDP / ZeRO).

The paper's settings and the decisions it leaves open (method.md §7.2, §11) are recorded in
conf/grpo/default.yaml and experiments/experiment/video_thinker_7b_grpo.yaml.
"""

from __future__ import annotations

from dataclasses import dataclass

from vt_grpo.advantages import SCALES
from vt_grpo.loss import AGGREGATIONS, KL_ESTIMATORS


@dataclass
class GRPOSettings:
    """One GRPO step (see the module docstring for the batch-size arithmetic).

    updates_per_batch: μ, optimizer updates per rollout batch (1: ratio ≡ 1, clipping never acts;
        > 1: old log-probs are computed once before the first update and kept).
    beta: KL coefficient to the reference (start) policy; 0 switches the reference off.
    eps_low / eps_high: clip bounds of the ratio, [1 - eps_low, 1 + eps_high].
    kl_estimator: "k3" (default), "k1" or "k2" (vt_grpo.loss.kl_penalty).
    aggregation: "seq_mean" (GRPO paper, Video-R1), "token_mean" (DAPO), "constant" (Dr. GRPO).
    advantage_scale: "std" (divide by the group's sample std) or "none" (Dr. GRPO).
    max_completion_length: new tokens per completion at most; longer ones are cut (and counted).
    max_prompt_length: prompt tokens (text + video) at most; longer prompts fail loudly in the data.
    temperature / top_p / top_k: rollout sampling (top_p 1.0 and top_k 0 switch those filters off).
    span_temperature: the sampling temperature of the tokens inside `<time>…</time>` only (None: the
        rollout temperature everywhere). Exploration for a span reward: a policy that always writes the
        same span gives a temporal-IoU reward nothing to choose between (vt_model.generation,
        `span_temperature`). Only the sampling changes: the loss's log-probs are the training model's,
        recomputed at `temperature`.
    guided_span_share: the share of each group's completions (rounded to whole completions) that start
        from a span drawn at random and written for them, `<time>MM:SS-MM:SS</time>` in whole seconds,
        never degenerate (vt_data.timespan.is_degenerate); the policy writes the rest (caption, think,
        answer). Exploration for span and clue rewards that cannot mangle the span's format, as sampling
        the span at a high temperature does (experiments/tiny_cpu/README.md). 0 (default): off.
    guided_span_grid: where drawn spans start and end: None, whole seconds; N, the clip cut into N equal
        parts (e.g. 4: 0, 2, 4, 6, 8 s of an 8-s clip).
    guided_span_in_loss: True: the written span's tokens count in the loss like sampled ones, so a
        rewarded span is learned (advantage-weighted imitation, off-policy for those tokens); False:
        they are masked out and only what the policy wrote after them is trained.
    skip_zero_variance: drop zero-variance groups and draw more prompts (module docstring).
    max_prompt_draws_per_step: cap on prompts drawn per step over all ranks (None: 4 × prompts_per_step).
    prompts_per_generation: prompts per `generate` call on one rank (memory; None: the rank's quota).
    max_grad_norm: gradient clipping by total norm (0 or None: off). GRPO clips itself because
        Lightning refuses `gradient_clip_val` with manual optimisation.
    world_size: data-parallel processes (devices × nodes); the module checks it against the trainer.
    """

    prompts_per_step: int = 8
    generations_per_prompt: int = 8
    micro_batch_per_device: int = 8
    updates_per_batch: int = 1
    beta: float = 0.04
    eps_low: float = 0.2
    eps_high: float = 0.2
    kl_estimator: str = "k3"
    aggregation: str = "seq_mean"
    advantage_scale: str = "std"
    max_completion_length: int = 1024
    max_prompt_length: int = 16384
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    span_temperature: float | None = None
    guided_span_share: float = 0.0
    guided_span_grid: int | None = None
    guided_span_in_loss: bool = True
    skip_zero_variance: bool = True
    max_prompt_draws_per_step: int | None = None
    prompts_per_generation: int | None = None
    max_grad_norm: float | None = 5.0
    world_size: int = 1

    def __post_init__(self) -> None:
        for name in (
            "prompts_per_step",
            "generations_per_prompt",
            "micro_batch_per_device",
            "updates_per_batch",
            "max_completion_length",
            "max_prompt_length",
            "world_size",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.generations_per_prompt < 2:
            raise ValueError(
                "generations_per_prompt must be >= 2: a group of one completion has no spread, "
                "so its advantage is always 0"
            )
        if self.prompts_per_step % self.world_size:
            raise ValueError(
                f"prompts_per_step={self.prompts_per_step} is not divisible by world_size="
                f"{self.world_size} (each rank takes the same number of prompts)"
            )
        if self.completions_per_rank % self.micro_batch_per_device:
            raise ValueError(
                f"completions per rank = prompts_per_step / world_size × generations_per_prompt = "
                f"{self.prompts_per_step} / {self.world_size} × {self.generations_per_prompt} = "
                f"{self.completions_per_rank} is not divisible by micro_batch_per_device="
                f"{self.micro_batch_per_device}"
            )
        if self.max_prompt_draws_per_step is None:
            self.max_prompt_draws_per_step = 4 * self.prompts_per_step
        if self.max_prompt_draws_per_step < self.prompts_per_step:
            raise ValueError(
                f"max_prompt_draws_per_step={self.max_prompt_draws_per_step} is smaller than "
                f"prompts_per_step={self.prompts_per_step}"
            )
        if self.max_prompt_draws_per_step % self.world_size:
            raise ValueError(
                f"max_prompt_draws_per_step={self.max_prompt_draws_per_step} is not divisible by "
                f"world_size={self.world_size}"
            )
        if self.prompts_per_generation is not None and self.prompts_per_generation < 1:
            raise ValueError("prompts_per_generation must be >= 1 or None")
        if self.beta < 0 or self.eps_low < 0 or self.eps_high < 0:
            raise ValueError("beta, eps_low and eps_high must be >= 0")
        if self.eps_low >= 1:
            raise ValueError(
                f"eps_low must be < 1 (the lower clip bound 1 - eps_low > 0), got {self.eps_low}"
            )
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0 (rollouts sample), got {self.temperature}")
        if self.span_temperature is not None and not self.span_temperature > 0:
            raise ValueError(f"span_temperature must be > 0 or None, got {self.span_temperature}")
        if not 0 <= self.guided_span_share <= 1:
            raise ValueError(f"guided_span_share must be in [0, 1], got {self.guided_span_share}")
        if self.guided_span_grid is not None and self.guided_span_grid < 2:
            raise ValueError(f"guided_span_grid must be >= 2 or None, got {self.guided_span_grid}")
        if not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError(
                f"need 0 < top_p <= 1 and top_k >= 0, got top_p={self.top_p}, top_k={self.top_k}"
            )
        if self.kl_estimator not in KL_ESTIMATORS:
            raise ValueError(f"kl_estimator must be one of {KL_ESTIMATORS}, got {self.kl_estimator!r}")
        if self.aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {self.aggregation!r}")
        if self.advantage_scale not in SCALES:
            raise ValueError(f"advantage_scale must be one of {SCALES}, got {self.advantage_scale!r}")
        if self.max_grad_norm is not None and self.max_grad_norm < 0:
            raise ValueError("max_grad_norm must be >= 0 or None")

    # -- derived sizes ----------------------------------------------------------------------------
    @property
    def guided_per_group(self) -> int:
        """Completions of each group that start from a drawn span (guided_span_share × G, rounded)."""
        return int(round(self.guided_span_share * self.generations_per_prompt))

    @property
    def completions_per_step(self) -> int:
        """Completions in one update over all ranks (prompts_per_step × G)."""
        return self.prompts_per_step * self.generations_per_prompt

    @property
    def prompts_per_rank(self) -> int:
        """Groups each rank contributes to one update."""
        return self.prompts_per_step // self.world_size

    @property
    def completions_per_rank(self) -> int:
        return self.prompts_per_rank * self.generations_per_prompt

    @property
    def micro_batches_per_rank(self) -> int:
        """Forward/backward passes per update on each rank."""
        return self.completions_per_rank // self.micro_batch_per_device

    @property
    def draws_per_rank(self) -> int:
        """The most prompts one rank draws in one step (its share of max_prompt_draws_per_step)."""
        return int(self.max_prompt_draws_per_step) // self.world_size

    @property
    def generation_chunk(self) -> int:
        """Prompts per `generate` call on one rank."""
        return self.prompts_per_generation or self.prompts_per_rank

    @property
    def uses_reference(self) -> bool:
        return self.beta > 0

    def describe(self) -> str:
        """One line for the log: the knobs and what they imply."""
        return (
            f"{self.prompts_per_step} prompts/step × G={self.generations_per_prompt} = "
            f"{self.completions_per_step} completions/step over {self.world_size} rank(s); per rank "
            f"{self.prompts_per_rank} prompts, {self.micro_batches_per_rank} micro-batch(es) of "
            f"{self.micro_batch_per_device}; μ={self.updates_per_batch}; at most "
            f"{self.max_prompt_draws_per_step} prompts drawn/step"
            + (" (zero-variance groups skipped)" if self.skip_zero_variance else "")
        )
