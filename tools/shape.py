"""The code-shape check behind ``make shape``: the longest functions and modules in ``importer/``.

Fails (exit 1) when a function is over 80 lines or a module over 600, the limits this project
keeps so that each stage stays easy to find and to change.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

MAX_FUNCTION = 80
MAX_MODULE = 600
SHOWN = 5


def measure(root: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(lines, place) of every function and every module under ``root``, longest first."""
    functions: list[tuple[int, str]] = []
    modules: list[tuple[int, str]] = []
    for path in sorted(root.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        modules.append((len(text.splitlines()), str(path)))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                functions.append((length, f"{path}:{node.lineno} {node.name}"))
    return sorted(functions, reverse=True), sorted(modules, reverse=True)


def main(argv: list[str]) -> int:
    """Print the longest functions and modules; 1 when one is over its limit."""
    root = Path(argv[0] if argv else "importer")
    functions, modules = measure(root)
    print(f"longest functions (limit {MAX_FUNCTION} lines):")
    for length, where in functions[:SHOWN]:
        print(f"  {length:4d}  {where}")
    print(f"longest modules (limit {MAX_MODULE} lines):")
    for length, where in modules[:SHOWN]:
        print(f"  {length:4d}  {where}")
    over = [f"function {w} ({n} lines)" for n, w in functions if n > MAX_FUNCTION]
    over += [f"module {w} ({n} lines)" for n, w in modules if n > MAX_MODULE]
    for line in over:
        print(f"over the limit: {line}", file=sys.stderr)
    return 1 if over else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
