"""The book (``python -m unistad_edu book``): a two-lesson course run by nbmake's own executor with the
hook that keeps the executed lessons, then rendered; and every way the build must refuse."""

from __future__ import annotations

import filecmp
import json
import os
import re
import shutil
import socket
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output
from nbmake.nb_result import NotebookError, NotebookResult
from nbmake.nb_run import NotebookRun

from unistad_edu import book
from unistad_edu.__main__ import main
from unistad_edu.book import BookError, build_book

KERNEL = {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}}
LESSONS = {
    "00_numbers": [
        new_markdown_cell("# Lesson 00 — Numbers *first*\n\nA figure and a line of text."),
        new_code_cell("print('hello from lesson zero')"),
        new_code_cell(
            "import plotly.graph_objects as go\n\ngo.Figure(go.Scatter(y=[1, 3, 2])).show()"
        ),
    ],
    "01_widget": [
        new_markdown_cell("Some words before the heading.\n\n## Lesson 01 — A widget"),
        new_code_cell("import ipywidgets as W\n\nW.IntSlider(value=7)"),
        new_code_cell("print(6 * 7)"),
    ],
}
TITLES = {"00_numbers": "Lesson 00 — Numbers first", "01_widget": "Lesson 01 — A widget"}


@pytest.fixture(scope="module")
def course(tmp_path_factory) -> tuple[Path, Path]:
    """(lessons folder, executed folder): two lessons, each run by nbmake's NotebookRun as the test run
    does, with :func:`unistad_edu.book.keep_nbmake_runs` saving them."""
    root = tmp_path_factory.mktemp("course").resolve()
    lessons, executed = root / "notebooks", root / "executed"
    lessons.mkdir()
    for stem, cells in LESSONS.items():
        nbformat.write(new_notebook(cells=cells, metadata=KERNEL), lessons / f"{stem}.ipynb")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(NotebookRun, "execute", NotebookRun.execute)  # undone after the fixture
        mp.setattr(book, "LESSONS", lessons)
        mp.setenv(book.EXECUTED_ENV, str(executed))
        book.keep_nbmake_runs()
        for stem in LESSONS:
            res = NotebookRun(lessons / f"{stem}.ipynb", 60).execute()
            assert res.error is None, res.error
    return lessons, executed


@pytest.fixture(scope="module")
def built(course, tmp_path_factory) -> Path:
    """The book of the two-lesson course, built with every network connection refused."""

    def no_network(*args, **kwargs):
        raise OSError("network access during the build")

    out = tmp_path_factory.mktemp("site") / "book"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", no_network)
        mp.setattr(socket, "create_connection", no_network)
        index = build_book(course[1], out, course[0])
    assert index == out / "index.html"
    return out


def copy_of(course, tmp_path) -> Path:
    """A copy of the executed lessons that a test may spoil."""
    return Path(shutil.copytree(course[1], tmp_path / "executed"))


def test_the_test_run_keeps_each_lesson_run_and_leaves_the_lesson_alone(course):
    lessons, executed = course
    assert sorted(p.name for p in executed.iterdir()) == ["00_numbers.ipynb", "01_widget.ipynb"]
    ran = nbformat.read(executed / "00_numbers.ipynb", as_version=4)
    assert all(c.execution_count for c in ran.cells if c.cell_type == "code")
    assert "hello from lesson zero" in ran.cells[1].outputs[0]["text"]
    source = nbformat.read(lessons / "00_numbers.ipynb", as_version=4)  # still without outputs
    assert all(not c.outputs and c.execution_count is None for c in source.cells[1:])


def test_a_failed_lesson_loses_its_copy_and_other_notebooks_are_not_kept(
    course, tmp_path, monkeypatch
):
    lessons = course[0]
    folder = copy_of(course, tmp_path)
    other = tmp_path / "elsewhere" / "02_other.ipynb"
    other.parent.mkdir()
    shutil.copy(lessons / "01_widget.ipynb", other)
    failed = NotebookError(summary="boom", trace="boom", failing_cell_index=1)
    result = {"error": failed}

    def fake_execute(self):
        return NotebookResult(nb=nbformat.read(self.filename, as_version=4), error=result["error"])

    monkeypatch.setattr(NotebookRun, "execute", fake_execute)
    monkeypatch.setattr(book, "LESSONS", lessons)
    monkeypatch.setenv(book.EXECUTED_ENV, str(folder))
    book.keep_nbmake_runs()
    NotebookRun(lessons / "00_numbers.ipynb", 60).execute()
    assert not (folder / "00_numbers.ipynb").exists()
    assert (folder / "01_widget.ipynb").exists()
    result["error"] = None
    NotebookRun(other, 60).execute()
    assert not (folder / "02_other.ipynb").exists()


def test_save_executed_writes_the_whole_file_beside_it_then_renames(tmp_path, monkeypatch):
    nb = new_notebook(cells=[new_code_cell("x = 1", execution_count=1)], metadata=KERNEL)
    folder = tmp_path / "executed"
    folder.mkdir()
    (folder / "03_lesson.ipynb").write_text("an older copy")
    seen, replace = [], os.replace

    def spy(src, dst):
        seen.append((Path(src).parent, nbformat.read(src, as_version=4).cells[0].source))
        replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    path = book.save_executed(nb, Path("/elsewhere/notebooks/03_lesson.ipynb"), folder)
    assert path == folder / "03_lesson.ipynb"
    assert seen == [(folder, "x = 1")]  # complete before the rename, in the same folder
    assert nbformat.read(path, as_version=4).cells[0].execution_count == 1
    assert [p.name for p in folder.iterdir()] == ["03_lesson.ipynb"]


def plotly_figures(page: str) -> list[dict]:
    """The figures passed to ``Plotly.newPlot`` in ``page``, decoded from the script text."""
    found = []
    for m in re.finditer(r'Plotly\.newPlot\("([^"]+)", ', page):
        assert re.search(rf'<div[^>]*\bid="{m.group(1)}"', page)
        found.append(json.JSONDecoder().raw_decode(page, m.end())[0])
    return found


def test_each_lesson_is_a_page_with_its_outputs_and_figures(built):
    first = (built / "00_numbers.html").read_text(encoding="utf-8")
    assert "hello from lesson zero" in first
    [figure] = plotly_figures(first)
    assert figure["data"][0]["type"] == "scatter" and figure["data"][0]["y"] == [1, 3, 2]
    scripts = re.findall(r'<script[^>]*\bsrc="([^"]+)"', first)
    assert "plotly.min.js" in scripts
    assert all(s == "plotly.min.js" or "mathjax" in s for s in scripts), scripts
    second = (built / "01_widget.html").read_text(encoding="utf-8")
    assert "42" in second and "IntSlider" in second and book.WIDGET_NOTE in second
    assert plotly_figures(second) == []
    assert filecmp.cmp(built / "plotly.min.js", book.plotly_js(), shallow=False)


def test_the_index_links_every_lesson_with_its_title(built):
    index = (built / "index.html").read_text(encoding="utf-8")
    links = re.findall(r'<a href="([^"]+)">([^<]+)</a>', index)
    assert links == [(f"{stem}.html", title) for stem, title in TITLES.items()]
    assert all((built / href).is_file() for href, _ in links)


def spoil_error(nb):
    nb.cells[1].outputs.append(
        new_output("error", ename="ZeroDivisionError", evalue="x", traceback=[])
    )


def spoil_unrun(nb):
    nb.cells[2].execution_count = None


def spoil_stale(nb):
    nb.cells[1].source = "print('an older version')"


@pytest.mark.parametrize(
    "spoil, says",
    [
        (spoil_error, "failed in cell 2 (ZeroDivisionError"),
        (spoil_unrun, "cell 3"),
        (spoil_stale, "older"),
    ],
)
def test_a_failed_unfinished_or_stale_lesson_stops_the_build(course, tmp_path, spoil, says):
    executed = copy_of(course, tmp_path)
    nb = nbformat.read(executed / "01_widget.ipynb", as_version=4)
    spoil(nb)
    nbformat.write(nb, executed / "01_widget.ipynb")
    with pytest.raises(
        BookError, match=f"01_widget.*{re.escape(says)}|{re.escape(says)}.*01_widget"
    ):
        build_book(executed, tmp_path / "book", course[0])
    assert not (tmp_path / "book").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["executed"]  # no staging folder left


def test_a_missing_lesson_stops_the_build_with_its_name(course, tmp_path, capsys):
    executed = copy_of(course, tmp_path)
    (executed / "01_widget.ipynb").unlink()
    with pytest.raises(BookError, match="no executed copy of lesson 01_widget"):
        build_book(executed, tmp_path / "book", course[0])
    args = ["book", "--executed", str(executed), "--out", str(tmp_path / "book")]
    assert main([*args, "--lessons", str(course[0])]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no executed copy of lesson 01_widget") and err.count("\n") == 1


@pytest.mark.parametrize("kind", ["a folder of one's own", "a book with a file added"])
def test_a_folder_that_is_not_a_book_is_refused_untouched(course, built, tmp_path, kind):
    out = tmp_path / "out"
    if kind == "a book with a file added":
        shutil.copytree(built, out)
    out.mkdir(exist_ok=True)
    (out / "notes.txt").write_text("mine")
    before = sorted((p.name, p.read_bytes()) for p in out.iterdir())
    with pytest.raises(BookError, match="nothing is replaced"):
        build_book(course[1], out, course[0])
    assert sorted((p.name, p.read_bytes()) for p in out.iterdir()) == before


def test_a_book_is_rebuilt_in_place_by_the_command(course, built, tmp_path, capsys):
    lessons, out = tmp_path / "notebooks", tmp_path / "book"
    shutil.copytree(built, out)
    lessons.mkdir()
    shutil.copy(course[0] / "00_numbers.ipynb", lessons)  # a course of one lesson now
    args = ["book", "--executed", str(course[1]), "--out", str(out), "--lessons", str(lessons)]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == f"{out / 'index.html'} (1 lesson)"
    assert sorted(p.name for p in out.iterdir()) == [
        ".unistad-book",
        "00_numbers.html",
        "index.html",
        "plotly.min.js",
    ]
    assert "hello from lesson zero" in (out / "00_numbers.html").read_text(encoding="utf-8")
