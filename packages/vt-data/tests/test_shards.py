"""Shards: atomic writing, index, streaming reads with skip-and-count, no pickle, equal per-rank splits."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from vt_data.records import VideoQA, write_records
from vt_data.shards.layout import read_index
from vt_data.shards.reader import iter_shard_records, list_shards
from vt_data.shards.stream import StreamConfig, make_loader, make_stream
from vt_data.shards.writer import write_shards
from vt_data.video import encode_video

EXTERNAL = Path(__file__).resolve().parents[3] / "tests" / "data"
CORRUPT = EXTERNAL / "decord" / "tests" / "test_data" / "corrupted.mp4"
REAL_MOV = EXTERNAL / "decord" / "tests" / "test_data" / "video_0.mov"
FRAMES = 20  # per synthetic clip


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """Two tiny H.264 clips (20 frames, 32x32) plus the real corrupt file and a real .mov."""
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    for i in range(2):
        encode_video(rng.integers(0, 255, (FRAMES, 32, 32, 3), dtype=np.uint8), root / f"clip{i}.mp4", 10)
    shutil.copy(CORRUPT, root / "corrupted.mp4")
    shutil.copy(REAL_MOV, root / "real.mov")
    return root


def make_records(n: int, corrupt: set[int] = frozenset(), source: str = "syn") -> list[VideoQA]:
    return [VideoQA(problem=f"question {i}?", path="corrupted.mp4" if i in corrupt else f"clip{i % 2}.mp4",
                    data_source=source, problem_id=i, options=["A. yes", "B. no"],
                    solution="<answer>A</answer>") for i in range(n)]


def read_keys(config: StreamConfig, **kw) -> list[str]:
    return [s["key"] for s in make_loader(config, **kw)]


def test_round_trip(videos, tmp_path):
    real = VideoQA(problem="real?", path=str(videos / "real.mov"), data_source="decord", problem_id="mov",
                   options=["A. a", "B. b"], solution="<answer>B</answer>")
    records = make_records(5) + [real]
    index = write_shards(records, videos, tmp_path / "out", max_count=4, progress=False)
    names = [m.name for url in list_shards(tmp_path / "out") for m in tarfile.open(url)]
    assert names[:2] == ["syn-0.mp4", "syn-0.json"] and "decord-mov.mov" in names  # the source's extension
    assert index["total"] == 6
    assert list(iter_shard_records(tmp_path / "out")) == records  # no video decoded

    samples = list(make_loader(StreamConfig(tmp_path / "out", shuffle=False, num_frames=8)))
    assert [s["record"] for s in samples] == records
    assert [s["key"] for s in samples] == [f"syn-{i}" for i in range(5)] + ["decord-mov"]
    assert all(s["clip"].frames.shape == (8, 32, 32, 3) for s in samples[:5])
    assert samples[5]["clip"].frames.shape[0] == 3  # the real clip has 3 frames: all of them, no repeats
    for clip in (s["clip"] for s in samples):
        assert clip.frames.dtype == np.uint8 and clip.timestamps.shape == (clip.frames.shape[0],)


def test_index_listing_and_rewrite(videos, tmp_path):
    out = tmp_path / "out"
    records = make_records(11)
    index = write_shards(records, videos, out, max_count=4, progress=False)
    assert [(s["name"], s["count"]) for s in index["shards"]] == [
        ("shard-000000.tar", 4), ("shard-000001.tar", 4), ("shard-000002.tar", 3)]
    assert index["total"] == 11
    expected = hashlib.sha256(b"".join(r.to_json().encode() + b"\n" for r in records)).hexdigest()
    assert index["records_sha256"] == expected
    assert read_index(out) == index == json.loads((out / "index.json").read_text())
    for shard in index["shards"]:
        data = (out / shard["name"]).read_bytes()
        assert len(data) == shard["bytes"] and hashlib.sha256(data).hexdigest() == shard["sha256"]
    urls = [str(out / s["name"]) for s in index["shards"]]
    assert list_shards(out) == list_shards(out / "index.json") == urls
    assert list_shards(f"{out}/shard-{{000000..000002}}.tar") == urls
    assert list_shards(f"{out}/*.tar") == urls

    # Rewriting with fewer shards removes the stale one and leaves no temporary file.
    again = write_shards(records[:5], videos, out, max_count=4, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["index.json", "shard-000000.tar", "shard-000001.tar"]
    assert again["total"] == 5 and len(read_keys(StreamConfig(out, shuffle=False))) == 5
    # Identical inputs give byte-identical shards.
    write_shards(records[:5], videos, tmp_path / "twin", max_count=4, progress=False)
    assert read_index(tmp_path / "twin")["shards"] == again["shards"]


def test_keys_are_sanitised_and_unique(videos, tmp_path):
    records = [r.replace(data_source="a.b/c d") for r in make_records(2)]
    records += [records[0], records[0].replace(data_source="a.b/c:d")]  # repeats and a collision
    write_shards(records, videos, tmp_path / "out", progress=False)
    keys = read_keys(StreamConfig(tmp_path / "out", shuffle=False))
    assert keys == ["a_b_c_d-0", "a_b_c_d-1", "a_b_c_d-0_1", "a_b_c_d-0_2"]


def test_missing_video_names_the_record_and_writes_nothing(videos, tmp_path):
    records = make_records(3)
    records[1] = records[1].replace(path="nowhere.mp4")
    write_records(records, tmp_path / "train.jsonl")
    with pytest.raises(FileNotFoundError, match=r"train\.jsonl:2: record 'syn-1': video file not found"):
        write_shards(tmp_path / "train.jsonl", videos, tmp_path / "out", progress=False)
    with pytest.raises(FileNotFoundError, match=r"record #1: record 'syn-1'"):
        write_shards(records, videos, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("num_workers", [0, 2])
def test_corrupt_video_is_skipped_counted_and_reported(videos, tmp_path, caplog, num_workers):
    # 5 samples, 2 workers: worker 1 reads samples 3 and 4, so the corrupt one is its last sample and
    # only the counters-only report can tell the loader about it.
    write_shards(make_records(5, corrupt={4}), videos, tmp_path / "out", max_count=2, progress=False)
    loader = make_loader(StreamConfig(tmp_path / "out", shuffle=False), num_workers=num_workers)
    with caplog.at_level(logging.WARNING, logger="vt_data.shards.stream"):
        keys = [s["key"] for s in loader]
    assert sorted(keys) == ["syn-0", "syn-1", "syn-2", "syn-3"]  # skipped, never replaced
    stats = loader.stats
    assert (stats.decoded, stats.skipped) == (4, 1)
    assert [(f.key, f.epoch) for f in stats.failures] == [("syn-4", 0)]
    assert "Error sending packet" in stats.failures[0].reason
    assert sum(c.skipped for c in stats.per_worker.values()) == 1
    assert len(stats.per_worker) == max(1, num_workers)
    if num_workers == 0:  # worker processes log to their own stderr
        assert [r.getMessage() for r in caplog.records if "syn-4" in r.getMessage()] != []
    list(loader)  # a second epoch adds to the totals
    assert (loader.stats.decoded, loader.stats.skipped, loader.stats.epoch) == (8, 2, 1)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


class _CreatesFile:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # unpickling opens the file for writing: it appears


def test_untrusted_members_are_never_unpickled_or_used_as_paths(videos, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_CreatesFile(str(marker)))
    pickle.loads(payload).close()  # the payload is live ...
    assert marker.exists()
    marker.unlink()

    record = make_records(1)[0]
    shard = tmp_path / "evil.tar"
    with tarfile.open(shard, "w") as tar:
        _add(tar, "a.json", record.to_json().encode())
        _add(tar, "a.mp4", (videos / "clip0.mp4").read_bytes())
        _add(tar, "a.pyd", payload)  # beside a good sample
        _add(tar, "b.json", record.to_json().encode())
        _add(tar, "b.pickle", payload)  # a sample with no video
        _add(tar, "../escaped.json", record.to_json().encode())
    (tmp_path / "cwd").mkdir()
    monkeypatch.chdir(tmp_path / "cwd")  # a member name used as a path would land beside it
    loader = make_loader(StreamConfig(str(shard), shuffle=False))
    samples = list(loader)
    assert [s["key"] for s in samples] == ["a"]
    assert "pyd" not in samples[0] and samples[0]["record"] == record
    assert not marker.exists()  # ... and was never loaded
    assert not (tmp_path / "escaped.json").exists() and not list((tmp_path / "cwd").iterdir())
    assert [(f.key, f.reason) for f in loader.stats.failures] == [
        ("b", "expected one video member, found 0 (ignored members: pickle)"),
        ("../escaped", "expected one video member, found 0")]


def test_shuffle_is_seeded_per_epoch(videos, tmp_path):
    write_shards(make_records(14), videos, tmp_path / "out", max_count=5, progress=False)
    config = StreamConfig(tmp_path / "out", shuffle=True, shuffle_buffer=4, seed=1)
    loader = make_loader(config)
    epoch0, epoch1 = list(s["key"] for s in loader), list(s["key"] for s in loader)  # epochs 0 then 1
    loader.set_epoch(0)
    assert [s["key"] for s in loader] == epoch0
    assert read_keys(config) == epoch0  # a fresh loader: the same order
    assert epoch1 != epoch0 and sorted(epoch1) == sorted(epoch0) == sorted(f"syn-{i}" for i in range(14))
    assert read_keys(StreamConfig(tmp_path / "out", shuffle=True, shuffle_buffer=4, seed=2)) != epoch0
    assert read_keys(StreamConfig(tmp_path / "out", shuffle=False)) == [f"syn-{i}" for i in range(14)]


def test_finite_split_equal_lengths_trims_fewer_than_world_size(videos, tmp_path):
    # 13 samples in shards of 5, 5, 3 over 2 ranks: 6 each, one dropped per epoch (which one rotates).
    write_shards(make_records(13), videos, tmp_path / "out", max_count=5, progress=False)
    dropped = []
    for epoch in range(6):
        per_rank = []
        for rank in (0, 1):
            loader = make_loader(StreamConfig(tmp_path / "out", seed=3, rank=rank, world_size=2))
            loader.set_epoch(epoch)
            assert len(loader) == 6
            per_rank.append([s["key"] for s in loader])
        seen = per_rank[0] + per_rank[1]
        assert [len(k) for k in per_rank] == [6, 6] and len(set(seen)) == 12
        dropped.append(({f"syn-{i}" for i in range(13)} - set(seen)).pop())
    assert len(set(dropped)) > 1


def test_resume_mid_epoch(videos, tmp_path):
    write_shards(make_records(10), videos, tmp_path / "out", max_count=3, progress=False)
    for num_workers in (0, 2):
        config = StreamConfig(tmp_path / "out", shuffle=True, shuffle_buffer=3, seed=5)
        full = make_loader(config, num_workers=num_workers)
        full.set_epoch(1)
        everything = [s["key"] for s in full]
        first = make_loader(config, num_workers=num_workers)
        first.set_epoch(1)
        head = []
        for sample in first:
            head.append(sample["key"])
            if len(head) == 4:
                break
        state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint stores
        second = make_loader(config, num_workers=num_workers)
        second.load_state_dict(state)
        second.set_epoch(1)  # a trainer's per-epoch call keeps the loaded position
        tail = [s["key"] for s in second]
        assert sorted(head + tail) == sorted(everything) and len(head + tail) == 10
        if num_workers == 0:
            assert head + tail == everything
            assert [s["key"] for s in first] == tail  # iterating again continues the epoch
        assert second.state_dict()["epoch"] == 2  # a finished epoch points at the next one

    # Resampled: the rest of samples_per_rank, in the same order as without the interruption.
    config = StreamConfig(tmp_path / "out", resampled=True, samples_per_rank=6, seed=5)
    everything = read_keys(config)
    first = make_loader(config)
    iterator = iter(first)
    head = [next(iterator)["key"] for _ in range(2)]
    second = make_loader(config)
    second.load_state_dict(first.state_dict())
    assert head + [s["key"] for s in second] == everything and len(everything) == 6


def test_resampled_length_is_per_rank_not_per_worker(videos, tmp_path):
    write_shards(make_records(6, corrupt={2}), videos, tmp_path / "out", max_count=2, progress=False)
    loader = make_loader(StreamConfig(tmp_path / "out", resampled=True, samples_per_rank=7), num_workers=2)
    assert len(loader) == 7
    keys = [s["key"] for s in loader]
    assert len(keys) == 7 and "syn-2" not in keys  # skipped samples do not shorten the epoch
    batches = list(make_loader(StreamConfig(tmp_path / "out", resampled=True, samples_per_rank=7),
                               batch_size=3, num_workers=2))
    assert [len(b) for b in batches] == [3, 3]
    with pytest.raises(ValueError, match="samples_per_rank"):
        make_stream(StreamConfig(tmp_path / "out", resampled=True))
    # Finite mode, 2 workers with 3 samples each, batches of 2: 2 + 2 batches (partial ones kept).
    assert len(make_loader(StreamConfig(tmp_path / "out"), batch_size=2, num_workers=2)) == 4


def test_resampled_stream_of_only_corrupt_videos_fails_instead_of_hanging(videos, tmp_path, monkeypatch):
    import vt_data.shards.stream as stream

    monkeypatch.setattr(stream, "_MAX_SKIPS_IN_A_ROW", 3)
    write_shards(make_records(2, corrupt={0, 1}), videos, tmp_path / "out", progress=False)
    with pytest.raises(RuntimeError, match="3 samples in a row failed to decode"):
        list(make_loader(StreamConfig(tmp_path / "out", resampled=True, samples_per_rank=4)))


_RANK_SCRIPT = r'''
import json, sys, torch, torch.distributed as dist
from vt_data.shards.stream import StreamConfig, make_loader

out, init = sys.argv[1], sys.argv[2]
rank = int(sys.argv[3])
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
result = {}

def run(name, loader):
    keys = []
    for sample in loader:
        keys.append(sample["key"])
        step = torch.ones(1)
        dist.all_reduce(step)  # a collective per step: unequal lengths would hang here
    result[name] = {"keys": keys, "len": len(loader), "skipped": loader.stats.skipped}

root = sys.argv[4]
finite = make_loader(StreamConfig(root, seed=7), num_workers=2)  # rank and world size from torch.distributed
run("epoch0", finite)
run("epoch1", finite)
run("resampled", make_loader(StreamConfig(root, seed=7, resampled=True, samples_per_rank=5), num_workers=2))
dist.barrier()
dist.destroy_process_group()
with open(out, "w") as fh:
    json.dump(result, fh)
'''


@pytest.mark.distributed
def test_two_ranks_two_workers(videos, tmp_path):
    # 14 samples in shards of 5, 5, 4: a split by whole shards would give the ranks 9 and 5 samples.
    index = write_shards(make_records(14), videos, tmp_path / "out", max_count=5, progress=False)
    assert [s["count"] for s in index["shards"]] == [5, 5, 4]
    script = tmp_path / "rank.py"
    script.write_text(_RANK_SCRIPT)
    init = f"file://{tmp_path / 'store'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(tmp_path / f"r{r}.json"), init, str(r),
                               str(tmp_path / "out")], env=env, stderr=subprocess.PIPE, text=True)
             for r in (0, 1)]
    for proc in procs:
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            for p in procs:
                p.kill()
            pytest.fail("ranks hung")
        assert proc.returncode == 0, err[-3000:]
    results = [json.loads((tmp_path / f"r{r}.json").read_text()) for r in (0, 1)]
    everything = sorted(f"syn-{i}" for i in range(14))
    for epoch in ("epoch0", "epoch1"):
        keys = [r[epoch]["keys"] for r in results]
        assert [len(k) for k in keys] == [7, 7] and [r[epoch]["len"] for r in results] == [7, 7]
        assert sorted(keys[0] + keys[1]) == everything  # each sample exactly once across ranks
    assert results[0]["epoch0"]["keys"] != results[0]["epoch1"]["keys"]
    for r in results:
        assert len(r["resampled"]["keys"]) == r["resampled"]["len"] == 5
    assert results[0]["resampled"]["keys"] != results[1]["resampled"]["keys"]  # ranks draw independently
