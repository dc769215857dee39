"""The Gradio demo of unistad-edu: ``python demo/app.py [--run RUN] [--host 127.0.0.1] [--port 7860]``.

A thin wrapper: the page lives in the package (``unistad_edu.demo.page``, the process around it in
``unistad_edu.demo.serving``) so that ``python -m unistad_edu demo`` and this script serve the same page.
Importable: ``build_app(run_dir, ...) -> gr.Blocks`` and ``main(argv)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

try:
    from unistad_edu.demo.page import build_app, launch
    from unistad_edu.demo.serving import main, screenshot
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from unistad_edu.demo.page import build_app, launch
    from unistad_edu.demo.serving import main, screenshot

__all__ = ["build_app", "launch", "main", "screenshot"]

if __name__ == "__main__":
    sys.exit(main())
