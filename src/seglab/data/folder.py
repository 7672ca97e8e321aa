"""The generic folder data set: ``root/images/*`` paired with ``root/masks/*`` by file stem.

Layouts accepted (``split`` is e.g. ``train`` or ``val``)::

    root/<split>/images/a.jpg   root/<split>/masks/a.png     # one folder per split
    root/images/a.jpg           root/masks/a.png             # a single, training-only split

Images may be JPEG, PNG or TIFF; masks are PNG (index masks, or colour-coded with
``--data.rgb_masks true``). The pairing helpers are shared with the CamVid reader
and ``check_dataset``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from seglab.core.errors import SeglabError, did_you_mean

__all__ = [
    "CHECK_COMMAND",
    "IMAGE_EXTENSIONS",
    "MASK_EXTENSIONS",
    "Pairing",
    "pair_by_stem",
    "folder_split_dirs",
    "folder_splits",
    "folder_samples",
]

# The CLI command that runs check_dataset; messages point users at it.
CHECK_COMMAND = "seglab data check"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
MASK_EXTENSIONS = (".png",)


@dataclass
class Pairing:
    """Result of matching an image folder with a mask folder."""

    pairs: list[tuple[Path, Path]] = field(default_factory=list)
    images_without_masks: list[Path] = field(default_factory=list)
    masks_without_images: list[Path] = field(default_factory=list)
    duplicate_stems: list[str] = field(default_factory=list)


def _files(folder: Path, extensions: tuple[str, ...]) -> list[Path]:
    # Hidden files (.DS_Store, ._a.png from macOS archives) are never data.
    return sorted(
        p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in extensions
    )


def _by_stem(files: list[Path], duplicates: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in files:
        if p.stem in out:
            duplicates.append(p.stem)
        else:
            out[p.stem] = p
    return out


def pair_by_stem(
    image_dir: Path,
    mask_dir: Path,
    image_exts: tuple[str, ...] = IMAGE_EXTENSIONS,
    mask_exts: tuple[str, ...] = MASK_EXTENSIONS,
) -> Pairing:
    """Match files of ``image_dir`` and ``mask_dir`` by stem (``a.jpg`` with ``a.png``), sorted by stem."""
    result = Pairing()
    images = _by_stem(_files(image_dir, image_exts), result.duplicate_stems)
    masks = _by_stem(_files(mask_dir, mask_exts), result.duplicate_stems)
    for stem in sorted(images):
        if stem in masks:
            result.pairs.append((images[stem], masks[stem]))
        else:
            result.images_without_masks.append(images[stem])
    result.masks_without_images = [masks[s] for s in sorted(masks) if s not in images]
    return result


def _split_names(root: Path) -> list[str]:
    return sorted(d.name for d in root.iterdir() if d.is_dir() and (d / "images").is_dir() and (d / "masks").is_dir())


def folder_splits(root: str | Path) -> list[str]:
    """Splits present under ``root``: its ``<split>/images`` folders, or ``train`` for a flat ``images/``."""
    root = Path(root)
    names = _split_names(root)
    if not names and (root / "images").is_dir() and (root / "masks").is_dir():
        names = ["train"]
    return names


def folder_split_dirs(root: str | Path, split: str, train_split: str = "train") -> tuple[Path, Path]:
    """The ``(images, masks)`` folders of ``split``; a flat layout serves as the training split only."""
    root = Path(root)
    if (root / split / "images").is_dir():
        image_dir, mask_dir = root / split / "images", root / split / "masks"
        if not mask_dir.is_dir():
            raise SeglabError(f"Folder data set split {split!r}: {str(mask_dir)!r} is missing; put the masks there.")
        return image_dir, mask_dir
    if split == train_split and (root / "images").is_dir():
        if not (root / "masks").is_dir():
            raise SeglabError(
                f"Folder data set {str(root)!r} has images/ but no masks/ folder; put one mask PNG per image "
                "(same file stem) in masks/."
            )
        return root / "images", root / "masks"
    found = _split_names(root)
    hint = f" Splits found: {', '.join(found)}.{did_you_mean(split, found)}" if found else ""
    raise SeglabError(
        f"Folder data set {str(root)!r} has no split {split!r}: expected {split}/images/ and {split}/masks/ "
        f"(or images/ and masks/ for the training split alone).{hint} "
        "Create the split folders or point --data.train_split / --data.val_split at existing ones."
    )


def folder_samples(root: str | Path, split: str, train_split: str = "train") -> list[tuple[Path, Path]]:
    """``(image, mask)`` pairs of a folder data set split.

    Raises:
        SeglabError: missing folders, no images, images without masks or ambiguous stems.
    """
    image_dir, mask_dir = folder_split_dirs(root, split, train_split)
    pairing = pair_by_stem(image_dir, mask_dir)
    if pairing.duplicate_stems:
        raise SeglabError(
            f"Several files in {str(image_dir)!r} or {str(mask_dir)!r} share the stem(s) "
            f"{', '.join(sorted(set(pairing.duplicate_stems))[:5])}; pairing by name is ambiguous. "
            "Rename or remove them."
        )
    if pairing.images_without_masks:
        names = ", ".join(p.name for p in pairing.images_without_masks[:5])
        raise SeglabError(
            f"{len(pairing.images_without_masks)} image(s) in {str(image_dir)!r} have no mask in {str(mask_dir)!r} "
            f"(e.g. {names}). Each image needs a PNG mask with the same stem; run `{CHECK_COMMAND} {root}` "
            "for a full report."
        )
    if not pairing.pairs:
        raise SeglabError(
            f"No image/mask pairs in {str(image_dir)!r} and {str(mask_dir)!r} (images: "
            f"{', '.join(IMAGE_EXTENSIONS)}; masks: .png). The folders are empty or the file names do not match."
        )
    return pairing.pairs
