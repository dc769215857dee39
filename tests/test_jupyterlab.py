"""What a new user does after installing: `jupyter lab notebooks/`. The server must start on loopback, list every
lesson, and have the front-end extensions the lessons' plotly figures and ipywidgets explorers need."""

from __future__ import annotations

import json
import os
import re
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LESSONS = sorted(p.name for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))


def _jupyter(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "jupyter", *args], capture_output=True, text=True, timeout=120, **kw
    )


def test_lab_has_the_widget_and_plotly_extensions():
    out = _jupyter("labextension", "list")
    text = re.sub(r"\x1b\[[0-9;]*m", "", out.stdout + out.stderr)  # drop colour codes
    for ext in ("@jupyter-widgets/jupyterlab-manager", "jupyterlab-plotly"):
        line = next((ln for ln in text.splitlines() if ext in ln), None)
        assert line is not None, f"{ext} missing from:\n{text}"
        assert "enabled" in line and "OK" in line, line


def test_lessons_are_a_consecutive_course():
    numbers = [int(name[:2]) for name in LESSONS]
    assert numbers == list(range(len(numbers))) and len(numbers) >= 13, LESSONS
    index = (REPO / "notebooks" / "README.md").read_text()
    for name in LESSONS:
        assert f"| {name[:-6]} |" in index, f"{name} has no line in notebooks/README.md"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_jupyter_lab_serves_the_course_on_loopback(tmp_path):
    port, token = _free_port(), secrets.token_hex(8)
    cmd = [
        sys.executable,
        "-m",
        "jupyter",
        "lab",
        "--no-browser",
        f"--port={port}",
        "--ip=127.0.0.1",
        f"--IdentityProvider.token={token}",
        f"--ServerApp.root_dir={REPO / 'notebooks'}",
    ]
    if (
        hasattr(os, "geteuid") and os.geteuid() == 0
    ):  # CI containers run as root; jupyter refuses without this
        cmd.append("--allow-root")
    env_dirs = {
        "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"),
        "JUPYTER_DATA_DIR": str(tmp_path / "data"),
    }
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, **env_dirs}
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5) as r:
                    assert r.status == 200
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(
                        f"jupyter lab did not start: {proc.stdout.read().decode(errors='replace')[-2000:]}"
                    )
                time.sleep(1)
        with urllib.request.urlopen(f"{base}/lab?token={token}", timeout=30) as r:
            page = r.read().decode()
        assert r.status == 200 and "JupyterLab" in page
        with urllib.request.urlopen(f"{base}/api/contents?token={token}", timeout=30) as r:
            listed = {item["name"] for item in json.load(r)["content"]}
        assert set(LESSONS) <= listed
        with urllib.request.urlopen(
            f"{base}/api/contents/03_cross_class_interference.ipynb?token={token}", timeout=30
        ) as r:
            nb = json.load(r)["content"]
        assert any(
            "setup(" in "".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"
        )
        with pytest.raises(OSError):  # no token, no access
            urllib.request.urlopen(f"{base}/api/contents", timeout=10)
    finally:
        from unistad_edu.demo.serving import stop_process

        stop_process(proc, timeout_s=30.0)
