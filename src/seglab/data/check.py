"""``check_dataset``: inspect a data set folder and report what would go wrong before training.

Recognised layouts: CamVid-style (``<split>.txt`` list files, or ``<split>/`` with
``<split>annot/``), folder data sets (``images/`` + ``masks/``, optionally under
``<split>/``), ISBI 2012 (``images/`` + ``labels/`` holding 0/255 labels, mapped
explicitly to membrane/cell; a held-out ``<split>/images`` + ``<split>/labels`` too) and SUN RGB-D
(``SUNRGBD-{train,test}_images/`` + ``sunrgbd_train_test_labels/``, 0 unlabelled, 1..37 the classes).
Every split found is checked: image and mask counts, pairing, readability,
image/mask sizes, mask kind (index vs RGB) and values, and a per-class pixel histogram.

Only masks are decoded; images are read for their header and integrity (``verify``),
so all of CamVid (468 pairs) takes a few seconds.

Example:
    >>> report = check_dataset("../shared/data/camvid")   # doctest: +SKIP
    >>> print(report.format()); report.ok
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from seglab.core.errors import SeglabError
from seglab.data.camvid import CAMVID_CLASSES, CAMVID_VOID, looks_like_camvid_root, camvid_splits, parse_list_file
from seglab.data.folder import folder_split_dirs, folder_splits, pair_by_stem
from seglab.data.isbi import ISBI_CLASSES, ISBI_FILE_EXTS, ISBI_LABEL_VALUES
from seglab.data.io import RGBMaskError, read_mask
from seglab.data.report import DatasetReport, SplitSummary, files_text
from seglab.data.sunrgbd import (
    SUNRGBD_CLASSES, SUNRGBD_DIRS, SUNRGBD_LABEL_DIR, looks_like_sunrgbd, sunrgbd_split_pairs, sunrgbd_splits
)

__all__ = ["check_dataset", "DatasetReport"]


@dataclass
class _SplitScan:
    """Per-file findings of one split, classified into issues once the class count is known."""

    summary: SplitSummary
    values: dict[Path, Counter] = field(default_factory=dict)  # mask -> value counts
    unreadable: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)
    rgb_masks: list[Path] = field(default_factory=list)


def _is_isbi(root: Path) -> bool:
    return (root / "images").is_dir() and (root / "labels").is_dir()


def _isbi_splits(root: Path) -> list[str]:
    """``labelled`` (the slices train and val are carved from) plus held-out ``<split>/`` folders."""
    held_out = [p.name for p in sorted(root.iterdir()) if p.is_dir() and _is_isbi(p)]
    return ["labelled", *held_out]


def _detect(root: Path) -> tuple[str, Path]:
    if _is_isbi(root):
        return "isbi2012", root
    if looks_like_sunrgbd(root):
        return "sunrgbd", root
    if folder_splits(root):
        return "folder", root
    if looks_like_camvid_root(root) or camvid_splits(root):
        return "camvid", root
    if looks_like_camvid_root(root / "camvid"):
        return "camvid", root / "camvid"
    if _is_isbi(root / "isbi2012"):
        return "isbi2012", root / "isbi2012"
    return "unknown", root


def _listing(root: Path, limit: int = 8) -> str:
    entries = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir() if not p.name.startswith("."))
    return (", ".join(entries[:limit]) + (", ..." if len(entries) > limit else "")) or "an empty folder"


def _image_size(path: Path) -> tuple[int, int]:
    """``(width, height)``, after decoding every pixel: ``verify()`` alone checks PNG chunks but does
    nothing for JPEG, whose truncation only shows when the pixels are decoded."""
    if path.stat().st_size == 0:
        raise _EmptyFile(path.name)
    with Image.open(path) as im:
        size = im.size
        im.verify()  # PNG: walks the chunks and checksums
    with Image.open(path) as im:
        im.load()  # every format: decodes the pixels, so a truncated JPEG fails here
    return size


class _EmptyFile(Exception):
    """A zero-byte file (PIL would call it "cannot identify image file")."""


def _value_counts(mask: np.ndarray) -> Counter:
    if mask.dtype.kind == "u":
        hist = np.bincount(mask.ravel())
        nz = np.flatnonzero(hist)
        return Counter(dict(zip(nz.tolist(), hist[nz].tolist())))
    vals, counts = np.unique(mask, return_counts=True)
    return Counter(dict(zip(vals.tolist(), counts.tolist())))


def _scan_pair(scan: _SplitScan, image: Path, mask: Path) -> None:
    try:
        size = _image_size(image)
    except _EmptyFile:
        scan.unreadable.append(f"{image.name} (empty: 0 bytes)")
        size = None
    except Exception as e:  # noqa: BLE001 - any failure to parse means "unreadable" here
        scan.unreadable.append(f"{image.name} ({type(e).__name__}: {str(e)[:60]})")
        size = None
    if mask.is_file() and mask.stat().st_size == 0:
        scan.unreadable.append(f"{mask.name} (mask, empty: 0 bytes)")
        return
    try:
        arr = read_mask(mask)
    except RGBMaskError:
        scan.rgb_masks.append(mask)
        return
    except SeglabError:
        scan.unreadable.append(f"{mask.name} (mask)")
        return
    if size is not None and arr.shape != (size[1], size[0]):
        scan.mismatched.append(f"{mask.name} {arr.shape[1]}x{arr.shape[0]} vs image {size[0]}x{size[1]}")
    counts = _value_counts(arr)
    scan.values[mask] = counts
    scan.summary.histogram.update(counts)


def _camvid_pairs(report: DatasetReport, root: Path, split: str) -> tuple[list, SplitSummary]:
    list_path = root / f"{split}.txt"
    if list_path.is_file():
        summary = SplitSummary(split, list_path.name)
        try:
            pairs, missing = parse_list_file(list_path, root)
        except SeglabError as e:
            report.add("error", split, str(e))
            return [], summary
        if missing:
            lines = ", ".join(f"line {n} ({Path(p).name})" for n, p in missing[:5])
            more = f" (+{len(missing) - 5} more)" if len(missing) > 5 else ""
            text = f"{len(missing)} file(s) listed in {list_path.name} do not exist: {lines}{more}."
            report.add("error", split, text)
        summary.images = summary.masks = len(pairs)
        return pairs, summary
    pairing = pair_by_stem(root / split, root / f"{split}annot", (".png", ".jpg", ".jpeg"), (".png",))
    summary = SplitSummary(split, f"{split}/ + {split}annot/")
    _pairing_issues(report, split, pairing, summary)
    return pairing.pairs, summary


def _pairing_issues(report: DatasetReport, split: str, pairing, summary: SplitSummary) -> None:
    summary.images = len(pairing.pairs) + len(pairing.images_without_masks)
    summary.masks = len(pairing.pairs) + len(pairing.masks_without_images)
    if pairing.images_without_masks:
        report.add(
            "error",
            split,
            f"{len(pairing.images_without_masks)} image(s) without a mask: {files_text(pairing.images_without_masks)}. "
            "Add a PNG mask with the same file stem, or remove the image.",
        )
    if pairing.masks_without_images:
        report.add(
            "warning",
            split,
            f"{len(pairing.masks_without_images)} mask(s) without an image (ignored): "
            f"{files_text(pairing.masks_without_images)}.",
        )
    if pairing.duplicate_stems:
        stems = ", ".join(sorted(set(pairing.duplicate_stems))[:5])
        report.add("error", split, f"Ambiguous file stems (several files share them): {stems}. Rename or remove them.")


def _folder_pairs(report: DatasetReport, root: Path, split: str) -> tuple[list, SplitSummary]:
    image_dir, mask_dir = folder_split_dirs(root, split)
    pairing = pair_by_stem(image_dir, mask_dir)
    summary = SplitSummary(split, f"{image_dir.relative_to(root)}/ + {mask_dir.relative_to(root)}/")
    _pairing_issues(report, split, pairing, summary)
    return pairing.pairs, summary


def _isbi_pairs(report: DatasetReport, root: Path, split: str) -> tuple[list, SplitSummary]:
    folder = root if split == "labelled" else root / split
    pairing = pair_by_stem(folder / "images", folder / "labels", ISBI_FILE_EXTS, ISBI_FILE_EXTS)  # as the loader pairs
    prefix = "" if split == "labelled" else f"{split}/"
    summary = SplitSummary(split, f"{prefix}images/ + {prefix}labels/")
    _pairing_issues(report, split, pairing, summary)
    return pairing.pairs, summary


def _sunrgbd_pairs(report: DatasetReport, root: Path, split: str) -> tuple[list, SplitSummary]:
    pairs, missing = sunrgbd_split_pairs(root, split)
    summary = SplitSummary(split, f"{SUNRGBD_DIRS[split]}/ + {SUNRGBD_LABEL_DIR}/")
    summary.images, summary.masks = len(pairs) + len(missing), len(pairs)
    if missing:
        report.add("error", split, f"{len(missing)} image(s) without a label: {files_text(missing)}. "
                   "Re-extract sunrgbd_train_test_labels.tar.gz (train image img-N pairs with label img-(N+5050)).")
    return pairs, summary


def _sunrgbd_value_issues(report: DatasetReport, scan: _SplitScan) -> None:
    """File values: 0 unlabelled (the ignore index), 1..37 classes 0..36; anything else is an error."""
    n = len(SUNRGBD_CLASSES)
    offenders = {m: sorted(v for v in c if not 0 <= v <= n) for m, c in scan.values.items()}
    offenders = {m: v for m, v in offenders.items() if v}
    if offenders:
        first, values = next(iter(offenders.items()))
        report.add("error", scan.summary.name, f"{len(offenders)} label(s) hold values outside 0..{n}, e.g. "
                   f"{first.name}: {', '.join(map(str, values[:8]))}. Use the 37-class labels ({SUNRGBD_LABEL_DIR}).")
    mapped: Counter = Counter()
    for value, count in scan.summary.histogram.items():
        if 0 <= value <= n:
            mapped[report.ignore_index if value == 0 else value - 1] += count
    scan.summary.histogram = mapped


def _isbi_value_issues(report: DatasetReport, scan: _SplitScan) -> None:
    """ISBI labels hold 0 (membrane) and 255 (cell) only; count them as classes 0 and 1."""
    extra = {m: sorted(set(c) - ISBI_LABEL_VALUES.keys()) for m, c in scan.values.items()}
    offenders = {m: values for m, values in extra.items() if values}
    if offenders:
        first, values = next(iter(offenders.items()))
        report.add("error", scan.summary.name,
                   f"{len(offenders)} label(s) hold values other than 0 (membrane) and 255 (cell), e.g. {first.name}: "
                   f"{', '.join(map(str, values[:8]))}. ISBI 2012 labels are binary: threshold them "
                   "(np.where(label > 127, 255, 0)) or fix the export.")
    mapped: Counter = Counter()
    for value, count in scan.summary.histogram.items():
        if value in ISBI_LABEL_VALUES:
            mapped[ISBI_LABEL_VALUES[value]] += count
    scan.summary.histogram = mapped


def _infer_classes(report: DatasetReport, scans: list[_SplitScan], num_classes: int | None) -> None:
    if report.layout == "isbi2012":
        report.num_classes, report.num_classes_source = len(ISBI_CLASSES), "isbi2012 (0 -> membrane, 255 -> cell)"
        report.class_names = list(ISBI_CLASSES)
    elif report.layout == "sunrgbd":
        report.num_classes, report.num_classes_source = len(SUNRGBD_CLASSES), "sunrgbd (file 0 -> ignore, k -> k-1)"
        report.class_names = list(SUNRGBD_CLASSES)
    elif num_classes is not None:
        report.num_classes, report.num_classes_source = int(num_classes), "given"
    elif report.layout == "camvid":
        report.num_classes, report.num_classes_source = len(CAMVID_CLASSES), "camvid"
    else:
        seen = {v for s in scans for v in s.summary.histogram if v != report.ignore_index and v >= 0}
        report.num_classes = max(seen) + 1 if seen else None
        report.num_classes_source = "inferred from the largest mask value"
    if report.layout == "camvid" and report.num_classes == len(CAMVID_CLASSES):
        report.class_names = list(CAMVID_CLASSES)


def _value_issues(report: DatasetReport, scan: _SplitScan) -> None:
    split, ignore, n = scan.summary.name, report.ignore_index, report.num_classes
    binary = [m for m, c in scan.values.items() if 255 in c and set(c) <= {0, 255}]
    if binary and (n is None or n <= 255):
        # With 255 as the ignore index a 0/255 mask loads, but its foreground would be ignored.
        every = len(binary) == len(scan.values)
        level = "error" if ignore != 255 or every else "warning"
        report.add(
            level,
            split,
            f"{len(binary)} mask(s) hold only 0 and 255: {files_text(binary)}. This looks like a 0/255 binary mask; "
            "map 255 to class 1 (np.where(mask == 255, 1, 0)) and use num_classes 2, unless 255 really marks void.",
        )
    if n is None:
        return
    bad_files: dict[int, int] = Counter()
    offenders = []
    for mask, counts in scan.values.items():
        if mask in binary:
            continue
        bad = [v for v in counts if (v < 0 or v >= n) and v != ignore]
        if bad:
            offenders.append(mask)
            bad_files.update(bad)
    if offenders:
        values = ", ".join(f"{v} ({c} file{'s' * (c != 1)})" for v, c in sorted(bad_files.items())[:8])
        report.add(
            "error",
            split,
            f"{len(offenders)} mask(s) have values outside [0, {n}) other than the ignore index {ignore}: {values}; "
            f"e.g. {files_text(offenders)}. If these are classes, check again with --num-classes {max(bad_files) + 1} "
            f"(train with --data.num_classes {max(bad_files) + 1}); if one marks void, check with --ignore-index "
            "VALUE (train with --data.ignore_index VALUE).",
        )
    absent = [report.class_label(c).strip() for c in range(n) if scan.summary.histogram.get(c, 0) == 0]
    if absent and scan.values:
        report.add("warning", split, f"class(es) never present: {', '.join(absent)} (their loss weight will be 0).")


def _file_issues(report: DatasetReport, scan: _SplitScan) -> None:
    split = scan.summary.name
    if scan.summary.pairs == 0:
        report.add("error", split, "No image/mask pairs: the split is empty.")
    if scan.unreadable:
        text = f"{len(scan.unreadable)} unreadable or corrupt file(s): {files_text(scan.unreadable)}."
        report.add("error", split, text + " Re-extract or remove them.")
    if scan.mismatched:
        text = f"{len(scan.mismatched)} mask(s) differ in size from their image: {files_text(scan.mismatched, 3)}."
        report.add("error", split, text + " Masks must have exactly their image's size.")
    if scan.rgb_masks:
        report.add(
            "error",
            split,
            f"{len(scan.rgb_masks)} RGB colour mask(s) where index masks are expected: {files_text(scan.rgb_masks)}. "
            "Use --data.rgb_masks true with --data.palette, or convert them to single-channel class-id PNGs.",
        )


def check_dataset(
    path: str | Path, num_classes: int | None = None, split: str | None = None, ignore_index: int | None = None
) -> DatasetReport:
    """Inspect the data set at ``path`` and report counts, class histograms and problems.

    Args:
        path: A CamVid-style root or a folder data set root.
        num_classes: Number of classes; None: 11 for CamVid, else the largest mask value + 1.
        split: Check only this split (default: every split found).
        ignore_index: Void value; default 11 for CamVid, 255 otherwise.

    Returns:
        A :class:`DatasetReport`; ``report.ok`` is False when any error was found.

    Raises:
        SeglabError: ``path`` does not exist.
    """
    root = Path(path).expanduser()
    if not root.is_dir():
        raise SeglabError(f"Data set folder {str(root)!r} does not exist; pass the folder holding the data set.")
    layout, root = _detect(root)
    default_ignore = CAMVID_VOID if layout == "camvid" else 255
    report = DatasetReport(root, layout, ignore_index=default_ignore if ignore_index is None else int(ignore_index))
    if layout == "unknown":
        lone = [d for d in [root, *sorted(p for p in root.iterdir() if p.is_dir())]
                if (d / "images").is_dir() and not (d / "masks").is_dir() and not (d / "labels").is_dir()]
        if lone:
            report.add("error", None, f"{str(lone[0] / 'images')!r} has no masks/ folder beside it: a folder data set "
                       "pairs images/<name>.jpg with masks/<name>.png (class ids per pixel); ISBI 2012 uses labels/. "
                       "Add the masks, or predict unlabelled images with `seglab predict`.")
            return report
        report.add(
            "error",
            None,
            "No data set found: expected a CamVid layout (train.txt, or train/ with trainannot/), a folder layout "
            "(images/ with masks/, optionally inside <split>/ folders), ISBI 2012 (images/ with labels/) or SUN RGB-D "
            "(SUNRGBD-train_images/ with sunrgbd_train_test_labels/). "
            f"Found: {_listing(root)}.",
        )
        return report
    splits_of = {"camvid": camvid_splits, "folder": folder_splits, "isbi2012": _isbi_splits, "sunrgbd": sunrgbd_splits}
    pairs_of = {"camvid": _camvid_pairs, "folder": _folder_pairs, "isbi2012": _isbi_pairs, "sunrgbd": _sunrgbd_pairs}
    found = splits_of[layout](root)
    if split is not None and split not in found:
        report.add("error", split, f"Split {split!r} not found; splits present: {', '.join(found) or 'none'}.")
        return report
    scans = []
    for name in [split] if split is not None else found:
        pairs, summary = pairs_of[layout](report, root, name)
        summary.pairs = len(pairs)
        scan = _SplitScan(summary)
        for image, mask in pairs:
            _scan_pair(scan, Path(image), Path(mask))
        scans.append(scan)
        report.splits.append(summary)
    _infer_classes(report, scans, num_classes)
    for scan in scans:
        _file_issues(report, scan)
        if layout == "isbi2012":
            _isbi_value_issues(report, scan)
        elif layout == "sunrgbd":
            _sunrgbd_value_issues(report, scan)
        else:
            _value_issues(report, scan)
    return report
