"""Print the bad-input catalogue of ``tests/test_bad_inputs.py`` as the Markdown table in docs/reliability.md.

Run from anywhere: ``python scripts/bad_inputs_table.py``. It runs that test module (pytest, in a child process)
with ``UNISTAD_BAD_INPUTS_TABLE`` set, so every case is run exactly as the test runs it and the message the user
gets is recorded (temporary paths shortened to "…"); nothing here imports the tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def table() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "table.md"
        env = {**os.environ, "UNISTAD_BAD_INPUTS_TABLE": str(out)}
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-o",
                "addopts=",
                "-p",
                "no:cacheprovider",
                "tests/test_bad_inputs.py",
                "-k",
                "specific_message",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        if proc.returncode != 0 or not out.is_file():
            sys.exit(f"the catalogue's tests failed, no table:\n{proc.stdout[-3000:]}")
        return out.read_text()


if __name__ == "__main__":
    print(table(), end="")
