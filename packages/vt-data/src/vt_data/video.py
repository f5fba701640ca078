"""The project's one video reader: frame sampling, decoding (decord default, PyAV second), probing, encoding.

Conventions shared by both backends (each one checked by tests/test_video.py on real files):

* **Frame indices** count frames in presentation (pts) order, 0-based, as decord does. The frame count is
  the number of video packets in the container's index (decord's ``len(VideoReader)``; for PyAV we demux
  every packet without decoding, which also gives the pts of every frame). It is **not** verified by
  decoding: a file whose container claims more frames than decode (``corrupted.mp4`` claims 50, decodes
  28) reports the claimed count, and asking for a frame past the damage raises :class:`VideoDecodeError`.
  A partially decoded clip is never returned in place of the request.
* **Timestamps** are presentation times in seconds relative to the stream's start time (decord subtracts it
  too, e.g. 0.08 s on MPEG-TS), float64, ascending. decord's own values are float32 (error < 1e-6 s here).
* **Frames** are uint8 RGB (T, H, W, 3) in display orientation: the container's display matrix is applied.
  decord 0.6.0 already does this itself (checked pixel-exact on video_{0,90,180,270}.mov); PyAV does not,
  so its frames are turned with ``np.rot90`` from ``frame.rotation``.
* **Duration** is the video stream's duration if the container gives one, else the container's
  (pancake.mkv: 10.381 s, longer than the last frame's end, 10.333 s). Both backends read it with PyAV.
* **fps** is the stream's average frame rate.

Caution: decord 0.6.0 returned the wrong frames (about 9 frames late from frame 0 on) for an x264 MPEG-TS
clip with B-frames written by PyAV, while PyAV matched a full decode; MP4/MKV/MOV agreed pixel for pixel.
Prefer ``backend="pyav"`` for .ts files.

decord and av are imported inside the functions so that ``import vt_data.video`` stays cheap.
"""

from __future__ import annotations

import bisect
import io
import math
import os
import re
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

BACKENDS = ("decord", "pyav")
RULES = ("linspace", "centers")

Source = str | os.PathLike | bytes


class VideoDecodeError(Exception):
    """The one error for a video that cannot be read: missing, empty, truncated, corrupt or without frames.

    ``source`` is the file path, ``"<bytes:N>"`` for in-memory input, or the caller's ``name``;
    ``reason`` says what failed. Both backends raise it; no substitute frames are ever returned.
    """

    def __init__(self, source: str, reason: str):
        # Both values go to Exception.args so the error pickles (DataLoader workers send it back).
        super().__init__(source, reason)
        self.source = source
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot decode video {self.source}: {self.reason}"


@dataclass
class VideoClip:
    """Frames sampled from one video, with where they sit in it."""

    frames: np.ndarray  # uint8 (T, H, W, 3) RGB, display orientation
    timestamps: np.ndarray  # float64 (T,) presentation time of each frame, seconds, ascending
    indices: np.ndarray  # int64 (T,) frame indices in presentation order
    duration: float  # seconds
    fps: float  # average frame rate of the stream
    total_frames: int
    source: str


# --------------------------------------------------------------------------------------------- sampling


def sample_indices(
    total_frames: int,
    *,
    num_frames: int | None = 16,
    fps: float | None = None,
    video_fps: float | None = None,
    max_frames: int = 16,
    min_frames: int = 1,
    rule: str = "linspace",
) -> np.ndarray:
    """Which frames to decode: sorted int64 indices into ``range(total_frames)``, distinct in practice.

    How many: with ``fps`` (a target rate; needs ``video_fps``) n = round(total / video_fps * fps),
    clamped to [min_frames, max_frames]; otherwise n = ``num_frames``, capped at ``max_frames``. ``fps``
    takes precedence over ``num_frames`` when both are given, so ``fps=2`` works without also passing
    ``num_frames=None``. n is finally capped at ``total_frames`` (every frame, no repeats).

    Where: ``rule="linspace"`` is qwen-vl-utils' ``torch.linspace(0, total - 1, n).round().long()``,
    the frame sampling of the Video-R1 / Video-Thinker evaluation protocol; keep it for anything compared
    with published numbers. It includes the first and the last frame. It is computed with torch itself
    (float32, round half to even), not numpy: float64 ``np.linspace`` picks a different frame in about 4%
    of 64-frame samples of videos over 20k frames (ties such as 12.5 land on either side, and torch's
    vectorised kernel rounds its own way), so only torch reproduces the protocol exactly.
    ``rule="centers"`` gives floor((i + 0.5) * total / n), the centre of n equal bins (TSN-style), which
    never picks the very first or last frame when n < total.
    """
    if isinstance(total_frames, bool) or not isinstance(total_frames, (int, np.integer)):
        raise ValueError(f"total_frames must be an int, got {total_frames!r}")
    if total_frames < 1:
        raise ValueError(f"total_frames must be >= 1, got {total_frames}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if not 1 <= min_frames <= max_frames:
        raise ValueError(f"need 1 <= min_frames <= max_frames, got {min_frames} and {max_frames}")
    if fps is not None:
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps must be a positive number, got {fps!r}")
        if video_fps is None or not (math.isfinite(video_fps) and video_fps > 0):
            raise ValueError(f"sampling by fps needs the video frame rate (video_fps > 0), got {video_fps!r}")
        n = round(total_frames / video_fps * fps)
        n = min(max(n, min_frames), max_frames)
    elif num_frames is not None:
        if isinstance(num_frames, bool) or not isinstance(num_frames, (int, np.integer)) or num_frames < 1:
            raise ValueError(f"num_frames must be an int >= 1, got {num_frames!r}")
        n = min(int(num_frames), max_frames)
    else:
        raise ValueError("give num_frames or fps")
    n = min(n, int(total_frames))
    if rule == "linspace":
        import torch  # lazy: torch is a dependency of vt-data, but `import vt_data.video` must stay cheap

        idx = torch.linspace(0, int(total_frames) - 1, n, dtype=torch.float32).round().long().numpy()
    else:
        # Integer arithmetic: floor((2i + 1) * total / 2n) without float rounding at bin edges.
        idx = (2 * np.arange(n, dtype=np.int64) + 1) * int(total_frames) // (2 * n)
    return np.asarray(idx, dtype=np.int64)


# --------------------------------------------------------------------------------------------- helpers


def _resolve(source: Source, name: str | None) -> tuple[str | bytes, str]:
    """(what to open: a path string or the bytes, the name used in errors and VideoClip.source)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return data, name or f"<bytes:{len(data)}>"
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        label = name or str(path)
        # Checked here because decord reports a missing file only as "Error reading <path>...".
        if not os.path.isfile(path):
            raise VideoDecodeError(label, "not a regular file" if os.path.exists(path) else "no such file")
        if os.path.getsize(path) == 0:
            raise VideoDecodeError(label, "empty file (0 bytes)")
        return path, label
    raise TypeError(f"video source must be a path or bytes, got {type(source).__name__}")


def _short(exc: BaseException) -> str:
    """A one-line reason from a backend error (decord's messages carry C++ file:line prefixes)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = re.sub(r"\[\d\d:\d\d:\d\d\] \S+:\d+: ", "", text)
    text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    return text if len(text) <= 300 else text[:297] + "..."


def _av_open(src: str | bytes, label: str):
    import av

    if isinstance(src, bytes) and not src:
        raise VideoDecodeError(label, "empty input (0 bytes)")
    try:
        container = av.open(io.BytesIO(src) if isinstance(src, bytes) else src, mode="r")
    except (av.FFmpegError, OSError, ValueError) as e:
        raise VideoDecodeError(label, _short(e)) from e
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(label, "no video stream")
    return container


def _stream_duration(container, stream) -> float | None:
    """Seconds: the video stream's duration, else the container's, else None."""
    import av

    if stream.duration and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return container.duration / av.time_base
    return None


def _stream_fps(stream) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate):
        if rate:
            return float(rate)
    return None


def _rotate(frames: np.ndarray, rotation: int) -> np.ndarray:
    """Turn (T, H, W, 3) frames by ``rotation`` degrees clockwise (np.rot90 turns counter-clockwise)."""
    k = (-(rotation // 90)) % 4
    return np.ascontiguousarray(np.rot90(frames, k=k, axes=(1, 2))) if k else frames


def _clockwise(frame_rotation: float) -> int:
    """PyAV gives the display-matrix angle counter-clockwise; return it clockwise, as 0/90/180/270."""
    return int(round(-frame_rotation / 90.0)) % 4 * 90


def _check_request(backend: str, rule: str) -> None:
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")


# --------------------------------------------------------------------------------------------- reading


def read_video(
    source: Source,
    *,
    num_frames: int | None = 16,
    fps: float | None = None,
    max_frames: int = 16,
    rule: str = "linspace",
    backend: str = "decord",
    name: str | None = None,
) -> VideoClip:
    """Decode frames sampled by :func:`sample_indices` from a file path or from the file's bytes.

    ``name`` replaces the path / ``"<bytes:N>"`` label in errors and in ``VideoClip.source``.
    Raises :class:`VideoDecodeError` for anything unreadable (see the module docstring for the frame
    count, timestamp, rotation and duration conventions, which both backends share).
    """
    _check_request(backend, rule)
    sampling = dict(num_frames=num_frames, fps=fps, max_frames=max_frames, rule=rule)
    sample_indices(1, video_fps=1.0, **sampling)  # bad arguments fail here, before any file is opened
    src, label = _resolve(source, name)
    if backend == "decord":
        return _read_decord(src, label, sampling)
    return _read_pyav(src, label, sampling)


def _read_decord(src: str | bytes, label: str, sampling: dict[str, Any]) -> VideoClip:
    import decord

    decord.bridge.set_bridge("native")
    try:
        vr = decord.VideoReader(io.BytesIO(src) if isinstance(src, bytes) else src, ctx=decord.cpu(0))
        total = len(vr)
        if total < 1:
            raise VideoDecodeError(label, "no video frames")
        video_fps = float(vr.get_avg_fps())
        idx = sample_indices(total, video_fps=video_fps, **sampling)
        frames = vr.get_batch(idx.tolist()).asnumpy()
        spans = np.asarray(vr.get_frame_timestamp(idx.tolist()), dtype=np.float64).reshape(-1, 2)
        last_end = float(np.asarray(vr.get_frame_timestamp([total - 1]), dtype=np.float64).reshape(-1)[1])
    except (decord.DECORDError, RuntimeError) as e:
        raise VideoDecodeError(label, _short(e)) from e
    finally:
        vr = None  # release decord's file handle and decoder threads now, not at garbage collection
    duration = _duration_via_av(src, label)
    return VideoClip(
        frames=np.ascontiguousarray(frames, dtype=np.uint8),
        timestamps=spans[:, 0].copy(),
        indices=idx,
        duration=duration if duration is not None else last_end,
        fps=video_fps,
        total_frames=int(total),
        source=label,
    )


def _duration_via_av(src: str | bytes, label: str) -> float | None:
    """Container metadata only (no demuxing): about a millisecond. None if PyAV cannot open the file."""
    try:
        container = _av_open(src, label)
    except VideoDecodeError:
        return None
    with container:
        return _stream_duration(container, container.streams.video[0])


def _fps_from_pts(pts: list[int], time_base) -> float:
    """Average rate from the frame timestamps, for streams that declare none."""
    span = (pts[-1] - pts[0]) * float(time_base) if len(pts) > 1 else 0.0
    return (len(pts) - 1) / span if span > 0 else 1.0


class _Missed(Exception):
    """A wanted frame did not come out of the decoder where the packet index said it would."""


def _packet_index(container, stream, label: str) -> tuple[list[int], list[int]]:
    """Sorted pts of every video packet (= frame) and of the keyframes, by demuxing without decoding."""
    import av

    pts, keys = [], []
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer's end-of-stream flush packet
                continue
            p = packet.pts if packet.pts is not None else packet.dts
            if p is None:
                raise VideoDecodeError(label, "a video packet has no timestamp")
            pts.append(p)
            if packet.is_keyframe:
                keys.append(p)
    except av.FFmpegError as e:
        raise VideoDecodeError(label, f"demuxing failed: {_short(e)}") from e
    pts.sort()
    keys.sort()
    if len(set(pts)) != len(pts):
        raise VideoDecodeError(label, "duplicate packet timestamps; frame order is ambiguous")
    return pts, keys


def _decode_by_pts(container, stream, targets: list[int], keys: list[int], seek: bool) -> dict[int, Any]:
    """Decode the frames whose pts are in ``targets`` (sorted), returning {pts: av.VideoFrame}.

    With ``seek``, jump to the keyframe before the next wanted frame whenever that keyframe lies beyond
    the current decode position (decoding from a keyframe is what seeking costs anyway); otherwise
    decode from the start. Frames leave the decoder in presentation order, so a wanted pts that is
    overtaken without being seen is missing: raise _Missed rather than return a neighbour.
    """
    got: dict[int, Any] = {}
    i, n = 0, len(targets)
    first = True
    while i < n:
        # Every run starts with a seek; the first one also rewinds the demuxer that the packet index
        # left at the end of the file.
        j = bisect.bisect_right(keys, targets[i]) - 1 if seek else -1
        if j >= 0:
            container.seek(keys[j], stream=stream, backward=True, any_frame=False)
        elif first:
            container.seek(0, backward=True)  # container-level: the start even if start_time > 0
        stream.codec_context.flush_buffers()  # no reference frames from before the jump
        first = False
        for frame in container.decode(stream):
            p = frame.pts
            if p is None or p < targets[i]:
                continue
            if p > targets[i]:
                raise _Missed(targets[i])
            got[p] = frame
            i += 1
            if i == n:
                break
            if seek:
                j = bisect.bisect_right(keys, targets[i]) - 1
                if j >= 0 and keys[j] > p:
                    break  # a keyframe lies between here and the next target: seek to it
        else:
            if i < n:
                raise _Missed(targets[i])  # the stream ended first
    return got


def _read_pyav(src: str | bytes, label: str, sampling: dict[str, Any]) -> VideoClip:
    import av

    container = _av_open(src, label)
    with container:
        stream = container.streams.video[0]
        pts, keys = _packet_index(container, stream, label)
        total = len(pts)
        if total < 1:
            raise VideoDecodeError(label, "no video frames")
        duration = _stream_duration(container, stream)
        video_fps = _stream_fps(stream) or _fps_from_pts(pts, stream.time_base)
        if duration is None:
            duration = total / video_fps
        idx = sample_indices(total, video_fps=video_fps, **sampling)
        targets = [pts[k] for k in idx.tolist()]
        wanted = sorted(set(targets))
        frames = None
        # Seeking is a speed-up that must not change results: if it misses a frame (inexact index,
        # unseekable input), decode the whole stream from the start once more before giving up.
        for seek in (True, False):
            try:
                frames = _decode_by_pts(container, stream, wanted, keys, seek=seek)
                break
            except _Missed as e:
                missing = int(np.searchsorted(np.asarray(pts), e.args[0]))
                reason = f"frame {missing} of {total} (pts {e.args[0]}) was not produced by the decoder"
            except av.FFmpegError as e:
                raise VideoDecodeError(label, f"decoding failed: {_short(e)}") from e
        if frames is None:
            raise VideoDecodeError(label, reason)
        rotation = _clockwise(frames[targets[0]].rotation)
        try:
            arrays = np.stack([frames[p].to_ndarray(format="rgb24") for p in targets])
        except (av.FFmpegError, ValueError) as e:
            raise VideoDecodeError(label, f"pixel conversion failed: {_short(e)}") from e
        start = stream.start_time if stream.start_time is not None else pts[0]
        tb = float(stream.time_base)
        timestamps = np.array([(p - start) * tb for p in targets], dtype=np.float64)
    return VideoClip(
        frames=_rotate(arrays, rotation),
        timestamps=timestamps,
        indices=idx,
        duration=duration,
        fps=video_fps,
        total_frames=total,
        source=label,
    )


# --------------------------------------------------------------------------------------------- probing


def probe_video(source: Source, *, backend: str = "pyav", name: str | None = None) -> dict[str, Any]:
    """JSON-serialisable facts about a video, without decoding more than its first frame.

    Keys: path, size_bytes, format, codec, width, height (coded), display_width, display_height,
    rotation (degrees clockwise applied for display: 0/90/180/270), fps, total_frames, duration,
    has_audio. The frame count follows the read_video convention (packet index, not a full decode), so
    a file that fails mid-way still probes; with ``backend="decord"``, total_frames and fps come from
    decord, the rest from PyAV. The first frame is decoded because PyAV 18 exposes the display matrix
    only on frames. Raises VideoDecodeError on unreadable files.
    """
    _check_request(backend, "linspace")
    src, label = _resolve(source, name)
    import av

    container = _av_open(src, label)
    with container:
        stream = container.streams.video[0]
        info: dict[str, Any] = {
            "path": label,
            "size_bytes": len(src) if isinstance(src, bytes) else os.path.getsize(src),
            "format": container.format.name,
            "codec": stream.codec_context.name,
            "width": int(stream.codec_context.width),
            "height": int(stream.codec_context.height),
            "has_audio": bool(container.streams.audio),
        }
        pts = _packet_index(container, stream, label)[0]
        if not pts:
            raise VideoDecodeError(label, "no video frames")
        total = len(pts)
        fps = _stream_fps(stream) or _fps_from_pts(pts, stream.time_base)
        duration = _stream_duration(container, stream) or total / fps
        try:
            container.seek(0, backward=True)
            first = next(container.decode(stream), None)
        except av.FFmpegError as e:
            raise VideoDecodeError(label, f"decoding the first frame failed: {_short(e)}") from e
        if first is None:
            raise VideoDecodeError(label, "no frame decodes")
        rotation = _clockwise(first.rotation)
    if backend == "decord":
        import decord

        try:
            vr = decord.VideoReader(io.BytesIO(src) if isinstance(src, bytes) else src, ctx=decord.cpu(0))
            total, fps = len(vr), float(vr.get_avg_fps())
        except (decord.DECORDError, RuntimeError) as e:
            raise VideoDecodeError(label, _short(e)) from e
        finally:
            vr = None
    swap = rotation in (90, 270)
    info.update(
        display_width=info["height"] if swap else info["width"],
        display_height=info["width"] if swap else info["height"],
        rotation=rotation,
        fps=fps,
        total_frames=int(total),
        duration=duration,
    )
    order = ("path", "size_bytes", "format", "codec", "width", "height", "display_width", "display_height",
             "rotation", "fps", "total_frames", "duration", "has_audio")
    return {k: info[k] for k in order}


# --------------------------------------------------------------------------------------------- writing


def _yuv420p_frame(rgb: np.ndarray):
    """An RGB (H, W, 3) uint8 frame as the yuv420p frame the encoder reads, every byte of it set.

    Handing x264 the RGB frame lets PyAV convert it inside `encode`, into buffers whose row padding is
    left uninitialised when W is not a multiple of the alignment (56 is not), and x264 reads some of it:
    the same frames gave different files from one call to the next (5 of 3,300 synthetic clips differed
    between two runs of one config, and the demo's SFT diverged). Here the same conversion is copied
    into planes whose padding is zero. That removes most of the variation, not all: at 56x56 (not a
    multiple of 16) x264 still gave a different file in about 1 of 180 encodings of a noisy clip on a
    loaded machine, the same calls in every process (experiments/tiny_cpu/README.md)."""
    import av

    height, width = rgb.shape[:2]
    yuv = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="yuv420p").to_ndarray()  # (3H/2, W)
    chroma = height // 4  # rows of W per chroma plane in that layout
    planes = (yuv[:height], yuv[height:height + chroma].reshape(height // 2, width // 2),
              yuv[height + chroma:].reshape(height // 2, width // 2))
    frame = av.VideoFrame(width, height, "yuv420p")
    for plane, data in zip(frame.planes, planes, strict=True):
        padded = np.zeros((plane.buffer_size // plane.line_size, plane.line_size), dtype=np.uint8)
        padded[: data.shape[0], : data.shape[1]] = data
        plane.update(padded)
    return frame


def encode_video(
    frames: np.ndarray,
    path_or_buffer: str | os.PathLike | io.BytesIO,
    fps: float,
    codec: str = "libx264",
    gop: int | None = None,
    crf: int = 18,
) -> None:
    """Write uint8 RGB frames (T, H, W, 3) as H.264 yuv420p in MP4 (for synthetic and test videos).

    yuv420p halves the chroma planes, so H and W must be even. ``gop`` sets the keyframe interval
    (x264's default is 250); x264's default B-frames are kept, so pts and decode order differ, like
    real files. A buffer gets an MP4 written into it (the muxer seeks back, so it must be seekable).
    """
    import av

    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"frames must be uint8 (T>0, H, W, 3), got {frames.dtype} {frames.shape}")
    height, width = frames.shape[1:3]
    if height % 2 or width % 2:
        raise ValueError(f"H.264 yuv420p needs even frame sizes, got {height}x{width} (H x W)")
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be positive, got {fps!r}")
    target = path_or_buffer if isinstance(path_or_buffer, io.IOBase) else str(Path(path_or_buffer))
    with av.open(target, mode="w", format="mp4") as container:
        stream = container.add_stream(codec, rate=Fraction(fps).limit_denominator(1001))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": str(crf)}
        if gop is not None:
            stream.codec_context.gop_size = int(gop)
        for array in frames:
            for packet in stream.encode(_yuv420p_frame(array)):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder's delayed (B-)frames
            container.mux(packet)
