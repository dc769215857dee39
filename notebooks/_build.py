"""Write the lesson notebooks from their Python sources (run: ``python notebooks/_build.py [NN ...]``).

Each lesson is one file ``notebooks/lessons/NN_name.py`` defining ``CELLS``, a list of ("md" | "code", source)
pairs made with ``md(...)`` / ``code(...)`` from ``lessons/_cells.py``. Editing a lesson = editing that file and
re-running this script, which writes ``notebooks/NN_name.ipynb``. Notebooks are written without outputs and
without execution counts, which is how they are committed; nbmake executes them in CI.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent
SOURCES = HERE / "lessons"

KERNEL = {
    "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
    "language_info": {"name": "python"},
}


def lesson_cells(path: Path) -> list[tuple[str, str]]:
    sys.path.insert(0, str(SOURCES))  # for `from _cells import code, md`
    try:
        spec = importlib.util.spec_from_file_location(f"lesson_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SOURCES))
    return module.CELLS


def build(source: Path) -> Path:
    nb = new_notebook(metadata=dict(KERNEL))
    for kind, src in lesson_cells(source):
        nb.cells.append(new_markdown_cell(src) if kind == "md" else new_code_cell(src))
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"{source.stem[:2]}-{i:02d}"  # stable ids: rebuilding does not change the files
    nbformat.validate(nb)
    path = HERE / f"{source.stem}.ipynb"
    path.write_text(nbformat.writes(nb) + "\n")
    return path


if __name__ == "__main__":
    wanted = set(sys.argv[1:])
    for source in sorted(SOURCES.glob("[0-9][0-9]_*.py")):
        if not wanted or source.stem[:2] in wanted:
            print("wrote", build(source).relative_to(HERE.parent))
