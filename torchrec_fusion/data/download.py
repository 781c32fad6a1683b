"""``torchrec-fusion data download``: fetch, verify and unpack the official MovieLens archives.

The archives come from GroupLens (``https://files.grouplens.org/datasets/movielens/``) with
``urllib`` only. Each is streamed to a new file ``<to>/.<archive>.XXXX.part`` (created exclusively:
an existing file or link there is never written through) while its MD5 and SHA-256 are computed,
checked against :data:`ARCHIVES`, unpacked into a temporary folder inside ``<to>`` and renamed into
place, so ``<to>/ml-100k/u.data`` appears whole or not at all; folders it made are removed on failure.

Checksums: the MD5 values are the ones GroupLens publishes beside each archive
(``ml-100k.zip.md5`` ...), also recorded by torchtext and many other projects. GroupLens
publishes no SHA-256; the SHA-256 values and byte sizes are those of TensorFlow Datasets'
``url_checksums/movielens.txt``, matched by several independent projects.

Example::

    import hashlib, tempfile
    from pathlib import Path
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.bin"
        path.write_bytes(b"abc")
        assert verify_md5(path, hashlib.md5(b"abc").hexdigest())
        assert not verify_md5(path, "0" * 32)
"""

import argparse
import hashlib
import http.client
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable, Dict, NamedTuple, Optional, Tuple, Union

__all__ = ["ARCHIVES", "DEFAULT_BASE_URL", "Archive", "DownloadError", "download", "is_complete",
           "safe_extract", "verify_md5", "data_command"]

DEFAULT_BASE_URL = "https://files.grouplens.org/datasets/movielens/"
HOMEPAGE = "https://grouplens.org/datasets/movielens/"
HINT = f"(offline? download it by hand from {HOMEPAGE} and pass --data-dir)"
_CHUNK = 1 << 20


class Archive(NamedTuple):
    """One official archive: its top folder (also the zip's name), size and checksums.

    Args:
        folder: top folder inside the zip, e.g. ``"ml-100k"``; the archive is ``ml-100k.zip``.
        size: size of the zip in bytes.
        md5: MD5 of the zip, as GroupLens publishes it.
        sha256: SHA-256 of the zip (TensorFlow Datasets' record), or ``None`` to skip it.
        files: files that must be in the unpacked folder for it to count as complete.
    """

    folder: str
    size: int
    md5: str
    sha256: Optional[str]
    files: Tuple[str, ...]

    @property
    def filename(self) -> str:
        return f"{self.folder}.zip"


ARCHIVES: Dict[str, Archive] = {
    "movielens-100k": Archive("ml-100k", 4_924_029, "0e33842e24a9c977be4e0107933c0723",
                              "50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
                              ("u.data", "u.item", "u.user", "u1.base", "u1.test")),
    "movielens-1m": Archive("ml-1m", 5_917_549, "c4d9eecfca2ab87c1945afe126590906",
                            "a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
                            ("ratings.dat", "movies.dat", "users.dat")),
    "movielens-20m": Archive("ml-20m", 198_702_078, "cd245b17a1ae2cc31bb14903e1204af3",
                             "96f243c338a8665f6bcc89c53edf6ee39162a846940de6b7c8c48aeada765ff3",
                             ("ratings.csv", "movies.csv")),
    "movielens-25m": Archive("ml-25m", 261_978_986, "6b51fb2759a8657d3bfcbfc42b592ada",
                             "8b21cfb7eb1706b4ec0aac894368d90acf26ebdfb6aced3ebd4ad5bd1eb9c6aa",
                             ("ratings.csv", "movies.csv")),
}

PathLike = Union[str, "os.PathLike[str]"]


class DownloadError(Exception):
    """A download, checksum or extraction failure, with a message for the user."""


def verify_md5(path: PathLike, expected: str) -> bool:
    """Whether the MD5 of the file at ``path`` is ``expected`` (hex, any case)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest() == expected.lower()


def is_complete(folder: PathLike, archive: Archive) -> bool:
    """Whether ``folder`` holds every file of ``archive.files``."""
    return all((Path(folder) / name).is_file() for name in archive.files)


def safe_extract(zip_path: PathLike, to: PathLike, folder: str, name: Optional[str] = None) -> Path:
    """Unpacks ``zip_path`` and moves its top ``folder`` to ``to/folder`` in one rename.

    The members go to a temporary folder inside ``to`` first; a member with an absolute
    path, a drive or a ``..`` part is refused before anything is written. ``name`` is the
    archive's name in messages (default: the file's).

    Returns:
        ``to/folder``.

    Raises:
        DownloadError: a bad zip, an unsafe member, no ``folder`` in it, or ``to/folder`` exists.
    """
    to, target = Path(to), Path(to) / folder
    name = name or Path(zip_path).name
    try:
        with zipfile.ZipFile(zip_path) as zf:
            for member in zf.namelist():
                parts = PurePosixPath(member.replace("\\", "/")).parts
                if member.startswith(("/", "\\")) or ".." in parts or (parts and ":" in parts[0]):
                    raise DownloadError(f"refusing to unpack {name}: unsafe member {member!r}")
            tmp = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".tmp", dir=to))
            try:
                zf.extractall(tmp)
                if not (tmp / folder).is_dir():
                    raise DownloadError(f"{name} has no top folder {folder}/")
                if target.exists():
                    raise DownloadError(f"{target} appeared while unpacking; not replacing it")
                os.rename(tmp / folder, target)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
    except zipfile.BadZipFile as e:
        raise DownloadError(f"{name} is not a valid zip archive: {e}") from None
    return target


def _reason(e: BaseException, timeout: float) -> str:
    """A short reason for a network failure ``e``."""
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        e = e.reason if isinstance(e.reason, BaseException) else Exception(e.reason)
    if isinstance(e, TimeoutError):
        return f"timed out after {timeout:g} s"
    return str(e) or type(e).__name__


def _fetch(url: str, out: BinaryIO, timeout: float, progress: Optional[Callable[[int, int], None]]) -> Tuple[str, str]:
    """Streams ``url`` to ``out``; returns its (md5, sha256). Network errors raise DownloadError."""
    def failed(e: BaseException) -> DownloadError:
        return DownloadError(f"could not download {url}: {_reason(e, timeout)} {HINT}")

    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except (OSError, http.client.HTTPException, ValueError) as e:  # URLError and HTTPError are OSErrors
        if isinstance(e, urllib.error.HTTPError):
            e.close()
        raise failed(e) from None
    md5, sha256, got = hashlib.md5(), hashlib.sha256(), 0
    total = int(response.headers.get("Content-Length") or 0)
    with response:
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as e:
                raise failed(e) from None
            if not chunk:
                break
            out.write(chunk)
            md5.update(chunk)
            sha256.update(chunk)
            got += len(chunk)
            if progress:
                progress(got, total)
    if total and got != total:
        raise failed(Exception(f"the connection closed after {got} of {total} bytes"))
    return md5.hexdigest(), sha256.hexdigest()


def _progress_line(name: str) -> Callable[[int, int], None]:
    def show(got: int, total: int) -> None:
        of = f" / {total / 1e6:.1f} MB ({100 * got / total:.0f}%)" if total else " MB"
        print(f"\r{name}: {got / 1e6:.1f}{of}", end="", file=sys.stderr, flush=True)

    return show


def download(name: str, to: PathLike, base_url: str = DEFAULT_BASE_URL, timeout: float = 60.0,
             md5: Optional[str] = None, keep_archive: bool = False, force: bool = False,
             progress: Optional[Callable[[int, int], None]] = None) -> Path:
    """Downloads, verifies and unpacks the MovieLens archive ``name`` into ``to``.

    Args:
        name: a key of :data:`ARCHIVES`, e.g. ``"movielens-100k"``.
        to: parent folder; the data lands in ``to/ml-100k`` (created if missing).
        base_url: where the archives are (GroupLens, or a mirror).
        timeout: seconds to wait on the connection and on each read.
        md5: expected MD5 instead of the official one (a mirror's repacked archive);
            the SHA-256 check is then skipped.
        keep_archive: keep ``to/ml-100k.zip`` after unpacking.
        force: download and replace ``to/ml-100k`` even when it is already complete.
        progress: called with (bytes so far, total bytes or 0) after each chunk.

    Returns:
        The unpacked folder. When it is already complete (and not ``force``), nothing is fetched.

    Raises:
        DownloadError: network failure, checksum mismatch, unsafe or broken archive, or an
            incomplete existing folder without ``force``. No partial file is left behind.
    """
    if name not in ARCHIVES:
        raise DownloadError(f"unknown dataset {name!r}; choose one of {sorted(ARCHIVES)}")
    archive = ARCHIVES[name]
    to = Path(to)
    target = to / archive.folder
    if target.exists() and not force:
        if is_complete(target, archive):
            return target
        missing = [f for f in archive.files if not (target / f).is_file()]
        raise DownloadError(f"{target} exists but lacks {', '.join(missing)}; pass --force to replace it")
    created = [p for p in (to, *to.parents) if not p.exists()]  # the folders made here, deepest first
    to.mkdir(parents=True, exist_ok=True)
    url = base_url.rstrip("/") + "/" + archive.filename
    fd, name_part = tempfile.mkstemp(prefix=f".{archive.filename}.", suffix=".part", dir=to)  # O_EXCL: no link followed
    part = Path(name_part)
    try:
        with os.fdopen(fd, "wb") as out:
            got_md5, got_sha256 = _fetch(url, out, timeout, progress)
        checks = [("md5", md5 or archive.md5, got_md5)]
        if md5 is None and archive.sha256:
            checks.append(("sha256", archive.sha256, got_sha256))
        for algo, expected, got in checks:
            if got != expected.lower():
                raise DownloadError(f"checksum mismatch for {archive.filename}: expected {algo} {expected}, "
                                    f"got {got}; the download was corrupted or the file changed upstream")
        _replace_folder(part, to, archive.folder, archive.filename)
        if keep_archive:
            os.replace(part, to / archive.filename)
    finally:
        part.unlink(missing_ok=True)
        for made in created:
            if made.is_dir() and not any(made.iterdir()):
                made.rmdir()
    return target


def _replace_folder(zip_path: Path, to: Path, folder: str, name: str) -> None:
    """Unpacks ``zip_path`` into ``to/folder``; an existing folder is moved aside first and
    dropped once the new one is in place, or put back when unpacking fails."""
    target, old = to / folder, None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder}.old.", dir=to))
        os.rename(target, old / folder)
    try:
        safe_extract(zip_path, to, folder, name)
    except BaseException:
        if old is not None:
            os.rename(old / folder, target)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


def data_command(args: argparse.Namespace) -> int:
    """Runs ``data download`` or ``data list``; returns the exit code (2 on any failure)."""
    if args.data_command == "list":
        for name, a in ARCHIVES.items():
            print(f"{name:16s} {a.filename:12s} {a.size / 1e6:7.1f} MB  md5 {a.md5}  sha256 {a.sha256 or '-'}")
        return 0
    archive = ARCHIVES[args.dataset]
    target = Path(args.to) / archive.folder
    if not args.force and target.exists() and is_complete(target, archive):
        print(f"{target} is already there (pass --force to download it again)")
        return 0
    progress = _progress_line(archive.filename) if sys.stderr.isatty() else None
    try:
        folder = download(args.dataset, args.to, args.base_url, args.timeout, args.md5, args.keep_archive,
                          args.force, progress)
    except (DownloadError, OSError) as e:
        if progress:
            print(file=sys.stderr)
        print(f"torchrec-fusion: error: {e}", file=sys.stderr)
        return 2
    if progress:
        print(file=sys.stderr)
    print(f"{archive.filename}: checksum ok, unpacked to {folder}")
    print(f"train on it: torchrec-fusion train --dataset movielens --data-dir {folder}")
    return 0
