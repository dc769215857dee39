#!/usr/bin/env python
"""Write the offline synthetic multi-class set (MVTec layout); the generator is unistad_edu/synthetic.py.

    python data_scripts/make_synthetic.py data/synthetic [--size 256] [--seed 0] [--baseline]

``python -m unistad_edu data synthetic --out DIR`` does the same with the default options.
"""

import sys
from pathlib import Path

sys.path.insert(
    0, str(Path(__file__).resolve().parents[1])
)  # run from a checkout without installing

from unistad_edu.synthetic import SyntheticDatasetError, _main  # noqa: E402

if __name__ == "__main__":
    try:
        _main()
    except SyntheticDatasetError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
