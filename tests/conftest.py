import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
ML100K = SHARED_DATA / "ml-100k"

needs_ml100k = pytest.mark.skipif(not (ML100K / "u.data").exists(), reason="../shared/data/ml-100k is missing")

os.environ.setdefault("OMP_NUM_THREADS", "1")
