"""``torchrec-fusion data download`` against a local HTTP server serving small fake archives."""

import functools
import hashlib
import http.server
import socket
import threading
import zipfile
from pathlib import Path
from typing import Dict, Iterator, List, Tuple, Union

import pytest
from conftest import ML100K, needs_ml100k

from torchrec_fusion.cli import main
from torchrec_fusion.data import download as dl

U_DATA = "196\t242\t3\t881250949\n186\t302\t3\t891717742\n22\t377\t1\t878887116\n"
FAKE_FILES = {"ml-100k/README": "fake ml-100k\n", "ml-100k/u.data": U_DATA, "ml-100k/u.item": "1|Toy Story (1995)\n",
              "ml-100k/u.user": "1|24|M|technician|85711\n", "ml-100k/u1.base": U_DATA, "ml-100k/u1.test": U_DATA}


def write_zip(path: Path, members: Dict[str, Union[str, bytes]]) -> str:
    """Writes a zip of ``members`` (name -> content) and returns its md5."""
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in members.items():
            zf.writestr(name, text)
    return hashlib.md5(path.read_bytes()).hexdigest()


class Server:
    def __init__(self, root: Path) -> None:
        self.root, self.requests = root, []  # type: Path, List[str]
        requests = self.requests

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                super().do_GET()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/datasets/movielens/"
        (root / "datasets" / "movielens").mkdir(parents=True)
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def serve(self, members: Dict[str, Union[str, bytes]]) -> str:
        """Serves ``ml-100k.zip`` holding ``members``; returns its md5."""
        return write_zip(self.root / "datasets" / "movielens" / "ml-100k.zip", members)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    s = Server(tmp_path / "www")
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def fake_md5(server: Server, monkeypatch: pytest.MonkeyPatch) -> str:
    """Serves the fake ml-100k archive and makes its md5 the expected one (no sha256)."""
    md5 = server.serve(FAKE_FILES)
    monkeypatch.setitem(dl.ARCHIVES, "movielens-100k", dl.ARCHIVES["movielens-100k"]._replace(md5=md5, sha256=None))
    return md5


def run(*args: str) -> int:
    return main(["data", "download", "movielens-100k", *args])


def listing(d: Path) -> List[str]:
    return sorted(str(p.relative_to(d)) for p in d.rglob("*"))


def test_download_verifies_and_unpacks(server: Server, fake_md5: str, tmp_path: Path, capsys) -> None:
    d = tmp_path / "data"
    assert run("--to", str(d), "--base-url", server.url) == 0
    assert (d / "ml-100k" / "u.data").read_text() == U_DATA
    assert listing(d) == sorted(["ml-100k", *FAKE_FILES])  # no .part, no temp folder, no archive
    assert server.requests == ["/datasets/movielens/ml-100k.zip"]
    out = capsys.readouterr().out
    assert "checksum ok" in out and f"--data-dir {d / 'ml-100k'}" in out


def test_keep_archive_and_md5_option(server: Server, tmp_path: Path) -> None:
    md5 = server.serve(FAKE_FILES)  # the official checksums stay: --md5 overrides them, as for a mirror
    d = tmp_path / "data"
    assert run("--to", str(d), "--base-url", server.url, "--md5", md5.upper(), "--keep-archive") == 0
    assert dl.verify_md5(d / "ml-100k.zip", md5) and (d / "ml-100k" / "README").is_file()


def test_already_present_downloads_nothing(server: Server, fake_md5: str, tmp_path: Path, capsys) -> None:
    d = tmp_path / "data"
    assert run("--to", str(d), "--base-url", server.url) == 0
    capsys.readouterr()
    assert run("--to", str(d), "--base-url", server.url) == 0
    assert server.requests == ["/datasets/movielens/ml-100k.zip"]  # only the first run asked
    assert "already there" in capsys.readouterr().out
    (d / "ml-100k" / "u.data").write_text("edited\n")
    assert run("--to", str(d), "--base-url", server.url, "--force") == 0
    assert (d / "ml-100k" / "u.data").read_text() == U_DATA and len(server.requests) == 2
    assert listing(d) == sorted(["ml-100k", *FAKE_FILES])


def test_incomplete_folder_needs_force(server: Server, fake_md5: str, tmp_path: Path, capsys) -> None:
    d = tmp_path / "data"
    (d / "ml-100k").mkdir(parents=True)
    (d / "ml-100k" / "u.data").write_text(U_DATA)
    assert run("--to", str(d), "--base-url", server.url) == 2
    assert "lacks u.item" in capsys.readouterr().err and server.requests == []


def test_bad_checksum_leaves_nothing(server: Server, tmp_path: Path, capsys) -> None:
    got = server.serve(FAKE_FILES)
    d = tmp_path / "data"
    d.mkdir()
    (d / "mine.txt").write_text("kept")
    assert run("--to", str(d), "--base-url", server.url) == 2
    err = capsys.readouterr().err
    expected = dl.ARCHIVES["movielens-100k"].md5
    assert (f"torchrec-fusion: error: checksum mismatch for ml-100k.zip: expected md5 {expected}, got {got}; "
            "the download was corrupted or the file changed upstream") in err
    assert "Traceback" not in err and listing(d) == ["mine.txt"]


def test_sha256_is_checked_too(server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    md5 = server.serve(FAKE_FILES)
    monkeypatch.setitem(dl.ARCHIVES, "movielens-100k", dl.ARCHIVES["movielens-100k"]._replace(md5=md5))
    assert run("--to", str(tmp_path / "data"), "--base-url", server.url) == 2
    assert "expected sha256 50d2a982" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # the folder it created is gone again


def _unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["refused", "404", "timeout"])
def test_network_failures_exit_2_cleanly(case: str, server: Server, tmp_path: Path, capsys) -> None:
    listener = None
    if case == "refused":
        url = f"http://127.0.0.1:{_unused_port()}/"
    elif case == "404":
        url = server.url  # nothing served
    else:  # accepts the connection (backlog) but never answers
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/"
    d = tmp_path / "data"
    d.mkdir()
    try:
        assert run("--to", str(d), "--base-url", url, "--timeout", "0.5") == 2
    finally:
        if listener:
            listener.close()
    err = capsys.readouterr().err
    reason = {"refused": "refused", "404": "HTTP 404", "timeout": "timed out after 0.5 s"}[case]
    assert err.startswith(f"torchrec-fusion: error: could not download {url.rstrip('/')}/ml-100k.zip: ")
    assert reason in err and dl.HINT in err and "Traceback" not in err
    assert listing(d) == []


@pytest.mark.parametrize("evil", ["../evil", "ml-100k/../../evil", "/tmp/evil"])
def test_unsafe_member_is_refused(evil: str, server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                  capsys) -> None:
    md5 = server.serve({**FAKE_FILES, evil: "pwned"})
    d = tmp_path / "sub" / "data"
    d.mkdir(parents=True)
    assert run("--to", str(d), "--base-url", server.url, "--md5", md5) == 2
    assert f"unsafe member {evil!r}" in capsys.readouterr().err
    assert listing(d) == [] and listing(tmp_path / "sub") == ["data"] and not Path("/tmp/evil").exists()


def test_archive_without_its_top_folder_is_refused(server: Server, tmp_path: Path, capsys) -> None:
    md5 = server.serve({"u.data": U_DATA})
    d = tmp_path / "data"
    assert run("--to", str(d), "--base-url", server.url, "--md5", md5) == 2
    assert "has no top folder ml-100k/" in capsys.readouterr().err and not d.exists()


def test_list(capsys) -> None:
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name, a in dl.ARCHIVES.items():
        assert name in out and a.md5 in out and a.sha256 in out


def test_checksum_table() -> None:
    """The official values (GroupLens' .md5 files; sha256 and sizes as TensorFlow Datasets records them)."""
    md5: Dict[str, Tuple[str, int]] = {
        "ml-100k.zip": ("0e33842e24a9c977be4e0107933c0723", 4_924_029),
        "ml-1m.zip": ("c4d9eecfca2ab87c1945afe126590906", 5_917_549),
        "ml-20m.zip": ("cd245b17a1ae2cc31bb14903e1204af3", 198_702_078),
        "ml-25m.zip": ("6b51fb2759a8657d3bfcbfc42b592ada", 261_978_986),
    }
    assert {a.filename: (a.md5, a.size) for a in dl.ARCHIVES.values()} == md5
    assert all(a.sha256 and len(a.sha256) == 64 for a in dl.ARCHIVES.values())


@needs_ml100k
def test_downloaded_folder_loads(server: Server, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """An archive of the real ml-100k files, downloaded, reads with our own MovieLens reader."""
    names = ["README", "u.data", "u.genre", "u.info", "u.item", "u.occupation", "u.user", "u1.base", "u1.test"]
    md5 = server.serve({f"ml-100k/{n}": (ML100K / n).read_bytes() for n in names})
    assert run("--to", str(tmp_path), "--base-url", server.url, "--md5", md5) == 0
    assert (tmp_path / "ml-100k" / "u.item").read_bytes() == (ML100K / "u.item").read_bytes()
    from torchrec_fusion.data.movielens import load_movielens

    ml = load_movielens(tmp_path / "ml-100k")
    assert (ml.num_users, ml.num_items, len(ml.train), len(ml.test)) == (943, 1682, 80_000, 20_000)


def test_a_symlinked_part_file_is_never_written_through(server: Server, fake_md5: str, tmp_path: Path) -> None:
    d, victim = tmp_path / "data", tmp_path / "victim.txt"
    d.mkdir()
    victim.write_text("precious")
    (d / ".ml-100k.zip.part").symlink_to(victim)  # planted, or left by another tool
    assert run("--to", str(d), "--base-url", server.url) == 0
    assert victim.read_text() == "precious" and (d / "ml-100k" / "u.data").read_text() == U_DATA
    assert not [p for p in d.iterdir() if p.name.endswith(".part") and not p.is_symlink()]  # ours is gone


@pytest.mark.parametrize("members", [{**FAKE_FILES, "../evil": "x"}, {"u.data": U_DATA}])
def test_a_refused_zip_leaves_no_folder_it_made(members: Dict[str, Union[str, bytes]], server: Server,
                                               tmp_path: Path, capsys) -> None:
    md5 = server.serve(members)
    (tmp_path / "keep").mkdir()
    d = tmp_path / "keep" / "a" / "b" / "data"  # three folders made by the download
    assert run("--to", str(d), "--base-url", server.url, "--md5", md5) == 2
    err = capsys.readouterr().err
    assert "ml-100k.zip" in err and ".part" not in err, err
    assert listing(tmp_path / "keep") == []  # made folders removed, the existing one kept
