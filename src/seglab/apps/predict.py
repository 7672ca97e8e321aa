"""``seglab predict``: images, folders or globs to index masks, colour masks and overlays with a legend."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np

from seglab.core.errors import SeglabError
from seglab.inference.predictor import Segmenter
from seglab.apps.visualize import add_legend, colorize, heatmap, overlay, save_png

__all__ = ["expand_inputs", "predict_to_files"]

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


def expand_inputs(inputs: list[str]) -> list[Path]:
    """Files, folders (their images, sorted) and glob patterns, in the order given."""
    paths: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise SeglabError(f"Folder {item!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))}).")
            paths += found
        elif p.is_file():
            paths.append(p)
        elif any(ch in item for ch in "*?["):
            found = sorted(Path(f) for f in glob.glob(item, recursive=True) if Path(f).suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise SeglabError(f"The pattern {item!r} matches no images.")
            paths += found
        else:
            raise SeglabError(f"Input {item!r} does not exist: give an image file, a folder of images or a glob pattern.")
    return paths


def write_prediction(segmenter: Segmenter, image: np.ndarray, labels: np.ndarray, out_dir: Path, stem: str,
                     alpha: float = 0.5) -> list[Path]:
    """Write ``<stem>_labels.png`` (class ids), ``<stem>_color.png`` and ``<stem>_overlay.png``."""
    dtype = np.uint8 if segmenter.num_classes <= 256 else np.uint16
    present = [int(c) for c in np.unique(labels)]
    files = [out_dir / f"{stem}_labels.png", out_dir / f"{stem}_color.png", out_dir / f"{stem}_overlay.png"]
    save_png(labels.astype(dtype), files[0])
    save_png(colorize(labels, segmenter.palette), files[1])
    blended = overlay(image, labels, segmenter.palette, alpha)
    save_png(add_legend(blended, present, segmenter.class_names, segmenter.palette), files[2])
    return files


def write_uncertainty(maps: dict[str, np.ndarray], num_classes: int, out_dir: Path, stem: str) -> list[Path]:
    """Heat maps ``<stem>_entropy.png``, ``<stem>_mutual_info.png`` and ``<stem>_variance.png``.

    Entropy and mutual information are scaled to their maximum ``log C``, so colours compare
    across images; variance is scaled to its own maximum (its range depends on the model).
    """
    log_c = float(np.log(max(2, num_classes)))
    files = []
    for key, vmax in (("entropy", log_c), ("mutual_info", log_c), ("variance", None)):
        files.append(out_dir / f"{stem}_{key}.png")
        save_png(heatmap(maps[key], vmax), files[-1])
    return files


def predict_to_files(segmenter: Segmenter, inputs: list[str], out_dir: str | Path, alpha: float = 0.5,
                     mc_samples: int = 0) -> list[Path]:
    """Predict every input and write its PNGs into ``out_dir``; returns the files written.

    With ``mc_samples`` (Bayesian models) the labels come from the Monte-Carlo mean and three
    uncertainty heat maps are written as well.
    """
    out = Path(out_dir)
    written: list[Path] = []
    failed: list[tuple[Path, str]] = []
    paths = expand_inputs(inputs)
    for path in paths:
        try:  # one bad image must not leave the good ones after it unpredicted
            image = segmenter.load(path)
            if mc_samples:
                maps = segmenter.predict_mc(image, mc_samples)
                written += write_prediction(segmenter, image, maps["labels"], out, path.stem, alpha)
                written += write_uncertainty(maps, segmenter.num_classes, out, path.stem)
            else:
                written += write_prediction(segmenter, image, segmenter.predict(image), out, path.stem, alpha)
        except SeglabError as e:
            failed.append((path, str(e)))
    if failed:
        listed = "; ".join(f"{p}: {why}" for p, why in failed[:10]) + ("; ..." if len(failed) > 10 else "")
        raise SeglabError(f"{len(failed)} of {len(paths)} images could not be predicted (the other "
                          f"{len(paths) - len(failed)} were written to {out}, {len(written)} files): {listed}")
    return written
