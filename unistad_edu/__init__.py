"""unistad-edu: unified (multi-class) unsupervised visual anomaly detection, for teaching and exploring.

Public API (imported lazily, so ``import unistad_edu`` stays fast)::

    load_teacher(name="tf_efficientnet_lite0", weights="auto", classifier=False)
    build_model(name, teacher, **cfg)
    fit(model, train_data, cfg)                                  # engine: training
    evaluate(model, test_data) / predict(model, images)           # inference: using a model
    load_checkpoint(run_dir)
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "load_teacher": "teacher",
    "Teacher": "teacher",
    "MVTecDataset": "data",
    "discover_categories": "data",
    "find_data": "data",
    "make_synthetic": "synthetic",
    "FeatureCache": "cache",
    "compute_metrics": "metrics",
    "build_model": "methods",
    "METHODS": "methods",
    "score": "scoring",
    "ScoringConfig": "scoring",
    "fit": "engine",
    "TrainConfig": "engine",
    "evaluate": "inference",
    "predict": "inference",
    "Calibration": "calibration",
    "load_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
}

__all__ = sorted(_API) + ["__version__"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'unistad_edu' has no attribute {name!r}")
