"""Instance PNGs in the generic folder layout (``dataset: instance_folder``).

Layout (``split`` is e.g. ``train`` or ``val``; a flat ``root/images/`` ... serves as the
training split alone, as for the semantic ``folder`` data set)::

    root/<split>/images/a.jpg       the image (JPEG, PNG, TIFF)
    root/<split>/instances/a.png    instance ids: 8- or 16-bit single-channel PNG, 0 background,
                                    each other value one instance
    root/<split>/masks/a.png        optional: class ids (the semantic folder data set's masks)
    root/<split>/instances/a.json   optional, without masks/: {"classes": {"1": 2, "2": "car"}}

Files pair by stem (:func:`seglab.data.folder.pair_by_stem`). The class of each instance comes
from, in this order: the class PNG in ``masks/`` (every pixel of the instance must hold the same
class 1..K-1), else the image's ``instances/<stem>.json`` (``classes``: id -> class index or
name; every id in the PNG must be listed), else class 1, which needs a one-class data set
(``--data.num_classes 2``, the default). ``masks/`` makes the root a semantic ``folder`` data
set as well. An all-zero id PNG is an image without instances (``boxes`` 0 x 4).

Bad input is an error naming the file and the fix: no ``instances/`` folder (with a note when
``masks/`` seems to hold ids), images without an id PNG, an RGB colour PNG in the id slot, an id or
class PNG of another size than its image, an instance spanning several classes or lying on
class 0, and a class PNG copied into ``instances/`` (see :func:`check_not_class_png`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import ndimage

from seglab.core.errors import SeglabError, did_you_mean
from seglab.data.base import DatasetInfo, validate_mask_values
from seglab.data.folder import IMAGE_EXTENSIONS, pair_by_stem
from seglab.data.instance.base import InstanceDataset
from seglab.data.io import RGBMaskError, describe_bad_values, image_hw, read_image, read_mask

__all__ = ["CLASS_DIR", "INSTANCE_DIR", "InstanceFolder", "InstanceFolderSample", "check_not_class_png",
           "instance_folder_info", "instance_folder_samples", "read_instance_ids"]

INSTANCE_DIR = "instances"
CLASS_DIR = "masks"

#: ``(image, id PNG, class PNG or None, classes JSON or None)``.
InstanceFolderSample = tuple[Path, Path, Path | None, Path | None]


def instance_folder_info(num_classes: int | None, class_names: list[str] | None, palette: list | None,
                         ignore_index: int | None, default_palette) -> DatasetInfo:
    """Classes of an instance folder, background first: ``class_names``, else ``num_classes`` (default 2)."""
    if class_names is not None and num_classes is not None and len(class_names) != num_classes:
        raise SeglabError(f"--data.class_names has {len(class_names)} names but --data.num_classes is {num_classes}; "
                          "instance folders count the background: give one name per class, background first.")
    n = len(class_names) if class_names is not None else int(num_classes if num_classes is not None else 2)
    if n < 2:
        raise SeglabError(f"An instance folder needs the background and at least one class (--data.num_classes >= 2), "
                          f"got {n}.")
    names = [str(c) for c in class_names] if class_names is not None else ["background", *(f"class_{k}" for k in range(1, n))]
    if palette is not None and len(palette) != n:
        raise SeglabError(f"--data.palette has {len(palette)} colours but the instance folder has {n} classes "
                          "(background first); give one [r, g, b] per class.")
    colours = [tuple(int(v) for v in c) for c in palette] if palette is not None else default_palette(n)
    return DatasetInfo(n, names, colours, 255 if ignore_index is None else int(ignore_index))


def _split_dir(root: Path, split: str, train_split: str) -> Path:
    """The folder holding ``images/`` and ``instances/`` of ``split``; a flat root is the training split."""
    if (root / split / "images").is_dir():
        base = root / split
    elif split == train_split and (root / "images").is_dir():
        base = root
    else:
        found = sorted(d.name for d in root.iterdir() if d.is_dir() and (d / "images").is_dir()) if root.is_dir() else []
        hint = f" Splits found: {', '.join(found)}.{did_you_mean(split, found)}" if found else ""
        raise SeglabError(f"Instance folder {str(root)!r} has no split {split!r}: expected {split}/images/ and "
                          f"{split}/{INSTANCE_DIR}/ (or images/ and {INSTANCE_DIR}/ for the training split alone).{hint} "
                          "Create the split folders or point --data.train_split / --data.val_split at existing ones.")
    if not (base / INSTANCE_DIR).is_dir():
        raise SeglabError(_no_instance_dir(base))
    return base


def _no_instance_dir(base: Path) -> str:
    text = (f"Instance folder {str(base)!r} has images/ but no {INSTANCE_DIR}/ folder: put one instance-id PNG per "
            f"image there (same stem; 0 background, each other value one instance).")
    masks = base / CLASS_DIR
    if masks.is_dir():
        first = next((p for p in sorted(masks.iterdir()) if p.suffix.lower() == ".png"), None)
        try:
            sixteen_bit = first is not None and read_mask(first).dtype != np.uint8
        except SeglabError:  # a colour or unreadable PNG: reported when masks/ is read as class PNGs
            sixteen_bit = False
        if sixteen_bit:
            text += (f" {str(masks)!r} holds 16-bit PNGs ({first.name}), which look like instance ids: if they are, "
                     f"rename {CLASS_DIR}/ to {INSTANCE_DIR}/ ({CLASS_DIR}/ is for class PNGs).")
        else:
            text += (f" {str(masks)!r} is for class PNGs (as in the semantic folder data set), which keep their role "
                     f"beside {INSTANCE_DIR}/; for semantic segmentation of this folder use --data.dataset folder.")
    return text


def instance_folder_samples(root: str | Path | None, split: str, train_split: str = "train") -> list[InstanceFolderSample]:
    """The checked samples of ``split``: every image has an id PNG, and a class PNG when ``masks/`` exists."""
    if not root:
        raise SeglabError("Instance folders need their location: set --data.root to the folder holding images/ and "
                          f"{INSTANCE_DIR}/ (or <split>/images/ and <split>/{INSTANCE_DIR}/).")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise SeglabError(f"Data root {str(root)!r} does not exist. Point --data.root at the instance folder.")
    base = _split_dir(root, split, train_split)
    image_dir, id_dir, class_dir = base / "images", base / INSTANCE_DIR, base / CLASS_DIR
    pairs = _pairs(image_dir, id_dir)
    classes = {im.stem: c for im, c in _pairs(image_dir, class_dir)} if class_dir.is_dir() else {}
    samples: list[InstanceFolderSample] = []
    for image, ids in pairs:
        sidecar = ids.with_suffix(".json")
        sidecar = sidecar if sidecar.is_file() else None
        if class_dir.is_dir() and sidecar is not None:
            raise SeglabError(f"{str(sidecar)!r} and {str(classes[image.stem])!r} both give the classes of "
                              f"{ids.name}'s instances; keep one (the class PNG, or the JSON without {CLASS_DIR}/).")
        samples.append((image, ids, classes.get(image.stem), sidecar))
    return samples


def _pairs(image_dir: Path, label_dir: Path) -> list[tuple[Path, Path]]:
    pairing = pair_by_stem(image_dir, label_dir, IMAGE_EXTENSIONS, (".png",))
    if pairing.duplicate_stems:
        raise SeglabError(f"Several files in {str(image_dir)!r} or {str(label_dir)!r} share the stem(s) "
                          f"{', '.join(sorted(set(pairing.duplicate_stems))[:5])}; pairing by name is ambiguous. "
                          "Rename or remove them.")
    if pairing.images_without_masks:
        names = ", ".join(p.name for p in pairing.images_without_masks[:5])
        what = "instance-id PNG (all zeros for an image without instances)" if label_dir.name == INSTANCE_DIR \
            else "class PNG"
        raise SeglabError(f"{len(pairing.images_without_masks)} image(s) in {str(image_dir)!r} have no {what} in "
                          f"{str(label_dir)!r} (e.g. {names}). Add one with the same stem, or remove the image.")
    if not pairing.pairs:
        raise SeglabError(f"No images in {str(image_dir)!r} pair with PNGs in {str(label_dir)!r}: the folders are "
                          "empty or the file names do not match.")
    return pairing.pairs


def read_instance_ids(path: Path) -> np.ndarray:
    """The id map of an instance PNG (8-bit, 16-bit or 32-bit single channel); a colour PNG is an error."""
    try:
        return read_mask(path)
    except RGBMaskError as e:
        raise SeglabError(f"Instance-id PNG {str(path)!r} is an RGB colour image, but instance ids are one value per "
                          "pixel in a single-channel 8- or 16-bit PNG (0 background, 1..N the instances). Convert "
                          "each colour to its own id (e.g. np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)) "
                          "and save it as mode I;16 or L.") from e


def _regions(mask: np.ndarray) -> int:
    return int(ndimage.label(mask, structure=np.ones((3, 3), bool))[1])


def check_not_class_png(ids: np.ndarray, classes: np.ndarray, id_path: Path, class_path: Path) -> None:
    """Refuse a class PNG copied into ``instances/``: the id PNG equals the class PNG and one value covers
    several separate regions (several objects sharing one value, as a class map has them).

    An id PNG equal to its class PNG whose values are each one region (one object per class, e.g. a
    single instance of class 1) is accepted: read as ids, it gives the same objects.
    """
    if not np.array_equal(ids, classes) or not ids.any():
        return
    values = np.flatnonzero(np.bincount(ids.ravel().astype(np.int64)))
    split = [int(v) for v in values if v and _regions(ids == v) > 1]
    if split:
        raise SeglabError(f"Instance-id PNG {str(id_path)!r} is identical to its class PNG {str(class_path)!r}, and "
                          f"value(s) {describe_bad_values(split)} each cover several separate regions: it holds class "
                          f"ids, not instance ids. Put one id per object in {INSTANCE_DIR}/ (e.g. number the "
                          "connected components with scipy.ndimage.label). If it really is one object split by an "
                          "occluder whose ids equal their classes, renumber the ids so they differ from the classes.")


class InstanceFolder(InstanceDataset):
    """Images with instance-id PNGs and optional class PNGs or JSON class maps (see the module docstring)."""

    def __init__(self, samples: list[InstanceFolderSample], info: DatasetInfo, **kwargs) -> None:
        super().__init__([Path(s[0]).stem for s in samples], info, kind="instance_folder", **kwargs)
        self.samples = list(samples)

    def _load(self, i: int):
        image_path, id_path, class_path, sidecar = self.samples[i]
        ids = read_instance_ids(id_path)
        h, w = image_hw(image_path)
        if ids.shape != (h, w):
            raise SeglabError(f"Instance-id PNG {str(id_path)!r} is {ids.shape[1]}x{ids.shape[0]} (WxH) but its image "
                              f"{str(image_path)!r} is {w}x{h}; id PNGs must have their image's size (re-export it, "
                              "nearest-neighbour, or fix the pairing).")
        values = np.unique(ids)
        values = values[values != 0]
        masks = ids[None] == values.reshape(-1, 1, 1)
        if class_path is not None:
            labels = self._labels_from_class_png(ids, values, masks, id_path, class_path)
        elif sidecar is not None:
            labels = self._labels_from_json(values, sidecar, id_path)
        else:
            if len(values) and self.info.num_classes != 2:
                raise SeglabError(f"Which class is each instance of {str(id_path)!r}? The data set has "
                                  f"{self.info.num_classes} classes, so give them in {CLASS_DIR}/{id_path.name} "
                                  f"(a class PNG) or {id_path.with_suffix('.json').name} beside it "
                                  '({"classes": {"<id>": <class>}}); without either every instance is class 1, '
                                  "which needs --data.num_classes 2.")
            labels = np.ones(len(values), np.int64)
        image = read_image(image_path)
        return image, masks, labels, None

    def _labels_from_class_png(self, ids: np.ndarray, values: np.ndarray, masks: np.ndarray, id_path: Path,
                               class_path: Path) -> np.ndarray:
        classes = read_mask(class_path)
        if classes.shape != ids.shape:
            raise SeglabError(f"Class PNG {str(class_path)!r} is {classes.shape[1]}x{classes.shape[0]} (WxH) but its "
                              f"instance-id PNG {str(id_path)!r} is {ids.shape[1]}x{ids.shape[0]}; the two must have "
                              "their image's size.")
        validate_mask_values(classes, self.info.num_classes, self.info.ignore_index, class_path)
        check_not_class_png(ids, classes, id_path, class_path)
        labels = np.zeros(len(values), np.int64)
        for k, (value, mask) in enumerate(zip(values, masks)):
            under = np.bincount(classes[mask].astype(np.int64))
            found = np.flatnonzero(under)
            if len(found) != 1 or not 0 < found[0] < self.info.num_classes:
                shown = ", ".join(f"{int(c)} ({int(under[c])} px)" for c in found[:6])
                raise SeglabError(f"Instance {int(value)} of {str(id_path)!r} covers class(es) {shown} in "
                                  f"{str(class_path)!r}; every pixel of an instance needs the same class, 1.."
                                  f"{self.info.num_classes - 1} (0 is the background). Fix the class PNG or the ids.")
            labels[k] = found[0]
        return labels

    def _labels_from_json(self, values: np.ndarray, sidecar: Path, id_path: Path) -> np.ndarray:
        try:
            mapping = json.loads(sidecar.read_text())["classes"]
            mapping = {int(k): v for k, v in mapping.items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise SeglabError(f"Class map {str(sidecar)!r} cannot be read ({type(e).__name__}: {e}); it must be JSON "
                              '{"classes": {"<instance id>": <class index or name>, ...}}.') from e
        names = self.info.class_names
        labels = np.zeros(len(values), np.int64)
        for k, value in enumerate(int(v) for v in values):
            if value not in mapping:
                raise SeglabError(f"Instance {value} of {str(id_path)!r} has no class in {str(sidecar)!r}; add "
                                  f'"{value}": <class> to its "classes".')
            cls = mapping[value]
            if isinstance(cls, str):
                if cls not in names[1:]:
                    raise SeglabError(f"{str(sidecar)!r} gives instance {value} the class {cls!r}, which is not one "
                                      f"of --data.class_names {names[1:]}.{did_you_mean(cls, names[1:])}")
                cls = names.index(cls, 1)
            if isinstance(cls, bool) or not isinstance(cls, int) or not 0 < cls < self.info.num_classes:
                raise SeglabError(f"{str(sidecar)!r} gives instance {value} the class {cls!r}; classes are indices "
                                  f"1..{self.info.num_classes - 1} (0 is the background) or names of --data.class_names.")
            labels[k] = cls
        return labels
