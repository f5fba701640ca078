"""generate(forced_prefixes=...): chosen completions start with given tokens (GRPO's guided spans), the
policy continues after them as it would after the same text, and the free completions are untouched."""

from __future__ import annotations

import pytest
import torch

from vt_model.generation import generate


@pytest.fixture(scope="module")
def tiny(tiny_model, tiny_tokenizer):
    return tiny_model.eval(), tiny_tokenizer


@pytest.fixture(scope="module")
def prompt(last_colour_prompt):
    return last_colour_prompt


def test_forced_rows_start_with_their_prefix_and_free_rows_are_unchanged(tiny, prompt):
    model, tokenizer = tiny
    prefix = tokenizer.encode("<time>00:04-00:08</time>", add_special_tokens=False)
    torch.manual_seed(3)
    free = generate(model, tokenizer, [prompt, prompt], num_return_sequences=3, max_new_tokens=30,
                    return_logprobs=True)
    torch.manual_seed(3)
    forced = generate(model, tokenizer, [prompt, prompt], num_return_sequences=3, max_new_tokens=30,
                      return_logprobs=True, forced_prefixes=[prefix, None, None, None, prefix, None])
    for p, g in ((0, 0), (1, 1)):
        seq = forced.sequences[p][g]
        assert seq[: len(prefix)].tolist() == prefix
        assert forced.logprobs[p][g].shape == seq.shape and torch.isfinite(forced.logprobs[p][g]).all()
    for p, g in ((0, 1), (0, 2), (1, 0), (1, 2)):  # same RNG draws: the free rows come out the same
        assert torch.equal(forced.sequences[p][g], free.sequences[p][g])
        torch.testing.assert_close(forced.logprobs[p][g], free.logprobs[p][g])
    assert not torch.equal(forced.sequences[0][0], free.sequences[0][0])


def test_greedy_after_a_forced_prefix_continues_like_greedy_after_the_same_text(tiny, prompt):
    model, tokenizer = tiny
    prefix = tokenizer.encode("<time>00:01-00:03</time>", add_special_tokens=False)
    out = generate(model, tokenizer, [prompt], num_return_sequences=2, do_sample=False, max_new_tokens=40,
                   forced_prefixes=[prefix, None])
    extended = dict(prompt)
    extra = torch.tensor(prefix)
    extended["input_ids"] = torch.cat([prompt["input_ids"], extra])
    extended["attention_mask"] = torch.cat([prompt["attention_mask"], torch.ones_like(extra)])
    extended["mm_token_type_ids"] = torch.cat([prompt["mm_token_type_ids"], torch.zeros_like(extra)])
    continued = generate(model, tokenizer, [extended], num_return_sequences=1, do_sample=False,
                         max_new_tokens=40 - len(prefix))
    assert out.sequences[0][0].tolist() == prefix + continued.sequences[0][0].tolist()


def test_forced_prefixes_are_refused_off_the_shared_path_and_with_the_wrong_count(tiny, prompt):
    model, tokenizer = tiny
    with pytest.raises(ValueError, match="shared-prefill"):
        generate(model, tokenizer, [prompt], num_return_sequences=2, prefill="per_completion",
                 forced_prefixes=[[1], None])
    with pytest.raises(ValueError, match="2 completions"):
        generate(model, tokenizer, [prompt], num_return_sequences=2, forced_prefixes=[[1]])
