"""Every ``Example::`` block in the package's docstrings runs (TorchRec's docstring style)."""

import importlib
import inspect
import pkgutil
import textwrap
from typing import Iterator, List, Tuple

import pytest

import torchrec_fusion


def _examples() -> Iterator[Tuple[str, str, dict]]:
    for info in pkgutil.walk_packages(torchrec_fusion.__path__, "torchrec_fusion."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        objs: List = [module]
        for _, obj in inspect.getmembers(module):
            own = getattr(obj, "__module__", None) == module.__name__
            if own and (inspect.isclass(obj) or inspect.isfunction(obj)):
                objs.append(obj)
                if inspect.isclass(obj):
                    objs += [m for _, m in inspect.getmembers(obj, inspect.isfunction)
                             if m.__qualname__.startswith(obj.__name__)]
        for obj in objs:
            doc = inspect.getdoc(obj) or ""
            if "Example::" not in doc:
                continue
            block = doc.split("Example::", 1)[1].split("\n")
            body = []
            for line in block[1:]:
                if line.strip() and not line.startswith(" "):
                    break
                body.append(line)
            name = f"{info.name}:{getattr(obj, '__qualname__', obj.__name__)}"
            yield name, textwrap.dedent("\n".join(body)), vars(module)


EXAMPLES = list(_examples())


def test_examples_found() -> None:
    assert len(EXAMPLES) >= 8


@pytest.mark.parametrize("name, code, namespace", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_docstring_example_runs(name: str, code: str, namespace: dict) -> None:
    exec(compile(code, name, "exec"), dict(namespace))
