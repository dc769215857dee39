"""Write the lesson notebooks and their exercise twins from their Python sources (run:
``python notebooks/_build.py [NN ...]``).

Each lesson is one file ``notebooks/lessons/NN_name.py`` defining ``CELLS``, a list of ("md" | "code", source)
pairs made with ``md(...)`` / ``code(...)`` from ``lessons/_cells.py``, and ``exercise(...)`` entries. Editing a
lesson = editing that file and re-running this script, which writes ``notebooks/NN_name.ipynb`` (the lesson:
each exercise's solution and its check) and ``notebooks/exercises/NN_name.ipynb`` (the same notebook with each
solution replaced by a stub: the check cells fail with their hints until the learner's code is right).
Notebooks are written without outputs and without execution counts, which is how they are committed; nbmake
executes the lessons in CI, ``tests/test_exercises.py`` the exercise cells of both. A lesson file that sets
``TWIN = False`` (the capstone: a template the learner runs on their own data) has no exercises and no twin.
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


def lesson_module(path: Path):
    sys.path.insert(0, str(SOURCES))  # for `from _cells import code, md`
    try:
        spec = importlib.util.spec_from_file_location(f"lesson_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SOURCES))
    return module


def lesson_cells(path: Path) -> list[tuple[str, str]]:
    return lesson_module(path).CELLS


def has_twin(path: Path) -> bool:
    """Whether the lesson has an exercise twin: every lesson but one that says ``TWIN = False`` (the capstone,
    whose whole notebook is the learner's to run on their own data), which then has no exercises either."""
    module = lesson_module(path)
    twin = getattr(module, "TWIN", True)
    if not twin and any(kind == "exercise" for kind, _ in module.CELLS):
        raise SystemExit(f"{path.name} says TWIN = False but has exercises: they need a twin")
    return twin


EXERCISES = HERE / "exercises"
TAGS = {"solution": "exercise-solution", "stub": "exercise-stub", "check": "exercise-check"}


def _tagged(cell, tag: str, number: int):
    cell.metadata["tags"] = [tag]
    cell.metadata["exercise"] = number
    return cell


TEACHING = HERE.parent / "docs" / "teaching.md"


def learning_goals(number: str) -> str:
    """The lesson's goals and prerequisites as a Markdown cell, from its row of the table in
    ``docs/teaching.md`` (the one place they are written; a lesson without a row is an error)."""
    for line in TEACHING.read_text(encoding="utf-8").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0].split(" ")[0] == number and len(cells) >= 4:
            goals = [g.strip() for g in cells[1].split(";") if g.strip()]
            after = "\n".join(f"- {g}" for g in goals)
            builds = "" if cells[2] in ("—", "-", "") else f"\n\n*Builds on:* lessons {cells[2]}."
            return f"**After this lesson you can:**\n\n{after}{builds}"
    raise SystemExit(
        f"docs/teaching.md has no row for lesson {number}: add its learning goals there first"
    )


def notebook(source: Path, twin: bool = False):
    """The lesson (``twin=False``) or its exercise twin as an nbformat notebook."""
    nb = new_notebook(metadata=dict(KERNEL))
    number = 0
    for kind, src in lesson_cells(source):
        if kind == "exercise":
            number += 1
            head = f"### Exercise {number}: {src['title']}\n\n{src['task']}"
            if not twin:
                head += (
                    "\n\n*(In the exercise notebook, `notebooks/exercises/`, the next cell is yours to write; "
                    "here is a solution, and the check after it.)*"
                )
            nb.cells.append(new_markdown_cell(head))
            body = ("stub", src["stub"]) if twin else ("solution", src["solution"])
            nb.cells.append(_tagged(new_code_cell(body[1]), TAGS[body[0]], number))
            nb.cells.append(_tagged(new_code_cell(src["check"]), TAGS["check"], number))
        else:
            nb.cells.append(new_markdown_cell(src) if kind == "md" else new_code_cell(src))
        if len(nb.cells) == 1:  # right after the title cell: what the learner will be able to do
            nb.cells.append(new_markdown_cell(learning_goals(source.stem[:2])))
    if twin:
        nb.cells[0].source = (
            f"*Exercise notebook: {number} tasks. Write each marked cell, then run the check "
            f"after it.*\n\n" + nb.cells[0].source
        )
    for i, cell in enumerate(nb.cells):
        cell["id"] = (
            f"{source.stem[:2]}-{i:02d}"  # stable ids: rebuilding does not change the files
        )
    nbformat.validate(nb)
    return nb


def build(source: Path) -> list[Path]:
    """Write the lesson and its exercise twin (none for a lesson with ``TWIN = False``); returns the paths."""
    paths = []
    for twin, folder in ((False, HERE), (True, EXERCISES))[: 2 if has_twin(source) else 1]:
        folder.mkdir(exist_ok=True)
        path = folder / f"{source.stem}.ipynb"
        path.write_text(nbformat.writes(notebook(source, twin)) + "\n")
        paths.append(path)
    return paths


if __name__ == "__main__":
    wanted = set(sys.argv[1:])
    for source in sorted(SOURCES.glob("[0-9][0-9]_*.py")):
        if not wanted or source.stem[:2] in wanted:
            print("wrote", ", ".join(str(p.relative_to(HERE.parent)) for p in build(source)))
