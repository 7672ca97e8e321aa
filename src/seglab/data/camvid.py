"""CamVid in the SegNet tutorial layout: classes, palette, list files and split folders.

Layout under the CamVid root::

    train/0001TP_006690.png   trainannot/0001TP_006690.png   train.txt
    val/...                   valannot/...                   val.txt
    test/...                  testannot/...                  test.txt

A list-file line is ``image_path label_path``, relative to the root. The official
tutorial lists hold absolute paths (``/SegNet/CamVid/train/x.png``); those are
resolved under the root by their last two path components (then by file name).
Without a list file the ``<split>/`` and ``<split>annot/`` folders are paired by name.
Label PNGs hold class ids 0..10 and 11 for void.
"""

from __future__ import annotations

from pathlib import Path

from seglab.core.errors import SeglabError, did_you_mean
from seglab.data.folder import pair_by_stem

__all__ = [
    "CAMVID_CLASSES",
    "CAMVID_PALETTE",
    "CAMVID_VOID",
    "CAMVID_VOID_COLOR",
    "resolve_camvid_root",
    "camvid_splits",
    "parse_list_file",
    "camvid_split_pairs",
    "camvid_samples",
]

CAMVID_CLASSES = [
    "Sky",
    "Building",
    "Pole",
    "Road",
    "Pavement",
    "Tree",
    "SignSymbol",
    "Fence",
    "Car",
    "Pedestrian",
    "Bicyclist",
]
# The SegNet tutorial's colours, in class order.
CAMVID_PALETTE: list[tuple[int, int, int]] = [
    (128, 128, 128),
    (128, 0, 0),
    (192, 192, 128),
    (128, 64, 128),
    (60, 40, 222),
    (128, 128, 0),
    (192, 128, 128),
    (64, 64, 128),
    (64, 0, 128),
    (64, 64, 0),
    (0, 128, 192),
]
CAMVID_VOID = 11
CAMVID_VOID_COLOR = (0, 0, 0)
_LIST_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def looks_like_camvid_root(path: Path) -> bool:
    return any((path / f"{s}.txt").is_file() or (path / f"{s}annot").is_dir() for s in ("train", "val", "test"))


def resolve_camvid_root(root: str | Path | None) -> Path:
    """The CamVid folder itself; a parent holding ``camvid/`` (e.g. ``../shared/data``) is accepted too.

    Raises:
        SeglabError: no root given, or the folder does not exist.
    """
    if root is None or str(root) == "":
        raise SeglabError(
            "CamVid needs its folder: set --data.root to the directory holding train.txt, train/ and trainannot/ "
            "(e.g. --data.root ../shared/data/camvid)."
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise SeglabError(
            f"CamVid root {str(path)!r} does not exist. Point --data.root at the directory holding train.txt, "
            "train/ and trainannot/ (the SegNet tutorial's CamVid folder)."
        )
    if not looks_like_camvid_root(path) and looks_like_camvid_root(path / "camvid"):
        return path / "camvid"
    return path


def camvid_splits(root: Path) -> list[str]:
    """Split names found under ``root``: list files ``<s>.txt`` and folder pairs ``<s>/`` + ``<s>annot/``."""
    names = {p.stem for p in root.glob("*.txt") if _is_list_file(p)}
    names |= {d.name[: -len("annot")] for d in root.glob("*annot") if d.is_dir() and (root / d.name[:-5]).is_dir()}
    return sorted(names)


def _is_list_file(path: Path) -> bool:
    try:
        with path.open() as f:
            for line in f:
                if line.strip() and not line.lstrip().startswith("#"):
                    # Two image paths, not just any two words (a README line must not look like a split).
                    tokens = line.split()
                    return len(tokens) == 2 and all(Path(t).suffix.lower() in _LIST_EXTS for t in tokens)
    except (OSError, UnicodeDecodeError):
        return False
    return False


def _resolve_entry(token: str, root: Path) -> Path | None:
    p = Path(token)
    if not p.is_absolute():
        candidates = [root / p]
    else:
        # Tutorial lists point at /SegNet/CamVid/...: keep the split folder and file name.
        candidates = [p, root / Path(*p.parts[-2:]), root / p.name]
    for cand in candidates:
        if cand.is_file():
            return cand
    return None


def parse_list_file(list_path: Path, root: Path) -> tuple[list[tuple[Path, Path]], list[tuple[int, str]]]:
    """Read a CamVid list file.

    Returns:
        ``(pairs, missing)``: resolved ``(image, label)`` pairs and ``(line number, path)``
        for every listed file that does not exist.

    Raises:
        SeglabError: a line that is not exactly two paths, naming the file and line number.
    """
    pairs: list[tuple[Path, Path]] = []
    missing: list[tuple[int, str]] = []
    for lineno, line in enumerate(list_path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        tokens = line.split()
        if len(tokens) != 2:
            raise SeglabError(
                f"{str(list_path)!r} line {lineno}: expected 'image_path label_path', got {line.strip()!r}."
            )
        resolved = [_resolve_entry(t, root) for t in tokens]
        for token, res in zip(tokens, resolved):
            if res is None:
                missing.append((lineno, token))
        if resolved[0] is not None and resolved[1] is not None:
            pairs.append((resolved[0], resolved[1]))
    return pairs, missing


def _missing_error(list_path: Path, root: Path, missing: list[tuple[int, str]]) -> SeglabError:
    shown = "; ".join(f"line {n}: {p}" for n, p in missing[:5])
    more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
    return SeglabError(
        f"{len(missing)} file(s) listed in {str(list_path)!r} do not exist under {str(root)!r}: {shown}{more}. "
        "Paths are read relative to the CamVid root (absolute tutorial paths by their last two parts); "
        "fix --data.root or the list file."
    )


def camvid_split_pairs(root: Path, split: str) -> tuple[list[tuple[Path, Path]], Path | None]:
    """Pairs of ``split`` from its list file or, without one, from its folders (not validated)."""
    list_path = root / f"{split}.txt"
    if list_path.is_file():
        pairs, missing = parse_list_file(list_path, root)
        if missing:
            raise _missing_error(list_path, root, missing)
        return pairs, list_path
    image_dir, label_dir = root / split, root / f"{split}annot"
    if image_dir.is_dir() and label_dir.is_dir():
        return pair_by_stem(image_dir, label_dir, (".png", ".jpg", ".jpeg"), (".png",)).pairs, None
    found = camvid_splits(root)
    raise SeglabError(
        f"CamVid split {split!r} not found under {str(root)!r}: expected {split}.txt or {split}/ with "
        f"{split}annot/. Splits found: {', '.join(found) or 'none'}.{did_you_mean(split, found)}"
    )


def camvid_samples(root: str | Path | None, split: str) -> list[tuple[Path, Path]]:
    """``(image, label)`` pairs of a CamVid split, every file checked to exist.

    Raises:
        SeglabError: missing root or split, list entries that do not exist, an empty split.
    """
    path = resolve_camvid_root(root)
    pairs, list_path = camvid_split_pairs(path, split)
    if not pairs:
        where = str(list_path) if list_path else f"{path / split} and {path / (split + 'annot')}"
        raise SeglabError(f"CamVid split {split!r} is empty: no image/label pairs in {where!r}.")
    return pairs
