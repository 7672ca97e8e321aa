"""``seglab predict VIDEO --out DIR``: an overlay video with the same frame count, size and frame rate.

Frames are decoded with PyAV, segmented one by one, blended with the class colours and encoded
as H.264 (``<stem>_overlay.mp4``; ``libx264rgb`` for odd sizes, which 4:2:0 video cannot hold).
``every_n`` > 1 segments every n-th frame and draws the latest labels over the frames between, so
the frame count stays the same; ``max_frames`` stops after that many input frames;
``save_frames`` writes each segmented frame's class ids as ``<stem>_frames/NNNNNN.png``. The video
is written to a temporary file renamed at the end, so a failure leaves no partial output.

Example:
    >>> report = predict_video(Segmenter.from_checkpoint("best.pt"), "drive.mp4", "out/")  # doctest: +SKIP
    >>> print(report.format())                                                             # doctest: +SKIP
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seglab.apps.visualize import overlay, save_png
from seglab.core.atomic import atomic_write
from seglab.core.errors import SeglabError
from seglab.core.runtime import autocast
from seglab.ops.resize import forward_at_size

__all__ = ["VIDEO_SUFFIXES", "is_video", "predict_video", "predict_videos", "VideoReport", "frame_rate"]

VIDEO_SUFFIXES = {".mp4", ".mov", ".mkv", ".avi", ".webm", ".m4v", ".mpg", ".mpeg"}
STAGES = ("decode", "preprocess", "model", "overlay", "encode")
DEFAULT_FPS = Fraction(25)


def is_video(path: str | Path) -> bool:
    return Path(path).suffix.lower() in VIDEO_SUFFIXES


@dataclass
class VideoReport:
    """What :func:`predict_video` wrote and how long each stage took (seconds, summed over frames)."""

    source: Path
    output: Path
    frames: int
    segmented: int
    size: tuple[int, int]  # (height, width)
    fps: Fraction
    seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))
    frame_files: list[Path] = field(default_factory=list)

    @property
    def frames_per_second(self) -> float:
        return self.frames / max(sum(self.seconds.values()), 1e-9)

    def format(self) -> str:
        per = ", ".join(f"{k} {1000 * v / max(self.frames, 1):.1f}" for k, v in self.seconds.items())
        return (f"{self.source.name}: {self.frames} frames ({self.segmented} segmented) {self.size[1]}x{self.size[0]} "
                f"at {float(self.fps):g} fps -> {self.output}\n  ms per frame: {per}; {self.frames_per_second:.2f} "
                "frames/s end to end")


def frame_rate(stream: Any) -> Fraction:
    """The stream's frame rate; 25 fps, with a warning, when the container reports none or 0."""
    for rate in (getattr(stream, "average_rate", None), getattr(stream, "guessed_rate", None)):
        if rate:
            return Fraction(rate)
    print(f"seglab warning: the video reports no frame rate; writing it at {DEFAULT_FPS} fps.", file=sys.stderr)
    return DEFAULT_FPS


def _open_video(path: Path) -> Any:
    import av

    if not path.is_file():
        raise SeglabError(f"Video {str(path)!r} does not exist.")
    try:
        container = av.open(str(path))
    except av.error.FFmpegError as e:
        raise SeglabError(f"{str(path)!r} is not a readable video ({e}); give an MP4, MOV, MKV, AVI or WebM file.") from e
    if not container.streams.video:
        container.close()
        raise SeglabError(f"{str(path)!r} has no video stream: no frames to segment.")
    return container


def _labels(seg: Any, frame: np.ndarray, seconds: dict[str, float]) -> np.ndarray:
    """One frame's class ids, timing preprocessing and the model apart."""
    start = time.perf_counter()
    stackable = getattr(seg, "tta", None) is None and getattr(seg, "tile", None) is None
    if not stackable:  # TTA / tiling: the predictor's own path (its preprocessing counted as model time)
        logits = seg.predict_logits(frame)[None]
        seconds["model"] += time.perf_counter() - start
    else:
        x = seg.preprocess(frame)
        mid = time.perf_counter()
        seconds["preprocess"] += mid - start
        with torch.inference_mode():
            if hasattr(seg, "forward_model"):
                with autocast(seg.device, seg.amp_dtype):
                    logits = forward_at_size(seg.forward_model, x.to(seg.device), seg.infer_size).float().cpu()
            else:
                logits = forward_at_size(seg.run, x, seg.infer_size).float()
        seconds["model"] += time.perf_counter() - mid
    return ((logits[0, 0] > 0).long() if logits.shape[1] == 1 else logits[0].argmax(0)).numpy()


def predict_video(seg: Any, path: str | Path, out_dir: str | Path, alpha: float = 0.5, save_frames: bool = False,
                  every_n: int = 1, max_frames: int | None = None) -> VideoReport:
    """Segment the video at ``path``; writes ``<out_dir>/<stem>_overlay.mp4`` (and label PNGs)."""
    import av

    if every_n < 1 or (max_frames is not None and max_frames < 1):
        raise SeglabError(f"--every-n and --max-frames must be at least 1 (got {every_n} and {max_frames}).")
    source = Path(path)
    container = _open_video(source)
    in_stream = container.streams.video[0]
    out = Path(out_dir) / f"{source.stem}_overlay.mp4"
    report = VideoReport(source, out, 0, 0, (in_stream.height, in_stream.width), frame_rate(in_stream))
    frames_dir = Path(out_dir) / f"{source.stem}_frames"

    def write(tmp: str) -> None:
        seconds = report.seconds
        labels = None
        with av.open(tmp, "w", format="mp4") as output:
            stream = None
            decoded = container.decode(in_stream)
            while max_frames is None or report.frames < max_frames:
                start = time.perf_counter()
                try:
                    frame = next(decoded).to_ndarray(format="rgb24")
                except StopIteration:
                    break
                except av.error.FFmpegError as e:
                    raise SeglabError(f"{str(source)!r} is damaged: frame {report.frames + 1} cannot be decoded "
                                      f"({e}).") from e
                seconds["decode"] += time.perf_counter() - start
                if stream is None:
                    stream = _output_stream(output, frame.shape, report.fps)
                if report.frames % every_n == 0:
                    labels = _labels(seg, frame, seconds)
                    report.segmented += 1
                    if save_frames:
                        dtype = np.uint8 if seg.num_classes <= 256 else np.uint16
                        report.frame_files.append(frames_dir / f"{report.frames:06d}.png")
                        save_png(labels.astype(dtype), report.frame_files[-1])
                start = time.perf_counter()
                blended = overlay(frame, labels, seg.palette, alpha)
                mid = time.perf_counter()
                seconds["overlay"] += mid - start
                video_frame = av.VideoFrame.from_ndarray(blended, format="rgb24")
                video_frame.pts = report.frames
                output.mux(stream.encode(video_frame))
                report.frames += 1
                seconds["encode"] += time.perf_counter() - mid
            if stream is None:
                raise SeglabError(f"{str(source)!r} holds no video frames: nothing to segment.")
            start = time.perf_counter()
            output.mux(stream.encode(None))  # flush the encoder
            seconds["encode"] += time.perf_counter() - start

    try:
        atomic_write(out, write)
    finally:
        container.close()
    return report


def _output_stream(output: Any, shape: tuple[int, ...], fps: Fraction) -> Any:
    height, width = shape[:2]
    even = height % 2 == 0 and width % 2 == 0  # 4:2:0 chroma needs even sizes; odd ones stay RGB
    stream = output.add_stream("libx264" if even else "libx264rgb", rate=fps)
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv420p" if even else "rgb24"
    stream.time_base = 1 / fps
    stream.codec_context.time_base = 1 / fps
    stream.options = {"crf": "18", "preset": "veryfast"}
    return stream


def predict_videos(seg: Any, inputs: list[str], out_dir: str | Path, alpha: float = 0.5, forced: bool = False,
                   **options: Any) -> list[VideoReport]:
    """:func:`predict_video` for each input, printing each report; ``forced`` (``--video``): whatever
    the extensions."""
    reports = []
    for item in inputs:
        if not forced and Path(item).is_file() and not is_video(item):
            raise SeglabError(f"{item!r} is not a video ({', '.join(sorted(VIDEO_SUFFIXES))}); predict images and "
                              "videos in separate runs.")
        reports.append(predict_video(seg, item, out_dir, alpha, **options))
        print(reports[-1].format())
    return reports
