"""Rollout time with one prefill per prompt (KV cache repeated G times) vs one prefill per completion.

For each prompt size (--video-tokens, default 0, 256 and 960 video tokens: a text-only prompt, 8 frames
at 224x224, 16 frames at 280x336), in one process, a tiny random Qwen2.5-VL (--hidden / --layers set
the LM's size) generates G = --group sampled completions of exactly --new-tokens tokens (stop tokens
are not sampled: --new-tokens is a floor and a cap) for --prompts prompts, alternating the two paths of
`vt_model.generation.generate`:

* shared prefill (`prefill="shared"`, the default): each prompt's LM prefill runs once, its KV cache is
  repeated G times, our decode loop samples the G continuations;
* per completion (`prefill="per_completion"`): transformers' `generate` on the B * G expanded rows,
  which prefills every prompt G times (the video is encoded once in both paths).

It also times the prefill forward alone (B rows vs B * G rows) and reports, per size: median rollout
seconds of each path, their ratio, the prefill seconds of each path (B rows vs B * G rows: the one-prefill
change divides them by about G) and the prefill share of each path's rollout time. Greedy decoding of
both paths is checked token-identical before timing. Prints the machine. Not a test: run by hand.

    python experiments/perf/rollout_shared_prefill.py --group 8 --new-tokens 32 --repeats 3
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch

# video tokens -> (frames, height, width): tokens = frames/2 * height/28 * width/28
SHAPES = {0: None, 256: (8, 224, 224), 960: (16, 280, 336)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--video-tokens", type=int, nargs="+", default=sorted(SHAPES),
                        choices=sorted(SHAPES))
    parser.add_argument("--group", type=int, default=8, help="G, completions per prompt")
    parser.add_argument("--prompts", type=int, default=2, help="B, prompts per rollout call")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--hidden", type=int, default=256, help="tiny LM hidden size")
    parser.add_argument("--layers", type=int, default=4, help="tiny LM layers")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import __version__ as transformers_version

    from vt_data.records import VideoQA
    from vt_model.collate import collate_prompts
    from vt_model.generation import generate
    from vt_model.loading import load_model, load_tokenizer
    from vt_model.positions import model_inputs_positions
    from vt_model.processing import VideoProcessorConfig, preprocess_video
    from vt_model.prompts import encode_prompt, special_ids
    from vt_model.tiny import write_tiny_model

    with tempfile.TemporaryDirectory() as directory:
        write_tiny_model(directory, hidden=args.hidden, layers=args.layers, intermediate=2 * args.hidden)
        model = load_model(directory).eval()
        tokenizer = load_tokenizer(directory)
        config = VideoProcessorConfig.from_pretrained(directory)
    ids = special_ids(tokenizer)
    # Stop tokens are never sampled here, so every completion has exactly --new-tokens tokens in both paths.
    never_stop = torch.zeros(model.config.text_config.vocab_size)
    never_stop[[ids.im_end, ids.pad]] = float("-inf")
    model.lm_head.bias = torch.nn.Parameter(never_stop, requires_grad=False)

    record = VideoQA(problem="What colour is the shape shown right after the red square?", path="clip.mp4",
                     data_source="synthetic", options=["A. green", "B. blue", "C. red", "D. white"],
                     solution="<answer>A</answer>", problem_id=0)
    rng = np.random.default_rng(0)
    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"cpu_count={os.cpu_count()} | torch threads={torch.get_num_threads()} | "
          f"torch {torch.__version__} | transformers {transformers_version} | "
          f"load avg {os.getloadavg()[0]:.2f} (1 min)")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {n_params:,} params (LM hidden {args.hidden}, {args.layers} layers) | B={args.prompts} "
          f"prompts x G={args.group} completions x {args.new_tokens} new tokens, sampled T=1 | "
          f"{args.repeats} repeats, median")
    print("| video tokens | prompt tokens | rollout s, shared prefill | rollout s, per completion | ratio | "
          "prefill s, shared / per completion (ratio) | prefill share, shared / per completion |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for n_video in args.video_tokens:
        prompts = []
        for _ in range(args.prompts):
            if SHAPES[n_video] is None:
                text = tokenizer.apply_chat_template(
                    [{"role": "user", "content": record.problem + " " + " ".join(record.options)}],
                    tokenize=False, add_generation_prompt=True)
                input_ids = torch.tensor(tokenizer(text)["input_ids"])
                prompts.append({"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids),
                                "mm_token_type_ids": torch.zeros_like(input_ids)})
                continue
            frames, height, width = SHAPES[n_video]
            video_config = dataclasses.replace(config, min_pixels=28 * 28, max_pixels=height * width,
                                               num_frames=frames, max_frames=frames)
            pixels = rng.integers(0, 256, (frames, height, width, 3), dtype=np.uint8)
            video = preprocess_video(pixels, np.arange(frames) * 0.5, video_config)
            assert video.num_video_tokens == n_video, video.num_video_tokens
            prompts.append(encode_prompt(tokenizer, record, video, "video_thinker"))

        greedy = {path: generate(model, tokenizer, prompts, num_return_sequences=2, do_sample=False,
                                 max_new_tokens=8, prefill=path).sequences
                  for path in ("shared", "per_completion")}
        pairs = zip(greedy["shared"], greedy["per_completion"], strict=True)
        assert all(torch.equal(a, b) for pa, pb in pairs for a, b in zip(pa, pb, strict=True)), \
            "greedy tokens differ between the paths"

        batch = collate_prompts(prompts, ids.pad)
        batch.update(model_inputs_positions(model.config, batch))

        def prefill_seconds(rows: int, batch=batch) -> float:
            inputs = {k: batch[k].repeat_interleave(rows, dim=0)
                      for k in ("input_ids", "attention_mask", "mm_token_type_ids")}
            inputs["position_ids"] = batch["position_ids"].repeat_interleave(rows, dim=1)
            if "pixel_values_videos" in batch:
                from vt_model.generation import _video_encoder_outputs, encode_videos

                with torch.no_grad():
                    features = encode_videos(model, batch["pixel_values_videos"], batch["video_grid_thw"])
                repeated = [f for f in features for _ in range(rows)]
                inputs["mm_encoder_outputs"] = _video_encoder_outputs(repeated)
            start = time.perf_counter()
            with torch.no_grad():
                model(**inputs, use_cache=True, logits_to_keep=1)
            return time.perf_counter() - start

        def rollout_seconds(path: str, prompts=prompts) -> float:
            torch.manual_seed(0)
            start = time.perf_counter()
            out = generate(model, tokenizer, prompts, num_return_sequences=args.group, do_sample=True,
                           max_new_tokens=args.new_tokens, prefill=path)
            elapsed = time.perf_counter() - start
            assert all(len(s) == args.new_tokens for seqs in out.sequences for s in seqs)
            return elapsed

        rollout_seconds("shared"), rollout_seconds("per_completion"), prefill_seconds(1)  # warm-up
        times: dict[str, list[float]] = {"shared": [], "per_completion": [], "prefill_1": [], "prefill_G": []}
        for _ in range(args.repeats):
            times["shared"].append(rollout_seconds("shared"))
            times["per_completion"].append(rollout_seconds("per_completion"))
            times["prefill_1"].append(prefill_seconds(1))
            times["prefill_G"].append(prefill_seconds(args.group))
        med = {k: statistics.median(v) for k, v in times.items()}
        share_shared = med["prefill_1"] / med["shared"]
        share_naive = med["prefill_G"] / med["per_completion"]
        print(f"| {n_video} | {int(batch['attention_mask'][0].sum())} | {med['shared']:.3f} | "
              f"{med['per_completion']:.3f} | {med['per_completion'] / med['shared']:.2f}x | "
              f"{med['prefill_1']:.3f} / {med['prefill_G']:.3f} "
              f"({med['prefill_G'] / med['prefill_1']:.1f}x) | "
              f"{share_shared:.1%} / {share_naive:.1%} |", flush=True)


if __name__ == "__main__":
    main()
