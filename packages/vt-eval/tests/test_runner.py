"""vt_eval.runner and the modules beside it (plan, predictions, run_identity, merge) on CPU: the tiny
random Qwen2.5-VL on vt-data's synthetic test set (built once per module), predictions written per
batch, resume after an interruption and after a torn line, the 2-rank split and merge, undecodable
videos skipped and counted, and refusal to mix two runs in one directory.

A scripted "oracle" backend (registered through `register_engine`, as a user would add one) answers with
the gold trace, so scores, grounding and the decode-failure path are checked without a trained model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from vt_data.timespan import format_span
from vt_eval.benchmarks import load_benchmark
from vt_eval.merge import merge
from vt_eval.plan import resolve_rank, shard_indices
from vt_eval.predictions import PredictionWriter, read_predictions
from vt_eval.protocol import Protocol, get_protocol, prompt_hash
from vt_eval.run_identity import RunMismatchError, weights_sha256
from vt_eval.runner import evaluate
from vt_model.engines import Completion, register_engine

NUM_TEST = 6
# The tiny_cpu preset: 8 frames at 56x56 stay 56x56 (the tiny pixel floor); 8 new tokens keep it quick.
FAST = get_protocol("tiny_cpu", max_new_tokens=8)


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Path:
    from vt_data.synthetic import build_tiny_dataset
    from vt_model.tiny import write_tiny_model

    root = tmp_path_factory.mktemp("eval-assets")
    write_tiny_model(root / "model", seed=0)
    build_tiny_dataset(root / "data", num_train_clips=0, num_test_clips=NUM_TEST, seed=0)
    return root


@pytest.fixture(scope="module")
def bench(assets):
    return load_benchmark("synthetic", assets / "data")


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _stable(rows: list[dict]) -> list[dict]:
    """Prediction lines without their timing (the only field two equal runs may differ in)."""
    return [{k: v for k, v in row.items() if k != "timing"} for row in rows]


def _stable_results(results: dict) -> dict:
    return {k: v for k, v in results.items() if k != "run"}


class OracleEngine:
    """Answers every question with its gold trace: one triple per gold segment, then the gold answer."""

    num_parameters = None

    def __init__(self, model_path, tokenizer, video_config, **_):
        pass

    def prepare(self, record, template, clip, **_):
        return record

    def generate(self, prepared):
        out = []
        for record in prepared:
            steps = "".join(
                f"<time>{format_span(s.start, s.end)}</time><caption>{s.caption}</caption>"
                f"<think>This segment shows {s.caption}.</think>"
                for s in record.segments or []
            )
            text = f"{steps}\nSo the answer follows.\n<answer>{record.gold}</answer>"
            out.append(
                Completion(text=text, num_tokens=len(text.split()), finished=True, num_prompt_tokens=1)
            )
        return out


register_engine("oracle_test", OracleEngine, replace=True)


# --- the tiny model end to end ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def full_run(assets, bench, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("full")
    evaluate(assets / "model", bench, FAST, out, batch_size=2, num_workers=1, label="tiny")
    return out


def test_an_evaluation_writes_predictions_and_a_results_file_that_states_everything(full_run, bench, assets):
    lines = _lines(full_run / "predictions.jsonl")
    assert [line["index"] for line in lines] == list(range(NUM_TEST))
    assert [line["key"] for line in lines] == [r.key for r in bench.records]
    for line in lines:
        assert line["status"] == "ok" and isinstance(line["output"], str)
        assert len(line["prompt_hash"]) == 64 and line["num_frames"] == FAST.num_frames == 8
        assert {"prediction", "score", "score_lenient", "valid_trace", "gold_spans", "category"} <= set(line)
    results = json.loads((full_run / "results.json").read_text())
    assert results["complete"] and results["counts"] == {
        "planned": NUM_TEST,
        "done": NUM_TEST,
        "failed_decode": 0,
        "missing": 0,
    }
    assert results["protocol"] == FAST.to_dict()
    assert results["model"]["model_type"] == "qwen2_5_vl" and results["model"]["label"] == "tiny"
    assert results["model"]["weights_sha256"] == weights_sha256(assets / "model")["sha256"]
    assert (
        results["model"]["num_parameters"]
        == results["run"]["ranks"][0]["invocations"][0]["num_parameters_loaded"]
    )
    assert {"vt-eval", "vt-model", "vt-data", "torch", "transformers"} <= set(results["versions"])
    assert (
        results["benchmark"]["name"] == "synthetic" and results["benchmark"]["facts"]["records"] == NUM_TEST
    )
    assert results["preprocessing"]["min_pixels"] == 3136 and results["preprocessing"]["num_frames"] == 8
    summary = results["summary"]
    assert summary["n"] == NUM_TEST and set(summary["per_category"]) == {line["category"] for line in lines}
    assert "grounding" in summary and "captions" in summary  # the synthetic set has gold segments
    assert (full_run / "run.json").is_file() and "samples" not in results


def test_an_interrupted_evaluation_resumes_to_the_same_results(assets, bench, full_run, tmp_path):
    calls = []

    def crash_after_first_batch(number, lines):
        calls.append(len(lines))
        raise KeyboardInterrupt  # as a kill between batches would leave it

    with pytest.raises(KeyboardInterrupt):
        evaluate(
            assets / "model",
            bench,
            FAST,
            tmp_path,
            batch_size=2,
            num_workers=1,
            label="tiny",
            on_batch=crash_after_first_batch,
        )
    assert calls == [2]
    assert len(_lines(tmp_path / "predictions.jsonl")) == 2  # the finished batch is on disk
    assert not (tmp_path / "results.json").exists()

    results = evaluate(assets / "model", bench, FAST, tmp_path, batch_size=2, num_workers=1, label="tiny")
    resumed = results["run"]["ranks"][0]["invocations"][-1]
    assert (resumed["resumed"], resumed["generated"]) == (2, NUM_TEST - 2)
    assert _stable(_lines(tmp_path / "predictions.jsonl")) == _stable(_lines(full_run / "predictions.jsonl"))
    assert _stable_results(json.loads((tmp_path / "results.json").read_text())) == _stable_results(
        json.loads((full_run / "results.json").read_text())
    )


KILL_AFTER_FIRST_BATCH = """
import os, signal, sys
from vt_eval.benchmarks import load_benchmark
from vt_eval.protocol import get_protocol
from vt_eval.runner import evaluate
assets, out = sys.argv[1], sys.argv[2]
bench = load_benchmark("synthetic", f"{assets}/data")
protocol = get_protocol("tiny_cpu", max_new_tokens=8)
evaluate(f"{assets}/model", bench, protocol, out, batch_size=2, num_workers=1,
         label="tiny",
         on_batch=lambda number, lines: os.kill(os.getpid(), signal.SIGKILL))
"""


def test_a_killed_evaluation_resumes_to_the_same_results(assets, bench, full_run, tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_FIRST_BATCH, str(assets), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == -9, proc.stderr[-2000:]  # SIGKILL: no finally block, no atexit ran
    assert [line["index"] for line in _lines(tmp_path / "predictions.jsonl")] == [0, 1]
    assert not (tmp_path / "results.json").exists()

    evaluate(assets / "model", bench, FAST, tmp_path, batch_size=2, num_workers=1, label="tiny")
    assert _stable(_lines(tmp_path / "predictions.jsonl")) == _stable(_lines(full_run / "predictions.jsonl"))
    assert _stable_results(json.loads((tmp_path / "results.json").read_text())) == _stable_results(
        json.loads((full_run / "results.json").read_text())
    )


def test_a_torn_last_line_is_truncated_and_its_sample_redone(assets, bench, full_run, tmp_path):
    shutil.copy(full_run / "run.json", tmp_path / "run.json")
    text = (full_run / "predictions.jsonl").read_text().splitlines(keepends=True)
    (tmp_path / "predictions.jsonl").write_text("".join(text[:3]) + text[3][: len(text[3]) // 2])
    assert read_predictions(tmp_path / "predictions.jsonl").torn_bytes > 0

    results = evaluate(assets / "model", bench, FAST, tmp_path, batch_size=2, num_workers=0, label="tiny")
    invocation = results["run"]["ranks"][0]["invocations"][-1]
    assert (invocation["resumed"], invocation["generated"]) == (3, NUM_TEST - 3)
    lines = _lines(tmp_path / "predictions.jsonl")
    assert [line["index"] for line in lines] == list(range(NUM_TEST))  # no duplicate, none missing
    assert [line["key"] for line in _stable(lines)] == [
        line["key"] for line in _lines(full_run / "predictions.jsonl")
    ]


def test_read_predictions_drops_only_a_torn_tail(tmp_path):
    path = tmp_path / "p.jsonl"
    writer = PredictionWriter(path)
    writer.write([{"key": "a", "prompt_hash": "h"}, {"key": "b", "prompt_hash": "h"}])
    writer.close()
    clean = path.read_bytes()
    path.write_bytes(clean + b'{"key": "c", "prom')
    result = read_predictions(path, repair=True)
    assert [r["key"] for r in result.rows] == ["a", "b"] and result.torn_bytes == len(b'{"key": "c", "prom')
    assert path.read_bytes() == clean  # truncated back to the last complete line
    path.write_bytes(clean + b"\x00" * 16)  # NUL padding some file systems leave after a crash
    assert read_predictions(path, repair=True).torn_bytes == 16 and path.read_bytes() == clean
    path.write_bytes(b'{"key": "a"}\nnot json\n{"key": "b"}\n')
    with pytest.raises(ValueError, match="corrupt"):
        read_predictions(path)


# --- data parallel ------------------------------------------------------------------------------------
def test_shards_cover_every_sample_exactly_once():
    for n in range(0, 11):
        for world in range(1, 5):
            shards = [shard_indices(n, r, world) for r in range(world)]
            assert sorted(i for s in shards for i in s) == list(range(n))
    with pytest.raises(ValueError):
        shard_indices(4, 2, 2)


def test_rank_comes_from_the_launcher_environment(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    assert resolve_rank() == (0, 1)
    monkeypatch.setenv("SLURM_PROCID", "3")
    monkeypatch.setenv("SLURM_NTASKS", "4")
    assert resolve_rank() == (3, 4)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_rank() == (1, 2) and resolve_rank(0, 1) == (0, 1)


def test_two_ranks_run_one_after_the_other_and_merge_into_one_run(assets, bench, full_run, tmp_path):
    first = evaluate(
        assets / "model",
        bench,
        FAST,
        tmp_path,
        batch_size=2,
        num_workers=0,
        rank=0,
        world_size=2,
        label="tiny",
    )
    assert not first["complete"] and first["counts"]["missing"] == NUM_TEST // 2
    assert not (tmp_path / "results.json").exists()
    assert [line["index"] for line in _lines(tmp_path / "predictions.rank0-of-2.jsonl")] == [0, 2, 4]

    second = evaluate(
        assets / "model",
        bench,
        FAST,
        tmp_path,
        batch_size=2,
        num_workers=0,
        rank=1,
        world_size=2,
        label="tiny",
    )
    assert second["complete"] and second["counts"]["done"] == NUM_TEST
    assert [line["index"] for line in _lines(tmp_path / "predictions.rank1-of-2.jsonl")] == [1, 3, 5]
    merged = _lines(tmp_path / "predictions.jsonl")
    assert [line["index"] for line in merged] == list(range(NUM_TEST))
    single = _lines(full_run / "predictions.jsonl")
    assert [(m["key"], m["prompt_hash"]) for m in merged] == [(s["key"], s["prompt_hash"]) for s in single]
    assert len(second["run"]["ranks"]) == 2
    # Merging again by hand changes nothing; a single-process rerun finds everything done.
    assert _stable_results(merge(tmp_path)) == _stable_results(second)
    again = evaluate(assets / "model", bench, FAST, tmp_path, batch_size=2, num_workers=0, label="tiny")
    assert again["complete"] and again["counts"]["done"] == NUM_TEST


RANK_OF_TWO = """
import os, signal, sys
from vt_eval.benchmarks import load_benchmark
from vt_eval.protocol import get_protocol
from vt_eval.runner import evaluate
assets, out, rank, kill = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "kill"
evaluate(f"{assets}/model", load_benchmark("synthetic", f"{assets}/data"),
         get_protocol("tiny_cpu", max_new_tokens=8), out, batch_size=2, num_workers=1, label="tiny",
         rank=rank, world_size=2,
         on_batch=(lambda number, lines: os.kill(os.getpid(), signal.SIGKILL)) if kill else None)
"""


def _both_ranks(assets: Path, out: Path, kill_rank: int | None) -> list[int]:
    """Both ranks at once, as srun starts them; rank `kill_rank` SIGKILLs itself after its first batch."""
    import signal
    import subprocess
    import sys

    procs = [subprocess.Popen([sys.executable, "-c", RANK_OF_TWO, str(assets), str(out), str(rank),
                               "kill" if rank == kill_rank else "run"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for rank in range(2)]
    codes = []
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode in (0, -signal.SIGKILL), err[-3000:]
        codes.append(proc.returncode)
    return codes


@pytest.mark.slow
@pytest.mark.distributed
def test_one_rank_killed_then_both_rerun_merge_to_one_prediction_per_sample(assets, full_run, tmp_path):
    """Two ranks at once, rank 1 SIGKILLed after its first batch while rank 0 finishes; then both again,
    as a requeued job: one prediction per sample, equal to the uninterrupted run's, none generated twice."""
    assert _both_ranks(assets, tmp_path, kill_rank=1) == [0, -9]
    assert [line["index"] for line in _lines(tmp_path / "predictions.rank1-of-2.jsonl")] == [1, 3]
    assert not (tmp_path / "results.json").exists()  # rank 0 finished, but samples were missing

    assert _both_ranks(assets, tmp_path, kill_rank=None) == [0, 0]
    merged = _lines(tmp_path / "predictions.jsonl")
    assert [line["index"] for line in merged] == list(range(NUM_TEST))
    assert _stable(merged) == _stable(_lines(full_run / "predictions.jsonl"))
    for rank, indices in ((0, [0, 2, 4]), (1, [1, 3, 5])):  # the rerun skipped what was written
        assert [line["index"] for line in _lines(tmp_path / f"predictions.rank{rank}-of-2.jsonl")] == indices
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["complete"] and results["counts"]["done"] == NUM_TEST


# --- failures, identity, backends ---------------------------------------------------------------------
def test_an_undecodable_video_is_skipped_counted_and_retried_never_replaced(assets, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(assets / "data", data)
    bench = load_benchmark("synthetic", data)
    broken = bench.records[1]
    (data / broken.path).write_bytes(b"not a video")
    out = tmp_path / "out"
    results = evaluate(assets / "model", bench, FAST, out, backend="oracle_test", batch_size=4, num_workers=2)
    assert results["complete"] and results["counts"] == {
        "planned": NUM_TEST,
        "done": NUM_TEST - 1,
        "failed_decode": 1,
        "missing": 0,
    }
    assert results["failed"][0]["key"] == broken.key and "cannot decode" in results["failed"][0]["error"]
    summary = results["summary"]
    assert summary["n"] == NUM_TEST - 1 and summary["accuracy"] == 1.0  # over the decoded samples only
    assert summary["grounding"]["miou"] == pytest.approx(1.0)
    assert summary["captions"]["rouge_l"] == pytest.approx(1.0)
    lines = _lines(out / "predictions.jsonl")
    assert [line["status"] for line in lines] == ["ok", "decode_failed"] + ["ok"] * (NUM_TEST - 2)

    # A rerun retries the failed sample only; once the file is readable again it is scored.
    shutil.copy(assets / "data" / broken.path, data / broken.path)
    again = evaluate(assets / "model", bench, FAST, out, backend="oracle_test", batch_size=4, num_workers=0)
    invocation = again["run"]["ranks"][0]["invocations"][-1]
    assert (invocation["resumed"], invocation["generated"]) == (NUM_TEST - 1, 1)
    assert again["counts"]["failed_decode"] == 0 and again["summary"]["accuracy"] == 1.0
    assert [line["status"] for line in _lines(out / "predictions.jsonl")] == ["ok"] * NUM_TEST
    superseded = _lines(out / "predictions.superseded.jsonl")
    assert [line["status"] for line in superseded] == ["decode_failed"]


def test_a_directory_holding_another_run_is_refused(assets, bench, tmp_path):
    evaluate(assets / "model", bench, FAST, tmp_path, backend="oracle_test", limit=2)
    other = get_protocol("tiny_cpu", max_new_tokens=16)
    with pytest.raises(RunMismatchError, match="protocol_fingerprint"):
        evaluate(assets / "model", bench, other, tmp_path, backend="oracle_test", limit=2)
    # A larger limit is the same run, extended.
    results = evaluate(assets / "model", bench, FAST, tmp_path, backend="oracle_test", limit=4)
    assert results["counts"]["done"] == 4 and results["run"]["ranks"][0]["invocations"][-1]["resumed"] == 2


def test_a_corrected_gold_answer_rescores_kept_outputs_without_generating_again(assets, bench, tmp_path):
    from vt_eval.benchmarks import Benchmark

    first = evaluate(assets / "model", bench, FAST, tmp_path, backend="oracle_test", limit=2)
    assert first["summary"]["accuracy"] == 1.0
    wrong = "A" if bench.records[0].gold != "A" else "B"
    fixed = [bench.records[0].replace(answer=wrong, solution=f"<answer>{wrong}</answer>"), *bench.records[1:]]
    changed = Benchmark(
        bench.name, fixed, bench.metric, bench.category_field, bench.video_root, dict(bench.facts)
    )
    again = evaluate(assets / "model", changed, FAST, tmp_path, backend="oracle_test", limit=2)
    assert again["run"]["ranks"][0]["invocations"][-1]["generated"] == 0
    assert again["summary"]["accuracy"] == 0.5
    assert [line["score"] for line in _lines(tmp_path / "predictions.jsonl")] == [0.0, 1.0]
    assert [line["score"] for line in _lines(tmp_path / "predictions.superseded.jsonl")] == [1.0]


def test_prompt_hash_covers_prompt_and_settings_but_not_the_preset_name():
    base = Protocol()
    assert prompt_hash("p", base) == prompt_hash("p", Protocol(name="renamed"))
    assert prompt_hash("p", base) != prompt_hash("q", base)
    assert prompt_hash("p", base) != prompt_hash("p", Protocol(max_pixels=256 * 28 * 28))


def test_the_vllm_backend_explains_itself_when_vllm_is_missing(assets, bench, tmp_path):
    pytest.importorskip("torch")
    try:
        import vllm  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("vLLM is installed here")
    with pytest.raises(ImportError, match="vllm"):
        evaluate(assets / "model", bench, FAST, tmp_path, backend="vllm", limit=1)
    with pytest.raises(ValueError, match="backend must be one of"):
        evaluate(assets / "model", bench, FAST, tmp_path / "x", backend="nope")


def test_weights_are_hashed_once_per_file_with_a_cache(assets, tmp_path, monkeypatch):
    import vt_eval.run_identity as run_identity

    cache = tmp_path / "cache.json"
    first = weights_sha256(assets / "model", cache)
    calls = []
    monkeypatch.setattr(run_identity, "_file_sha256", lambda path: calls.append(path) or "x")
    assert weights_sha256(assets / "model", cache) == first and calls == []
