"""The size of the library: lines per package and file, the longest functions, docstring share.

    python benchmarks/core_size.py [--base COMMIT] [--longest 10]

Counts every line of the ``.py`` files under detect/ and proposals/ (what issue 23 measures) and, with
``--base``, the same at an earlier commit (read with ``git show``, nothing checked out). A function's
length runs from its first decorator to its last line, docstring included; tools/ and benchmarks/ are
scanned for functions too (``tools/detect.py`` is a folder, not a file).
"""
from __future__ import annotations

import argparse
import ast
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIBRARY = ("detect", "proposals")


def _sources(commit: str | None, folders: tuple[str, ...]) -> dict[str, str]:
    """``{path: text}`` of the .py files under ``folders``, in the working tree or at ``commit``."""
    if commit is None:
        return {str(p.relative_to(ROOT)): p.read_text() for f in folders for p in sorted((ROOT / f).rglob("*.py"))
                if p.is_file()}
    names = subprocess.run(["git", "-C", str(ROOT), "ls-tree", "-r", "--name-only", commit, *folders],
                           check=True, capture_output=True, text=True).stdout.split()
    return {n: subprocess.run(["git", "-C", str(ROOT), "show", f"{commit}:{n}"], check=True, capture_output=True,
                              text=True).stdout for n in names if n.endswith(".py")}


def _functions(sources: dict[str, str]) -> list[tuple[int, str]]:
    """``(lines, "path:line name")`` of every function, longest first."""
    rows = []
    for path, text in sources.items():
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                rows.append((node.end_lineno - start + 1, f"{path}:{node.lineno} {node.name}"))
    return sorted(rows, reverse=True)


def _docstring_lines(text: str) -> int:
    lines = 0
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and \
                ast.get_docstring(node, clean=False) is not None:
            lines += node.body[0].end_lineno - node.body[0].lineno + 1
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", help="an earlier commit to compare with")
    parser.add_argument("--longest", type=int, default=10, help="how many of the longest functions to list")
    args = parser.parse_args()
    now = _sources(None, LIBRARY)
    then = _sources(args.base, LIBRARY) if args.base else None
    for package in LIBRARY:
        count = lambda files: sum(len(t.splitlines()) for p, t in files.items() if p.startswith(package + "/"))  # noqa: E731
        print(f"{package}/: {count(now):,} lines" + (f" ({args.base}: {count(then):,})" if then else ""))
    total = sum(len(t.splitlines()) for t in now.values())
    docs = sum(_docstring_lines(t) for t in now.values())
    line = f"library: {total:,} lines in {len(now)} files, {docs:,} of them docstrings"
    if then:
        before = sum(len(t.splitlines()) for t in then.values())
        line += f"; {args.base}: {before:,} lines in {len(then)} files ({100 * (total - before) / before:+.1f} %)"
    print(line)
    print("longest functions (detect/, proposals/, tools/, benchmarks/), decorators and docstrings included:")
    for length, where in _functions(_sources(None, (*LIBRARY, "tools", "benchmarks")))[:args.longest]:
        print(f"  {length:4d}  {where}")


if __name__ == "__main__":
    main()
