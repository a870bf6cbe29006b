"""Refuse imports of private names across modules: `from pkg.module import _name`.

A name that starts with an underscore is its module's own; another module that needs it should
get a public name from it instead. ruff's PLC2701 skips imports within one package, so this
check covers what it does not. Usage: python tools/lint_private_imports.py DIR [DIR ...]
"""

from __future__ import annotations

import ast
import pathlib
import sys


def private_imports(path: pathlib.Path) -> list[str]:
    """`file:line: name from module` for each private name ``path`` imports from another module."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.ImportFrom):
            continue
        for alias in node.names:
            if alias.name.startswith("_") and not alias.name.startswith("__"):
                module = "." * node.level + (node.module or "")
                found.append(f"{path}:{node.lineno}: imports private name {alias.name} from {module}")
    return found


def main(folders: list[str]) -> int:
    problems = [problem
                for folder in folders
                for path in sorted(pathlib.Path(folder).rglob("*.py"))
                for problem in private_imports(path)]
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
