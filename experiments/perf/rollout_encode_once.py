"""Completions/s of GRPO-style rollouts with the video encoded once per prompt vs once per completion.

One video prompt (the video_thinker template, --frames frames of --size x --size random pixels:
16 x 224x224 gives a [8, 16, 16] grid, 2,048 patches, 512 video tokens), G = --group sampled
completions of --new-tokens tokens each, on a tiny random Qwen2.5-VL written to a temporary directory
(--vision-* / --hidden / --layers change its sizes). In one process, for each of --repeats rounds
after one warm-up round, both paths run back to back with the same seed:

* encode once: `vt_model.generation.generate(..., encode_once=True)`: the vision tower runs on the one
  video, its features are repeated G times (see generation.py for how transformers 5.23 takes them);
* per completion: `encode_once=False`: the pixels are repeated G times and the tower runs on G videos.

Reports the median completions/s of each path, their ratio, the vision tower's own time for one
video, and the machine (platform, CPU count, torch threads, load average: other processes on a shared
machine skew the figures). The same seed gives both paths the same samples (the script checks), so
they do the same decoding work. On a shared machine compare the best-of-repeats figures too. Not a
test: run it by hand.

    python experiments/perf/rollout_encode_once.py --frames 16 --size 224 --group 8 --new-tokens 64 \
        --repeats 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time

import numpy as np
import torch


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224, help="frame side in pixels (square frames)")
    parser.add_argument("--group", type=int, default=8, help="G, completions per prompt")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--hidden", type=int, default=64, help="tiny LM hidden size")
    parser.add_argument("--layers", type=int, default=2, help="tiny LM layers")
    parser.add_argument("--vision-hidden", type=int, default=32)
    parser.add_argument("--vision-depth", type=int, default=2)
    parser.add_argument("--vision-heads", type=int, default=2)
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from transformers import __version__ as transformers_version

    from vt_data.records import VideoQA
    from vt_model.generation import encode_videos, generate
    from vt_model.loading import load_model, load_tokenizer
    from vt_model.processing import VideoProcessorConfig, preprocess_video
    from vt_model.prompts import encode_prompt
    from vt_model.tiny import write_tiny_model

    with tempfile.TemporaryDirectory() as directory:
        write_tiny_model(directory, hidden=args.hidden, layers=args.layers, vision_hidden=args.vision_hidden,
                         vision_depth=args.vision_depth, vision_heads=args.vision_heads,
                         vision_intermediate=2 * args.vision_hidden)
        model = load_model(directory).eval()
        tokenizer = load_tokenizer(directory)
        config = VideoProcessorConfig.from_pretrained(directory)

    record = VideoQA(problem="What colour is the shape shown right after the red square?", path="clip.mp4",
                     data_source="synthetic", options=["A. green", "B. blue", "C. red", "D. white"],
                     solution="<answer>A</answer>", problem_id=0)
    frames = np.random.default_rng(0).integers(0, 256, (args.frames, args.size, args.size, 3), dtype=np.uint8)
    video = preprocess_video(frames, np.arange(args.frames) * 0.5, config)
    prompt = encode_prompt(tokenizer, record, video, "video_thinker")
    n_params = sum(p.numel() for p in model.parameters())
    n_vision = sum(p.numel() for p in model.model.visual.parameters())

    samples: dict[bool, list[list[int]]] = {}

    cpu: dict[bool, list[float]] = {True: [], False: []}

    def run(encode_once: bool) -> float:
        torch.manual_seed(0)  # same seed for both paths: same samples, so the same decoding work
        start, start_cpu = time.perf_counter(), time.process_time()
        out = generate(model, tokenizer, [prompt], num_return_sequences=args.group, do_sample=True,
                       temperature=args.temperature, max_new_tokens=args.new_tokens, encode_once=encode_once)
        elapsed = time.perf_counter() - start
        cpu[encode_once].append(time.process_time() - start_cpu)
        samples.setdefault(encode_once, [s.tolist() for s in out.sequences[0]])
        return elapsed

    def vision_once() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            encode_videos(model, video.pixel_values_videos, video.video_grid_thw)
        return time.perf_counter() - start

    run(True), run(False), vision_once()  # warm-up: first-call allocations, lazy inits
    cpu[True].clear(), cpu[False].clear()
    once, naive, vision = [], [], []
    for _ in range(args.repeats):
        once.append(run(True))
        naive.append(run(False))
        vision.append(vision_once())

    med_once, med_naive = statistics.median(once), statistics.median(naive)
    lengths = [len(s) for s in samples[True]]
    same = samples[True] == samples[False]
    print(f"machine: {platform.platform()} | {platform.processor() or platform.machine()} | "
          f"cpu_count={os.cpu_count()} | torch threads={torch.get_num_threads()} | "
          f"torch {torch.__version__} | transformers {transformers_version} | "
          f"load avg {os.getloadavg()[0]:.2f} (1 min)")
    print(f"model: {n_params:,} params ({n_vision:,} vision) | "
          f"video {args.frames} x {args.size}x{args.size} -> grid {video.video_grid_thw.flatten().tolist()}, "
          f"{video.pixel_values_videos.shape[0]} patches, "
          f"{video.num_video_tokens} video tokens | prompt {prompt['input_ids'].numel()} tokens")
    print(f"G={args.group} completions x up to {args.new_tokens} new tokens, sampled (T={args.temperature}), "
          f"{args.repeats} repeats, median; completion lengths {lengths} ({sum(lengths)} tokens), "
          f"identical samples in both paths: {same}")
    print(f"vision tower, one video: {statistics.median(vision) * 1e3:.1f} ms")
    print(f"encode once:           {med_once:.3f} s/group  {args.group / med_once:7.2f} completions/s  "
          f"(runs {', '.join(f'{t:.3f}' for t in once)})")
    print(f"encode per completion: {med_naive:.3f} s/group  {args.group / med_naive:7.2f} completions/s  "
          f"(runs {', '.join(f'{t:.3f}' for t in naive)})")
    cpu_once, cpu_naive = statistics.median(cpu[True]), statistics.median(cpu[False])
    print(f"process CPU time per group (median): once {cpu_once:.3f} s, per completion {cpu_naive:.3f} s")
    print(f"speed-up (completions/s, once / per completion): {med_naive / med_once:.2f}x median, "
          f"{min(naive) / min(once):.2f}x best-of-{args.repeats}, {cpu_naive / cpu_once:.2f}x in CPU time")


if __name__ == "__main__":
    main()
