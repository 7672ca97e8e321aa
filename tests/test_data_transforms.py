"""Joint transforms: masks only ever resampled NEAREST, image and mask stay aligned, padding, eval."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seglab.core.config import DataConfig
from seglab.data import build_transforms, inference_size
from seglab.core.errors import SeglabError

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def _labelled_scene(h=48, w=64, seed=0):
    """Blocky labels (8x8 cells, values 0..5) and an image whose red channel is ``40 * label``."""
    rng = np.random.default_rng(seed)
    labels = np.kron(rng.integers(0, 6, (h // 8, w // 8)), np.ones((8, 8), np.int64)).astype(np.uint8)
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = labels * 40
    image[..., 1] = np.arange(w, dtype=np.uint8)[None, :]  # encodes the column, to detect flips
    return image, labels


def _red_label(img: torch.Tensor) -> torch.Tensor:
    red = (img[0] * STD[0] + MEAN[0]) * 255
    return torch.round(red / 40).long()


def _cfg(**kw) -> DataConfig:
    kw.setdefault("mean", MEAN)
    kw.setdefault("std", STD)
    return DataConfig(**kw)


def test_scaling_never_invents_label_values():
    image, labels = _labelled_scene()
    tf = build_transforms(_cfg(scale_range=[0.5, 2.0], crop_size=[40, 40]), train=True, ignore_index=255)
    for seed in range(25):
        torch.manual_seed(seed)
        _, mask = tf(image, labels)
        assert set(mask.unique().tolist()) <= set(np.unique(labels).tolist()) | {255}


def test_crop_and_flip_keep_image_and_mask_aligned_exactly():
    image, labels = _labelled_scene()
    tf = build_transforms(_cfg(crop_size=[24, 32], hflip=True), train=True, ignore_index=255)
    flipped = 0
    for seed in range(12):
        torch.manual_seed(seed)
        img, mask = tf(image, labels)
        assert img.shape == (3, 24, 32) and mask.shape == (24, 32)
        assert torch.equal(_red_label(img), mask)
        cols = torch.round((img[1] * STD[1] + MEAN[1]) * 255)
        flipped += int(cols[0, 0] > cols[0, -1])
    assert 0 < flipped < 12  # both flipped and unflipped crops were drawn


def test_scaled_image_and_mask_stay_aligned():
    image, labels = _labelled_scene()
    tf = build_transforms(_cfg(scale_range=[0.6, 1.7], crop_size=[40, 48]), train=True, ignore_index=255)
    for seed in range(10):
        torch.manual_seed(seed)
        img, mask = tf(image, labels)
        # Away from label borders (where bilinear colours blend) the image must say the mask's label.
        m = torch.nn.functional.pad(mask[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0]
        neighbours = torch.stack([m[1 + dy : m.shape[0] - 1 + dy, 1 + dx : m.shape[1] - 1 + dx]
                                  for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
        interior = (neighbours == mask).all(0) & (mask != 255)
        assert interior.sum() > 200
        assert torch.equal(_red_label(img)[interior], mask[interior])


def test_padding_uses_zero_image_and_ignore_mask():
    image, labels = _labelled_scene(16, 16)
    tf = build_transforms(_cfg(crop_size=[24, 24], hflip=False), train=True, ignore_index=11)
    img, mask = tf(image, labels)
    assert mask.shape == (24, 24) and (mask == 11).sum() == 24 * 24 - 16 * 16
    padded = (img * torch.tensor(STD)[:, None, None] + torch.tensor(MEAN)[:, None, None])[:, mask == 11]
    assert torch.allclose(padded, torch.zeros_like(padded), atol=1e-6)


def test_colour_jitter_changes_image_only():
    image, labels = _labelled_scene()
    tf = build_transforms(_cfg(color_jitter=0.5, hflip=False), train=True, ignore_index=255)
    torch.manual_seed(0)
    img, mask = tf(image, labels)
    assert torch.equal(mask, torch.from_numpy(labels).long())
    plain = build_transforms(_cfg(), train=False)(image, labels)[0]
    assert not torch.allclose(img, plain)


def test_hue_jitter_turns_colours_and_leaves_greys_and_labels():
    image, labels = _labelled_scene()
    grey = np.repeat(image[..., :1], 3, axis=2)
    tf = build_transforms(_cfg(hue_jitter=0.5, hflip=False), train=True, ignore_index=255)
    plain = build_transforms(_cfg(), train=False)
    torch.manual_seed(0)
    img, mask = tf(image, labels)
    assert torch.equal(mask, torch.from_numpy(labels).long())
    assert not torch.allclose(img, plain(image, labels)[0], atol=0.1)  # colours moved
    torch.manual_seed(0)
    assert torch.allclose(tf(grey, labels)[0], plain(grey, labels)[0], atol=1e-5)  # a grey has no hue


def test_eval_transform_normalises_only():
    image, labels = _labelled_scene()
    tf = build_transforms(_cfg(crop_size=[8, 8], scale_range=[0.5, 2.0], color_jitter=0.4), train=False)
    img, mask = tf(image, labels)
    expected = (torch.from_numpy(image).permute(2, 0, 1).float() / 255 - 0.5) / 0.25
    assert img.dtype == torch.float32 and torch.allclose(img, expected, atol=1e-6)
    assert mask.dtype == torch.int64 and torch.equal(mask, torch.from_numpy(labels).long())
    only_image, none = tf(image)
    assert none is None and torch.allclose(only_image, expected, atol=1e-6)


def test_augmentation_is_reproducible_from_the_torch_seed():
    image, labels = _labelled_scene()
    tf = build_transforms(_cfg(scale_range=[0.75, 1.5], crop_size=[32, 32], color_jitter=0.3), train=True)
    torch.manual_seed(7)
    a = tf(image, labels)
    torch.manual_seed(7)
    b = tf(image, labels)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_bad_transform_settings():
    with pytest.raises(SeglabError, match="scale_range"):
        build_transforms(_cfg(scale_range=[1.5, 0.5]), train=True)
    with pytest.raises(SeglabError, match="crop_size"):
        build_transforms(_cfg(crop_size=[0, 4]), train=True)
    with pytest.raises(SeglabError, match="std"):
        build_transforms(_cfg(std=[0.2, 0.2]), train=True)
    with pytest.raises(SeglabError, match=r"hue_jitter .*\[0, 0.5\]"):
        build_transforms(_cfg(hue_jitter=0.7), train=True)
    from seglab.data.instance.base import build_instance_transforms

    with pytest.raises(SeglabError, match=r"hue_jitter .*\[0, 0.5\]"):  # instance data: the same message
        build_instance_transforms(_cfg(hue_jitter=0.7), train=True)


def test_mask_resampled_at_pixel_centres_like_the_image():
    """Per-pixel random labels: the mask must follow the bilinear image better than plain NEAREST would."""
    from torchvision import tv_tensors
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as F

    labels = np.random.default_rng(0).integers(0, 6, (48, 64)).astype(np.uint8)
    image = np.repeat((labels * 40)[..., None], 3, axis=2)
    tf = build_transforms(_cfg(scale_range=[1.3, 1.3], hflip=False), train=True)
    img, mask = tf(image, labels)
    ours = (_red_label(img) == mask).float().mean()
    legacy = F.resize(tv_tensors.Mask(torch.from_numpy(labels)), list(mask.shape), v2.InterpolationMode.NEAREST)
    assert ours > (_red_label(img) == legacy.long()).float().mean() + 0.05


def test_vertical_flips_and_quarter_turns_keep_image_and_mask_aligned():
    image, labels = _labelled_scene(48, 48)
    tf = build_transforms(_cfg(crop_size=[32, 32], hflip=False, vflip=True, rotate90=True), train=True,
                          ignore_index=255)
    corners = set()
    for seed in range(24):
        torch.manual_seed(seed)
        img, mask = tf(image, labels)
        assert img.shape == (3, 32, 32) and torch.equal(_red_label(img), mask)
        cols = torch.round((img[1] * STD[1] + MEAN[1]) * 255)  # the source column of every pixel
        # Where the source columns grow tells the orientation: right, left, down or up.
        corners.add((bool(cols[0, -1] > cols[0, 0]), bool(cols[-1, 0] > cols[0, 0])))
    assert len(corners) >= 3  # several orientations were drawn


def test_non_square_samples_turn_by_half_turns_only():
    image, labels = _labelled_scene(48, 64)
    tf = build_transforms(_cfg(crop_size=[24, 32], hflip=False, rotate90=True), train=True, ignore_index=255)
    for seed in range(8):
        torch.manual_seed(seed)
        img, mask = tf(image, labels)
        assert img.shape == (3, 24, 32) and torch.equal(_red_label(img), mask)


def test_inference_size_scales_image_size():
    assert inference_size(_cfg(image_size=[180, 240], infer_scale=4 / 3)) == [240, 320]
    assert inference_size(_cfg(image_size=[180, 240])) == [180, 240]
    assert inference_size(_cfg()) is None  # no image_size: the input's own size
    with pytest.raises(SeglabError, match="infer_scale 2 scales data.image_size, which is not set"):
        inference_size(_cfg(infer_scale=2.0))
    with pytest.raises(SeglabError, match="infer_scale must be a positive number"):
        inference_size(_cfg(image_size=[8, 8], infer_scale=0.0))
