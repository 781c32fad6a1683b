"""The flags of a command, cached as JSON so that ``--help`` and argument errors answer without
importing torch.

Building ``train``'s flags walks every registry (architectures, balancers, fusions, datasets), which
imports torch and TorchRec: about 5 s. The list of flags is plain data, so it is written once to
``$XDG_CACHE_HOME/torchrec_fusion/`` (default ``~/.cache``) under a key made of the package's version
and the size and modification time of every source file of the package: any edit builds it afresh.
The cache is used only while torch is not yet imported: a plugin that registers a member imports
the registries (hence torch) first, and then the flags are built from them as they stand. The file
is JSON (read with ``json``, nothing in it runs), written by rename; an unreadable, unwritable or
damaged cache only costs the 5 s.
"""

import hashlib
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

Spec = Dict[str, Any]


def _key() -> str:
    import torchrec_fusion

    root = Path(torchrec_fusion.__file__).parent
    h = hashlib.sha256(torchrec_fusion.__version__.encode())
    for path in sorted(root.rglob("*.py")):
        st = path.stat()
        h.update(f"{path.relative_to(root)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torchrec_fusion"


def _read(path: Path) -> List[Spec]:
    try:
        with open(path) as f:
            specs = json.load(f)
    except (OSError, ValueError):
        return []
    ok = isinstance(specs, list) and all(isinstance(s, dict) and isinstance(s.get("flag"), str) for s in specs)
    return specs if ok else []


def _write(path: Path, specs: List[Spec]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name, dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(specs, f)
        os.replace(tmp, path)
        for old in path.parent.glob(path.name.rsplit("-", 1)[0] + "-*.json"):  # of earlier sources
            if old != path:
                old.unlink(missing_ok=True)
    except OSError:  # a read-only home: the flags are built each time
        pass


def cached(name: str, build: Callable[[], List[Spec]], use_cache: Optional[bool] = None) -> List[Spec]:
    """``build()``, or the copy cached for this exact version of the package's sources (``use_cache``,
    default: when torch is not imported yet).

    Example::

        import os, tempfile
        os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp()
        calls = []
        build = lambda: calls.append(1) or [{"flag": "--x", "type": "int", "help": ""}]
        assert cached("example", build, True) == cached("example", build, True) and calls == [1]
        del os.environ["XDG_CACHE_HOME"]
    """
    if not (("torch" not in sys.modules) if use_cache is None else use_cache):
        return build()
    path = cache_dir() / f"{name}-flags-{_key()}.json"
    specs = _read(path)
    if not specs:
        specs = build()
        _write(path, specs)
    return specs
