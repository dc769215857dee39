"""Export a trained run to ONNX or OpenVINO: one graph from the image to the anomaly map and the image score.

What it exports (:class:`ScoreGraph`): images (B, 3, S, S) float32 in [0, 1] -> the teacher's normalisation ->
the method's :meth:`~unistad_edu.methods.base.Method.score_inputs` -> the shared scoring path
(:meth:`~unistad_edu.methods.base.Method.score_from`: upsampling, blur, image score, combine rule) ->
``anomaly_map`` (B, 1, S, S) and ``score`` (B,). Exactly what :meth:`Method.score` computes, so a served export
and the run give the same answers; every registered method exports (the memory bank's nearest-neighbour search
becomes a fixed loop over blocks of the bank, see :func:`unistad_edu.methods.memory_bank.nearest`; an
antialiased resize becomes two matrix products, see :func:`unistad_edu.layers.resize_bilinear`).

How: PyTorch's TorchScript ONNX exporter (``torch.onnx.export(..., dynamo=False)``), in fp32 whatever
precision the run trained in, with a dynamic batch dimension and the run's image size fixed; where it is
missing (PyTorch has deprecated it) or fails on a graph, the ``torch.export``-based exporter
(``dynamo=True``, which needs ``onnxscript``) takes over. Both give graphs that pass the same parity check; the
TorchScript one traces several times faster (``docs/benchmarks.md``, "ONNX export"), and ``exporter=`` (the
CLI's ``--exporter``) picks one. The card names the exporter used. OpenVINO converts the checked ONNX
file (``openvino.convert_model``) into its IR (``model.xml`` + ``model.bin``), weights kept in fp32.

Parity is checked before anything is written: the exported graph runs in every runtime that can serve it
(onnxruntime and OpenVINO for ONNX) on a batch of a size other than the export's, and its maps and scores are
compared with the PyTorch model's; more than
:data:`PARITY_TOLERANCE` of the threshold apart, or one verdict different, and the export fails. The folder
(model file(s), ``export.json``: method, teacher, image size, threshold and its rule, precision, the run's
``save_id`` and config, package version, SHA-256 of each file, the parity measured) is written beside its
destination and renamed into place, so a killed export leaves nothing half-written. ``--overwrite`` replaces
only an export folder holding nothing but what an export writes (:func:`check_replaceable`): never the run
folder itself, a folder of another kind, a user's folder or a file.

Serving needs no PyTorch: :mod:`unistad_edu.export_runtime`.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import ownership
from .calibration import verdict
from .errors import CheckpointError
from .export_runtime import (
    CARD_FILE,
    EXPORT_FORMAT_VERSION,
    EXPORTERS,
    FORMATS,
    INPUT_NAME,
    OUTPUT_NAMES,
    ExportedModel,
)
from .files import install_folder, sha256_file, staging_folder
from .layout import METRICS_FILE
from .methods.base import Batch

#: largest |export - PyTorch| of any map pixel or score, as a fraction of the threshold (of the largest |score|
#: when the run has no threshold), that an export may differ by; measured: <= 5e-5 on every method (tests)
PARITY_TOLERANCE = 1e-3
#: the batch sizes a graph accepts (dynamic between these)
MAX_BATCH = 64
DEFAULT_OPSET = 18


class ExportError(CheckpointError):
    """The run cannot be exported, or its export does not reproduce the PyTorch model."""


class ScoreGraph(nn.Module):
    """A trained method as one function of the image: ``(B, 3, S, S) in [0, 1] -> (map (B, 1, S, S), score (B,),
    embedding (B, D))``, the exact path of :meth:`Method.score` plus the teacher's image embedding that routes
    the image to its category's threshold (:mod:`unistad_edu.calibration`)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        feats = self.model.teacher(image)  # once: the method's features and the routing embedding
        maps, terms = self.model.score_inputs(Batch(image=image, features=feats))
        out = self.model.score_from(maps, terms, image.shape[-2:])
        emb = self.model.teacher.embedding_of(feats).float()  # (B, D)
        return out.anomaly_map.float(), out.pred_score.float(), emb  # (B, 1, S, S), (B,), (B, D)


def parity_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, S, S, 3) uint8 test pictures for the parity check when no real images are given: smooth random
    fields with a bright blob (so maps are not flat), deterministic in ``seed``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    out = []
    for _ in range(n):
        base = rng.uniform(40, 200, size=3)
        grad = rng.uniform(-60, 60, size=(2, 3))
        img = base + xx[..., None] * grad[0] + yy[..., None] * grad[1]
        cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.15)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None]
        img = img + blob * rng.uniform(-120, 120, size=3) + rng.normal(0, 6, size=img.shape)
        out.append(np.clip(img, 0, 255).astype(np.uint8))
    return np.stack(out)


def torch_outputs(
    model, images: np.ndarray, batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The PyTorch model's (maps (B, S, S), scores (B,), embeddings (B, D)) on (B, S, S, 3) uint8 images, fp32."""
    maps, scores, embs = [], [], []
    graph = ScoreGraph(model).eval()
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = (
                torch.from_numpy(np.ascontiguousarray(images[i : i + batch_size]))
                .permute(0, 3, 1, 2)
                .float()
                / 255.0
            )
            m, s, e = graph(x)
            maps.append(m[:, 0].numpy())
            scores.append(s.numpy())
            embs.append(e.numpy())
    return np.concatenate(maps), np.concatenate(scores), np.concatenate(embs)


def torch_scores(model, images: np.ndarray, batch_size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """The PyTorch model's (maps (B, S, S), scores (B,)) on (B, S, S, 3) uint8 images, in fp32."""
    return torch_outputs(model, images, batch_size)[:2]


def compare(reference: tuple, exported: tuple, threshold: float | None, calibration=None) -> dict:
    """Parity of two (maps, scores[, embeddings]) results: max |Δ| of maps and scores, both relative to the
    threshold (or to the largest |score| without one), and how many verdicts differ -- at ``threshold``, or, with
    a routed ``calibration`` and embeddings on both sides, at each image's routed threshold (then also how many
    images are routed differently)."""
    (rm, rs), (em, es) = reference[:2], exported[:2]
    scale = abs(float(threshold)) if threshold else float(np.abs(rs).max()) or 1.0
    d_map = float(np.abs(rm.astype(np.float64) - em).max())
    d_score = float(np.abs(rs.astype(np.float64) - es).max())
    out = {
        "images": int(len(rs)),
        "max_abs_map": d_map,
        "max_abs_score": d_score,
        "relative_to": "threshold" if threshold else "max |score|",
        "scale": scale,
        "max_rel": float(np.max([d_map, d_score])) / scale,
    }  # np.max: a NaN difference stays NaN
    if calibration is not None and calibration.routed and len(reference) > 2 and len(exported) > 2:
        ref_d, exp_d = calibration.decide(rs, reference[2]), calibration.decide(es, exported[2])
        out["routes_differ"] = int(
            sum(a["category"] != b["category"] for a, b in zip(ref_d, exp_d))
        )
        out["verdicts_differ"] = int(
            sum(a["anomalous"] != b["anomalous"] for a, b in zip(ref_d, exp_d))
        )
        out["max_abs_embedding"] = float(
            np.abs(reference[2].astype(np.float64) - exported[2]).max()
        )
    else:
        out["verdicts_differ"] = (
            int(np.sum(verdict(rs, threshold) != verdict(es, threshold)))
            if threshold is not None
            else 0
        )
    return out


def _export_onnx(model, size: int, path: Path, opset: int, exporter: str = "auto") -> str:
    """``model``'s :class:`ScoreGraph` as one self-contained .onnx file with a dynamic batch; returns the
    exporter used: ``torchscript`` or ``dynamo`` (``auto``: TorchScript, ``dynamo`` where it fails;
    :func:`export_run` checks the name)."""
    try:
        import onnx
    except ImportError as err:
        raise ExportError("export needs onnx: pip install 'unistad-edu[export]'") from err
    graph = ScoreGraph(model).eval()
    # in-place activations (timm's BN + act, ReLU6) out of place while tracing: the same graph, without the
    # dynamo exporter's slow decomposition of each in-place op (docs/benchmarks.md)
    inplace = [m for m in graph.modules() if getattr(m, "inplace", None) is True]
    for m in inplace:
        m.inplace = False
    try:
        used = _trace_to_onnx(graph, size, path, opset, exporter)
    finally:
        for m in inplace:
            m.inplace = True
    onnx.checker.check_model(str(path), full_check=True)
    return used


def _example(size: int) -> torch.Tensor:
    """Two parity pictures as the tracing input, (2, 3, S, S) in [0, 1]."""
    return torch.from_numpy(parity_images(2, size, seed=1)).permute(0, 3, 1, 2).float() / 255.0


def _trace_to_onnx(graph, size: int, path: Path, opset: int, exporter: str = "auto") -> str:
    """``graph`` traced to ``path`` by the exporter asked for; ``auto`` falls back to dynamo when the
    TorchScript exporter is missing or fails. Returns the exporter used."""
    import warnings

    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        # the exporters' own chatter (deprecations, fallbacks, tracer warnings) is not for users
        warnings.simplefilter("ignore")
        if exporter in ("auto", "torchscript"):
            try:
                _torchscript_to_onnx(graph, size, path, opset)
                return "torchscript"
            except Exception:
                if exporter == "torchscript":
                    raise
                path.unlink(missing_ok=True)
        _dynamo_to_onnx(graph, size, path, opset)
        return "dynamo"


def _torchscript_to_onnx(graph, size: int, path: Path, opset: int) -> None:
    torch.onnx.export(
        graph,
        (_example(size),),
        str(path),
        dynamo=False,
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_axes={name: {0: "batch"} for name in (INPUT_NAME, *OUTPUT_NAMES)},
        opset_version=opset,
    )


def _dynamo_to_onnx(graph, size: int, path: Path, opset: int) -> None:
    import importlib.util

    if (
        importlib.util.find_spec("onnxscript") is None
    ):  # the dynamo exporter builds its graph with it
        raise ExportError("export needs onnxscript: pip install 'unistad-edu[export]'")
    batch = torch.export.Dim("batch", min=1, max=MAX_BATCH)
    program = torch.onnx.export(
        graph,
        (_example(size),),
        dynamo=True,
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        dynamic_shapes={"image": {0: batch}},
        opset_version=opset,
        verbose=False,
    )
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    program.save(str(path), external_data=False)


def _to_openvino(onnx_path: Path, xml_path: Path) -> None:
    try:
        import openvino as ov
    except ImportError as err:
        raise ExportError(
            "OpenVINO export needs openvino: pip install 'unistad-edu[export]'"
        ) from err
    ov.save_model(
        ov.convert_model(str(onnx_path)), str(xml_path), compress_to_fp16=False
    )  # weights stay fp32


def _contains(outer: Path, inner: Path) -> bool:
    """True if ``inner`` is ``outer`` or lies inside it (both resolved)."""
    outer, inner = outer.resolve(), inner.resolve()
    return inner == outer or outer in inner.parents


def check_replaceable(out: Path, run: Path) -> None:
    """Refuse (:class:`ExportError`) to replace ``out`` by a new export unless it is an empty folder or an export
    folder (a valid-looking ``export.json``) holding only what an export writes: the card, the files it lists and
    the copied ``metrics.json``. The run folder itself (or a folder holding it), another kind of folder, a user's
    files, a file or a symbolic link in place of the folder are never deleted."""
    out, run = Path(out), Path(run)
    fix = "choose another --out (the default is RUN/export-FORMAT)"
    if out.is_symlink() or not out.is_dir():
        raise ExportError(
            f"--overwrite refused: --out {out} is {ownership.describe(out)}, not an export folder; "
            f"--overwrite replaces only an export folder: move it away, or {fix}"
        )
    if _contains(out, run):
        what = (
            "is the run folder being exported"
            if out.resolve() == run.resolve()
            else f"holds the run folder being exported ({run})"
        )
        raise ExportError(
            f"--overwrite refused: --out {out} {what}; replacing it would delete the run's model and "
            f"state: {fix}"
        )
    if not any(out.iterdir()):
        return  # an empty folder: nothing in it to lose
    card = ownership.read_json(out / CARD_FILE)
    if not ownership.is_export_card(card):
        raise ExportError(
            f"--overwrite refused: --out {out} is {ownership.describe(out)}, not an export folder "
            f"(no unistad-edu {CARD_FILE}); --overwrite replaces only an export folder: {fix}"
        )
    written = {CARD_FILE, METRICS_FILE, *(n for n in card["files"] if isinstance(n, str))}
    other = ownership.foreign_entries(
        out, lambda rel, is_dir: rel in written and not is_dir and not (out / rel).is_symlink()
    )
    if other:
        raise ExportError(
            f"--overwrite refused: the export folder {out} also holds {ownership.listing(other)}, "
            f"which no export wrote; replacing the folder would delete them: move them away, or {fix}"
        )


def export_run(
    run,
    fmt: str = "onnx",
    out=None,
    opset: int = DEFAULT_OPSET,
    exporter: str = "auto",
    overwrite: bool = False,
    images: np.ndarray | None = None,
    log=print,
) -> Path:
    """Export the run folder ``run`` as ``fmt`` (``onnx`` or ``openvino``) into ``out`` (default
    ``RUN/export-FMT``) and return it. ``images``: (N, S, S, 3) uint8 pictures for the parity check (default:
    :func:`parity_images`; real test images are better, :func:`unistad_edu.bench.bench_export` uses them).
    ``exporter``: ``auto`` (TorchScript, dynamo where it fails), ``torchscript`` or ``dynamo``. Raises :class:`ExportError` if the graph does not reproduce the model within :data:`PARITY_TOLERANCE`."""
    from .resolve import load_run_metrics

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS}, not {exporter!r}")
    run = Path(run)
    out = Path(out) if out is not None else run / f"export-{fmt}"
    _check_destination(out, run, overwrite)
    t0 = time.perf_counter()
    model = _load_fp32(run)
    size = int(model.cfg.image_size)
    with staging_folder(out) as tmp:
        log(
            f"exporting {model.name} ({run}) to ONNX, image size {size}, dynamic batch 1..{MAX_BATCH} ..."
        )
        card = _write_graph(model, tmp, fmt, opset, run, exporter)
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2, default=str))
        # a batch size never seen (3)
        check = images if images is not None else parity_images(3, size, seed=2)
        card["parity"] = check_parity(model, tmp, fmt, check, run)
        card["export_seconds"] = round(time.perf_counter() - t0, 1)
        (tmp / CARD_FILE).write_text(json.dumps(card, indent=2, default=str))
        # the demo's card shows the run's test metrics (of this save)
        if load_run_metrics(run) is not None:
            shutil.copyfile(run / METRICS_FILE, tmp / METRICS_FILE)
        # --overwrite: the old folder goes only once the new one is complete, checked again (it may have changed
        # while the export ran); without it, a folder another process put there meanwhile is refused
        if not install_folder(
            tmp, out, replace=lambda old: overwrite and check_replaceable(old, run) is None
        ):
            raise FileExistsError(
                f"{out} appeared while exporting ({ownership.describe(out)}): choose another "
                f"--out, or --overwrite to replace it"
            )
    log(
        f"{fmt} export written to {out} in {card['export_seconds']} s; parity on {len(check)} "
        f"images: {_parity_summary(card['parity'])}"
    )
    return out


def _check_destination(out: Path, run: Path, overwrite: bool) -> None:
    """Refuse an existing ``out`` without ``overwrite``, or one it may not replace."""
    if (out.exists() or out.is_symlink()) and not overwrite:
        raise FileExistsError(
            f"{out} exists ({ownership.describe(out)}): choose another --out, or --overwrite to "
            f"replace it (an export folder or an empty one only)"
        )
    if out.exists() or out.is_symlink():
        check_replaceable(out, run)  # before any work: a refusal costs nothing


def _load_fp32(run: Path):
    """The run's model in fp32 and in eval mode, as it is exported."""
    from .checkpoint import load_checkpoint

    model = load_checkpoint(run)
    model.set_teacher_precision("fp32")  # exported graphs are fp32, whatever the run trained in
    return model.float().eval()


def _parity_summary(parity: dict) -> str:
    """The parity measured, one clause per runtime: largest difference, verdicts that differ."""
    return "; ".join(
        f"{p['backend']}: max |Δ| {max(p['max_abs_map'], p['max_abs_score']):.2g} = "
        f"{p['max_rel']:.2g} of the {p['relative_to']}, {p['verdicts_differ']} verdicts differ"
        for p in parity.values()
    )


def _write_graph(model, folder: Path, fmt: str, opset: int, run: Path, exporter: str) -> dict:
    """The graph of ``model`` in ``folder`` (``model.onnx``, or OpenVINO's ``model.xml`` + ``model.bin``) and
    its card (without the parity yet): what goes in and out, the run's calibration and configuration, and
    every file's SHA-256."""
    from . import __version__

    size, run_config = int(model.cfg.image_size), model.run_config
    onnx_path = folder / "model.onnx"
    used = _export_onnx(model, size, onnx_path, opset, exporter)
    files = ["model.onnx"]
    if fmt == "openvino":
        _to_openvino(onnx_path, folder / "model.xml")
        onnx_path.unlink()
        files = ["model.xml", "model.bin"]
    return {
        "export_format_version": EXPORT_FORMAT_VERSION,
        "package_version": __version__,
        "format": fmt,
        "model_file": files[0],
        "files": {name: sha256_file(folder / name) for name in files},
        "inputs": {
            INPUT_NAME: f"(batch, 3, {size}, {size}) float32 RGB in [0, 1]; batch 1..{MAX_BATCH}"
        },
        "outputs": {
            OUTPUT_NAMES[0]: f"(batch, 1, {size}, {size}) float32",
            OUTPUT_NAMES[1]: "(batch,) float32",
            OUTPUT_NAMES[2]: "(batch, D) float32: the teacher's image embedding, for routing",
        },
        "method": run_config["method"],
        "teacher": run_config.get("teacher"),
        "image_size": size,
        "normalization": run_config.get("normalization"),
        "threshold": getattr(model, "threshold", None),
        "threshold_rule": run_config.get("threshold_rule"),
        "calibration": run_config.get("calibration"),
        "precision": "fp32",
        "opset": opset,
        "exporter": f"torch {torch.__version__} torch.onnx.export(dynamo={used == 'dynamo'})",
        "source_run": str(run),
        "save_id": run_config.get("save_id"),
        "run_config": run_config,
    }


def check_parity(model, folder: Path, fmt: str, images: np.ndarray, run) -> dict:
    """{backend: parity} of the export in ``folder`` against the PyTorch ``model`` on ``images``, for every
    runtime that can serve it (onnxruntime and OpenVINO for ONNX, OpenVINO for its IR); raises
    :class:`ExportError` beyond :data:`PARITY_TOLERANCE`, for a verdict or route that differs, or when no
    runtime is installed."""
    ref = torch_outputs(model, images)
    threshold, calibration = (
        getattr(model, "threshold", None),
        getattr(model, "verdict_calibration", None),
    )
    out = {}
    for backend in ("onnxruntime", "openvino") if fmt == "onnx" else ("openvino",):
        try:
            served = ExportedModel(folder, backend=backend)
        except CheckpointError:  # that runtime is not installed: the other one is checked
            continue
        parity = {
            **compare(ref, served.outputs(images), threshold, calibration),
            "backend": served.backend,
        }
        if (
            not parity["max_rel"] <= PARITY_TOLERANCE
            or parity["verdicts_differ"]
            or parity.get("routes_differ")
        ):
            worst = max(parity["max_abs_map"], parity["max_abs_score"])
            raise ExportError(
                f"the {fmt} export of {run} served by {served.backend} does not reproduce the "
                f"PyTorch model: max |Δ| {worst:.3g} = {parity['max_rel']:.2g} of the "
                f"{parity['relative_to']} (tolerance {PARITY_TOLERANCE:g}), "
                f"{parity['verdicts_differ']} verdict(s) and {parity.get('routes_differ', 0)} "
                f"route(s) differ"
            )
        out[backend] = parity
    if not out:
        raise ExportError("no runtime to check the export with: pip install 'unistad-edu[export]'")
    return out
