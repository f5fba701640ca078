"""Rollouts for GRPO: G completions per prompt with the video encoded once, rewards, zero-variance
skipping with adaptive oversampling, and the rollout batch the loss trains on.

Pieces (each usable alone; the Lightning module only calls them in order):

* `sample_groups(model, tokenizer, items, settings, engine)`: the rollout engine
  (`vt_grpo.rollout_engines`; default hf: `vt_model.generation.generate`, the vision tower and the
  prefill run once per prompt) samples G completions per prompt at `settings.temperature` / `top_p` /
  `top_k`, stopping at `<|im_end|>` (end of turn) or after `max_completion_length` new tokens (then
  counted as truncated). Also records the sampling engine's per-token log-probs (raw logits, the
  vision placeholders excluded), logged beside the training model's, never used in the loss.
  With `settings.guided_span_share` > 0 the first `guided_per_group` completions of each group start
  from a span drawn at random (`draw_guided_span`, written as `<time>MM:SS-MM:SS</time>` and forced into
  them: `Group.forced_lengths`); the policy writes everything after it.
* `score_groups(groups, rewards)`: the weighted `RewardSet` over every completion, plus the accuracy,
  format and temporal-IoU diagnostics that are logged whether or not they are rewarded.
* `collect_groups(draw, rollout, settings, sync)`: the step's groups. Zero-variance groups (every
  completion scored the same) are skipped and more prompts drawn until the rank holds its planned
  `prompts_per_rank` informative groups or `draws_per_rank` prompts were drawn; then the step is filled
  up with zero-variance groups (KL term only). With several ranks every round is the same size on
  every rank (sized from all-reduced counts), so ranks stay in lockstep (ZeRO-3 generation needs it).
* `build_rollout_batch(groups, ...)` -> `RolloutBatch`, and `RolloutBatch.split(micro_batch)`.

Identical inputs for rollout and loss (method.md §10.10: Video-R1 deletes `second_per_grid_ts` before
its log-prob pass, so temporal positions differ between rollout and loss). The rollout batch keeps the
prompt's own `pixel_values_videos`, `video_grid_thw`, `second_per_grid_ts` and `mm_token_type_ids`
tensors (`vt_model.generation.rollout_batch`), and its `position_ids` are computed once here by the
same M-RoPE rule generation used (`vt_model.positions`); every later pass (reference, old policy,
policy with gradients) reads them from the batch and never recomputes or drops any of them. The
tests check that a log-prob pass over the training micro-batches reproduces generate's recorded
log-probs.

Layout: N = P × G rows, prompt-major (row p × G + g is prompt p's g-th completion); L columns = the
left-padded prompt, then the right-padded completion.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import torch

from vt_data.records import VideoQA
from vt_grpo.advantages import group_advantages
from vt_grpo.rewards import REGISTRY, RewardSet
from vt_grpo.settings import GRPOSettings
from vt_model.collate import video_keys

if TYPE_CHECKING:
    from vt_grpo.rollout_engines import RolloutEngine

# Diagnostics logged every step whether or not they are part of the reward (accuracy and format rate
# are how a person reads a GRPO run; temporal IoU only where the sample has ground-truth segments).
DIAGNOSTICS = ("accuracy", "format", "temporal_iou")
SyncFn = Callable[[torch.Tensor, str], torch.Tensor]  # (tensor, "sum" | "max") -> reduced over ranks


@dataclass
class PromptItem:
    """One prompt as drawn from the stream: `vt_model.prompts.encode_prompt`'s output (input_ids (L,),
    attention_mask (L,), mm_token_type_ids (L,), pixel_values_videos (n, D), video_grid_thw (1, 3),
    second_per_grid_ts (1,)), the record it came from (rewards need its answer, duration and
    segments) and its stream key."""

    prompt: dict[str, Any]
    record: VideoQA
    key: str


@dataclass
class Group:
    """A prompt and its G completions.

    sequences[g]: int64 (T_g,) completion ids, up to and including the stop token when one came.
    logprobs[g]: float32 (T_g,) per-token log-probs under the sampling policy (generate's recorder).
    finished[g]: False when cut at max_completion_length (truncated).
    rewards: [G] weighted total; scores: [G, K] per reward function (after `score_groups`).
    diagnostics: name -> [G] for DIAGNOSTICS.
    forced_lengths[g]: how many of the first tokens were written for the completion, not sampled (a
        guided span; 0 for a free completion). None: no completion was guided.
    """

    item: PromptItem
    sequences: list[torch.Tensor]
    texts: list[str]
    logprobs: list[torch.Tensor] | None
    finished: list[bool]
    rewards: torch.Tensor | None = None
    scores: torch.Tensor | None = None
    diagnostics: dict[str, torch.Tensor] = field(default_factory=dict)
    forced_lengths: list[int] | None = None

    @property
    def size(self) -> int:
        return len(self.sequences)

    @property
    def zero_variance(self) -> bool:
        """Every completion got exactly the same reward: the group carries no learning signal."""
        if self.rewards is None:
            raise ValueError("score the group first (score_groups)")
        return bool(self.rewards.max() == self.rewards.min())


# ------------------------------------------------------------------------------------ generation


def sample_groups(model, tokenizer, items: Sequence[PromptItem], settings: GRPOSettings,
                  engine: RolloutEngine | None = None) -> list[Group]:
    """G completions for each prompt, `settings.generation_chunk` prompts per engine call.

    engine: a `vt_grpo.rollout_engines.RolloutEngine` (default: the hf engine on `model`, one vision
    pass and one prefill per prompt). Runs under no_grad in the model's current mode (the caller puts
    it in eval mode).
    """
    from vt_grpo.rollout_engines import HFRolloutEngine

    engine = engine if engine is not None else HFRolloutEngine()
    groups: list[Group] = []
    chunk = settings.generation_chunk
    G, guided = settings.generations_per_prompt, settings.guided_per_group
    for start in range(0, len(items), chunk):
        part = list(items[start : start + chunk])
        prompts = [it.prompt for it in part]
        if guided:
            grid = settings.guided_span_grid
            prefixes = [guided_span_prefix(tokenizer, item.record, grid) if g < guided else None
                        for item in part for g in range(G)]  # (P * G,) prompt-major
            out = engine.generate(model, tokenizer, prompts, settings, forced_prefixes=prefixes)
        else:
            prefixes, out = None, engine.generate(model, tokenizer, prompts, settings)
        for p, item in enumerate(part):
            groups.append(
                Group(
                    item=item,
                    sequences=out.sequences[p],
                    texts=out.texts[p],
                    logprobs=out.logprobs[p] if out.logprobs is not None else None,
                    finished=out.finished[p],
                    forced_lengths=None if prefixes is None else [
                        len(prefixes[p * G + g] or ()) for g in range(G)],
                )
            )
    return groups


def draw_guided_span(duration: float, parts: int | None = None) -> tuple[float, float] | None:
    """A random span inside [0, duration], never degenerate, drawn uniformly (torch's global RNG, so a
    resumed run draws the same ones) among the pairs start < end on a grid: whole seconds (parts=None)
    or the clip cut into `parts` equal pieces (a coarser prior: more drawn spans line up with events).
    None when no such span fits (a clip of a second or so)."""
    from vt_data.timespan import is_degenerate

    if parts is None:
        points = [float(s) for s in range(int(math.floor(duration)) + 1)]
    else:
        points = [round(duration * k / parts, 3) for k in range(parts + 1)]
    pairs = [(a, b) for i, a in enumerate(points) for b in points[i + 1:]
             if not is_degenerate((a, b), duration)]
    return pairs[int(torch.randint(len(pairs), ()))] if pairs else None


def guided_span_prefix(tokenizer, record: VideoQA, parts: int | None = None) -> list[int] | None:
    """The token ids of `<time>MM:SS-MM:SS</time>` for a span drawn in `record`'s clip (trace grammar:
    vt_data.trace), or None when the record has no duration or no span fits its clip (that completion
    stays free)."""
    from vt_data.trace import render_time_tag

    span = draw_guided_span(float(record.duration), parts) if record.duration else None
    return None if span is None else list(tokenizer.encode(render_time_tag(*span), add_special_tokens=False))


def score_groups(groups: Sequence[Group], rewards: RewardSet) -> None:
    """Fill `rewards`, `scores` and `diagnostics` of every group (one RewardSet call for all)."""
    if not groups:
        return
    texts = [t for g in groups for t in g.texts]
    samples = [g.item.record for g in groups for _ in range(g.size)]
    scored = rewards(texts, samples)  # total [N], per_function [N, K]
    extra = {}
    for name in DIAGNOSTICS:
        if name in scored.names:
            extra[name] = scored.per_function[:, scored.names.index(name)]
        else:
            extra[name] = torch.tensor(REGISTRY[name](texts, samples), dtype=torch.float32)  # [N]
    start = 0
    for g in groups:
        stop = start + g.size
        g.rewards = scored.total[start:stop].clone()  # [G]
        g.scores = scored.per_function[start:stop].clone()  # [G, K]
        g.diagnostics = {name: values[start:stop].clone() for name, values in extra.items()}
        start = stop


# ------------------------------------------------------------------- zero variance and oversampling


@dataclass
class Collection:
    """The groups of one step on one rank, and how they were found.

    groups: the `prompts_per_rank` groups this rank trains on (informative first, then any filler).
    drawn: every group generated in this step, in draw order (the policy's reward curve is logged
    over these: fresh prompts, no selection).
    """

    groups: list[Group]
    drawn: list[Group]
    rounds: int = 1
    informative: int = 0  # informative groups found (including discarded ones)
    zero_variance: int = 0  # zero-variance groups found
    skipped: int = 0  # zero-variance groups not trained on
    filled: int = 0  # zero-variance groups trained on because the draw cap was reached
    discarded: int = 0  # informative groups beyond the quota (drawn in the last round, not trained)

    @property
    def keys(self) -> list[str]:
        return [g.item.key for g in self.drawn]


def _next_round_size(shortfall: int, informative: float, drawn: float, previous: int, remaining: int) -> int:
    """Prompts to draw next: enough to cover the largest rank's shortfall at the informative rate seen
    so far in this step; twice the previous round while none was informative; within the cap."""
    rate = informative / drawn if drawn > 0 else 0.0
    size = math.ceil(shortfall / rate) if rate > 0 else 2 * previous
    return max(1, min(max(size, shortfall), remaining))


def collect_groups(
    draw: Callable[[int], list[PromptItem]],
    rollout: Callable[[list[PromptItem]], list[Group]],
    settings: GRPOSettings,
    sync: SyncFn | None = None,
) -> Collection:
    """Draw prompts, roll them out and keep the step's groups (module docstring).

    draw(n): the next n prompts of this rank's stream. rollout(items): their scored groups.
    sync(tensor, op): all-reduce over ranks (None: one rank). Every rank runs the same number of
    rounds of the same size, so generation stays in lockstep across ranks.
    """
    quota, cap = settings.prompts_per_rank, settings.draws_per_rank
    kept: list[Group] = []
    zero: list[Group] = []
    drawn: list[Group] = []
    informative = discarded = rounds = 0
    size = quota
    while True:
        new = rollout(draw(size))
        rounds += 1
        drawn += new
        for g in new:
            if g.zero_variance:
                zero.append(g)
                if settings.skip_zero_variance:
                    continue
            else:
                informative += 1
            if len(kept) < quota:
                kept.append(g)
            elif not g.zero_variance:
                discarded += 1
        if not settings.skip_zero_variance:
            break
        shortfall = quota - len(kept)
        local = torch.tensor([float(shortfall), float(informative), float(len(drawn))], dtype=torch.float64)
        if sync is not None:
            shortfall_max = int(sync(local[:1].clone(), "max")[0])
            informative_all, drawn_all = sync(local[1:].clone(), "sum").tolist()
        else:
            shortfall_max, informative_all, drawn_all = shortfall, informative, float(len(drawn))
        remaining = cap - len(drawn)  # identical on every rank: every round has the same size
        if shortfall_max <= 0 or remaining <= 0:
            break
        size = _next_round_size(shortfall_max, informative_all, drawn_all, size, remaining)
    filled = 0
    if len(kept) < quota:  # the cap was reached: complete the step with zero-variance groups (KL only)
        used = {id(g) for g in kept}
        filler = [g for g in zero if id(g) not in used][: quota - len(kept)]
        filled = len(filler)
        kept += filler
    if len(kept) != quota:
        raise RuntimeError(f"collected {len(kept)} groups for a quota of {quota} (the stream ran short?)")
    zero_count = len(zero)
    trained_zero = sum(1 for g in kept if g.zero_variance)
    return Collection(
        groups=kept,
        drawn=drawn,
        rounds=rounds,
        informative=informative,
        zero_variance=zero_count,
        skipped=zero_count - trained_zero,
        filled=filled,
        discarded=discarded,
    )


# ------------------------------------------------------------------------------- the rollout batch


@dataclass
class RolloutBatch:
    """N completion rows (prompt-major, P prompts × G) ready for log-prob passes and the loss.

    inputs: input_ids, attention_mask, mm_token_type_ids [N, L]; position_ids [3, N, L];
        pixel_values_videos [Σ patches, D], video_grid_thw [V, 3], second_per_grid_ts [V] of the V
        distinct videos; video_index [N] (row -> video). Exactly the tensors the rollout used.
    completion_mask: [N, L] bool, True on completion tokens (the stop token included).
    rollout_logprobs: [N, L] float32, generate's log-probs of the sampled tokens (0 elsewhere) or None.
    rewards, advantages: [N]. truncated: [N] bool.
    old_logprobs, ref_logprobs: [N, L] or None, filled by the module before the updates.
    """

    inputs: dict[str, torch.Tensor]
    completion_mask: torch.Tensor
    rollout_logprobs: torch.Tensor | None
    rewards: torch.Tensor
    advantages: torch.Tensor
    truncated: torch.Tensor
    group_size: int
    old_logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.completion_mask.shape[0])

    @property
    def completion_lengths(self) -> torch.Tensor:
        """[N] completion tokens per row."""
        return self.completion_mask.sum(dim=1)

    def rows(self, start: int, stop: int) -> RolloutBatch:
        """Rows [start, stop) with only their videos (re-indexed) and without all-padding columns.

        Columns are cut only where every kept row is padding, so no token moves relative to its
        neighbours; the position ids were computed on the full batch and are sliced, not recomputed.
        """
        inputs = self.inputs
        video_index = inputs["video_index"][start:stop]  # [n]
        videos = torch.unique(video_index)  # sorted distinct video ids
        sizes = inputs["video_grid_thw"].prod(-1).tolist()
        pixels = torch.split(inputs["pixel_values_videos"], sizes, dim=0)
        used = inputs["attention_mask"][start:stop].bool().any(0).nonzero()  # columns with any token
        c0, c1 = int(used[0]), int(used[-1]) + 1

        def cols(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t[start:stop, c0:c1]

        sliced = {
            "input_ids": cols(inputs["input_ids"]),
            "attention_mask": cols(inputs["attention_mask"]),
            "mm_token_type_ids": cols(inputs["mm_token_type_ids"]),
            "position_ids": inputs["position_ids"][:, start:stop, c0:c1],
            "pixel_values_videos": torch.cat([pixels[int(v)] for v in videos], dim=0),
            # video_grid_thw [V, 3] and the family's other per-video keys (Qwen2.5-VL: second_per_grid_ts)
            **{key: inputs[key][videos] for key in video_keys(inputs)[1:]},
            "video_index": torch.searchsorted(videos, video_index),
        }
        return replace(
            self,
            inputs=sliced,
            completion_mask=cols(self.completion_mask),
            rollout_logprobs=cols(self.rollout_logprobs),
            rewards=self.rewards[start:stop],
            advantages=self.advantages[start:stop],
            truncated=self.truncated[start:stop],
            old_logprobs=cols(self.old_logprobs),
            ref_logprobs=cols(self.ref_logprobs),
        )

    def split(self, micro_batch: int) -> list[RolloutBatch]:
        """Consecutive micro-batches of `micro_batch` rows (N must be a multiple)."""
        if len(self) % micro_batch:
            raise ValueError(f"{len(self)} rows do not split into micro-batches of {micro_batch}")
        return [self.rows(i, i + micro_batch) for i in range(0, len(self), micro_batch)]


def build_rollout_batch(
    groups: Sequence[Group], pad_token_id: int, model_config: Any, *, advantage_scale: str = "std",
    train_forced_tokens: bool = True,
) -> RolloutBatch:
    """Scored groups -> one RolloutBatch (prompts collated with left padding, completions right-padded,
    position ids by the model family's rule (Qwen2.5-VL: the original M-RoPE one), advantages per group).
    train_forced_tokens=False leaves the written (guided-span) tokens out of `completion_mask`, so the
    loss sees only what the policy sampled (`GRPOSettings.guided_span_in_loss`)."""
    from vt_model.families import family_for_config
    from vt_model.generation import GenerationOutput, rollout_batch

    if not groups:
        raise ValueError("no groups to batch")
    sizes = {g.size for g in groups}
    if len(sizes) != 1:
        raise ValueError(f"groups of different sizes {sorted(sizes)}")
    G = sizes.pop()
    if any(g.rewards is None for g in groups):
        raise ValueError("score the groups first (score_groups)")
    prompts = [g.item.prompt for g in groups]
    has_logprobs = all(g.logprobs is not None for g in groups)
    output = GenerationOutput(
        sequences=[g.sequences for g in groups],
        texts=[g.texts for g in groups],
        logprobs=[g.logprobs for g in groups] if has_logprobs else None,
        prompt_lengths=[int(p["input_ids"].numel()) for p in prompts],
        finished=[g.finished for g in groups],
    )
    batch, completion_mask = rollout_batch(prompts, output, pad_token_id)  # [N, L] each
    video_index = batch["video_index"]  # [N]
    per_row = {
        "input_ids": batch["input_ids"],
        "attention_mask": batch["attention_mask"],
        **{key: batch[key][video_index] for key in video_keys(batch)[1:]},  # one grid, ... per row
    }
    batch["position_ids"] = family_for_config(model_config).position_ids(model_config, per_row)  # [3, N, L]
    completion_mask = completion_mask.bool()

    rollout_logprobs = None
    if has_logprobs:
        rollout_logprobs = torch.zeros(completion_mask.shape, dtype=torch.float32)  # [N, L]
        rows = [lp for g in groups for lp in g.logprobs]
        for i, lp in enumerate(rows):
            cols = completion_mask[i].nonzero().squeeze(1)  # the completion's columns, in order
            rollout_logprobs[i, cols] = lp.float()
    if not train_forced_tokens:  # after the log-probs above: they fill the completion's columns in order
        forced = [n for g in groups for n in (g.forced_lengths or [0] * g.size)]  # [N]
        for i, n in enumerate(forced):
            completion_mask[i, completion_mask[i].nonzero().squeeze(1)[:n]] = False
    rewards = torch.cat([g.rewards for g in groups]).float()  # [N]
    advantages = group_advantages(rewards, G, scale=advantage_scale)  # [N]
    truncated = torch.tensor([not f for g in groups for f in g.finished], dtype=torch.bool)  # [N]
    return RolloutBatch(
        inputs=batch,
        completion_mask=completion_mask,
        rollout_logprobs=rollout_logprobs,
        rewards=rewards,
        advantages=advantages,
        truncated=truncated,
        group_size=G,
    )


# ------------------------------------------------------------------------------ log-prob passes


def policy_logprobs(
    model,
    batch: Mapping[str, Any],
    completion_mask: torch.Tensor,
    *,
    temperature: float = 1.0,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`vt_model.generation.sequence_logprobs` (gradients flow) and, on request, the policy's per-token
    entropy [N, L] (detached; 0 off the completion) from the same forward pass.

    The entropy needs the full distribution, which `sequence_logprobs` does not return; a forward hook
    on the model reads the logits that pass computed, so no second forward is run. The entropy uses
    the same distribution as the log-probs: logits / temperature, vision placeholders excluded.
    """
    from vt_model.generation import placeholder_ids, sequence_logprobs

    captured: dict[str, torch.Tensor] = {}
    handle = None
    if with_entropy:
        handle = model.register_forward_hook(lambda _m, _a, out: captured.__setitem__("logits", out.logits))
    try:
        logp = sequence_logprobs(model, batch, completion_mask, temperature=temperature)  # [N, L]
    finally:
        if handle is not None:
            handle.remove()
    if not with_entropy:
        return logp, None
    mask = completion_mask.to(logp.device).bool()
    entropy = torch.zeros(mask.shape, dtype=torch.float32, device=logp.device)  # [N, L]
    if not bool(mask.any()):
        return logp, entropy
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    suppressed = torch.tensor(placeholder_ids(base.config), device=logp.device)
    first = int(mask.any(0).nonzero()[0])  # the first predicted column, as sequence_logprobs chose it
    with torch.no_grad():
        logits = captured["logits"]  # [N, L - first + 1, V]
        for i in range(logits.shape[0]):  # row by row: one [L', V] softmax at a time
            scaled = (logits[i, :-1].float() / temperature).index_fill(-1, suppressed, float("-inf"))
            logq = torch.log_softmax(scaled, dim=-1)  # [L', V]
            ent = -(logq.exp() * torch.where(torch.isfinite(logq), logq, torch.zeros_like(logq))).sum(-1)
            entropy[i, first:] = ent
    return logp, entropy * mask


__all__ = [
    "PromptItem",
    "Group",
    "Collection",
    "RolloutBatch",
    "sample_groups",
    "score_groups",
    "collect_groups",
    "build_rollout_batch",
    "policy_logprobs",
    "DIAGNOSTICS",
]
