"""Build data sets from a :class:`~seglab.core.config.DataConfig`: ``camvid``, ``folder``, ``synthetic``, ``isbi2012``
or ``sunrgbd``.

Example:
    >>> info = dataset_info(cfg.data)
    >>> train_set = build_dataset(cfg.data, cfg.data.train_split, train=True)
    >>> image, mask = train_set[0]
"""

from __future__ import annotations

from pathlib import Path

from seglab.core.config import DataConfig
from seglab.core.errors import SeglabError, did_you_mean
from seglab.data.base import DatasetInfo, SegmentationDataset
from seglab.data.camvid import CAMVID_CLASSES, CAMVID_PALETTE, CAMVID_VOID, camvid_samples, resolve_camvid_root
from seglab.data.folder import folder_samples
from seglab.data.instance import INSTANCE_DATASETS, build_instance_dataset, instance_dataset_info
from seglab.data.isbi import ISBI_CLASSES, ISBI_PALETTE, build_isbi
from seglab.data.sunrgbd import SUNRGBD_CLASSES, SUNRGBD_PALETTE, build_sunrgbd
from seglab.data.synthetic import SYNTHETIC_CLASSES, SYNTHETIC_PALETTE, SyntheticRoadScenes
from seglab.data.transforms import build_transforms

__all__ = ["DATASETS", "dataset_info", "build_dataset", "default_palette"]

DATASETS = ("camvid", "folder", "synthetic", "isbi2012", "sunrgbd", *INSTANCE_DATASETS)
_DEFAULT_IGNORE = {"camvid": CAMVID_VOID, "folder": 255, "synthetic": 255, "isbi2012": 255, "sunrgbd": 255}


def default_palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct colours: the bits of the class id spread over R, G and B (as PASCAL VOC does)."""
    colours = []
    for c in range(n):
        r = g = b = 0
        cid = c
        for shift in range(7, -1, -1):
            r |= ((cid >> 0) & 1) << shift
            g |= ((cid >> 1) & 1) << shift
            b |= ((cid >> 2) & 1) << shift
            cid >>= 3
        colours.append((r, g, b))
    return colours


def _kind(cfg: DataConfig) -> str:
    kind = str(cfg.dataset).lower()
    if kind not in DATASETS:
        raise SeglabError(
            f"Unknown data set {cfg.dataset!r} (--data.dataset).{did_you_mean(kind, DATASETS)} "
            f"Choose one of: {', '.join(DATASETS)}."
        )
    return kind


def _check_palette(palette: list[list[int]], allowed: tuple[int, ...], what: str) -> list[tuple[int, int, int]]:
    if len(palette) not in allowed:
        raise SeglabError(
            f"--data.palette has {len(palette)} colours but {what} needs {' or '.join(map(str, allowed))} "
            "(one [r, g, b] per class, in class order)."
        )
    for colour in palette:
        if len(colour) != 3 or not all(0 <= int(v) <= 255 for v in colour):
            raise SeglabError(f"--data.palette entry {colour} is not an [r, g, b] triple of 0..255 values.")
    return [(int(r), int(g), int(b)) for r, g, b in palette]


def _names(cfg: DataConfig, n: int, default: list[str]) -> list[str]:
    if cfg.class_names is None:
        return list(default)
    if len(cfg.class_names) != n:
        raise SeglabError(
            f"--data.class_names has {len(cfg.class_names)} names but the data set has {n} classes; "
            "give one name per class."
        )
    return [str(c) for c in cfg.class_names]


def _fixed_classes(cfg: DataConfig, kind: str, names: list[str]) -> int:
    if cfg.num_classes is not None and cfg.num_classes != len(names):
        raise SeglabError(
            f"The {kind} data set has {len(names)} classes, but --data.num_classes is {cfg.num_classes}. "
            "Remove --data.num_classes (it is only needed for folder data sets)."
        )
    return len(names)


def dataset_info(cfg: DataConfig) -> DatasetInfo:
    """Number of classes, names, palette and ignore index of the configured data set (reads no files).

    Raises:
        SeglabError: unknown data set, folder data set without ``num_classes``, inconsistent names/palette.
    """
    kind = _kind(cfg)
    if kind in INSTANCE_DATASETS:  # task: instance (classes counted with the background)
        return instance_dataset_info(cfg)
    ignore = cfg.ignore_index if cfg.ignore_index is not None else _DEFAULT_IGNORE[kind]
    if kind == "isbi2012":
        n = _fixed_classes(cfg, kind, ISBI_CLASSES)
        palette = _check_palette(cfg.palette, (n,), kind) if cfg.palette is not None else list(ISBI_PALETTE)
        return DatasetInfo(n, _names(cfg, n, ISBI_CLASSES), palette, int(ignore))
    if kind == "sunrgbd":
        n = _fixed_classes(cfg, kind, SUNRGBD_CLASSES)
        palette = _check_palette(cfg.palette, (n,), kind) if cfg.palette is not None else list(SUNRGBD_PALETTE)
        return DatasetInfo(n, _names(cfg, n, SUNRGBD_CLASSES), palette, int(ignore))
    if kind in ("camvid", "synthetic"):
        camvid = kind == "camvid"
        names = CAMVID_CLASSES if camvid else SYNTHETIC_CLASSES
        colours = CAMVID_PALETTE if camvid else SYNTHETIC_PALETTE
        n = _fixed_classes(cfg, kind, names)
        palette = _check_palette(cfg.palette, (n,), kind) if cfg.palette is not None else list(colours)
        return DatasetInfo(n, _names(cfg, n, names), palette, int(ignore))
    if cfg.num_classes is None or cfg.num_classes < 1:
        raise SeglabError(
            "Folder data sets need the number of classes: set --data.num_classes N (mask values 0..N-1; "
            f"{ignore} is ignored). `seglab data check {cfg.root or 'ROOT'}` shows the values your masks hold."
        )
    n = int(cfg.num_classes)
    if cfg.palette is not None:
        palette = _check_palette(cfg.palette, (n, n + 1) if cfg.rgb_masks else (n,), f"--data.num_classes {n}")[:n]
    elif cfg.rgb_masks:
        raise SeglabError(
            "--data.rgb_masks true needs --data.palette [[r,g,b], ...]: one colour per class in class order "
            "(plus, optionally, a final void colour that maps to the ignore index)."
        )
    else:
        palette = default_palette(n)
    return DatasetInfo(n, _names(cfg, n, [f"class_{i}" for i in range(n)]), palette, int(ignore))


def _synthetic(cfg: DataConfig, info: DatasetInfo, split: str, train: bool) -> SyntheticRoadScenes:
    streams = {cfg.train_split: (0, cfg.synthetic_train), cfg.val_split: (1, cfg.synthetic_val)}
    streams.setdefault("test", (2, cfg.synthetic_val))
    if split not in streams:
        raise SeglabError(
            f"The synthetic data set has splits {', '.join(streams)}, not {split!r}.{did_you_mean(split, streams)}"
        )
    if len(cfg.synthetic_size) != 2 or min(cfg.synthetic_size) < 16:
        raise SeglabError(f"--data.synthetic_size must be [height, width], each >= 16, got {cfg.synthetic_size}.")
    stream, count = streams[split]
    if cfg.limit is not None:
        count = min(count, cfg.limit)
    return SyntheticRoadScenes(
        count,
        info,
        seed=cfg.synthetic_seed,
        stream=stream,
        size=cfg.synthetic_size,
        transform=build_transforms(cfg, train, info.ignore_index),
        image_size=cfg.image_size,
        split=split,
    )


def _folder_root(cfg: DataConfig) -> Path:
    if not cfg.root:
        raise SeglabError(
            "Folder data sets need their location: set --data.root to the directory holding images/ and masks/ "
            "(or <split>/images/ and <split>/masks/)."
        )
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise SeglabError(
            f"Data root {str(root)!r} does not exist. Point --data.root at the directory holding images/ and masks/."
        )
    return root


def parse_split(split: str) -> tuple[str, list[str]]:
    """``"train:0016E5,0006R0"`` -> ``("train", ["0016E5", "0006R0"])``; a plain name has no prefixes.

    The prefixes select frames by the start of their file name: CamVid's sequence codes, so a
    recipe can validate on a sequence it does not train on.
    """
    base, sep, rest = split.partition(":")
    prefixes = [p.strip() for p in rest.split(",") if p.strip()] if sep else []
    if sep and not prefixes:
        raise SeglabError(f"Split {split!r} names no file-name prefixes after ':'; write e.g. 'train:0016E5,0006R0'.")
    return base, prefixes


def select_by_prefix(samples: list, prefixes: list[str], split: str) -> list:
    """The samples whose image file name starts with one of ``prefixes``; none is an error listing those found."""
    kept = [s for s in samples if any(Path(s[0]).name.startswith(p) for p in prefixes)]
    if not kept:
        found = sorted({Path(s[0]).name.split("_")[0] for s in samples})
        raise SeglabError(
            f"Split {split!r} selects no frames: no file name starts with {', '.join(prefixes)}. "
            f"Name prefixes found: {', '.join(found[:12])}{', ...' if len(found) > 12 else ''}."
        )
    return kept


def build_dataset(cfg: DataConfig, split: str | None = None, train: bool = False) -> SegmentationDataset:
    """The data set of ``split`` with training augmentation (``train=True``) or evaluation transforms.

    Args:
        cfg: Data config.
        split: Split name on disk (``train``, ``val``, ``test``, ...); None means
            ``cfg.train_split`` when ``train`` else ``cfg.val_split``.
        train: Random augmentation (else resize/normalise only).

    Returns:
        A :class:`SegmentationDataset` whose items are ``(float32 3xHxW, int64 HxW)``.

    Raises:
        SeglabError: any configuration or data problem, naming the argument or file to fix.
    """
    info = dataset_info(cfg)
    kind = _kind(cfg)
    split = split or (cfg.train_split if train else cfg.val_split)
    if cfg.image_size is not None and (len(cfg.image_size) != 2 or min(cfg.image_size) < 1):
        raise SeglabError(f"--data.image_size must be [height, width], got {cfg.image_size}.")
    if cfg.limit is not None and cfg.limit < 1:
        raise SeglabError(f"--data.limit must be a positive number of samples, got {cfg.limit}.")
    if kind in INSTANCE_DATASETS:
        return build_instance_dataset(cfg, split, train)
    if cfg.weight_maps and kind != "isbi2012":
        raise SeglabError(f"--data.weight_maps is supported by the isbi2012 data set only, not {kind!r}.")
    if kind == "isbi2012":
        return build_isbi(cfg, info, split, train)
    if kind == "synthetic":
        return _synthetic(cfg, info, split, train)
    if kind == "sunrgbd":
        return build_sunrgbd(cfg, info, split, train)
    base_split, prefixes = parse_split(split)
    if kind == "camvid":
        root = resolve_camvid_root(cfg.root)
        samples, void = camvid_samples(root, base_split), CAMVID_VOID
    else:
        root = _folder_root(cfg)
        samples, void = folder_samples(root, base_split, parse_split(cfg.train_split)[0]), None
    if prefixes:
        samples = select_by_prefix(samples, prefixes, split)
    if cfg.limit is not None:
        samples = samples[: cfg.limit]
    return SegmentationDataset(
        samples,
        info,
        transform=build_transforms(cfg, train, info.ignore_index),
        image_size=cfg.image_size,
        kind=kind,
        split=split,
        root=root,
        void_value=void,
        rgb_palette=cfg.palette if kind == "folder" and cfg.rgb_masks else None,
    )
