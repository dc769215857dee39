#!/usr/bin/env python
"""Download VisA (Amazon's public S3 tar) and convert it to MVTec layout with its official 1cls split.

    python data_scripts/download_visa.py --out data/visa                          # all 12 categories (1.9 GB)
    python data_scripts/download_visa.py --out data/visa --categories candle,pcb1

Same as ``python -m unistad_edu data visa ...``; the logic is in unistad_edu/download.py.
"""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # run from a checkout without installing

from unistad_edu.download import script_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(script_main("visa"))
