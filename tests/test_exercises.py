"""The exercise twins (``notebooks/exercises/NN_*.ipynb``), built by ``notebooks/_build.py`` from the lesson sources.

Every lesson has 2-4 exercises. A twin is its lesson with each exercise's solution cell replaced by a stub (and
the task said once more on top): every other cell is the lesson's own, which nbmake runs. Here the exercise
cells of both notebooks are run as a learner would, in order, in one namespace per notebook: in the twin each
check cell must fail -- ``ExerciseNotDone`` with its task's hint, nothing else -- and in the lesson each check
must pass after its solution. The checks compare with the package's own functions on small inputs, so they
need none of the lesson's earlier cells, and no lesson cell uses a name that only an exercise cell defines -- so
in a whole twin exactly the check cells fail, which is what running only its exercise cells shows (the twins'
other cells are the lessons' own, and nbmake runs those). The committed notebooks must be what the build writes.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import nbformat
import pytest

from unistad_edu import course
from unistad_edu.course import ExerciseNotDone

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted((REPO / "notebooks" / "lessons").glob("[0-9][0-9]_*.py"))


def _build_module():
    spec = importlib.util.spec_from_file_location(
        "notebooks_build", REPO / "notebooks" / "_build.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


BUILD = _build_module()
# the lessons with an exercise twin: all but one that says TWIN = False (the capstone, which has no exercises)
TWINNED = [source for source in SOURCES if BUILD.has_twin(source)]


def _cells(nb, tag):
    return [c for c in nb.cells if tag in c.metadata.get("tags", [])]


def _hints(source: Path) -> list[tuple[str, str]]:
    """(first hint, second hint) of each exercise of ``source``."""
    return [
        (src["hint"], src["more"]) for kind, src in BUILD.lesson_cells(source) if kind == "exercise"
    ]


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_the_committed_lesson_and_twin_are_what_the_build_writes(source):
    if source not in TWINNED:
        stray = REPO / "notebooks" / "exercises" / f"{source.stem}.ipynb"
        assert not stray.exists(), f"{stray}: {source.name} has no twin (TWIN = False)"
    for twin, folder in ((False, REPO / "notebooks"), (True, REPO / "notebooks" / "exercises"))[
        : 2 if source in TWINNED else 1
    ]:
        committed = folder / f"{source.stem}.ipynb"
        assert committed.is_file(), f"{committed} missing: run python notebooks/_build.py"
        assert committed.read_text() == nbformat.writes(BUILD.notebook(source, twin)) + "\n", (
            f"{committed} is not what notebooks/_build.py writes from {source.name}: run it"
        )


@pytest.mark.parametrize("source", TWINNED, ids=lambda p: p.stem)
def test_twin_is_the_lesson_with_stubs_and_each_check_fails_with_its_hint_until_solved(
    source, tmp_path, monkeypatch, capsys
):
    lesson, twin = BUILD.notebook(source), BUILD.notebook(source, twin=True)
    hints = _hints(source)
    assert 2 <= len(hints) <= 4, f"{source.name} has {len(hints)} exercises (2-4 wanted)"
    assert len(lesson.cells) == len(twin.cells)
    tags = set(BUILD.TAGS.values())
    for i, (a, b) in enumerate(zip(lesson.cells, twin.cells)):
        tagged = set(a.metadata.get("tags", [])) & tags
        if i == 0 or tagged or a.source.startswith("### Exercise"):
            continue  # the twin's own header, stubs and task notes
        assert a.source == b.source, f"cell {i} of the twin differs from the lesson's"

    monkeypatch.chdir(tmp_path)  # checks may write small files
    monkeypatch.setattr(course, "_FAILED_CHECKS", {})  # a fresh kernel: no check has failed yet
    stubs, checks = _cells(twin, BUILD.TAGS["stub"]), _cells(twin, BUILD.TAGS["check"])
    assert len(stubs) == len(checks) == len(hints)
    ns: dict = {}
    for stub, check, (hint, more) in zip(stubs, checks, hints):
        exec(compile(stub.source, f"{source.stem} stub {stub.metadata['exercise']}", "exec"), ns)
        n = check.metadata["exercise"]
        compiled = compile(check.source, f"{source.stem} check {n}", "exec")
        said = []
        # the learner runs the check, tries again (still the stub), runs it again
        for _ in range(2):
            with pytest.raises(ExerciseNotDone) as info:
                exec(compiled, ns)
            said.append(str(info.value))
        assert hint in said[0] and more not in said[0], (
            f"exercise {n}: first failure said {said[0]}"
        )
        assert hint in said[1] and more in said[1], f"exercise {n}: second failure said {said[1]}"

    solutions, checks = _cells(lesson, BUILD.TAGS["solution"]), _cells(lesson, BUILD.TAGS["check"])
    ns = {}
    for solution, check in zip(solutions, checks):
        exec(compile(solution.source, f"{source.stem} solution", "exec"), ns)
        exec(
            compile(check.source, f"{source.stem} check", "exec"), ns
        )  # passes: no ExerciseNotDone
    assert capsys.readouterr().out.count("✓") == len(hints)


def _defined(source: str) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
    return names


def _loaded(source: str) -> set[str]:
    return {
        n.id
        for n in ast.walk(ast.parse(source))
        if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)
    }


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_no_lesson_cell_needs_an_exercise_cell(source):
    """What makes running only the exercise cells enough: a name that only an exercise cell defines (a solution's
    function, a check's inputs) is used by no other cell of the lesson, so in the twin -- where the stubs define
    nothing useful -- every other cell runs exactly as in the lesson, and only the check cells fail."""
    nb = BUILD.notebook(source)
    code = [c for c in nb.cells if c.cell_type == "code"]
    tags = set(BUILD.TAGS.values())
    ex = [c for c in code if set(c.metadata.get("tags", [])) & tags]
    rest = [c for c in code if c not in ex]
    only_exercise = set().union(*(_defined(c.source) for c in ex)) - set().union(
        *(_defined(c.source) for c in rest)
    )
    used = set().union(*(_loaded(c.source) for c in rest))
    assert not only_exercise & used, (
        f"lesson cells use names only an exercise cell defines: {only_exercise & used}"
    )


_TOKEN = __import__("re").compile(r"[A-Za-z_]\w*|\d+(?:\.\d+)?|==|!=|<=|>=|\*\*|//|[^\sA-Za-z_\d]")


def _grams(text: str, n: int) -> set[tuple[str, ...]]:
    """The runs of ``n`` consecutive Python-like tokens of ``text`` that hold at least one name or number."""
    toks = _TOKEN.findall(text)
    return {
        g
        for g in zip(*(toks[i:] for i in range(n)))
        if any(t[0].isalnum() or t[0] == "_" for t in g)
    }


def test_the_token_runs_the_hint_check_looks_for():
    """The rule below on hand-made cases: code copied from the solution is found, prose about it is not."""
    solution = "return torch.zeros(mask.shape).masked_fill(mask, float('-inf'))"
    assert _grams("use torch.zeros(mask.shape)", 4) & _grams(solution, 4)
    assert not _grams(
        "start from zeros of the mask's shape and fill the hidden places", 4
    ) & _grams(solution, 4)


@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_no_hint_gives_away_the_solutions_code(source):
    """Each exercise has two hints, the second other than the first; a hint points the way (a question, the
    idea, the function to read) and never contains a run of four tokens of its solution's code."""
    for kind, src in BUILD.lesson_cells(source):
        if kind != "exercise":
            continue
        assert src["more"].strip() and src["more"] != src["hint"], f"{src['title']}: no second hint"
        for hint in (src["hint"], src["more"]):
            shared = _grams(hint, 4) & _grams(src["solution"], 4)
            assert not shared, (
                f"{src['title']}: the hint {hint!r} repeats the solution's code {sorted(shared)[:3]}"
            )
