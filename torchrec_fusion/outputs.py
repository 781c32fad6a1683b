"""Writing a result file by rename: a reader (or a crash) never sees half a file, and the file that
was there stays whole until the new one is complete."""

import json
import os
from typing import Any


def write_json(path: str, payload: Any, indent: int = 2) -> str:
    """``payload`` as JSON at ``path``, written to ``path.tmp`` first and renamed over it; returns ``path``.

    Example::

        import json, os, tempfile
        path = write_json(os.path.join(tempfile.mkdtemp(), "metrics.json"), {"auc": 0.8})
        assert json.load(open(path)) == {"auc": 0.8} and not os.path.exists(path + ".tmp")
    """
    with open(path + ".tmp", "w") as f:
        json.dump(payload, f, indent=indent)
    os.replace(path + ".tmp", path)
    return path
