"""COCO-format instance folders (``dataset: coco``), read with pycocotools.

Layout: ``<root>/<split>/annotations.json`` (COCO ``images``, ``annotations``, ``categories``) and
the images under ``<root>/<split>/images/`` (or ``<root>/<split>/``) by their ``file_name``.
Segmentations may be polygons or RLE (compressed or uncompressed). Crowd annotations
(``iscrowd: 1``) are left out of the training targets, as torchvision's references do.

Category ids that are not ``1..K`` are mapped to labels ``1..K`` in id order (the log says so);
the class names are the categories' names in that order, after ``background`` (label 0).
Problems are errors naming the file and annotation: annotations of missing images or unknown
category ids, polygons with fewer than 3 points, masks of another size than their image, image
files that are missing or of another size than ``annotations.json`` says.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from seglab.core.errors import SeglabError
from seglab.data.base import DatasetInfo
from seglab.data.instance.base import InstanceDataset
from seglab.data.io import read_image

__all__ = ["CocoIndex", "CocoInstances", "coco_annotation_file", "decode_segmentation", "read_coco_index"]


@dataclass
class CocoIndex:
    """A checked ``annotations.json``: images, their annotations, and category id -> label 1..K."""

    path: Path
    images: list[dict[str, Any]]
    annotations: dict[int, list[dict[str, Any]]]
    label_of: dict[int, int]
    class_names: list[str] = field(default_factory=list)


def coco_annotation_file(root: str | Path | None, split: str) -> Path:
    if not root:
        raise SeglabError("COCO data sets need their location: set --data.root to the folder holding "
                          "<split>/annotations.json and <split>/images/.")
    path = Path(root).expanduser() / split / "annotations.json"
    if not path.is_file():
        raise SeglabError(f"COCO annotations {str(path)!r} do not exist. A COCO folder holds <split>/annotations.json "
                          f"and <split>/images/ for each split ({split!r} here); check --data.root.")
    return path


def _fail(path: Path, text: str) -> SeglabError:
    return SeglabError(f"COCO annotations {str(path)!r}: {text}")


def read_coco_index(path: Path) -> CocoIndex:
    """Read and check ``path`` (see the module docstring for what is checked)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise _fail(path, f"cannot be read as JSON ({e}).") from e
    for key in ("images", "annotations", "categories"):
        if not isinstance(data, dict) or not isinstance(data.get(key), list):
            raise _fail(path, f"has no {key!r} list; a COCO file holds 'images', 'annotations' and 'categories'.")
    ids = sorted(int(c["id"]) for c in data["categories"])
    if len(set(ids)) != len(ids):
        raise _fail(path, f"category ids repeat: {ids}.")
    label_of = {cid: k + 1 for k, cid in enumerate(ids)}
    if ids != list(range(1, len(ids) + 1)):
        print(f"seglab: {path}: category ids {ids[:10]} are not 1..{len(ids)}; mapped to labels 1..{len(ids)} "
              "in id order.", flush=True)
    names = {int(c["id"]): str(c.get("name", c["id"])) for c in data["categories"]}
    images = {int(im["id"]): im for im in data["images"]}
    annotations: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
    for ann in data["annotations"]:
        aid = ann.get("id", "?")
        if int(ann["image_id"]) not in images:
            raise _fail(path, f"annotation {aid} names image_id {ann['image_id']}, which is not in 'images'. Add the "
                              "image or remove its annotations.")
        if int(ann["category_id"]) not in label_of:
            raise _fail(path, f"annotation {aid} has category_id {ann['category_id']}, which is not in 'categories' "
                              f"(ids {ids[:10]}). Add the category or fix the annotation.")
        if "segmentation" not in ann:
            raise _fail(path, f"annotation {aid} has no 'segmentation'; instance masks need polygons "
                              "[[x1, y1, x2, y2, ...], ...] or an RLE {'size': [h, w], 'counts': ...}.")
        for poly in ann["segmentation"] if isinstance(ann["segmentation"], list) else []:
            if not isinstance(poly, list):
                raise _fail(path, f"annotation {aid} has a flat 'segmentation' list; COCO polygons are a list of "
                                  "lists, [[x1, y1, x2, y2, x3, y3, ...]]: wrap it in another list.")
            if len(poly) < 6:
                raise _fail(path, f"annotation {aid} has a polygon with {len(poly) // 2} point(s); a polygon needs at "
                                  "least 3 (x, y) points. Remove it or use an RLE mask.")
            if len(poly) % 2:
                raise _fail(path, f"annotation {aid} has a polygon with an odd number ({len(poly)}) of coordinates; "
                                  "polygons list x, y pairs. Fix the polygon.")
        annotations[int(ann["image_id"])].append(ann)
    return CocoIndex(path, [images[i] for i in sorted(images)], annotations, label_of,
                     ["background", *(names[c] for c in ids)])


def decode_segmentation(seg: Any, h: int, w: int, *, path: Path, ann_id: Any) -> np.ndarray:
    """Boolean ``H x W`` mask of a COCO polygon list or RLE, checked against the image size."""
    if isinstance(seg, list):
        if not seg:
            return np.zeros((h, w), bool)
        rle = mask_utils.merge(mask_utils.frPyObjects(seg, h, w))
    elif isinstance(seg, dict) and "counts" in seg and "size" in seg:
        if [int(v) for v in seg["size"]] != [h, w]:
            raise _fail(path, f"annotation {ann_id} has a mask of size {seg['size'][1]}x{seg['size'][0]} (WxH), but its "
                              f"image is {w}x{h}. Masks must have their image's size.")
        rle = mask_utils.frPyObjects(seg, h, w) if isinstance(seg["counts"], list) else seg
    else:
        raise _fail(path, f"annotation {ann_id} has a segmentation that is neither a polygon list nor an RLE dict.")
    return mask_utils.decode(rle).astype(bool)


def _image_file(split_dir: Path, name: str) -> Path | None:
    for candidate in (split_dir / "images" / name, split_dir / name):
        if candidate.is_file():
            return candidate
    return None


class CocoInstances(InstanceDataset):
    """The images of one COCO ``annotations.json`` with their (non-crowd) instances."""

    def __init__(self, index: CocoIndex, info: DatasetInfo, **kwargs) -> None:
        self.index = index
        split_dir = index.path.parent
        self.files = []
        for im in index.images:
            found = _image_file(split_dir, str(im["file_name"]))
            if found is None:
                raise _fail(index.path, f"image {im['id']} file {im['file_name']!r} is in neither {split_dir / 'images'} "
                                        f"nor {split_dir}. Put the images there or fix 'file_name'.")
            self.files.append(found)
        super().__init__([f.stem for f in self.files], info, kind="coco", **kwargs)

    def _load(self, i: int):
        im, path = self.index.images[i], self.files[i]
        image = read_image(path)
        h, w = int(im.get("height", image.shape[0])), int(im.get("width", image.shape[1]))
        if image.shape[:2] != (h, w):
            raise _fail(self.index.path, f"image {path} is {image.shape[1]}x{image.shape[0]} but annotations.json says "
                                         f"{w}x{h}. Fix 'width'/'height' or the image.")
        anns = [a for a in self.index.annotations[int(im["id"])] if not a.get("iscrowd", 0)]
        masks = [decode_segmentation(a["segmentation"], h, w, path=self.index.path, ann_id=a.get("id")) for a in anns]
        labels = np.asarray([self.index.label_of[int(a["category_id"])] for a in anns], np.int64)
        return image, np.stack(masks) if masks else np.zeros((0, h, w), bool), labels, None
