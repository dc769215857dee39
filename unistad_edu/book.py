"""The course as a book: the executed lessons rendered to a static HTML site that reads offline.

The test run (``pytest --nbmake``) executes every lesson ``notebooks/NN_name.ipynb``; :func:`keep_nbmake_runs`
saves each one that ran without error to ``build/executed/`` (``$UNISTAD_EXECUTED_DIR``) with
:func:`save_executed`. ``python -m unistad_edu book`` then renders them with :func:`build_book` into
``build/book/``: one page per lesson with its outputs and figures, ``index.html`` (the table of contents) and
one copy of plotly.js, so that the interactive figures need no network. A lesson that has no executed copy,
failed, was not run through or changed since it ran stops the build with an error naming it.

Plotly figures (``application/vnd.plotly.v1+json`` outputs) become a ``<div>`` and a ``Plotly.newPlot``
call; ipywidgets cannot run in a static page and show their text with a note. Math is typeset by MathJax
from its CDN when the page is viewed online (offline it stays TeX source); nothing else is fetched.
"""

from __future__ import annotations

import copy
import html
import json
import os
import re
import shutil
from pathlib import Path

from .files import atomic_write, install_folder, staging_folder
from .ownership import listing

REPO = Path(__file__).resolve().parents[1]
LESSONS = REPO / "notebooks"  #: the lessons, ``NN_name.ipynb``
LESSON_GLOB = "[0-9][0-9]_*.ipynb"
EXECUTED_ENV = "UNISTAD_EXECUTED_DIR"
MARKER = ".unistad-book"  #: the file that says a folder is a book this module wrote
BOOK_FORMAT = "unistad-edu book v1"
PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = "(interactive widget: run the notebook in JupyterLab)"
RUN_THEM = "run the lessons first: python -m pytest notebooks (it saves each lesson that passes)"

#: the lab template without require.js (it would capture plotly.js) or the widget manager (CDN), with
#: plotly.js loaded from beside the page and links to the contents, previous and next lesson
TEMPLATE = """{%- extends 'index.html.j2' -%}
{%- block html_head_js_requirejs -%}
<script src="plotly.min.js" charset="utf-8"></script>
<style>.book-nav { margin: 1em 0; font-family: sans-serif; } .book-nav a { margin-right: 1.5em; }</style>
{%- endblock html_head_js_requirejs -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block body_header -%}{{ super() }}
<nav class="book-nav">{{ resources.book_nav }}</nav>
{%- endblock body_header -%}
{% block body_footer %}<nav class="book-nav">{{ resources.book_nav }}</nav>
{{ super() }}{% endblock body_footer %}
"""


class BookError(ValueError):
    """The book cannot be built: a lesson is missing, failed or is stale, or ``out`` is not a book folder;
    the message names it and says what to do."""


def executed_dir() -> Path:
    """Where the test run saves the executed lessons: ``$UNISTAD_EXECUTED_DIR``, else
    ``<repo>/build/executed``."""
    return Path(os.environ.get(EXECUTED_ENV) or REPO / "build" / "executed")


def save_executed(nb, source, folder) -> Path:
    """Write ``nb``, the executed notebook of lesson ``source``, to ``folder/<source's name>`` atomically
    (a reader sees the previous copy or the whole new one)."""
    import nbformat

    path = Path(folder) / Path(source).name
    return atomic_write(path, lambda tmp: nbformat.write(nb, str(tmp)), fsync=False)


def forget_executed(source, folder) -> None:
    """Remove the executed copy of lesson ``source`` from ``folder``: a lesson that failed must not appear
    in the book with the outputs of an earlier run."""
    (Path(folder) / Path(source).name).unlink(missing_ok=True)


def lesson_title(nb) -> str:
    """The notebook's first Markdown heading (``# ...``), without emphasis marks; '' if it has none."""
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                m = re.match(r"^#{1,6}\s+(.+?)(?:\s+#+)?\s*$", line)
                if m:
                    return re.sub(r"[*`]", "", m.group(1))
    return ""


def _lesson_sources(lessons: Path) -> list[Path]:
    """The lesson notebooks ``NN_name.ipynb`` in ``lessons``, in order; BookError if there are none."""
    found = sorted(Path(lessons).glob(LESSON_GLOB))
    if not found:
        raise BookError(
            f"no lessons (NN_name.ipynb) in {lessons}: name the course's notebooks folder"
        )
    return found


def _check_all_there(sources: list[Path], executed: Path) -> None:
    """BookError naming every lesson in ``sources`` that has no executed copy in ``executed``."""
    missing = [s.stem for s in sources if not (executed / s.name).is_file()]
    if missing:
        where = "" if executed.is_dir() else " (the folder does not exist)"
        raise BookError(
            f"no executed copy of lesson {', '.join(missing)} in {executed}{where}: a lesson that "
            f"failed or did not run has none; {RUN_THEM}"
        )


def _cells(nb) -> list[tuple[str, str]]:
    """What a lesson is made of: each cell's kind and source (not its outputs)."""
    return [(c.cell_type, c.source) for c in nb.cells]


def checked_lesson(source: Path, lesson, executed: Path):
    """The executed copy of lesson ``source`` (read from folder ``executed``) if it ran through without
    error and has the cells of ``lesson`` (the notebook read from ``source``); otherwise BookError naming the
    lesson and why."""
    import nbformat

    path = executed / source.name
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(nb.cells, 1):
        if cell.cell_type != "code":
            continue
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                what = f"{out.get('ename', 'error')}: {out.get('evalue', '')}".strip()
                raise BookError(
                    f"lesson {source.stem} failed in cell {i} ({what}) in {path}; {RUN_THEM}"
                )
        if cell.source.strip() and cell.get("execution_count") is None:
            raise BookError(
                f"lesson {source.stem} was not run through: cell {i} of {path} never ran; {RUN_THEM}"
            )
    if _cells(nb) != _cells(lesson):
        raise BookError(
            f"{path} is an older version of lesson {source.stem} (its cells differ); {RUN_THEM}"
        )
    return nb


def _script_json(obj) -> str:
    """``obj`` as JSON that is safe inside a ``<script>`` element (no ``<``, ``>`` or ``&``)."""
    text = json.dumps(obj, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def plotly_html(fig: dict, div_id: str) -> str:
    """A plotly figure (the ``application/vnd.plotly.v1+json`` output: data, layout, config, frames) as a
    ``<div>`` and the ``Plotly.newPlot`` call that draws it there (plotly.js must be loaded first)."""
    layout = fig.get("layout") or {}
    height = f"{layout['height']}px" if layout.get("height") else "450px"  # plotly.js's default
    width = f"{layout['width']}px" if layout.get("width") else "100%"
    figure = {
        "data": fig.get("data") or [],
        "layout": layout,
        "config": {"responsive": True, **(fig.get("config") or {})},
        "frames": fig.get("frames") or [],
    }
    return (
        f'<div id="{div_id}" class="plotly-graph-div" style="height:{height}; width:{width};"></div>\n'
        f'<script type="text/javascript">Plotly.newPlot("{div_id}", {_script_json(figure)});</script>'
    )


def static_notebook(nb):
    """A copy of ``nb`` that a static page can show whole: plotly figures as HTML that draws them, widgets
    as their text and a note, and no saved widget state (its renderer would come from a CDN)."""
    nb = copy.deepcopy(nb)
    nb.metadata.pop("widgets", None)
    figures = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            data = out.get("data") or {}
            if PLOTLY_MIME in data:
                figures += 1
                out["data"] = {"text/html": plotly_html(data[PLOTLY_MIME], f"figure-{figures}")}
            elif WIDGET_MIME in data:
                text = data.get("text/plain", "")
                out["data"] = {"text/plain": f"{text}\n{WIDGET_NOTE}".strip()}
    return nb


def _exporter():
    """nbconvert's HTML exporter (lab look) with :data:`TEMPLATE`; it renders without network access."""
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter

    return HTMLExporter(
        template_name="lab",
        extra_loaders=[DictLoader({"book.html.j2": TEMPLATE})],
        template_file="book.html.j2",
    )


def _nav(pages: list[tuple[str, str]], i: int) -> str:
    """The links of page ``i`` of ``pages`` ((stem, title) pairs): contents, previous, next."""
    links = ['<a href="index.html">Contents</a>']
    for j, label in ((i - 1, "previous"), (i + 1, "next")):
        if 0 <= j < len(pages):
            stem, title = pages[j]
            links.append(f'<a href="{stem}.html">{label}: {html.escape(title or stem)}</a>')
    return " ".join(links)


def index_html(pages: list[tuple[str, str]]) -> str:
    """The table of contents: one row per lesson (number, title linked to its page)."""
    rows = "\n".join(
        f'<tr><td>{html.escape(stem[:2])}</td><td><a href="{html.escape(stem)}.html">'
        f"{html.escape(title or stem)}</a></td></tr>"
        for stem, title in pages
    )
    return f"""<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>unistad-edu: the course</title>
<style>body {{ font-family: sans-serif; max-width: 50em; margin: 2em auto; }}
td {{ padding: 0.3em 0.8em; }}</style></head>
<body>
<h1>unistad-edu: the course</h1>
<p>Unified unsupervised visual anomaly detection, one lesson a page, with the outputs of a run.</p>
<table>
<tr><th>lesson</th><th>title</th></tr>
{rows}
</table>
</body>
</html>
"""


def _is_book(folder: Path) -> bool:
    """True if ``folder`` holds the marker this module writes (with its format field)."""
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(marker, dict) and marker.get("format") == BOOK_FORMAT


def _foreign(book: Path) -> list[str]:
    """The entries of the folder ``book`` that a build does not write (a page, index, plotly.js, marker)."""
    ours = {"index.html", "plotly.min.js", MARKER}
    return [
        p.name
        for p in book.iterdir()
        if not (p.is_file() and (p.name in ours or re.fullmatch(r"\d\d_.+\.html", p.name)))
    ]


def _replaceable(out: Path) -> bool:
    """True if ``out`` may be replaced by a new book: an empty folder, or a book folder holding only what a
    build writes; BookError otherwise (nothing is deleted that this module did not write)."""
    if out.is_dir() and not out.is_symlink():
        if not any(out.iterdir()):
            return True
        if _is_book(out):
            foreign = _foreign(out)
            if not foreign:
                return True
            raise BookError(
                f"{out} is a book holding files a build does not write ({listing(foreign)}): "
                "nothing is replaced; move them away or name another --out"
            )
    what = "a file or link" if out.is_file() or out.is_symlink() else "a folder that is not a book"
    raise BookError(
        f"{out} is {what} (no {MARKER}): nothing is replaced; name another --out or remove it"
    )


def plotly_js() -> Path:
    """plotly.min.js of the installed plotly package (the version that wrote the figures' JSON)."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def build_book(executed, out, lessons=LESSONS) -> Path:
    """Render every lesson of ``lessons`` from its executed copy in ``executed`` to ``out/NN_name.html``,
    with ``out/index.html`` (the contents) and ``out/plotly.min.js``; returns index.html's path. ``out`` is
    built beside itself and renamed into place (an earlier book there is replaced, anything else refused)."""
    import nbformat

    executed, out = Path(executed), Path(out)
    if out.exists() or out.is_symlink():
        _replaceable(out)
    sources = _lesson_sources(Path(lessons))
    _check_all_there(sources, executed)
    lessons_nb = [nbformat.read(s, as_version=4) for s in sources]  # each source read once
    pages = [(s.stem, lesson_title(nb)) for s, nb in zip(sources, lessons_nb)]
    exporter = _exporter()
    with staging_folder(out) as stage:
        for i, source in enumerate(sources):
            nb = static_notebook(checked_lesson(source, lessons_nb[i], executed))
            nb.metadata["title"] = pages[i][1] or source.stem
            body, _ = exporter.from_notebook_node(nb, resources={"book_nav": _nav(pages, i)})
            (stage / f"{source.stem}.html").write_text(body, encoding="utf-8")
        shutil.copyfile(plotly_js(), stage / "plotly.min.js")
        (stage / "index.html").write_text(index_html(pages), encoding="utf-8")
        marker = {"format": BOOK_FORMAT, "lessons": [stem for stem, _ in pages]}
        (stage / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
        install_folder(stage, out, replace=_replaceable)
    return out / "index.html"


def keep_nbmake_runs() -> None:
    """Make nbmake keep what it runs. nbmake executes each lesson in memory and writes the result only with
    ``--overwrite`` (the committed notebooks have no outputs); after this call its run, otherwise unchanged,
    also saves each lesson of :data:`LESSONS` that ran without error to :func:`executed_dir`, and removes the
    copy of one that failed (the root ``conftest.py`` calls it when a test run collects lessons)."""
    from nbmake.nb_run import NotebookRun

    execute = NotebookRun.execute
    if getattr(execute, "keeps_lessons", False):
        return

    def execute_and_keep(self):
        res = execute(self)
        source = Path(self.filename).resolve()
        if source.parent == LESSONS and source.match(LESSON_GLOB):
            if res.error is None:
                save_executed(res.nb, source, executed_dir())
            else:
                forget_executed(source, executed_dir())
        return res

    execute_and_keep.keeps_lessons = True
    NotebookRun.execute = execute_and_keep
