"""Video reading on real files (dmlc/decord test videos) and synthetic clips: both backends agree on
frame counts, indices, timestamps, pixels, rotation and errors; frame sampling is the qwen-vl-utils rule."""

import io
import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import vt_data.video as video
from vt_data.video import (
    BACKENDS,
    VideoClip,
    VideoDecodeError,
    encode_video,
    probe_video,
    read_video,
    sample_indices,
)

DECORD_DIR = Path(__file__).resolve().parents[3] / "tests" / "data" / "decord"
PANCAKE = DECORD_DIR / "examples" / "flipping_a_pancake.mkv"
TEST_DATA = DECORD_DIR / "tests" / "test_data"
CORRUPTED = TEST_DATA / "corrupted.mp4"

# round(linspace(0, 309, 16)) as qwen-vl-utils computes it.
PANCAKE_16 = [0, 21, 41, 62, 82, 103, 124, 144, 165, 185, 206, 227, 247, 268, 288, 309]

# (file, total frames, duration s, fps, frame shape after rotation); from tests/data/README.md / PyAV probe.
REAL_VIDEOS = [
    (PANCAKE, 310, 10.381, 30.0, (240, 426, 3)),
    (TEST_DATA / "unordered.mov", 4, 0.125, 32.0, (50, 50, 3)),
    (TEST_DATA / "video_0.mov", 3, 0.1, 30.0, (320, 568, 3)),
    (TEST_DATA / "video_90.mov", 3, 0.1, 30.0, (568, 320, 3)),
    (TEST_DATA / "video_180.mov", 3, 0.1, 30.0, (320, 568, 3)),
    (TEST_DATA / "video_270.mov", 3, 0.1, 30.0, (568, 320, 3)),
]
REAL_IDS = [entry[0].stem for entry in REAL_VIDEOS]


# ----------------------------------------------------------------------------------- sample_indices


def test_sample_by_count_is_qwen_linspace():
    assert sample_indices(310).tolist() == PANCAKE_16
    assert sample_indices(310, num_frames=16).dtype == np.int64
    # 4.5 rounds half to even (torch.round), so index 4, not 5.
    assert sample_indices(10, num_frames=5).tolist() == [0, 2, 4, 7, 9]
    assert sample_indices(100, num_frames=1).tolist() == [0]
    assert sample_indices(100, num_frames=2).tolist() == [0, 99]


def test_sample_caps():
    assert len(sample_indices(310, num_frames=64)) == 16  # max_frames=16 by default
    assert len(sample_indices(310, num_frames=64, max_frames=64)) == 64
    assert sample_indices(5, num_frames=16).tolist() == [0, 1, 2, 3, 4]  # never more than the video has
    assert sample_indices(1).tolist() == [0]


def test_sample_by_fps():
    # 310 frames at 30 fps = 10.33 s; 1 fps -> round(10.33) = 10 frames, spread like linspace.
    idx = sample_indices(310, fps=1.0, video_fps=30.0)
    assert idx.tolist() == np.round(np.linspace(0, 309, 10)).astype(int).tolist()
    assert len(sample_indices(310, fps=2.0, video_fps=30.0)) == 16  # round(20.67) = 21, capped at 16
    assert len(sample_indices(310, fps=2.0, video_fps=30.0, max_frames=32)) == 21
    assert sample_indices(310, fps=0.01, video_fps=30.0).tolist() == [0]  # round(0.1) = 0 -> min_frames 1
    assert len(sample_indices(310, fps=0.01, video_fps=30.0, min_frames=4)) == 4
    assert len(sample_indices(3, fps=30.0, video_fps=1.0)) == 3  # capped at total
    # fps wins over the default num_frames, so callers need not pass num_frames=None.
    assert len(sample_indices(310, num_frames=16, fps=0.5, video_fps=30.0)) == 5


def test_sample_centers_rule():
    assert sample_indices(10, num_frames=5, rule="centers").tolist() == [1, 3, 5, 7, 9]
    assert sample_indices(310, num_frames=1, rule="centers").tolist() == [155]
    assert sample_indices(4, num_frames=4, rule="centers").tolist() == [0, 1, 2, 3]
    total, n = 1_000_003, 16
    assert sample_indices(total, num_frames=n, rule="centers").tolist() == [
        int((i + 0.5) * total / n) for i in range(n)
    ]


@pytest.mark.parametrize("total", [26, 30, 48, 1234, 54_321, 250_000])
@pytest.mark.parametrize("n", [1, 2, 15, 16, 23, 32, 64])
def test_linspace_matches_torch_bit_for_bit(total, n):
    # Cases where float64 np.linspace differs from qwen-vl-utils (e.g. total 26, n 23) are included.
    torch = pytest.importorskip("torch")
    n = min(n, total)
    expected = torch.linspace(0, total - 1, n).round().long().tolist()
    assert sample_indices(total, num_frames=n, max_frames=n).tolist() == expected


@pytest.mark.parametrize(
    "args, match",
    [
        (dict(total_frames=0), "total_frames"),
        (dict(total_frames=2.5), "total_frames"),
        (dict(total_frames=10, num_frames=0), "num_frames"),
        (dict(total_frames=10, num_frames=None), "num_frames or fps"),
        (dict(total_frames=10, fps=2.0), "video_fps"),
        (dict(total_frames=10, fps=-1.0, video_fps=30.0), "fps"),
        (dict(total_frames=10, fps=1.0, video_fps=0.0), "video_fps"),
        (dict(total_frames=10, rule="random"), "rule"),
        (dict(total_frames=10, max_frames=0), "max_frames"),
        (dict(total_frames=10, min_frames=5, max_frames=4), "min_frames"),
    ],
)
def test_sample_bad_args(args, match):
    total = args.pop("total_frames")
    with pytest.raises(ValueError, match=match):
        sample_indices(total, **args)


# ----------------------------------------------------------------------------------- real videos


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("path, total, duration, fps, shape", REAL_VIDEOS, ids=REAL_IDS)
def test_real_video_reads(backend, path, total, duration, fps, shape):
    clip = read_video(path, backend=backend)
    assert isinstance(clip, VideoClip)
    n = min(total, 16)
    assert clip.frames.shape == (n, *shape) and clip.frames.dtype == np.uint8
    assert clip.total_frames == total
    assert clip.duration == pytest.approx(duration, abs=1e-3)
    assert clip.fps == pytest.approx(fps)
    assert clip.indices.dtype == np.int64 and clip.timestamps.dtype == np.float64
    assert clip.indices.tolist() == sample_indices(total).tolist()
    assert np.all(np.diff(clip.timestamps) > 0)
    assert clip.source == str(path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_unordered_pts_come_back_sorted(backend):
    clip = read_video(TEST_DATA / "unordered.mov", backend=backend)
    np.testing.assert_allclose(clip.timestamps, [0.0, 0.03125, 0.0625, 0.09375], atol=1e-6)
    assert clip.indices.tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("backend", BACKENDS)
def test_pancake_16_frames(backend):
    clip = read_video(PANCAKE, num_frames=16, backend=backend)
    assert clip.indices.tolist() == PANCAKE_16
    # Matroska stores milliseconds: frame 41 is at 1.367 s, 41/30 = 1.3667.
    np.testing.assert_allclose(clip.timestamps, np.array(PANCAKE_16) / 30.0, atol=1e-3)
    assert clip.timestamps[2] == pytest.approx(1.367, abs=1e-6)


@pytest.mark.parametrize("path", [PANCAKE, *[TEST_DATA / f"video_{r}.mov" for r in (0, 90, 180, 270)],
                                  TEST_DATA / "unordered.mov"], ids=lambda p: p.name)
def test_backends_return_the_same_pixels(path):
    # Measured: identical (max abs diff 0) on all of these, rotated ones included, which also pins the
    # direction of PyAV's rotation to the one decord applies itself. Allow 1 for FFmpeg build drift.
    a = read_video(path, backend="decord")
    b = read_video(path, backend="pyav")
    assert a.frames.shape == b.frames.shape
    assert int(np.abs(a.frames.astype(np.int16) - b.frames).max()) <= 1
    np.testing.assert_allclose(a.timestamps, b.timestamps, atol=1e-6)  # decord's are float32
    assert a.indices.tolist() == b.indices.tolist()
    assert a.duration == pytest.approx(b.duration) and a.fps == pytest.approx(b.fps)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bytes_equal_path(backend):
    data = PANCAKE.read_bytes()
    a = read_video(PANCAKE, backend=backend, num_frames=4)
    b = read_video(data, backend=backend, num_frames=4)
    np.testing.assert_array_equal(a.frames, b.frames)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)
    assert (b.total_frames, b.duration) == (a.total_frames, a.duration)
    assert b.source == f"<bytes:{len(data)}>"
    assert read_video(data, backend=backend, num_frames=1, name="clip-7").source == "clip-7"


def test_probe_pancake():
    facts = probe_video(PANCAKE)
    assert json.loads(json.dumps(facts)) == facts
    assert facts == {
        "path": str(PANCAKE),
        "size_bytes": 436346,
        "format": "matroska,webm",
        "codec": "h264",
        "width": 426,
        "height": 240,
        "display_width": 426,
        "display_height": 240,
        "rotation": 0,
        "fps": 30.0,
        "total_frames": 310,
        "duration": pytest.approx(10.381),
        "has_audio": True,
    }
    by_decord = probe_video(PANCAKE, backend="decord")
    assert by_decord == facts


def test_probe_rotation_and_claimed_count():
    facts = probe_video(TEST_DATA / "video_90.mov")
    assert (facts["width"], facts["height"]) == (568, 320)
    assert (facts["display_width"], facts["display_height"], facts["rotation"]) == (320, 568, 90)
    assert probe_video(TEST_DATA / "video_270.mov")["rotation"] == 270
    assert probe_video(TEST_DATA / "video_180.mov")["rotation"] == 180
    # The frame count is the container's (packet index), not verified by decoding: 50, of which 28 decode.
    corrupted = probe_video(CORRUPTED)
    assert (corrupted["total_frames"], corrupted["duration"], corrupted["has_audio"]) == (50, 5.0, False)


# ----------------------------------------------------------------------------------- errors


_CHILD = textwrap.dedent(
    """
    import json, sys
    import vt_data.video as v
    out = {"heavy_imports": [m for m in ("decord", "av", "torch") if m in sys.modules]}
    for backend in v.BACKENDS:
        try:
            # 16 frames over the claimed 50 reach past the damage at 28; "centers" spares the child a
            # torch import (the linspace rule uses torch), the decoders are exercised the same way.
            v.read_video(sys.argv[1], num_frames=16, rule="centers", backend=backend)
            out[backend] = {"raised": None}
        except v.VideoDecodeError as e:
            out[backend] = dict(raised="VideoDecodeError", source=e.source, reason=e.reason, str=str(e))
        except Exception as e:  # reported, so the test shows what leaked through
            out[backend] = {"raised": type(e).__name__, "str": str(e)}
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def corrupted_result():
    # A child process, so a decoder that hangs is killed by the timeout instead of stalling the suite.
    src_dir = Path(video.__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(src_dir), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(CORRUPTED)], capture_output=True, text=True,
                          timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupted_raises_typed_error_and_does_not_hang(corrupted_result, backend):
    got = corrupted_result[backend]
    assert got["raised"] == "VideoDecodeError", got
    assert got["source"] == str(CORRUPTED)
    assert "corrupted.mp4" in got["str"] and got["reason"] in got["str"]


def test_import_is_cheap(corrupted_result):
    assert corrupted_result["heavy_imports"] == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_garbage_empty_and_missing_inputs_raise(backend, tmp_path):
    garbage = np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    (tmp_path / "garbage.mp4").write_bytes(garbage)
    cases = [(garbage, "<bytes:5000>"), (b"", "<bytes:0>"), (empty, str(empty)),
             (tmp_path / "garbage.mp4", str(tmp_path / "garbage.mp4")),
             (tmp_path / "missing.mp4", str(tmp_path / "missing.mp4")), (tmp_path, str(tmp_path))]
    for source, label in cases:
        with pytest.raises(VideoDecodeError) as info:
            read_video(source, backend=backend)
        assert info.value.source == label and label in str(info.value) and info.value.reason
    with pytest.raises(VideoDecodeError):
        probe_video(garbage, backend="pyav")


@pytest.mark.parametrize("backend", BACKENDS)
def test_truncated_header_raises(backend):
    with pytest.raises(VideoDecodeError):
        read_video(PANCAKE.read_bytes()[:3000], backend=backend)


def test_error_pickles_and_names_the_file():
    err = VideoDecodeError("/data/clip.mp4", "decoding failed: InvalidDataError")
    back = pickle.loads(pickle.dumps(err))
    assert (back.source, back.reason) == (err.source, err.reason)
    assert str(back) == "cannot decode video /data/clip.mp4: decoding failed: InvalidDataError"


def test_bad_arguments():
    with pytest.raises(ValueError, match="backend"):
        read_video(b"x", backend="opencv")
    with pytest.raises(TypeError):
        read_video(123)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- synthetic clips

COLOURS = np.array(
    [[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 0], [0, 255, 255], [255, 0, 255],
     [128, 128, 128], [255, 255, 255], [0, 0, 0], [200, 100, 50], [50, 100, 200], [90, 200, 90]],
    dtype=np.uint8,
)


@pytest.fixture(scope="module")
def colour_clip():
    frames = np.broadcast_to(COLOURS[:, None, None, :], (len(COLOURS), 48, 64, 3)).copy()
    buf = io.BytesIO()
    encode_video(frames, buf, fps=12)
    return buf.getvalue()


@pytest.mark.parametrize("backend", BACKENDS)
def test_encode_then_read_keeps_count_and_colours(colour_clip, backend, tmp_path):
    path = tmp_path / "colours.mp4"
    path.write_bytes(colour_clip)
    clip = read_video(path, num_frames=12, max_frames=12, backend=backend)
    assert clip.frames.shape == (12, 48, 64, 3) and clip.total_frames == 12
    assert clip.fps == pytest.approx(12.0) and clip.duration == pytest.approx(1.0)
    np.testing.assert_allclose(clip.timestamps, np.arange(12) / 12, atol=1e-6)
    # Solid colours survive H.264 + yuv420p + limited range within a few levels.
    means = clip.frames[:, 8:40, 8:56].reshape(12, -1, 3).mean(axis=1)
    assert np.abs(means - COLOURS).max() < 6


def test_encode_rejects_odd_sizes_and_bad_input(tmp_path):
    with pytest.raises(ValueError, match="even"):
        encode_video(np.zeros((2, 47, 64, 3), np.uint8), tmp_path / "odd.mp4", fps=10)
    with pytest.raises(ValueError, match="uint8"):
        encode_video(np.zeros((2, 48, 64, 3), np.float32), tmp_path / "f.mp4", fps=10)


@pytest.fixture(scope="module")
def moving_clip():
    # 120 frames, a keyframe every 10 and x264's B-frames: the PyAV path has to seek between GOPs and
    # reorder. Each frame is distinct (a bar that moves, a level that ramps), so an off-by-one shows.
    t = np.arange(120)
    frames = np.zeros((120, 64, 64, 3), np.uint8)
    frames[..., 1] = (t * 2)[:, None, None]
    for i in t:
        frames[i, :, (i * 5) % 60:(i * 5) % 60 + 4, 0] = 255
    buf = io.BytesIO()
    encode_video(frames, buf, fps=24, gop=10)
    return buf.getvalue()


def test_pyav_seeking_equals_full_decode_and_decord(moving_clip):
    import av

    with av.open(io.BytesIO(moving_clip)) as container:
        full = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert len(full) == 120
    for n, rule in [(1, "linspace"), (5, "centers"), (16, "linspace"), (33, "centers"), (120, "linspace")]:
        b = read_video(moving_clip, num_frames=n, max_frames=120, rule=rule, backend="pyav")
        np.testing.assert_array_equal(b.frames, full[b.indices])
        np.testing.assert_allclose(b.timestamps, b.indices / 24, atol=1e-9)
        a = read_video(moving_clip, num_frames=n, max_frames=120, rule=rule, backend="decord")
        np.testing.assert_array_equal(a.frames, b.frames)


def test_the_encoder_gets_the_converted_frame_with_zero_padding():
    """encode_video hands x264 a yuv420p frame whose every byte is set: the pixels of PyAV's own
    RGB -> yuv420p conversion, and zeros in the row padding (56 is not a multiple of the alignment).
    Letting PyAV convert inside `encode` left that padding uninitialised, and x264 read it: the same
    frames gave 2-9 different files in 30 encodings on this box."""
    import av

    rgb = np.random.default_rng(0).integers(0, 256, (56, 56, 3), dtype=np.uint8)
    frame = video._yuv420p_frame(rgb)
    expected = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()
    assert np.array_equal(frame.to_ndarray(), expected)
    for plane, width in zip(frame.planes, (56, 28, 28), strict=True):
        rows = np.frombuffer(bytes(plane), dtype=np.uint8).reshape(-1, plane.line_size)
        assert plane.line_size > width and not rows[:, width:].any()
