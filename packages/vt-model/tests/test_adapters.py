"""LoRA on the language model only (stack.md §7), vision freezing, parameter counts, and a merged
standalone save that reloads to the same logits."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vt_data.records import VideoQA
from vt_model.adapters import (
    LoraSettings,
    apply_lora,
    count_parameters,
    freeze_vision,
    lora_parameter_count,
    merged_model,
    merged_named_tensors,
    save_pretrained,
    trainable_parameter_names,
)
from vt_model.collate import collate_sft, encode_sft_example, model_inputs
from vt_model.processing import VIDEO_PREPROCESSOR_FILE, VideoProcessorConfig


@pytest.fixture()
def model(tiny_dir):
    """A fresh model per test (apply_lora / freeze_vision change it in place); tiny_dir is the
    session's tiny model directory from conftest.py."""
    from vt_model.loading import load_model

    return load_model(tiny_dir)


def expected_lora_count(config, r: int) -> int:
    """r x (in + out) summed over q, k, v, o, gate, up, down of every text layer, from the config alone."""
    text = config.text_config
    hidden, inter = text.hidden_size, text.intermediate_size
    head_dim = hidden // text.num_attention_heads
    q_out, kv_out = text.num_attention_heads * head_dim, text.num_key_value_heads * head_dim
    per_layer = ((hidden + q_out) + 2 * (hidden + kv_out) + (q_out + hidden)  # q, k, v, o
                 + 2 * (hidden + inter) + (inter + hidden))  # gate, up, down
    return r * per_layer * text.num_hidden_layers


def test_lora_trains_exactly_the_language_model_adapters(model):
    base_total = count_parameters(model)[1]
    expected = expected_lora_count(model.config, r=8)
    assert expected == 16_384  # the stack.md §7 figure for the default tiny sizes
    peft_model = apply_lora(model, LoraSettings(r=8, alpha=16))
    trainable, total = count_parameters(peft_model)
    assert trainable == expected == lora_parameter_count(peft_model, LoraSettings(r=8))
    assert total == base_total + expected
    names = trainable_parameter_names(peft_model)
    assert names and all("lora_" in n and "language_model" in n for n in names)
    assert not any("visual" in n for n in names)


def test_vision_flags_make_blocks_or_merger_trainable(model):
    peft_model = apply_lora(model, LoraSettings(r=4, train_merger=True))
    visual = [n for n in trainable_parameter_names(peft_model) if "visual" in n]
    assert visual and all(".merger." in n for n in visual)
    assert count_parameters(peft_model)[0] == expected_lora_count(model.config, 4) + sum(
        p.numel() for p in model.model.visual.merger.parameters())


def test_train_vision_trains_the_blocks_but_not_the_merger(model):
    peft_model = apply_lora(model, LoraSettings(r=4, train_vision=True))
    visual = [n for n in trainable_parameter_names(peft_model) if "visual" in n]
    assert any(".blocks." in n for n in visual) and not any(".merger." in n for n in visual)


def test_a_regex_reaching_the_vision_tower_is_refused(model):
    with pytest.raises(ValueError, match="vision tower"):
        apply_lora(model, LoraSettings(target_regex=r".*(qkv|q_proj)"))


def test_freeze_vision_for_full_finetuning(model):
    freeze_vision(model)
    names = set(trainable_parameter_names(model))
    assert not any("visual" in n for n in names) and any("language_model" in n for n in names)
    assert "lm_head.weight" in names
    freeze_vision(model, freeze_merger=False)
    assert {n for n in trainable_parameter_names(model) if "visual" in n} == {
        f"model.visual.merger.{n}" for n, _ in model.model.visual.merger.named_parameters()}


def test_merge_save_load_gives_identical_logits(model, tiny_dir, tmp_path):
    from vt_model.loading import load_model, load_tokenizer

    tokenizer = load_tokenizer(tiny_dir)
    config = VideoProcessorConfig.from_pretrained(tiny_dir)
    record = VideoQA(problem="What colour is the shape?", path="v.mp4", data_source="synthetic",
                     options=["A. green", "B. blue"], solution="<answer>A</answer>", problem_id=1,
                     process="<time>00:00-00:02</time> <caption>green</caption> <think>green</think>")
    rng = np.random.default_rng(0)
    examples = []
    for n in (2, 4):
        video = rng.integers(0, 256, (n, 56, 56, 3), dtype=np.uint8)
        examples.append(encode_sft_example(tokenizer, record, video, config, template="direct",
                                           timestamps=np.arange(n) * 0.5))
    batch = model_inputs(collate_sft(examples, tokenizer.pad_token_id))
    with torch.no_grad():
        base_logits = model(**batch).logits

    peft_model = apply_lora(model, LoraSettings(r=4, alpha=8))
    optimizer = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=5e-2)
    peft_model.train()
    for _ in range(3):  # LoRA B starts at zero: train so the merge has something to merge
        peft_model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    peft_model.eval()
    with torch.no_grad():
        lora_logits = peft_model(**batch).logits
    assert (lora_logits - base_logits).abs().max() > 1e-3  # the adapter really changed the model

    out = save_pretrained(peft_model, tokenizer, tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and (out / VIDEO_PREPROCESSOR_FILE).is_file()
    assert load_tokenizer(out).chat_template == tokenizer.chat_template
    reloaded = load_model(out).eval()
    assert type(reloaded).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert not any("lora" in n for n, _ in reloaded.named_parameters())
    with torch.no_grad():
        merged_logits = reloaded(**batch).logits
    torch.testing.assert_close(merged_logits, lora_logits, atol=1e-5, rtol=0)
    # the default merge works on a copy: the training model keeps its adapters
    assert count_parameters(peft_model)[0] > 0 and hasattr(peft_model, "merge_and_unload")


def test_merged_named_tensors_equal_merge_and_unload_and_leave_the_model_untouched(model):
    """What a rollout engine loads (vt_grpo.vllm_rollout) is the merged model's state dict, name for name
    and value for value, while the trained LoRA model keeps its exact weights (no merge/unmerge drift)."""
    torch.manual_seed(0)
    peft_model = apply_lora(model, LoraSettings(r=4))
    for name, param in peft_model.named_parameters():
        if "lora_B" in name:  # B starts at 0: give the adapter a real delta
            torch.nn.init.normal_(param)
    before = {name: param.detach().clone() for name, param in peft_model.named_parameters()}
    streamed = dict(merged_named_tensors(peft_model))
    reference = merged_model(peft_model).state_dict()
    assert list(streamed) == list(reference)
    for name, tensor in reference.items():
        assert torch.equal(streamed[name], tensor), name
    q_proj = "model.language_model.layers.0.self_attn.q_proj.weight"
    base = before["base_model.model.model.language_model.layers.0.self_attn.q_proj.base_layer.weight"]
    assert not torch.equal(streamed[q_proj], base)  # the delta is in
    for name, param in peft_model.named_parameters():
        assert torch.equal(param, before[name]), name
