"""The code's shape: no module over 400 lines, no function over 60, and no private Tornado or
pycurl attribute used outside ``orpoll/fast/``, the one package allowed to rely on them."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "orpoll"
MODULES = sorted(ROOT.rglob("*.py"))
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60

# Names of objects that are Tornado's or pycurl's wherever orpoll holds them.
LIBRARY_OBJECTS = re.compile(
    r"\b(?:tornado|httputil|iostream|http1connection|pycurl|curl|handle|multi|stream|conn"
    r"|connection|request|req|headers|handler|IOStream|HTTP1Connection|HTTP1ServerConnection"
    r"|RequestHandler|HTTPServerRequest)\._[a-z]\w*"
)


def _relative(path: Path) -> str:
    return str(path.relative_to(ROOT.parent))


@pytest.mark.parametrize("path", MODULES, ids=_relative)
def test_module_size(path: Path) -> None:
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_MODULE_LINES, f"{_relative(path)} has {lines} lines"


@pytest.mark.parametrize("path", MODULES, ids=_relative)
def test_function_size(path: Path) -> None:
    tree = ast.parse(path.read_text())
    long = [
        f"{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, f"{_relative(path)}: {', '.join(long)}"


@pytest.mark.parametrize(
    "path", [p for p in MODULES if "fast" not in p.relative_to(ROOT).parts], ids=_relative
)
def test_no_library_internals_outside_fast(path: Path) -> None:
    found = [
        f"line {n}: {m.group(0)}"
        for n, line in enumerate(path.read_text().splitlines(), 1)
        for m in LIBRARY_OBJECTS.finditer(line.split("#", 1)[0])
    ]
    assert not found, f"{_relative(path)}: {'; '.join(found)}"
