"""Print the bad-input catalogue of ``tests/test_bad_inputs.py`` as the Markdown table in docs/reliability.md.

Run from anywhere: ``python scripts/bad_inputs_table.py``. Each case is run exactly as the test runs it, and
the message the user gets is printed (temporary paths shortened to "…").
"""
from __future__ import annotations

import contextlib
import io
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: `tests` is a package

import tests.test_bad_inputs as catalogue  # noqa: E402
from unistad_edu.__main__ import main  # noqa: E402


def quiet_main(argv: list[str]) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            rc = main(argv)
        except SystemExit as exit_:
            rc = exit_.code
    return rc, err.getvalue().strip()


def table() -> str:
    tmp = Path(tempfile.mkdtemp())
    good, run = tmp / "good", tmp / "run"
    catalogue.make_category(good, "widget", n_train=4, n_good=1, n_defect=1, size=(catalogue.SIZE,) * 2)
    rc, _ = quiet_main(["train", "--method", "stpm", "--data", str(good), "--out", str(run), "--epochs", "1",
                        "--image-size", str(catalogue.SIZE), "--no-progress"])
    assert rc == 0, "could not train the reference run"
    lines = ["| # | area | bad input | where | what the user is told |", "|---|---|---|---|---|"]
    for n, case in enumerate(catalogue.CASES, 1):
        case_dir = tmp / f"case{n}"
        case_dir.mkdir()
        kind, what = case.run(case_dir, good, run)
        if kind == "cli":
            rc, message = quiet_main(what)
            message = message or f"(exit {rc}) trains normally"
            where = f"`python -m unistad_edu {what[0]}`"
        else:
            try:
                what()
                message = "NO ERROR"
            except Exception as err:  # noqa: BLE001 -- we print whatever the user would see
                message = f"{type(err).__name__}: {err}"
            where = "demo upload decoder" if case.area == "upload" else "`load_checkpoint`"
        message = message.replace(str(tmp), "…").replace("\n", " ").replace("|", "/")
        lines.append(f"| {n} | {case.area} | {case.id} | {where} | {message} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(table(), end="")
