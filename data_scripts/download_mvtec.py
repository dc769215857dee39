#!/usr/bin/env python
"""Download MVTec AD into MVTec layout: checksums, resume, atomic install (see unistad_edu/download.py).

    python data_scripts/download_mvtec.py --out data/mvtec                        # all 15 categories (5.3 GB)
    python data_scripts/download_mvtec.py --out data/mvtec --categories bottle,cable

Same as ``python -m unistad_edu data mvtec ...``.
"""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # run from a checkout without installing

from unistad_edu.download import script_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(script_main("mvtec"))
