"""Where more compute would take each method: every method unified, on the offline Lite0 teacher (the ``cpu``
presets' networks), trained towards its paper's number of epochs within one shared time budget, then scored
once on the test set. Meant for one GPU and about ten minutes; runs anywhere (tested on CPU at a tiny size).

    python scripts/gpu_schedule.py --data ../shared/datasets --minutes 10 --json gpu_schedule.json

Each method gets an equal share of ``--minutes`` and its paper's epochs; training stops after the epoch in
which its share runs out (``max_minutes``; stopping mid-schedule scored higher than a schedule planned to the
budget, ``docs/benchmarks.md``), so a method whose paper asks for 1000 epochs trains as many as fit and says
how many. The memory bank has no epochs (one pass). Prints a
Markdown table (mean I-AUROC / P-AUROC / AUPRO x100, epochs trained of the paper's, seconds) and writes the
rows as JSON; the machine, device and command are recorded beside them.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import time
from pathlib import Path

HEAD = ("method", "epochs (paper)", "train s", "I-AUROC", "P-AUROC", "AUPRO")


def run(
    data: str,
    minutes: float,
    methods: list[str],
    image_size: int | None,
    out_dir: Path,
    device: str = "auto",
    pixel: bool = True,
) -> list[dict]:
    import torch

    from unistad_edu.data import MVTecDataset
    from unistad_edu.engine import TrainConfig, fit
    from unistad_edu.inference import evaluate
    from unistad_edu.methods import build_model, method_class
    from unistad_edu.teacher import load_teacher

    share = minutes / len(methods)
    rows = []
    teacher = load_teacher()
    for name in methods:
        paper = method_class(name).presets.get("paper", {}).get("epochs")
        extra = {"image_size": image_size} if image_size else {}
        model = build_model(name, teacher, **extra)
        size = model.cfg.image_size
        train = MVTecDataset(data, "train", image_size=size)
        test = MVTecDataset(data, "test", image_size=size)
        t0 = time.perf_counter()
        res = fit(
            model,
            train,
            TrainConfig(epochs=paper, max_minutes=share, device=device, progress=False),
            out=out_dir / name,
            overwrite=True,
        )
        seconds = time.perf_counter() - t0
        table = evaluate(model.eval(), test, progress=False, pixel=pixel)
        mean = table["mean"]
        rows.append(
            {
                "method": name,
                "epochs": res.epochs_done,
                "paper_epochs": paper,
                "train_s": round(seconds, 1),
                "device": str(next(iter(model.parameters()), torch.empty(0)).device),
                **{k: mean.get(k) for k in HEAD[3:]},
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    def pct(v):
        return "n/a" if v is None or v != v else f"{100 * v:.1f}"

    lines = ["| " + " | ".join(HEAD) + " |", "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        ep = (
            f"{r['epochs']} ({r['paper_epochs']})"
            if r["paper_epochs"]
            else f"{r['epochs']} (one pass)"
        )
        lines.append(
            f"| {r['method']} | {ep} | {r['train_s']:.0f} | {pct(r['I-AUROC'])} | {pct(r['P-AUROC'])} | "
            f"{pct(r['AUPRO'])} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    from unistad_edu.methods import METHODS

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default="../shared/datasets", help="MVTec-layout folder of categories")
    p.add_argument(
        "--minutes", type=float, default=10.0, help="time budget for all methods together"
    )
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument(
        "--image-size", type=int, default=None, help="override every preset's image size"
    )
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--image-only", action="store_true", help="skip pixel metrics (a test set without masks)"
    )
    p.add_argument("--out-dir", default="runs/gpu_schedule", help="where the runs go")
    p.add_argument("--json", default=None, help="write the rows, machine and command here")
    args = p.parse_args(argv)
    import torch

    rows = run(
        args.data,
        args.minutes,
        args.methods,
        args.image_size,
        Path(args.out_dir),
        args.device,
        pixel=not args.image_only,
    )
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    print(markdown(rows))
    if args.json:
        from unistad_edu.files import atomic_write_text

        atomic_write_text(
            args.json,
            json.dumps(
                {
                    "date": datetime.date.today().isoformat(),
                    "machine": gpu or platform.processor() or platform.machine(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "torch": torch.__version__,
                    "command": " ".join(
                        [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]
                    ),
                    "minutes": args.minutes,
                    "rows": rows,
                },
                indent=2,
            ),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
