"""Procedural road scenes: a built-in, download-free segmentation data set.

Each scene is drawn with numpy in painter's order -- sky, buildings, trees, road and
pavement, poles, cars -- writing the label map and the image together, so labels are
exact. Per-class textures (windows, leaves, tarmac grain, paving joints), random car
colours and per-image lighting (brightness, contrast, colour cast) make colour alone
insufficient while keeping the task learnable by a small network in minutes on a CPU.

A scene is a pure function of ``(seed, stream, index)``: the same sample is produced in
any process and any order; the training and validation splits use different streams.

Example:
    >>> img, mask = render_scene(np.random.default_rng(0), 96, 128)
    >>> img.shape, mask.shape, mask.max() < 7
    ((96, 128, 3), (96, 128), True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from seglab.data.base import DatasetInfo, SegmentationDataset, Transform
from seglab.data.camvid import CAMVID_PALETTE

__all__ = ["SYNTHETIC_CLASSES", "SYNTHETIC_PALETTE", "SYNTHETIC_THINGS", "render_scene", "render_scene_instances",
           "SyntheticRoadScenes"]

SYNTHETIC_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "Car"]
SKY, BUILDING, POLE, ROAD, PAVEMENT, TREE, CAR = range(7)
#: Classes whose every object gets its own instance id (:func:`render_scene_instances`).
SYNTHETIC_THINGS = (POLE, CAR)
# Same colours as the matching CamVid classes, so visualisations look alike.
SYNTHETIC_PALETTE = [CAMVID_PALETTE[i] for i in (0, 1, 2, 3, 4, 5, 8)]

_FACADES = np.array([[150, 80, 60], [185, 165, 135], [120, 120, 128], [205, 195, 175], [105, 70, 50]], np.float32)
_CAR_PAINT = np.array(
    [[180, 30, 30], [30, 60, 160], [225, 225, 225], [30, 30, 35], [160, 160, 168], [210, 180, 40], [40, 110, 60]],
    np.float32,
)


class _Canvas:
    """Image, labels and shared noise fields of one scene under construction."""

    def __init__(self, rng: np.random.Generator, height: int, width: int) -> None:
        self.rng, self.h, self.w = rng, height, width
        self.ys = np.arange(height, dtype=np.float32)[:, None]  # broadcastable coordinates
        self.xs = np.arange(width, dtype=np.float32)[None, :]
        self.img = np.zeros((height, width, 3), np.float32)
        self.label = np.zeros((height, width), np.uint8)
        self.ids = np.zeros((height, width), np.int32)  # instance id of each object pixel, 0 elsewhere
        self.objects = 0
        self.grain = rng.standard_normal((height, width)).astype(np.float32)  # pixel-level texture
        self.blotch = _smooth_noise(rng, height, width, cell=6)  # low-frequency texture

    def box(self, y0: float, y1: float, x0: float, x1: float) -> tuple[slice, slice]:
        """Slices of the pixel rectangle ``[y0, y1) x [x0, x1)``, clipped to the image (drawing stays local)."""
        ya, yb = min(max(math.floor(y0), 0), self.h), min(max(math.ceil(y1), 0), self.h)
        xa, xb = min(max(math.floor(x0), 0), self.w), min(max(math.ceil(x1), 0), self.w)
        return slice(ya, yb), slice(xa, xb)

    def coords(self, box: tuple[slice, slice]) -> tuple[np.ndarray, np.ndarray]:
        """Row (``h x 1``) and column (``1 x w``) coordinates of ``box``."""
        return self.ys[box[0]], self.xs[:, box[1]]

    def texture(self, box: tuple[slice, slice], grain: float, blotch: float) -> np.ndarray:
        """``h x w x 1`` noise field of ``box``: fine grain plus low-frequency blotches."""
        return (grain * self.grain[box] + blotch * self.blotch[box])[..., None]

    def paint(self, region: np.ndarray | None, cls: int, colour: np.ndarray, box: tuple[slice, slice]) -> None:
        """Label ``region`` (None: the whole box) of ``box`` as ``cls`` and colour it.

        ``colour`` is 3 values or a field shaped like the box (``h x w x 3``).
        """
        label, img = self.label[box], self.img[box]
        if region is None:
            label[...] = cls
            img[...] = colour
            return
        label[region] = cls
        np.copyto(img, np.broadcast_to(colour, img.shape), where=region[..., None])

    def new_object(self, region: np.ndarray | None, box: tuple[slice, slice]) -> None:
        """Give ``region`` of ``box`` (None: all of it) a new instance id; it occludes earlier objects.

        Uses no randomness, so the image and label map are those of :func:`render_scene`.
        """
        self.objects += 1
        ids = self.ids[box]
        if region is None:
            ids[...] = self.objects
        else:
            ids[region] = self.objects


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Bilinearly upsampled coarse Gaussian noise, roughly unit variance, ``height x width``."""
    gh, gw = height // cell + 2, width // cell + 2
    grid = rng.standard_normal((gh, gw)).astype(np.float32)
    fy, fx = np.arange(height, dtype=np.float32) / cell, np.arange(width, dtype=np.float32) / cell
    y0, x0 = fy.astype(int), fx.astype(int)
    ty, tx = (fy - y0)[:, None], (fx - x0)[None, :]
    top = grid[y0][:, x0] * (1 - tx) + grid[y0][:, x0 + 1] * tx
    bottom = grid[y0 + 1][:, x0] * (1 - tx) + grid[y0 + 1][:, x0 + 1] * tx
    return top * (1 - ty) + bottom * ty


def _jitter(rng: np.random.Generator, colour: Sequence[float], amount: float) -> np.ndarray:
    return np.asarray(colour, np.float32) * rng.uniform(1 - amount, 1 + amount, 3).astype(np.float32)


def _draw_sky(c: _Canvas, horizon: int) -> None:
    top, bottom = _jitter(c.rng, (80, 130, 205), 0.2), _jitter(c.rng, (195, 210, 225), 0.1)
    t = np.clip(c.ys / max(horizon, 1), 0, 1)[..., None]  # h x 1 x 1: a vertical gradient
    everything = c.box(0, c.h, 0, c.w)
    c.paint(None, SKY, top + (bottom - top) * t + c.texture(everything, 3, 0), everything)


def _draw_buildings(c: _Canvas, horizon: int) -> None:
    rng, x = c.rng, 0
    while x < c.w:
        bw = int(rng.integers(max(c.w // 8, 2), max(c.w // 3, 3)))
        if rng.random() < 0.2:  # a gap that shows the sky
            x += bw // 2
            continue
        top = int(rng.integers(0, max(horizon - c.h // 8, 1)))
        box = c.box(top, horizon + 2, x, x + bw)
        yy, xx = c.coords(box)
        base = _jitter(rng, _FACADES[rng.integers(len(_FACADES))], 0.12)
        px, py = int(rng.integers(5, 10)), int(rng.integers(6, 11))
        wx, wy = (xx - x) % px, (yy - top) % py
        windows = (wx >= 2) & (wx < px - 1) & (wy >= 2) & (wy < py - 2)
        glass = _jitter(rng, (60, 70, 90), 0.3)
        colour = np.where(windows[..., None], glass, base) + c.texture(box, 6, 10)
        c.paint(None, BUILDING, colour, box)
        x += bw


def _draw_trees(c: _Canvas, horizon: int) -> None:
    rng = c.rng
    for _ in range(int(rng.integers(0, 4))):
        cx, cy = rng.uniform(0, c.w), horizon - rng.uniform(0.05, 0.2) * c.h
        rx = rng.uniform(0.06, 0.16) * c.w
        ry = rx * rng.uniform(0.8, 1.4)
        half_trunk = max(rx * 0.12, 1)
        trunk_box = c.box(cy, horizon + 2, cx - half_trunk, cx + half_trunk)
        c.paint(None, TREE, _jitter(rng, (85, 60, 40), 0.15), trunk_box)
        box = c.box(cy - 1.7 * ry, cy + 1.7 * ry, cx - 1.7 * rx, cx + 1.7 * rx)
        yy, xx = c.coords(box)
        crown = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1 + 0.45 * c.blotch[box]  # a ragged, leafy outline
        c.paint(crown, TREE, _jitter(rng, (60, 105, 40), 0.2) + c.texture(box, 18, 14), box)


def _road_geometry(c: _Canvas, horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-row depth ``t`` (0 at the horizon, 1 at the bottom), road centre, road half-width, pavement width."""
    rng = c.rng
    t = np.clip((c.ys - horizon) / max(c.h - horizon, 1), 0, 1)
    centre = c.w * rng.uniform(0.35, 0.65) + c.w * rng.uniform(-0.25, 0.25) * t
    half = c.w * (0.03 + t * rng.uniform(0.4, 0.7))
    walk = c.w * (0.01 + t * rng.uniform(0.15, 0.3))
    return t, centre, half, walk


def _draw_ground(c: _Canvas, horizon: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = c.rng
    t_all, centre_all, half_all, walk_all = _road_geometry(c, horizon)
    box = c.box(horizon, c.h, 0, c.w)
    yy, xx = c.coords(box)
    t, centre, half, walk = t_all[box[0]], centre_all[box[0]], half_all[box[0]], walk_all[box[0]]
    off = np.abs(xx - centre)
    road = off < half
    tiles = ((xx % 7) < 1) | (((yy * (1 + t)) % 5) < 0.8)
    paving = _jitter(rng, (150, 140, 135), 0.12) - (25 * tiles)[..., None] + c.texture(box, 8, 0)
    c.paint(None, PAVEMENT, paving, box)
    # Grass verges beyond the pavement (each side at random) are labelled Tree, as vegetation is in CamVid.
    left, right = rng.random(2) < 0.5
    verge = (off >= half + walk) & (((xx < centre) & left) | ((xx >= centre) & right))
    c.paint(verge, TREE, _jitter(rng, (70, 120, 45), 0.2) + c.texture(box, 20, 10), box)
    tarmac = _jitter(rng, (95, 95, 100), 0.15) + c.texture(box, 12, 6)
    dashes = (off < np.maximum(half * 0.025, 0.6)) & (((yy - horizon) * (2 - t)) % 8 < 4)
    tarmac = np.where(dashes[..., None], _jitter(rng, (220, 220, 210), 0.05), tarmac)
    c.paint(road, ROAD, tarmac, box)
    return centre_all[:, 0], half_all[:, 0], walk_all[:, 0]


def _draw_poles(c: _Canvas, horizon: int, centre: np.ndarray, half: np.ndarray, walk: np.ndarray) -> None:
    rng = c.rng
    for _ in range(int(rng.integers(0, 3))):
        base = int(rng.integers(horizon + 2, c.h)) if horizon + 2 < c.h else c.h - 1
        side = 1 if rng.random() < 0.5 else -1
        x = centre[base] + side * (half[base] + 0.5 * walk[base])  # in the middle of the pavement
        width = max(1.0, 1 + 2.5 * (base - horizon) / max(c.h - horizon, 1))
        top = max(0, int(horizon - rng.uniform(0.15, 0.4) * c.h))
        box = c.box(top, base + 1, round(x - width / 2), round(x - width / 2) + round(width))
        c.paint(None, POLE, _jitter(rng, (85, 85, 90), 0.25) + c.texture(box, 5, 0), box)
        c.new_object(None, box)


def _draw_cars(c: _Canvas, horizon: int, centre: np.ndarray, half: np.ndarray) -> None:
    rng = c.rng
    bottoms = np.sort(rng.uniform(horizon + 0.2 * (c.h - horizon), c.h * 1.05, int(rng.integers(0, 4))))
    for bottom in bottoms:  # far to near, so nearer cars occlude farther ones
        row = int(min(bottom, c.h - 1))
        cw = c.w * (0.08 + 0.3 * (row - horizon) / max(c.h - horizon, 1))
        ch = cw * rng.uniform(0.55, 0.8)
        xc = centre[row] + rng.uniform(-0.6, 0.6) * half[row]
        yc = bottom - ch / 2
        box = c.box(bottom - ch, bottom + 1, xc - cw / 2, xc + cw / 2 + 1)
        yy, xx = c.coords(box)
        u, v = (xx - xc) / (cw / 2), (yy - yc) / (ch / 2)
        body = u**4 + v**4 < 1  # a rounded rectangle
        glass = body & (v < -0.2) & (np.abs(u) < 0.75)
        r, wy = 0.22 * ch, bottom - 0.13 * ch
        wheels = ((np.abs(xx - xc) - cw * 0.3) ** 2 + (yy - wy) ** 2) < r * r  # both wheels, by symmetry
        paint = _jitter(rng, _CAR_PAINT[rng.integers(len(_CAR_PAINT))], 0.1) + c.texture(box, 4, 0)
        c.paint(body, CAR, paint, box)
        c.paint(glass, CAR, _jitter(rng, (50, 60, 75), 0.2), box)
        c.paint(wheels, CAR, np.array([20, 20, 22], np.float32), box)
        c.new_object(body | wheels, box)


def _apply_lighting(c: _Canvas) -> np.ndarray:
    rng = c.rng
    contrast, brightness = rng.uniform(0.7, 1.3), rng.uniform(-30, 30)
    cast = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    img = ((c.img - 128) * contrast + 128 + brightness) * cast + 3 * rng.standard_normal(c.img.shape[:2])[..., None]
    return np.clip(img, 0, 255).astype(np.uint8)


def render_scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Draw one road scene.

    Args:
        rng: Source of all randomness (seed it for reproducible scenes).
        height: Image height in pixels.
        width: Image width in pixels.

    Returns:
        ``(image uint8 HxWx3, mask uint8 HxW)`` with class ids ``0..6`` of :data:`SYNTHETIC_CLASSES`.
    """
    image, label, _ = render_scene_instances(rng, height, width)
    return image, label


def render_scene_instances(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`render_scene` plus an ``int32 H x W`` map of instance ids: every pole and car its own
    id (1, 2, ... in drawing order; 0 elsewhere), nearer objects occluding farther ones."""
    c = _Canvas(rng, height, width)
    horizon = int(height * rng.uniform(0.38, 0.55))
    _draw_sky(c, horizon)
    _draw_buildings(c, horizon)
    _draw_trees(c, horizon)
    centre, half, walk = _draw_ground(c, horizon)
    _draw_poles(c, horizon, centre, half, walk)
    _draw_cars(c, horizon, centre, half)
    return _apply_lighting(c), c.label, c.ids


class SyntheticRoadScenes(SegmentationDataset):
    """``count`` procedural road scenes of ``size`` ``[H, W]``, a pure function of ``(seed, stream, index)``.

    Args:
        count: Number of scenes.
        info: Data set info (7 classes).
        seed: Base seed (``--data.synthetic_seed``).
        stream: Independent stream per split (0 train, 1 val, 2 test).
        size: ``[H, W]`` of the generated scenes.
        transform: As for :class:`SegmentationDataset`.
        image_size: Optional resize after generation.
        split: Split name.
    """

    def __init__(
        self,
        count: int,
        info: DatasetInfo,
        *,
        seed: int = 0,
        stream: int = 0,
        size: Sequence[int] = (96, 128),
        transform: Transform | None = None,
        image_size: Sequence[int] | None = None,
        split: str = "train",
    ) -> None:
        self.seed, self.stream = int(seed), int(stream)
        self.size = (int(size[0]), int(size[1]))
        self._last: tuple[int, tuple[np.ndarray, np.ndarray]] | None = None
        names = [(f"synthetic/{split}/{i:06d}", f"synthetic/{split}/{i:06d}") for i in range(int(count))]
        super().__init__(names, info, transform=transform, image_size=image_size, kind="synthetic", split=split)

    def _expected_hw(self) -> tuple[int, int] | None:
        return self.image_size or self.size

    def _scene(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        # Image and mask come from one drawing; keep the last so asking for both draws once.
        if self._last is None or self._last[0] != i:
            rng = np.random.default_rng([self.seed, self.stream, i])
            self._last = (i, render_scene(rng, *self.size))
        return self._last[1]

    def _decode_image(self, i: int) -> np.ndarray:
        return self._scene(i)[0]

    def _decode_mask(self, i: int) -> np.ndarray:
        return self._scene(i)[1]

    def name_of(self, i: int) -> str:
        return f"{self.split}_{i:06d}"

    def fingerprint(self) -> dict[str, Any]:
        return {"seed": self.seed, "stream": self.stream, "size": list(self.size), "count": len(self)}
