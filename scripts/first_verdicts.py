"""The README main job's choice, on validation: memory-bank variants on a synthetic set drawn with another seed.

    python -c "from unistad_edu.synthetic import make_synthetic; make_synthetic('/tmp/syn_val', seed=1)"
    python scripts/first_verdicts.py /tmp/syn_val [VARIANT ...]

Prints one JSON line per variant: build and eval seconds, and the I-AUROC (x100) per category against its
structural defects (scratch, hole, stain), against its logical ones (missing / extra part) and per defect kind.
docs/benchmarks.md, "The first verdicts", has the figures and how the choice was made.
"""

import json
import sys
import time

from unistad_edu.data import MVTecDataset
from unistad_edu.engine import TrainConfig, fit
from unistad_edu.inference import evaluate
from unistad_edu.methods import build_model
from unistad_edu.scoring import ScoringConfig
from unistad_edu.teacher import load_teacher

SIZE = 256
VARIANTS = {
    "bank256": {},
    "bank256_c02": dict(coreset_ratio=0.02),
    "bank256_c03": dict(coreset_ratio=0.03),
    "bank256_c05": dict(coreset_ratio=0.05),
    "bank256_b2": dict(scoring=ScoringConfig(fuse="mean", blur_sigma=2.0, image_score="max")),
    "bank256_l123": dict(teacher_layers=(1, 2, 3), strides=(4, 8, 16)),
}


def pct(v: float) -> float:
    return round(100 * v, 1)


def main(root: str, names: list[str]) -> None:
    for name in names or list(VARIANTS):
        t0 = time.perf_counter()
        model = build_model("memory_bank", load_teacher(), image_size=SIZE, **VARIANTS[name])
        fit(model, MVTecDataset(root, "train", image_size=SIZE), TrainConfig(progress=False))
        t1 = time.perf_counter()
        table = evaluate(
            model, MVTecDataset(root, "test", image_size=SIZE), progress=False, pixel=False
        )
        t2 = time.perf_counter()
        by = table["by_defect"]
        structural = {c: pct(r["structural"]) for c, r in by.items()}
        print(
            json.dumps(
                {
                    "variant": name,
                    "build_s": round(t1 - t0),
                    "eval_s": round(t2 - t1),
                    "structural": structural,
                    "lowest": min(structural.values()),
                    "logical": {c: pct(r["logical"]) for c, r in by.items() if "logical" in r},
                    "kinds": {c: {k: pct(v) for k, v in r["kinds"].items()} for c, r in by.items()},
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
