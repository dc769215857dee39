"""Serving an exported model: onnxruntime or OpenVINO, with no PyTorch in the loop.

An export folder (written by :func:`unistad_edu.export.export_run`, ``python -m unistad_edu export``) holds
one graph -- images (B, 3, S, S) float32 in [0, 1], the teacher's normalisation inside -- that returns the
anomaly map (B, 1, S, S) and the image score (B,), and ``export.json``, the card: method, teacher, image size,
threshold and its rule, precision, the source run's ``save_id`` and config, the package version, each file's
SHA-256. This module reads it with nothing but numpy, Pillow and the runtime: it never imports torch (a test
runs ``predict`` on an export with torch made unimportable).

:class:`ExportedModel` offers what the CLI's ``predict`` and the demo ask of a model: ``predict(images)``
with the same per-image results as :func:`unistad_edu.inference.predict`, ``threshold``, ``run_config`` and
``backend`` (which runtime serves it, for the demo's model card).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import CheckpointError
from .files import sha256_file

CARD_FILE = "export.json"
#: the card layout this version writes and reads; a card with a larger number was written by a newer version
EXPORT_FORMAT_VERSION = (
    2  # 2: the routing embedding as a third output, the run's calibration on the card
)
FORMATS = ("onnx", "openvino")
EXPORTERS = ("auto", "torchscript", "dynamo")  # PyTorch's ONNX exporters (unistad_edu.export)
BACKENDS = ("auto", "onnxruntime", "openvino")
INPUT_NAME = "image"
OUTPUT_NAMES = ("anomaly_map", "score", "embedding")  # format 1 exports have the first two


def is_export(folder) -> bool:
    """True if ``folder`` is an export folder (has ``export.json``)."""
    return (Path(folder) / CARD_FILE).is_file()


def read_card(folder) -> dict:
    """The checked card of an export folder: a clear :class:`CheckpointError` for a missing or damaged card, a
    card written by a newer version, a field an export could not have written (unknown fields, a threshold that
    is not a finite number, a file name leading out of the folder, a missing digest:
    :func:`unistad_edu.cards.check_export_card`), or a missing / changed file (every file's SHA-256 is checked)."""
    from .cards import check_export_card, is_int

    folder = Path(folder)
    path = folder / CARD_FILE
    if not path.is_file():
        raise CheckpointError(
            f"{folder} is not an export folder (no {CARD_FILE}): make one with "
            f"python -m unistad_edu export --run RUN --out {folder}"
        )
    try:
        card = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path} is not valid JSON ({err})") from err
    version = card.get("export_format_version") if isinstance(card, dict) else None
    if not is_int(version) or version < 1:
        raise CheckpointError(
            f"{path} has no export_format_version (a whole number >= 1; found {version!r}): not "
            f"a unistad-edu export card"
        )
    if version > EXPORT_FORMAT_VERSION:
        raise CheckpointError(
            f"{folder} was exported by unistad-edu {card.get('package_version', '?')} (export "
            f"format {version}); this version reads format {EXPORT_FORMAT_VERSION} and older: "
            f"upgrade unistad-edu, or export the run again with this version"
        )
    check_export_card(card, folder, FORMATS, OUTPUT_NAMES)
    for name, digest in card["files"].items():
        f = folder / name
        if not f.is_file():
            raise CheckpointError(
                f"{folder} is missing {name} (listed in {CARD_FILE}): copy the whole export "
                f"folder, or export the run again"
            )
        if sha256_file(f) != digest:
            raise CheckpointError(
                f"{f} is not the file that was exported (its SHA-256 differs from {CARD_FILE}): "
                f"the folder was changed or copied incompletely; export the run again"
            )
    return card


def _runtime(module: str, needed_for: str):
    """The runtime module ``module``, or a :class:`CheckpointError` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise CheckpointError(
            f"{needed_for} needs {module}: pip install 'unistad-edu[export]'"
        ) from err


def _onnxruntime_session(path: Path, threads: int | None, names: Sequence[str]):
    ort = _runtime("onnxruntime", "serving an ONNX export")
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])

    def run(x: np.ndarray):
        return session.run(list(names), {INPUT_NAME: x})

    return run, f"onnxruntime {ort.__version__} (CPUExecutionProvider)"


def _openvino_model(path: Path, threads: int | None, names: Sequence[str]):
    ov = _runtime("openvino", "serving through OpenVINO")
    core = ov.Core()
    config = {
        "INFERENCE_PRECISION_HINT": "f32"
    }  # as exported: no silent bf16/fp16 on CPUs that have it
    if threads:
        config["INFERENCE_NUM_THREADS"] = threads
    compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
    outputs = [compiled.output(n) for n in names]

    def run(x: np.ndarray):
        request = compiled.create_infer_request()  # one per call: safe from several threads
        res = request.infer({INPUT_NAME: x})
        return [res[o] for o in outputs]

    return run, f"OpenVINO {ov.__version__} (CPU, f32)"


class ExportedModel:
    """An export folder, ready to score. ``backend``: ``auto`` (the format's own runtime: onnxruntime for
    ``onnx``, OpenVINO for ``openvino``), ``onnxruntime`` or ``openvino`` (OpenVINO also reads an ONNX file).
    ``threads``: runtime threads (default: the runtime's own choice)."""

    def __init__(self, folder, backend: str = "auto", threads: int | None = None):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, not {backend!r}")
        self.folder = Path(folder)
        self.card = read_card(
            self.folder
        )  # checked: format, file names inside the folder, digests, threshold
        fmt = self.card["format"]
        if backend == "auto":
            backend = "onnxruntime" if fmt == "onnx" else "openvino"
        if backend == "onnxruntime" and fmt != "onnx":
            raise CheckpointError(
                f"{self.folder} holds an OpenVINO model: serve it with backend 'openvino'"
            )
        model_file = self.folder / self.card["model_file"]
        # format 1 exports have no embedding output: they serve one global threshold
        names = [n for n in OUTPUT_NAMES if n in (self.card.get("outputs") or OUTPUT_NAMES[:2])]
        self._run, self.backend = (
            _onnxruntime_session if backend == "onnxruntime" else _openvino_model
        )(model_file, threads, names)
        self.backend_name = backend
        self.image_size = int(self.card["image_size"])
        self.threshold = self.card.get("threshold")
        self.run_config = dict(self.card.get("run_config") or {})
        from .calibration import Calibration

        cal = self.card.get("calibration") if len(names) > 2 else None
        self.verdict_calibration = Calibration.from_json(cal, self.threshold)

    @property
    def method(self) -> str:
        return self.card["method"]

    def outputs(self, images: np.ndarray) -> tuple[np.ndarray, ...]:
        """(B, S, S, 3) uint8 -> (anomaly maps (B, S, S) float32, scores (B,) float32[, embeddings (B, D)])."""
        x = np.ascontiguousarray(images.transpose(0, 3, 1, 2), dtype=np.float32) / np.float32(
            255.0
        )  # (B,3,S,S)
        maps, scores, *rest = self._run(x)
        return (
            np.asarray(maps)[:, 0],
            np.asarray(scores).reshape(-1),
            *[np.asarray(r) for r in rest],
        )

    def score_arrays(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(B, S, S, 3) uint8 -> (anomaly maps (B, S, S) float32, scores (B,) float32)."""
        return self.outputs(images)[:2]

    def predict(
        self, images: Sequence, threshold: float | None = None, batch_size: int = 8
    ) -> list[dict]:
        """Score file paths or (H, W, 3) uint8 arrays: the same per-image dicts as ``inference.predict`` (``score``,
        the routed ``category`` and its ``threshold``, ``z``, ``anomalous``, ``notice``, ``anomaly_map`` (S, S),
        ``image`` (S, S, 3) uint8, ``level_maps`` -- empty: the graph returns the fused map only)."""
        from .data import model_inputs

        arrays = model_inputs(images, self.image_size)  # the same pixels inference.predict scores
        results = []
        for i in range(0, len(arrays), batch_size):
            chunk = np.stack(arrays[i : i + batch_size])  # (b, S, S, 3)
            maps, scores, *emb = self.outputs(chunk)
            decisions = self.verdict_calibration.decide(scores, emb[0] if emb else None, threshold)
            for j in range(chunk.shape[0]):
                results.append(
                    {**decisions[j], "anomaly_map": maps[j], "level_maps": {}, "image": chunk[j]}
                )
        return results
