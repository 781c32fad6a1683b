"""Fuzz tests of the table reader and the config loader: seeded random files (random bytes, truncated and
damaged files, random types per column, random keys and values). Every case either loads or raises a
``ValueError`` naming the file (and the column or key at fault); anything else fails with the case printed."""

import functools
import gzip
import math
import random
import string
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from torchrec_fusion.cli import main
from torchrec_fusion.data.tabular import load_tabular
from torchrec_fusion.training.config import TrainConfig, flat_option_names, read_config_file

COLUMNS = ["user", "item", "tags", "city", "hour", "click", "rating"]


def _spec(path: Path, **kw: Any) -> Dict[str, Any]:
    return {"train": str(path), "sparse": {"user": {}, "item": {}, "tags": {"multi_valued": True},
                                           "city": {"num_embeddings": 64, "out_of_range": "hash"}},
            "dense": ["hour"], "tasks": [{"name": "click"}, {"name": "rating", "kind": "regression"}],
            "user_column": "user", "item_column": "item", "test_fraction": 0.3, **kw}


def _good_rows(rng: random.Random, n: int) -> Dict[str, List[Any]]:
    return {"user": [rng.randrange(9) for _ in range(n)], "item": [rng.randrange(9) for _ in range(n)],
            "tags": [[rng.randrange(5) for _ in range(rng.randrange(3))] for _ in range(n)],
            "city": [rng.choice(["paris", "rome", "oslo"]) for _ in range(n)],
            "hour": [rng.random() * 24 for _ in range(n)], "click": [rng.randrange(2) for _ in range(n)],
            "rating": [float(rng.randrange(1, 6)) for _ in range(n)]}


# a column of random type: each draws n values (None sprinkled in by the caller)
KINDS: Dict[str, Callable[[random.Random], Any]] = {
    "small_int": lambda r: r.randrange(20),
    "negative_int": lambda r: -r.randrange(1, 5),
    "huge_int": lambda r: r.choice([2**40, 2**62, 2**63 - 1]),
    "float": lambda r: r.random() * 10 - 2,
    "integral_float": lambda r: float(r.randrange(3)),
    "odd_float": lambda r: r.choice([math.nan, math.inf, -math.inf, 1e308]),
    "bool": lambda r: r.random() < 0.5,
    "numeric_str": lambda r: str(r.randrange(10)),
    "garbage_str": lambda r: "".join(r.choice(string.printable) for _ in range(r.randrange(6))),
    "unicode_str": lambda r: r.choice(["é", "日本", "\u0000", "a|b", "3|x", "1|2|3", ""]),
    "int_list": lambda r: [r.randrange(9) for _ in range(r.randrange(3))],
    "str_list": lambda r: [r.choice("abc") for _ in range(r.randrange(3))],
}


def _column(rng: random.Random, kind: str, n: int) -> List[Any]:
    p_null = rng.choice([0.0, 0.0, 0.2, 1.0])
    return [None if rng.random() < p_null else KINDS[kind](rng) for _ in range(n)]


def _arrow(values: List[Any], rng: random.Random) -> pa.Array:
    try:
        a = pa.array(values)
    except (pa.ArrowException, OverflowError):
        a = pa.array([None if v is None else str(v) for v in values])
    return a.dictionary_encode() if pa.types.is_string(a.type) and rng.random() < 0.3 else a


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, list):
        return "|".join(map(str, v))
    text = str(v)
    return f'"{text}"' if any(c in text for c in ',"\n\r') and '"' not in text else text.replace(",", ";")


def _write_csv(path: Path, rows: Dict[str, List[Any]], rng: random.Random) -> None:
    names = list(rows)
    lines = [",".join(names)] + [",".join(_cell(rows[c][i]) for c in names) for i in range(len(rows[names[0]]))]
    if rng.random() < 0.15 and len(lines) > 1:  # a short or long row
        j = rng.randrange(1, len(lines))
        lines[j] = lines[j].rsplit(",", 1)[0] if rng.random() < 0.5 else lines[j] + ",7"
    path.write_text("\n".join(lines) + "\n")


def _outcome(case: str, path: Path, load: Callable[[], Any], names: List[str]) -> str:
    """Runs ``load``: "ok", or the error's message when it is a ValueError naming ``path`` (and one of
    ``names`` when the message speaks of a column, row or key); anything else fails naming the case."""
    try:
        load()
        return "ok"
    except ValueError as e:
        msg = str(e)
        assert path.name in msg, f"{case}: error does not name the file: {msg}"
        rest = msg.replace(str(path), "")
        if " row " in rest or "column" in rest:
            assert any(repr(c) in msg or f"{c}:" in msg for c in names) or "cells" in msg or "header" in msg \
                or "Parquet" in msg or "CSV" in msg, f"{case}: error names no column: {msg}"
        return msg
    except Exception as e:  # every other exception is the failure this test looks for
        pytest.fail(f"{case}: {type(e).__name__}: {e}")


def _read_table(path: Path, fmt: str, rng: random.Random) -> None:
    spec = _spec(path, format=fmt, chunk_rows=rng.choice([1, 3, 64]))
    if fmt == "parquet" and rng.random() < 0.3:
        spec["stream"] = True
    data = load_tabular(spec, seed=rng.randrange(100))
    if spec.get("stream"):
        for _ in data.train.batches(2, shuffle=True):
            pass
        data.train.label_means()


def test_random_types_per_column(tmp_path: Path) -> None:
    rng, outcomes = random.Random(1234), []
    for i in range(160):
        n = rng.randrange(1, 12)
        rows = _good_rows(rng, n)
        for c in rng.sample(COLUMNS, rng.randrange(1, 3)):
            rows[c] = _column(rng, rng.choice(sorted(KINDS)), n)
        fmt = rng.choice(["parquet", "csv"])
        path = tmp_path / f"case{i}.{fmt}"
        if fmt == "parquet":
            pq.write_table(pa.table({c: _arrow(v, rng) for c, v in rows.items()}), path,
                           row_group_size=rng.choice([2, 5, 100]))
        else:
            _write_csv(path, rows, rng)
        case = f"case {i} ({fmt}): {rows}"
        outcomes.append(_outcome(case, path, functools.partial(_read_table, path, fmt, rng), COLUMNS))
    assert 20 < outcomes.count("ok") < 150, outcomes  # both loads and errors were exercised


def _valid_bytes(tmp_path: Path, fmt: str, rng: random.Random) -> bytes:
    rows, path = _good_rows(rng, 40), tmp_path / f"valid.{fmt}"
    if fmt == "parquet":
        pq.write_table(pa.table(rows), path, row_group_size=10)
    else:
        _write_csv(path, rows, random.Random(0))
    return path.read_bytes()


@pytest.mark.parametrize("fmt", ["parquet", "csv", "csv.gz"])
def test_random_truncated_and_damaged_files(tmp_path: Path, fmt: str) -> None:
    rng = random.Random({"parquet": 1, "csv": 2, "csv.gz": 3}[fmt])
    valid = _valid_bytes(tmp_path, fmt.split(".")[0], rng)
    valid = gzip.compress(valid, mtime=0) if fmt.endswith("gz") else valid
    for i in range(60):
        how = ("random bytes", "truncated", "damaged")[i % 3]
        if how == "random bytes":
            data = rng.randbytes(rng.randrange(0, 300))
        elif how == "truncated":
            data = valid[: rng.randrange(len(valid))]
        else:
            buf = bytearray(valid)
            for _ in range(rng.randrange(1, 6)):
                buf[rng.randrange(len(buf))] = rng.randrange(256)
            data = bytes(buf)
        path = tmp_path / f"{how.replace(' ', '_')}{i}.{fmt}"
        path.write_bytes(data)
        _outcome(f"{fmt} {how} case {i}: {data[:80]!r}...", path,
                 functools.partial(_read_table, path, fmt.split(".")[0], rng), COLUMNS)


VALUES: List[Any] = ["two", "", "x" * 300, 32.7, 0, -1, 1, 3, 2**70, 1e308, -0.5, math.nan, math.inf, None, True,
                     False, [], [0], [-3, 4], ["a"], [[1]], {}, {"a": 1}, {"t_user": {"bogus": 1}}, "mmoe", "table"]


def _random_config(rng: random.Random) -> Dict[str, Any]:
    keys = sorted(set(TrainConfig.__dataclass_fields__) | set(flat_option_names())) + ["nope", "Epochs"]
    keys = [k for k in keys if k != "plugins"]  # a random module name must never be imported
    return {rng.choice(keys).replace("_", rng.choice("_-")): rng.choice(VALUES) for _ in range(rng.randrange(1, 4))}


def _toml(values: Dict[str, Any]) -> Optional[str]:
    """``values`` as TOML, for scalars and flat lists (None where TOML cannot hold them)."""
    def one(v: Any) -> str:
        if isinstance(v, bool):
            return str(v).lower()
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        if isinstance(v, list) and all(not isinstance(x, (list, dict)) for x in v):
            return "[" + ", ".join(one(x) for x in v) + "]"
        if isinstance(v, (int, str)):
            return str(v) if isinstance(v, int) and abs(v) < 2**63 else f'"{v}"'
        raise TypeError
    try:
        return "".join(f"{k} = {one(v)}\n" for k, v in values.items() if v is not None and not isinstance(v, dict))
    except TypeError:
        return None


def _load_config(path: Path) -> TrainConfig:
    return TrainConfig.from_dict(read_config_file(str(path)), source=str(path))


def test_random_config_files(tmp_path: Path) -> None:
    rng, outcomes = random.Random(99), []
    for i in range(240):
        values = _random_config(rng)
        kind = rng.choice(["yaml", "yaml", "toml", "bytes"])
        path = tmp_path / f"c{i}.{'toml' if kind == 'toml' or (kind == 'bytes' and i % 2) else 'yaml'}"
        if kind == "bytes":
            path.write_bytes(rng.randbytes(rng.randrange(1, 200)))
        elif kind == "toml":
            text = _toml(values)
            if text is None:
                continue
            path.write_text(text)
        else:
            path.write_text(yaml.safe_dump(values) if rng.random() < 0.9 else yaml.safe_dump(list(values)))
        keys = [str(k).replace("-", "_") for k in values]
        case = f"config case {i} ({kind}): {path.read_bytes()[:200]!r}"
        msg = _outcome(case, path, functools.partial(_load_config, path), keys)
        whole_file = ("invalid YAML", "invalid TOML", "expected a mapping of option names")
        assert msg == "ok" or kind == "bytes" or any(w in msg for w in whole_file) \
            or any(k in msg for k in keys), f"{case}: the error names none of the keys {keys}: {msg}"
        outcomes.append(msg)
    # both loads and errors were exercised (the share of loads moves as options are added)
    assert 3 <= outcomes.count("ok") < len(outcomes) - 100, outcomes


def test_end_to_end_bad_files_are_one_line(tmp_path: Path, capsys) -> None:
    rng = random.Random(7)
    table = tmp_path / "rows.parquet"
    table.write_bytes(_valid_bytes(tmp_path, "parquet", rng)[:-40])  # truncated: its footer is gone
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"dataset": "table", "table": _spec(table), "epochs": 1, "report": False}))
    assert main(["train", "--config", str(config), "--output-dir", str(tmp_path / "out"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("torchrec-fusion: error: ") and "rows.parquet" in err and "Traceback" not in err, err
    config.write_bytes(rng.randbytes(64) + b"\n: [")
    assert main(["train", "--config", str(config), "--output-dir", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("torchrec-fusion: error: ") and "run.yaml" in err and err.count("\n") == 1, err
