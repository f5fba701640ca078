"""Rollouts for GRPO and evaluation: G completions per video prompt with the video encoded ONCE and the
prompt prefilled ONCE, and per-token log-probs of given completions in one forward pass.

One prefill per prompt (the default, `prefill="shared"`): the vision tower runs once on the B prompts'
videos; the language model runs once over the B prompts (video features scattered into their
`<|video_pad|>` positions through `mm_encoder_outputs`, see below) and returns their KV cache; the cache
is repeated G times (`DynamicCache.batch_repeat_interleave`, prompt-major: row b * G + g) and our own
decode loop samples the B * G continuations (temperature, top-k, top-p in transformers' warper order;
the vision placeholder ids suppressed; stop at <|im_end|> / <|endoftext|>). transformers' `generate`
cannot share a prefill between the G samples of one prompt: it prefills all B * G rows, which for a
video prompt is most of the rollout's compute (experiments/perf/rollout_shared_prefill.py).

Positions: our M-RoPE ids (the model family's rule, vt_model.families; for Qwen2.5-VL `vt_model.positions`,
the original rule, stack.md §3) are computed for the B left-padded prompts and passed to the prefill;
since every prompt ends in text, whose three components are equal, the t-th new token of a row sits at
(last prompt position) + 1 + t in all three (no `rope_deltas` bookkeeping: positions are always passed
explicitly).

The reference path, `prefill="per_completion"`, is transformers' `generate`. How "encode once" works
there in transformers 5.23 (read in generation/utils.py and modeling_qwen2_5_vl.py):

* `Qwen2_5_VLForConditionalGeneration.forward` accepts `mm_encoder_outputs={"video": out}`, where
  `out.pooler_output` is a sequence of per-video feature tensors (n_tokens_i, hidden) as returned by
  `get_video_features(pixel_values_videos, video_grid_thw)`; the forward then skips the vision tower and
  scatters those rows into the `<|video_pad|>` positions in placeholder order (batch row by batch row).
  Qwen3-VL's forward takes the same kwarg with its DeepStack features beside them; the family packs both
  into one tensor per video (`ModelFamily.video_features` / `video_encoder_outputs`).
* `generate` forwards `mm_encoder_outputs` to the prefill step only
  (MULTIMODAL_INPUTS_TO_DROP_OUTSIDE_PREFILL) and never re-encodes when no pixel values are given.
* We run the vision tower once on the B prompts' videos, repeat the *feature tensors* (not the pixels)
  G times in the order of the expanded batch (prompt-major: row b * G + g), expand the text inputs with
  repeat_interleave, and call `generate(num_return_sequences=1)` on the B * G rows. Doing the expansion
  ourselves (rather than relying on generate's own `num_return_sequences` expansion, which in 5.23 also
  encodes first and expands `mm_encoder_outputs`) keeps greedy decoding possible with G > 1 (generate
  refuses num_return_sequences > 1 without sampling) and keeps us independent of that internal order.
* M-RoPE: the prompts' position ids are repeat-interleaved to (3, B * G, L). When `position_ids` is
  passed, generate skips its own `get_rope_index` (which implements the 5.x text-after-video rule) and
  extends the ids by last + 1 per new token.

The naive path (`encode_once=False`) repeats the pixels G times and lets the model encode B * G videos;
tests/test_generation.py checks every path gives the same greedy tokens and log-probs, counts the videos
the vision tower sees (B vs B * G) and the rows the language model prefills (B vs B * G).

Log-probs: `return_logprobs=True` records log softmax of the *raw* model logits (temperature 1, before
top-k / top-p) at every step (on the reference path with a logits processor placed before the sampling
warpers), keeping only the chosen token's value (memory O(B * G * V) for one step, not for the whole
sequence). They equal
`sequence_logprobs(..., temperature=1.0)` of the same completions, the quantity a GRPO ratio needs.
Both exclude the vision placeholder ids (`placeholder_ids`): the policy never emits them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from vt_model.collate import collate_prompts, video_keys
from vt_model.families import family_for_config
from vt_model.prompts import special_ids


@dataclass
class GenerationOutput:
    """Completions grouped by prompt.

    sequences[p][g]: int64 (T,) completion ids of prompt p's g-th completion, up to and including the
        first stop token (<|im_end|> or <|endoftext|>) when one was generated; no padding.
    texts[p][g]: the decoded completion without special tokens.
    logprobs[p][g]: float32 (T,) log-prob of each completion token under the raw model (or None).
    prompt_lengths[p]: prompt p's length in tokens (text + video, no padding).
    finished[p][g]: True when the completion ended with a stop token (False: cut by max_new_tokens).
    """

    sequences: list[list[torch.Tensor]]
    texts: list[list[str]]
    logprobs: list[list[torch.Tensor]] | None
    prompt_lengths: list[int]
    finished: list[list[bool]] = field(default_factory=list)

    @property
    def num_return_sequences(self) -> int:
        return len(self.sequences[0]) if self.sequences else 0


class _ChosenTokenLogprobs:
    """A logits processor that records log p(chosen token) from the raw logits of every step.

    generate calls processors before sampling, so the token chosen at step s is only visible at step
    s + 1 (the last column of input_ids); the final step's token is read in `finish`.
    """

    def __init__(self) -> None:
        self.previous: torch.Tensor | None = None  # (N, V) log-probs of the last step
        self.steps: list[torch.Tensor] = []  # each (N,)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.previous is not None:
            self.steps.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, last_tokens: torch.Tensor) -> torch.Tensor:
        """(N,) tokens of the final step -> (N, T) log-probs."""
        if self.previous is not None:
            self.steps.append(self.previous.gather(1, last_tokens[:, None]).squeeze(1))
            self.previous = None
        return torch.stack(self.steps, dim=1) if self.steps else last_tokens.new_zeros((len(last_tokens), 0))


def placeholder_ids(model_config) -> tuple[int, ...]:
    """Vision placeholder / delimiter ids (video, image, vision start / end) from a Qwen2.5-VL config.

    The policy never emits them: a sampled `<|video_pad|>` would break the placeholder count (and the
    M-RoPE blocks) of every later pass over the completion. generate suppresses them and
    `sequence_logprobs` renormalises without them, so both use the same distribution.
    """
    return tuple(int(getattr(model_config, name)) for name in
                 ("video_token_id", "image_token_id", "vision_start_token_id", "vision_end_token_id"))


def _base(model):
    """The Qwen2_5_VLForConditionalGeneration under a peft wrapper (if any)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def encode_videos(model, pixel_values_videos: torch.Tensor,
                  video_grid_thw: torch.Tensor) -> list[torch.Tensor]:
    """Run the vision tower (incl. the merger) once: -> one tensor per video, (n_tokens_i, hidden) for
    Qwen2.5-VL (the family's `video_features` says what it packs)."""
    base = _base(model)
    return family_for_config(base.config).video_features(base, pixel_values_videos, video_grid_thw)


def _video_encoder_outputs(model, features: Sequence[torch.Tensor]) -> dict[str, Any]:
    """Per-row video features (`encode_videos`) -> the forward's `mm_encoder_outputs` kwarg."""
    config = _base(model).config
    return family_for_config(config).video_encoder_outputs(config, features)


def _positions(model, batch: Mapping[str, Any]) -> torch.Tensor:
    """(3, B, L) position ids by the model family's own rule."""
    config = _base(model).config
    return family_for_config(config).position_ids(config, batch)


def _video_keys(model) -> tuple[str, ...]:
    """The batch keys that hold one row per video (the grid, and Qwen2.5-VL's second_per_grid_ts)."""
    return family_for_config(_base(model).config).per_video_keys


def _as_prompt_batch(prompt_batch: Sequence[Mapping[str, Any]] | Mapping[str, Any], pad_token_id: int):
    if isinstance(prompt_batch, Mapping):
        if prompt_batch["input_ids"].ndim != 2:
            raise ValueError("a collated prompt batch needs input_ids (B, L); "
                             "pass a list of encode_prompt outputs")
        return prompt_batch
    return collate_prompts(list(prompt_batch), pad_token_id)


def _repeat_rows(batch: Mapping[str, Any], repeats: int) -> dict[str, torch.Tensor]:
    """Text-side tensors (B, L) / positions (3, B, L) -> B * repeats rows, prompt-major."""
    return {
        "input_ids": batch["input_ids"].repeat_interleave(repeats, dim=0),
        "attention_mask": batch["attention_mask"].repeat_interleave(repeats, dim=0),
        "mm_token_type_ids": batch["mm_token_type_ids"].repeat_interleave(repeats, dim=0),
        "position_ids": batch["position_ids"].repeat_interleave(repeats, dim=1),
    }


def _split_pixels(batch: Mapping[str, Any]) -> list[torch.Tensor]:
    sizes = batch["video_grid_thw"].prod(-1).tolist()
    return list(torch.split(batch["pixel_values_videos"], sizes, dim=0))


def trim_completion(tokens: torch.Tensor, stop_ids: Sequence[int]) -> tuple[torch.Tensor, bool]:
    """(T,) generated ids -> (ids up to and including the first stop id, whether a stop id occurred).

    generate keeps writing the pad id after a row has stopped; everything after the stop is dropped.
    """
    hits = torch.isin(tokens, torch.tensor(list(stop_ids), device=tokens.device)).nonzero()
    if hits.numel():
        return tokens[: int(hits[0]) + 1], True
    return tokens, False


# --- one prefill per prompt: our own decode loop -----------------------------------------------------
def _filter_logits(logits: torch.Tensor, *, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """(N, V) float32 logits -> the sampling distribution's logits, in transformers' warper order
    (temperature, then top-k, then top-p with at least one token kept), so a sampled rollout follows the
    same distribution as `model.generate` with the same settings."""
    if temperature != 1.0:
        logits = logits / temperature
    if top_k and 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (N, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop_sorted = cumulative <= (1 - top_p)
        drop_sorted[..., -1:] = False  # the most likely token always stays
        logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
    return logits


def _next_tokens(logits: torch.Tensor, *, do_sample: bool, temperature: float | torch.Tensor, top_k: int,
                 top_p: float) -> torch.Tensor:
    """(N, V) float32 logits (placeholders already suppressed) -> (N,) chosen tokens. `temperature` is
    one number, or (N, 1) per-row temperatures (`_SpanTracker`), applied first as the warper order has it."""
    if not do_sample:
        return logits.argmax(dim=-1)
    if isinstance(temperature, torch.Tensor):
        logits, temperature = logits / temperature, 1.0
    probs = _filter_logits(logits, temperature=temperature, top_k=top_k, top_p=top_p).softmax(dim=-1)
    return torch.multinomial(probs, num_samples=1).squeeze(1)


class _SpanTracker:
    """Per row, whether the last `<time>` it emitted is still open (no `</time>` yet), and so its
    sampling temperature: `span_temperature` inside, `temperature` elsewhere (generate's span_temperature).

    Read from the decoded text, not from token ids: a tag splits into different tokens in different
    contexts ("<time" + ">" after a newline, " <" + "time" + ">" after a space). Each row keeps only its
    last len("</time>") - 1 characters, enough to finish a tag split over tokens; the last complete tag
    in that tail and the new piece decides.
    """

    OPEN, CLOSE = "<time>", "</time>"

    def __init__(self, tokenizer, rows: int, temperature: float, span_temperature: float, device) -> None:
        self.tokenizer, self.temperature, self.span_temperature = tokenizer, temperature, span_temperature
        self.pieces: dict[int, str] = {}  # token id -> its lower-cased text, decoded once
        self.tails = [""] * rows
        self.inside = torch.zeros(rows, dtype=torch.bool, device=device)  # (N,)

    def temperatures(self) -> torch.Tensor:
        """(N, 1) float32 temperature of each row's next token."""
        return torch.where(self.inside, self.span_temperature, self.temperature).float()[:, None]

    def update(self, tokens: torch.Tensor) -> None:
        """Advance every row by its chosen token (N,)."""
        inside = self.inside.tolist()
        for row, token in enumerate(tokens.tolist()):
            if token not in self.pieces:
                self.pieces[token] = self.tokenizer.decode([token]).lower()
            tail = self.tails[row] + self.pieces[token]
            opened, closed = tail.rfind(self.OPEN), tail.rfind(self.CLOSE)
            if opened != closed:  # equal only when neither occurs: the state stays
                inside[row] = opened > closed
            self.tails[row] = tail[-(len(self.CLOSE) - 1):]
        self.inside = torch.tensor(inside, dtype=torch.bool, device=self.inside.device)


def _forced_tokens(prefixes: Sequence[Sequence[int] | None], rows: int, device) -> torch.Tensor:
    """`forced_prefixes` -> (rows, F) int64, -1 past each row's prefix (and on free rows)."""
    if len(prefixes) != rows:
        raise ValueError(f"forced_prefixes has {len(prefixes)} entries for {rows} completions (B * G)")
    width = max((len(p) for p in prefixes if p is not None), default=0)
    forced = torch.full((rows, width), -1, dtype=torch.long)
    for row, prefix in enumerate(prefixes):
        if prefix:
            forced[row, : len(prefix)] = torch.as_tensor([int(t) for t in prefix], dtype=torch.long)
    return forced.to(device)


def _shared_prefill_decode(model, batch: Mapping[str, Any], G: int, *, encoder_outputs: dict | None,
                           suppressed: torch.Tensor, stop_ids: torch.Tensor, pad_id: int,
                           max_new_tokens: int, do_sample: bool, temperature: float, top_k: int,
                           top_p: float, return_logprobs: bool, span_tracker: _SpanTracker | None = None,
                           forced: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Prefill the B prompts ONCE, repeat their KV cache G times, decode the B * G rows.

    batch: input_ids, attention_mask, mm_token_type_ids (B, L), position_ids (3, B, L) by the original
    M-RoPE rule. Returns completions (B*G, T) (pad after a row's stop token, as generate writes) and, when
    asked, the chosen tokens' log-probs (B*G, T) under the raw logits with the placeholders suppressed.

    Positions: every prompt ends in text, whose three M-RoPE components are equal, so the t-th new token
    of a row sits at (that row's last prompt position) + 1 + t in all three components -- the same ids
    generate derives when it is given position_ids. The KV cache holds each prompt once until the
    repeat: the prefill costs B rows, not B * G (transformers' generate prefills all B * G rows).
    span_tracker: per-row temperatures inside `<time>` spans (None: `temperature` for every token).
    forced: (B*G, F) int64, the tokens each row must start with, -1 where a row is free (`forced_prefixes`
    of generate). A forced token replaces the sampled one after sampling, so every row draws from the
    RNG exactly as without forcing and the free rows come out the same.
    """
    prefill = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        mm_token_type_ids=batch["mm_token_type_ids"],
        **({"mm_encoder_outputs": encoder_outputs} if encoder_outputs is not None else {}),
        use_cache=True,
        logits_to_keep=1,
    )
    cache = prefill.past_key_values
    cache.batch_repeat_interleave(G)  # (B, ...) -> (B*G, ...), prompt-major like the rows
    logits = prefill.logits[:, -1].float().repeat_interleave(G, dim=0)  # (B*G, V)
    attention_mask = batch["attention_mask"].repeat_interleave(G, dim=0)  # (B*G, L)
    next_position = batch["position_ids"][:, :, -1:].repeat_interleave(G, dim=1) + 1  # (3, B*G, 1)
    N = logits.shape[0]
    unfinished = torch.ones(N, dtype=torch.bool, device=logits.device)
    tokens: list[torch.Tensor] = []  # each (N,)
    token_logprobs: list[torch.Tensor] = []
    for step in range(max_new_tokens):
        logits = logits.index_fill(-1, suppressed, float("-inf"))
        step_temperature = temperature if span_tracker is None else span_tracker.temperatures()
        chosen = _next_tokens(logits, do_sample=do_sample, temperature=step_temperature, top_k=top_k,
                              top_p=top_p)
        if forced is not None and step < forced.shape[1]:
            chosen = torch.where(forced[:, step] >= 0, forced[:, step], chosen)
        if return_logprobs:
            token_logprobs.append(torch.log_softmax(logits, dim=-1).gather(1, chosen[:, None]).squeeze(1))
        chosen = torch.where(unfinished, chosen, torch.full_like(chosen, pad_id))
        tokens.append(chosen)
        if span_tracker is not None:
            span_tracker.update(chosen)
        unfinished = unfinished & ~torch.isin(chosen, stop_ids)
        if not bool(unfinished.any()) or step + 1 == max_new_tokens:
            break
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones((N, 1))], dim=1)
        out = model(
            input_ids=chosen[:, None],
            attention_mask=attention_mask,
            position_ids=next_position + step,
            past_key_values=cache,
            use_cache=True,
        )
        cache = out.past_key_values
        logits = out.logits[:, -1].float()
    completions = torch.stack(tokens, dim=1) if tokens else torch.zeros((N, 0), dtype=torch.long)
    logprobs = torch.stack(token_logprobs, dim=1) if return_logprobs and token_logprobs else (
        torch.zeros((N, 0)) if return_logprobs else None)
    return completions, logprobs


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompt_batch: Sequence[Mapping[str, Any]] | Mapping[str, Any],
    *,
    num_return_sequences: int = 1,
    do_sample: bool = True,
    temperature: float = 1.0,
    top_p: float = 1.0,
    top_k: int = 0,
    max_new_tokens: int = 256,
    return_logprobs: bool = False,
    prefill: str = "shared",
    encode_once: bool = True,
    span_temperature: float | None = None,
    forced_prefixes: Sequence[Sequence[int] | None] | None = None,
) -> GenerationOutput:
    """G = num_return_sequences completions for each prompt, the video encoded once per prompt.

    prompt_batch: a list of `prompts.encode_prompt` outputs (collated here with left padding) or a
    batch from `collate.collate_prompts`. Sampling settings are passed explicitly; the model's own
    generation_config (e.g. a checkpoint's repetition_penalty) is not used. Generation stops at
    <|im_end|> (and <|endoftext|>). top_k=0 / top_p=1.0 disable those filters.

    prefill="shared" (default): each prompt (video included) runs through the model once, its KV cache
    is repeated G times and our decode loop samples the G continuations (`_shared_prefill_decode`).
    prefill="per_completion": transformers' `generate` on the B * G expanded rows, which prefills every
    prompt G times (the reference path; experiments/perf/rollout_shared_prefill.py compares the two).
    encode_once=False is the fully naive reference: pixels repeated G times, the vision tower run on
    B * G videos, and transformers' `generate` (so it implies prefill="per_completion").
    Greedy output is token-identical between the paths; log-probs agree within float tolerance
    (tests/test_generation.py).
    span_temperature: sample the tokens inside `<time>…</time>` (from the token after `<time>` until
    `</time>` is complete) at this temperature, every other token at `temperature` (`_SpanTracker`;
    exploration of spans for GRPO). Needs sampling and the shared-prefill path. Recorded log-probs stay
    those of the raw logits. None (default): one temperature for every token, the path unchanged.
    forced_prefixes: one entry per completion (B * G, prompt-major): token ids that completion must
    start with (written into it as if sampled; their log-probs are the raw logits' like any other), or
    None for a free completion. GRPO's guided spans (vt_grpo.rollout). Shared-prefill path only.
    Runs under no_grad in the model's current mode: call model.eval() first (dropout; and transformers
    turns the KV cache off for a model in training mode with gradient checkpointing).
    """
    if num_return_sequences < 1:
        raise ValueError(f"num_return_sequences must be >= 1, got {num_return_sequences}")
    if prefill not in ("shared", "per_completion"):
        raise ValueError(f"prefill must be 'shared' or 'per_completion', got {prefill!r}")
    if span_temperature is not None and not (span_temperature > 0 and do_sample and prefill == "shared"
                                             and encode_once):
        raise ValueError("span_temperature must be > 0 and needs do_sample=True on the shared-prefill path "
                         f"(prefill='shared', encode_once=True); got {span_temperature!r}, do_sample="
                         f"{do_sample}, prefill={prefill!r}, encode_once={encode_once}")
    if forced_prefixes is not None and not (prefill == "shared" and encode_once):
        raise ValueError("forced_prefixes needs the shared-prefill path (prefill='shared', encode_once=True)")
    ids = special_ids(tokenizer)
    G = num_return_sequences
    batch = dict(_as_prompt_batch(prompt_batch, ids.pad))
    device = next(model.parameters()).device
    batch = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    if "position_ids" not in batch:
        batch["position_ids"] = _positions(model, batch)  # (3, B, L)
    num_prompts, prompt_width = batch["input_ids"].shape
    prompt_lengths = batch["attention_mask"].sum(-1).tolist()
    has_video = "pixel_values_videos" in batch  # text-only prompts (the hindsight checker) have none
    stop_ids = (ids.im_end, ids.pad)
    suppressed = list(placeholder_ids(_base(model).config))

    if prefill == "shared" and encode_once:
        features = (encode_videos(model, batch["pixel_values_videos"], batch["video_grid_thw"])
                    if has_video else None)  # B tensors
        completions, token_logprobs = _shared_prefill_decode(
            model, batch, G,
            encoder_outputs=_video_encoder_outputs(model, features) if features is not None else None,
            suppressed=torch.tensor(suppressed, device=device),
            stop_ids=torch.tensor(stop_ids, device=device), pad_id=ids.pad,
            max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature,
            top_k=top_k, top_p=top_p, return_logprobs=return_logprobs,
            span_tracker=None if span_temperature is None else _SpanTracker(
                tokenizer, num_prompts * G, temperature, span_temperature, device),
            forced=(None if forced_prefixes is None
                    else _forced_tokens(forced_prefixes, num_prompts * G, device)),
        )  # (B*G, T)
    else:
        completions, token_logprobs = _generate_per_completion(
            model, batch, G, has_video=has_video, encode_once=encode_once, suppressed=suppressed,
            stop_ids=stop_ids, pad_id=ids.pad, max_new_tokens=max_new_tokens, do_sample=do_sample,
            temperature=temperature, top_k=top_k, top_p=top_p, return_logprobs=return_logprobs,
        )
        completions = completions[:, prompt_width:]

    sequences, texts, logprobs, finished = [], [], [] if return_logprobs else None, []
    for p in range(num_prompts):
        seqs_p, texts_p, lps_p, fin_p = [], [], [], []
        for g in range(G):
            row = p * G + g
            seq, done = trim_completion(completions[row], stop_ids)
            seqs_p.append(seq.cpu())
            texts_p.append(tokenizer.decode(seq, skip_special_tokens=True))
            fin_p.append(done)
            if token_logprobs is not None:
                lps_p.append(token_logprobs[row, : len(seq)].cpu())
        sequences.append(seqs_p)
        texts.append(texts_p)
        finished.append(fin_p)
        if logprobs is not None:
            logprobs.append(lps_p)
    return GenerationOutput(sequences=sequences, texts=texts, logprobs=logprobs,
                            prompt_lengths=[int(n) for n in prompt_lengths], finished=finished)


def _generate_per_completion(model, batch: Mapping[str, Any], G: int, *, has_video: bool, encode_once: bool,
                             suppressed: list[int], stop_ids: tuple[int, int], pad_id: int,
                             max_new_tokens: int, do_sample: bool, temperature: float, top_k: int,
                             top_p: float, return_logprobs: bool
                             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """transformers' `generate` over the B * G expanded rows -> ((B*G, L + T) ids, (B*G, T) log-probs)."""
    from transformers import GenerationConfig, LogitsProcessorList

    inputs = _repeat_rows(batch, G)  # (B*G, L), positions (3, B*G, L)
    if has_video and encode_once:
        features = encode_videos(model, batch["pixel_values_videos"], batch["video_grid_thw"])  # B tensors
        inputs["mm_encoder_outputs"] = _video_encoder_outputs(model, [f for f in features for _ in range(G)])
    elif has_video:
        pixels = _split_pixels(batch)
        inputs["pixel_values_videos"] = torch.cat([p for p in pixels for _ in range(G)], dim=0)
        for key in _video_keys(model):  # video_grid_thw (B, 3), second_per_grid_ts (B,), ...
            inputs[key] = batch[key].repeat_interleave(G, dim=0)

    # Every knob that changes the distribution is set explicitly: generate fills unset (None) fields from
    # the checkpoint's generation_config (Qwen2.5-VL ships repetition_penalty 1.05, top_k 1, ...).
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        no_repeat_ngram_size=0,
        typical_p=1.0,
        do_sample=do_sample,
        temperature=temperature if do_sample else None,
        top_p=top_p if do_sample else None,
        top_k=top_k if do_sample else None,
        repetition_penalty=1.0,
        num_beams=1,
        num_return_sequences=1,
        eos_token_id=list(stop_ids),
        suppress_tokens=suppressed,
        pad_token_id=pad_id,
        bos_token_id=None,
        use_cache=True,
    )
    recorder = _ChosenTokenLogprobs() if return_logprobs else None
    out = model.generate(
        **inputs,
        generation_config=config,
        logits_processor=LogitsProcessorList([recorder]) if recorder is not None else None,
    )
    prompt_width = batch["input_ids"].shape[1]
    token_logprobs = recorder.finish(out[:, -1]) if recorder is not None else None  # (B*G, T)
    if token_logprobs is not None:
        token_logprobs = token_logprobs[:, : out.shape[1] - prompt_width]
    return out, token_logprobs


def rollout_batch(prompt_batch: Sequence[Mapping[str, Any]] | Mapping[str, Any], output: GenerationOutput,
                  pad_token_id: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Prompts + their completions -> (batch, completion_mask) for `sequence_logprobs`.

    Rows are prompt-major (b * G + g): the left-padded prompt, then the completion, right-padded.
    batch: input_ids, attention_mask, mm_token_type_ids (N, L); pixel_values_videos and
    video_grid_thw (B, 3) / second_per_grid_ts (B,) of the B *unique* videos; video_index (N,) naming
    each row's video, so the log-prob pass encodes each video once as well.
    completion_mask: (N, L) 1 on completion tokens.
    """
    batch = _as_prompt_batch(prompt_batch, pad_token_id)
    G = output.num_return_sequences
    num_prompts, prompt_width = batch["input_ids"].shape
    rows = [seq for seqs in output.sequences for seq in seqs]
    width = max((len(s) for s in rows), default=0)
    completions = torch.full((len(rows), width), pad_token_id, dtype=torch.long)  # (N, T)
    comp_mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, seq in enumerate(rows):
        completions[i, : len(seq)] = seq
        comp_mask[i, : len(seq)] = 1
    text = _repeat_rows({**batch, "position_ids": torch.zeros(3, num_prompts, 1)}, G)
    full = {
        "input_ids": torch.cat([text["input_ids"], completions], dim=1),
        "attention_mask": torch.cat([text["attention_mask"], comp_mask], dim=1),
        "mm_token_type_ids": torch.cat([text["mm_token_type_ids"], torch.zeros_like(completions)], dim=1),
        **{key: batch[key] for key in video_keys(batch)},  # pixels and the per-video keys, unrepeated
        "video_index": torch.arange(num_prompts).repeat_interleave(G),
    }
    completion_mask = torch.cat([torch.zeros_like(text["input_ids"]), comp_mask], dim=1)  # (N, L)
    return full, completion_mask


def sequence_logprobs(model, batch: Mapping[str, Any], completion_mask: torch.Tensor, *,
                      temperature: float = 1.0, video_features: Sequence[torch.Tensor] | None = None
                      ) -> torch.Tensor:
    """Per-token log-probs of the completions in `batch`, one forward pass (gradients flow).

    batch: input_ids, attention_mask, mm_token_type_ids (N, L); optional position_ids (3, N, L) (else
    computed by the model family's rule); pixel_values_videos, video_grid_thw (V, 3),
    second_per_grid_ts (V,); optional video_index (N,) mapping rows to videos (default: row i has video
    i). Each distinct video is encoded once and its features are repeated for its rows; pass
    `video_features` (V tensors from `encode_videos`) to skip the vision tower altogether (e.g. frozen
    vision, features kept from the rollout).
    completion_mask: (N, L), 1 where a token's log-prob is wanted (never position 0).
    Returns (N, L) float32: log p(token t | tokens < t), logits divided by `temperature` and the vision
    placeholder ids excluded (as in `generate`), 0 where completion_mask is 0.
    """
    base = _base(model)
    device = next(model.parameters()).device
    input_ids = batch["input_ids"].to(device)
    attention_mask = batch["attention_mask"].to(device)
    completion_mask = completion_mask.to(device).bool()
    if bool(completion_mask[:, 0].any()):
        raise ValueError("completion_mask marks position 0, which has no preceding context")
    suppressed = torch.tensor(placeholder_ids(base.config), device=device)
    if bool((torch.isin(input_ids, suppressed) & completion_mask).any()):
        raise ValueError("a completion holds a vision placeholder token; generate() never samples them")
    video_index = batch.get("video_index")
    num_rows = input_ids.shape[0]
    video_index = torch.arange(num_rows) if video_index is None else video_index.cpu()
    if video_features is None:
        video_features = encode_videos(model, batch["pixel_values_videos"].to(device),
                                       batch["video_grid_thw"].to(device))
    rows_features = [video_features[int(i)] for i in video_index]
    position_ids = batch.get("position_ids")
    if position_ids is None:
        # positions need one grid / time step per row
        per_row = {"input_ids": input_ids, "attention_mask": attention_mask,
                   **{key: batch[key].to(device)[video_index.to(device)] for key in _video_keys(model)}}
        position_ids = _positions(model, per_row)
    # Logits only from the first predicting column on: saves (N, L_prompt, V) for long video prompts.
    first = int(completion_mask.any(0).nonzero()[0]) if bool(completion_mask.any()) else input_ids.shape[1]
    keep = input_ids.shape[1] - first + 1
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids.to(device),
        mm_token_type_ids=batch["mm_token_type_ids"].to(device),
        mm_encoder_outputs=_video_encoder_outputs(model, rows_features),
        logits_to_keep=keep,
        use_cache=False,
    )
    logits = out.logits[:, :-1].float() / temperature  # (N, keep-1, V) predicting columns first..L-1
    logits = logits.index_fill(-1, suppressed, float("-inf"))
    targets = input_ids[:, first:]  # (N, keep-1)
    token_lp = logits.gather(-1, targets[..., None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
    result = torch.zeros(input_ids.shape, dtype=torch.float32, device=device)  # (N, L)
    result[:, first:] = token_lp
    return result * completion_mask


__all__ = ["GenerationOutput", "generate", "encode_videos", "rollout_batch", "sequence_logprobs",
           "trim_completion", "placeholder_ids"]
