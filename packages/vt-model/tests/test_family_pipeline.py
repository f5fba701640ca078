"""Everything above the family interface on a tiny Qwen3-VL: the CLI writes one, SFT examples and prompts
encode through the family the video settings name, batches collate with the family's per-video keys,
positions equal transformers' own, and generation (video encoded once, DeepStack features included)
gives the same tokens and log-probs as the naive path and as a fresh forward pass."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vt_data.records import VideoQA
from vt_model.collate import (
    MODEL_KEYS,
    PER_VIDEO_KEYS,
    check_position_config,
    collate_sft,
    encode_sft_example,
    model_inputs,
)
from vt_model.families import FAMILY_MODULES, get_family, video_config, video_config_from_pretrained
from vt_model.generation import generate, rollout_batch, sequence_logprobs
from vt_model.prompts import encode_prompt

QWEN3 = get_family("qwen3_vl")
RECORD = VideoQA(problem="What colour is the shape shown first?", path="v.mp4", data_source="synthetic",
                 options=["A. green", "B. blue"], process="<time>00:00-00:01</time> green",
                 solution="<answer>A</answer>", problem_id=1)


@pytest.fixture(scope="module")
def qwen3(tmp_path_factory):
    """(directory, model, tokenizer, video config) of a tiny Qwen3-VL written by the CLI."""
    from vt_model.cli import main
    from vt_model.loading import load_model, load_tokenizer

    out = tmp_path_factory.mktemp("cli-qwen3vl") / "tiny"
    assert main(["tiny", str(out), "--family", "qwen3_vl", "--num-frames", "8", "--max-frames", "8"]) == 0
    return out, load_model(out).eval(), load_tokenizer(out), video_config_from_pretrained(out)


def _clip(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    frames = np.random.default_rng(seed).integers(0, 256, (n, 56, 56, 3), dtype=np.uint8)
    return frames, np.arange(n) * 0.5


def test_the_union_keys_cover_every_family():
    families = [get_family(name) for name in FAMILY_MODULES]
    assert set(MODEL_KEYS) == {k for f in families for k in f.model_input_keys}
    assert set(PER_VIDEO_KEYS) == {k for f in families for k in f.per_video_keys}


def test_cli_builds_the_family_and_its_settings(qwen3):
    out, model, _, config = qwen3
    record = json.loads((out / "vt_model_tiny.json").read_text())
    assert record["family"] == "qwen3_vl" and type(model).__name__ == "Qwen3VLForConditionalGeneration"
    assert config == QWEN3.tiny_video_config(num_frames=8, max_frames=8) and config.family == "qwen3_vl"
    # what the Hydra configs instantiate: the family by name, a frame count given without fps
    assert video_config("qwen3_vl", num_frames=8, max_frames=8, min_pixels=config.min_pixels) == config


def test_sft_examples_collate_and_train_with_transformers_positions(qwen3):
    _, model, tokenizer, config = qwen3
    examples = [encode_sft_example(tokenizer, RECORD, frames, config, "compact", timestamps=ts)
                for frames, ts in (_clip(8, 0), _clip(6, 1))]
    assert "second_per_grid_ts" not in examples[0]
    assert tokenizer.decode(examples[0]["input_ids"]).count("seconds>") == 4  # one marker per frame pair
    batch = collate_sft(examples, tokenizer.pad_token_id)
    assert batch["video_grid_thw"].tolist() == [[4, 4, 4], [3, 4, 4]]  # 64x64 frames, 16-px patches
    theirs, _ = model.model.get_rope_index(batch["input_ids"], mm_token_type_ids=batch["mm_token_type_ids"],
                                           video_grid_thw=batch["video_grid_thw"],
                                           attention_mask=batch["attention_mask"])
    real = batch["attention_mask"].bool()
    assert torch.equal(batch["position_ids"][:, real], theirs[:, real])
    inputs = model_inputs(batch)
    assert set(inputs) <= set(QWEN3.model_input_keys)
    with torch.no_grad():
        loss = model(**inputs).loss
    assert torch.isfinite(loss)
    check_position_config(model.config, config)
    with pytest.raises(ValueError, match="qwen2_5_vl family"):
        check_position_config(model.config, get_family("qwen2_5_vl").video_config())


def test_generation_encodes_once_and_log_probs_match_a_fresh_forward(qwen3):
    _, model, tokenizer, config = qwen3
    prompts = [encode_prompt(tokenizer, RECORD, QWEN3.preprocess_video(*_clip(n, n), config), "direct")
               for n in (4, 8)]
    kwargs = dict(num_return_sequences=2, do_sample=False, max_new_tokens=6, return_logprobs=True)
    once = generate(model, tokenizer, prompts, **kwargs)
    naive = generate(model, tokenizer, prompts, encode_once=False, prefill="per_completion", **kwargs)
    for p in range(2):
        for g in range(2):
            assert torch.equal(once.sequences[p][g], naive.sequences[p][g])
            torch.testing.assert_close(once.logprobs[p][g], naive.logprobs[p][g], atol=1e-4, rtol=0)
    batch, completion_mask = rollout_batch(prompts, once, tokenizer.pad_token_id)
    assert "second_per_grid_ts" not in batch
    with torch.no_grad():
        logprobs = sequence_logprobs(model, batch, completion_mask)
    rows = [lp for per_prompt in once.logprobs for lp in per_prompt]
    for i, expected in enumerate(rows):
        torch.testing.assert_close(logprobs[i][completion_mask[i].bool()], expected, atol=1e-4, rtol=0)


def test_the_tiny_asset_is_built_per_family_and_a_stale_one_fails(tmp_path):
    from vt_model.training.assets import ensure_tiny_model

    path = ensure_tiny_model(tmp_path / "tiny", family="qwen3_vl", sizes={"layers": 1})
    assert json.loads((path / "config.json").read_text())["model_type"] == "qwen3_vl"
    with pytest.raises(ValueError, match="holds a tiny qwen3_vl model, not qwen2_5_vl"):
        ensure_tiny_model(path)  # the Qwen2.5-VL default on a Qwen3-VL directory
