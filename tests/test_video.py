"""Video prediction (PyAV): a synthetic clip round-trips with its frame count, size, frame rate and
the palette's colours in the right channel order; broken inputs and failed writes are handled."""

from __future__ import annotations

from fractions import Fraction
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

av = pytest.importorskip("av", reason="PyAV is not installed: pip install 'seglab[video]'")

from seglab.apps.cli import main  # noqa: E402
from seglab.apps.video import frame_rate, predict_video  # noqa: E402
from seglab.core.errors import SeglabError  # noqa: E402
from seglab.inference.predictor import Segmenter  # noqa: E402
from seglab.tasks.checkpoint import save_checkpoint  # noqa: E402

PALETTE = [[255, 0, 0], [0, 255, 0], [0, 0, 255]]  # red, green, blue: a channel swap cannot hide


class LeftRedRightBlue(nn.Module):
    """Class 0 on the left half, class 2 on the right half, whatever the image."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, _, h, w = x.shape
        out = torch.zeros(n, 3, h, w)
        out[:, 0, :, : w // 2] = 1
        out[:, 2, :, w // 2 :] = 1
        return out + 0 * x.mean()


def _segmenter() -> Segmenter:
    return Segmenter(LeftRedRightBlue(), 3, ["red", "green", "blue"], PALETTE, [0.5] * 3, [0.25] * 3, device="cpu",
                     fast=False)


def _write_clip(path, frames: int = 9, size=(48, 64), fps: int = 10, codec: str = "libx264") -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    images = []
    with av.open(str(path), "w") as out:
        stream = out.add_stream(codec, rate=fps)
        stream.width, stream.height = size[1], size[0]
        stream.pix_fmt = "yuv420p" if codec == "libx264" else "rgb24"
        for i in range(frames):
            image = np.full((*size, 3), 40 + 20 * i, dtype=np.uint8) + rng.integers(0, 10, (*size, 3), dtype=np.uint8)
            images.append(image)
            out.mux(stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")))
        out.mux(stream.encode(None))
    return images


def _read(path) -> tuple[list[np.ndarray], Fraction]:
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)], c.streams.video[0].average_rate


def test_round_trip_keeps_frames_size_fps_and_colours(tmp_path) -> None:
    clip = tmp_path / "drive.mp4"
    _write_clip(clip)
    report = predict_video(_segmenter(), clip, tmp_path / "out", alpha=1.0, save_frames=True)
    frames, fps = _read(report.output)
    assert report.output == tmp_path / "out" / "drive_overlay.mp4" and len(frames) == report.frames == 9
    assert frames[0].shape == (48, 64, 3) and fps == 10
    left, right = frames[4][8:40, 4:28].reshape(-1, 3).mean(0), frames[4][8:40, 36:60].reshape(-1, 3).mean(0)
    np.testing.assert_allclose(left, PALETTE[0], atol=25)  # red on the left: RGB, not BGR
    np.testing.assert_allclose(right, PALETTE[2], atol=25)
    assert len(report.frame_files) == 9 and all(p.is_file() for p in report.frame_files)
    assert set(report.seconds) == {"decode", "preprocess", "model", "overlay", "encode"}
    assert all(v > 0 for v in report.seconds.values()) and "frames/s" in report.format()
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["drive_frames", "drive_overlay.mp4"]


def test_every_n_and_max_frames(tmp_path) -> None:
    clip = tmp_path / "c.mp4"
    _write_clip(clip, frames=10)
    report = predict_video(_segmenter(), clip, tmp_path, every_n=3, max_frames=7)
    assert report.frames == 7 and report.segmented == 3  # frames 0, 3, 6
    assert len(_read(report.output)[0]) == 7


def test_odd_size_and_cli(tmp_path, capsys) -> None:
    clip = tmp_path / "odd.mp4"
    _write_clip(clip, frames=4, size=(45, 63), codec="libx264rgb")  # odd: 4:2:0 video cannot hold it
    ckpt = tmp_path / "best.pt"
    torch.manual_seed(0)
    from seglab.models.registry import create_model

    save_checkpoint(ckpt, {"model_name": "segnet_basic", "num_classes": 3, "class_names": ["a", "b", "c"],
                           "palette": PALETTE, "mean": [0.5] * 3, "std": [0.25] * 3, "image_size": [32, 48],
                           "model": create_model("segnet_basic", 3).state_dict()})
    assert main(["predict", str(ckpt), str(clip), "--out", str(tmp_path / "cli"), "--max-frames", "3"]) == 0
    out = capsys.readouterr().out
    assert "3 frames" in out and "ms per frame: decode" in out
    frames, _ = _read(tmp_path / "cli" / "odd_overlay.mp4")
    assert len(frames) == 3 and frames[0].shape == (45, 63, 3)
    renamed = tmp_path / "clip.bin"  # no video extension: --video says what it is
    renamed.write_bytes(clip.read_bytes())
    assert main(["predict", str(ckpt), str(renamed), "--video", "--out", str(tmp_path / "cli"), "--every-n", "2"]) == 0
    assert len(_read(tmp_path / "cli" / "clip_overlay.mp4")[0]) == 4
    image = tmp_path / "still.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    assert main(["predict", str(ckpt), str(clip), str(image), "--out", str(tmp_path / "mixed")]) == 2
    assert "separate runs" in capsys.readouterr().err


def test_frame_rate_falls_back_to_25(capsys) -> None:
    assert frame_rate(SimpleNamespace(average_rate=Fraction(30000, 1001))) == Fraction(30000, 1001)
    assert frame_rate(SimpleNamespace(average_rate=None, guessed_rate=Fraction(0))) == 25
    assert "25 fps" in capsys.readouterr().err


def test_missing_corrupt_and_empty_videos_are_explained(tmp_path) -> None:
    seg = _segmenter()
    with pytest.raises(SeglabError, match="does not exist"):
        predict_video(seg, tmp_path / "nope.mp4", tmp_path)
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x01 definitely not a video" * 50)
    with pytest.raises(SeglabError, match="not a readable video"):
        predict_video(seg, junk, tmp_path)
    for suffix in ("mp4", "mkv"):  # a container with a header and not one frame
        empty = tmp_path / f"empty.{suffix}"
        with av.open(str(empty), "w") as out:
            stream = out.add_stream("libx264", rate=10)
            stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
            out.start_encoding()
        with pytest.raises(SeglabError, match="(no video frames|not a readable video|no video stream)"):
            predict_video(seg, empty, tmp_path / "out")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []


def test_failed_write_leaves_no_partial_output(tmp_path) -> None:
    clip = tmp_path / "c.mp4"
    _write_clip(clip, frames=6)
    seg = _segmenter()
    calls = {"n": 0}
    inner = seg.forward_model

    def failing(x):
        calls["n"] += 1
        if calls["n"] == 4:
            raise RuntimeError("out of memory (simulated)")
        return inner(x)

    seg.forward_model = failing
    with pytest.raises(RuntimeError, match="simulated"):
        predict_video(seg, clip, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # neither the video nor its temporary file
