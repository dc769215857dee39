"""What the Gradio demo needs that is not UI, so it can be tested without a browser.

* :func:`decode_upload` turns an uploaded file into an (H, W, 3) uint8 array or raises :class:`UploadError`
  with a message written for the person who uploaded it (empty file, text renamed ``.png``, truncated PNG,
  unsupported format, too many pixels / decompression bomb). 16-bit, RGBA, grayscale and palette images are
  converted (``data.to_rgb_image``), and the note says what was converted.
* which run the demo serves: ``resolve.resolve_run`` (with no ``--run``, the README's main job -- a memory bank
  -- built once on the synthetic set into ``$UNISTAD_CACHE/demo_run`` and reused after).
* :func:`model_card`, :func:`example_images`, :func:`render_overlay`: the texts and pictures the page shows.
* :func:`bench_demo`: a load test of the running app over loopback with ``gradio_client`` against the bare
  :func:`~unistad_edu.inference.predict` path (same images, same model, same run).

Gradio, gradio_client and playwright are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

from ..data import (
    DECODE_FORMATS,
    MAX_IMAGE_PIXELS,
    DataError,
    ImageRejected,
    PixelBudget,
    decode_image,
)

# ---- settings -------------------------------------------------------------------------------------------
DEFAULT_HOST = (
    "127.0.0.1"  # loopback only; --host 0.0.0.0 exposes the demo to the network, deliberately
)
DEFAULT_PORT = 7860
DEFAULT_MAX_UPLOAD_MB = 20.0
DEFAULT_CONCURRENCY = (
    2  # requests processed at once (the rest wait in the queue); 2 suits a 2-core CPU
)
DEFAULT_KEEP_FILES_MINUTES = (
    60.0  # uploads and rendered images are deleted after an hour, and at stop
)
DEFAULT_QUEUE_SIZE = 64  # waiting requests beyond this are refused with "queue full"
DEFAULT_MAX_PIXELS = min(
    MAX_IMAGE_PIXELS, 40_000_000
)  # per file; the model works at a few hundred pixels anyway
DEFAULT_MAX_REQUEST_PIXELS = (
    100_000_000  # per request, summed over its files (headers, before any decoding)
)
MAX_FILES_PER_REQUEST = 16
SUPPORTED_FORMATS = DECODE_FORMATS  # the package's one allow-list
FORMAT_HINT = "PNG, JPEG, BMP, TIFF or WebP"


# ---- the model the demo serves ----------------------------------------------------------------------------
def load_served_model(
    run_dir, backend: str = "auto", threads: int | None = None, precision: str = "auto"
):
    """The model of a run folder (PyTorch, teacher at ``precision``) or of an export folder (onnxruntime or
    OpenVINO, ``backend``; no PyTorch imported)."""
    from ..export_runtime import ExportedModel, is_export

    if is_export(run_dir):
        return ExportedModel(run_dir, backend=backend, threads=threads)
    from ..checkpoint import load_checkpoint

    model = load_checkpoint(run_dir)
    model.set_teacher_precision(precision)
    return model


def predictor(model):
    """``(predict(images) -> inference.predict's per-image dicts, backend description)`` for a PyTorch model or an
    :class:`~unistad_edu.export_runtime.ExportedModel`: the one call the demo, its load test and its screenshot
    make, whatever serves the model."""
    from ..export_runtime import ExportedModel

    if isinstance(model, ExportedModel):
        return model.predict, model.backend
    import torch

    from ..inference import predict

    def run(images):
        with torch.inference_mode():
            return predict(model, images)

    device = next(model.parameters()).device
    return run, f"PyTorch {torch.__version__} ({device.type}, {torch.get_num_threads()} threads)"


def served_image_size(model) -> int:
    size = getattr(model, "image_size", None)
    return int(size if size is not None else model.cfg.image_size)


# ---- safe decoding ----------------------------------------------------------------------------------------
class UploadError(ValueError):
    """An uploaded file cannot be scored; ``str(err)`` is a message for the page (it names the file), ``reason``
    the word of ``data.IMAGE_REJECTIONS`` it comes from."""

    def __init__(self, message: str, reason: str = ""):
        super().__init__(message)
        self.reason = reason


@dataclass
class Decoded:
    name: str
    array: np.ndarray  # (H, W, 3) uint8
    note: str  # what was converted, e.g. "16-bit grayscale -> 8-bit RGB"; "" if nothing


_MODE_NOTES = {
    "I;16": "16-bit grayscale rescaled to 8-bit RGB",
    "I;16B": "16-bit grayscale rescaled to 8-bit RGB",
    "I;16L": "16-bit grayscale rescaled to 8-bit RGB",
    "I": "32-bit integer image rescaled to 8-bit RGB",
    "F": "floating-point image rescaled to 8-bit RGB",
    "L": "grayscale expanded to RGB",
    "LA": "grayscale + alpha: alpha composited on black",
    "RGBA": "alpha channel composited on black",
    "PA": "palette + alpha: alpha composited on black",
    "P": "palette image expanded to RGB",
    "1": "1-bit image expanded to RGB",
    "CMYK": "CMYK converted to RGB",
    "YCbCr": "YCbCr converted to RGB",
}

#: the page's words for each reason ``data.decode_image`` refuses a file for (written for the person uploading)
UPLOAD_TEXT = {
    "unreadable": "{name}: the upload could not be read ({error}); please try again",
    "empty": "{name} is an empty (0-byte) file, not an image: upload a " + FORMAT_HINT + " file",
    "bomb": "{name} is refused: its dimensions are so large that decoding it could exhaust memory "
    "(decompression-bomb guard). Downscale it below {limit_mp:.0f} megapixels",
    "text": "{name} is a text file, not an image Pillow can read (whatever its extension says): upload a "
    + FORMAT_HINT
    + " file",
    "not_image": "{name} is not an image file Pillow can read (whatever its extension says): upload a "
    + FORMAT_HINT
    + " file",
    "format": "{name} is a {format} file, which the demo does not decode: convert it to "
    + FORMAT_HINT,
    "too_many_pixels": "{name} is {width} x {height} = {megapixels:.1f} megapixels, more than the demo's limit of "
    "{limit_mp:.0f} megapixels (pixel cap): downscale it first - the model looks at a few "
    "hundred pixels anyway",
    "too_small": "{name} is only {width} x {height} pixels: too small to inspect",
    "budget": "{name} is refused: with it this request's images would add up to {megapixels:.0f} megapixels, more "
    "than the per-request budget of {limit_mp:.0f} (request pixel budget): send it in a request of its "
    "own, or downscale it",
    "memory": "{name} is too large to decode on this machine: downscale it first",
    "corrupt": "{name} is corrupt or truncated ({error}): re-export it as " + FORMAT_HINT,
    "not_rgb": "{name}: could not convert its {mode} pixels to RGB",
}


def upload_message(err: ImageRejected) -> str:
    """The page text for a refused upload."""
    return UPLOAD_TEXT[err.reason].format(name=err.name, **err.facts)


def decode_upload(
    path,
    name: str | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    size: int | None = None,
    budget: PixelBudget | None = None,
) -> Decoded:
    """One uploaded file through the package's one decoder (``data.decode_image``: every check before any pixel
    is decoded, EXIF orientation applied, RGB in bands, reduced at once to the model's ``size`` with the resize
    ``inference.predict`` uses), formats limited to :data:`SUPPORTED_FORMATS`; a refusal becomes an
    :class:`UploadError` with the page's words for its reason (:data:`UPLOAD_TEXT`)."""
    name = name or Path(path).name
    try:
        arr, mode = decode_image(
            path, name, size, max_pixels, SUPPORTED_FORMATS, exif_orientation=True, budget=budget
        )
    except ImageRejected as err:
        raise UploadError(upload_message(err), err.reason) from err
    return Decoded(name=name, array=arr, note=_MODE_NOTES.get(mode, ""))


def request_folder(cache_dir) -> Path:
    """A new folder of its own for one request's rendered pictures, inside Gradio's cache ``cache_dir`` (so
    Gradio serves and ages them out without copying). Pictures of identical requests never share a file, so
    one is never rewritten while it is being sent."""
    base = Path(cache_dir) / "unistad-views"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix="req-", dir=base))


def write_view(image: np.ndarray, folder: Path, name: str) -> str:
    """Write one (H, W, 3) uint8 picture as a PNG (lossless, as drawn) into a request's folder; its path."""
    path = Path(folder) / name
    Image.fromarray(np.ascontiguousarray(image)).save(path, format="PNG", compress_level=1)
    return str(path)


def display_name(path) -> str:
    """The file name a user gave an upload (Gradio keeps it as the last path component)."""
    return Path(str(path)).name or str(path)


# ---- examples -------------------------------------------------------------------------------------------
@dataclass
class Example:
    path: Path
    category: str
    defect: str  # "good" or the defect folder name

    @property
    def caption(self) -> str:
        return f"{self.category} · {self.defect}"


def example_images(cfg: dict, per_category_defects: int = 2, limit: int = 18) -> list[Example]:
    """Test images from the run's ``data_root`` (config.json): per category one ``test/good`` image and up to
    ``per_category_defects`` defective ones of different kinds. Empty if the data folder is not available."""
    from ..data import discover_categories, scan_category

    root = cfg.get("data_root")
    if not root or not Path(root).is_dir():
        return []
    try:
        found = discover_categories(root)
    except (DataError, OSError):
        return []
    cats = [c for c in (cfg.get("train_categories") or sorted(found)) if c in found]
    out: list[Example] = []
    for cat in cats:
        try:
            records = scan_category(cat, found[cat], "test", check_masks=False)
        except (DataError, OSError):
            continue
        good = [r for r in records if r.label == 0][:1]
        defects, seen = [], set()
        for r in records:
            if r.label == 1 and r.defect not in seen and len(defects) < per_category_defects:
                defects.append(r)
                seen.add(r.defect)
        out += [Example(r.path, cat, r.defect) for r in good + defects]
    return out[:limit]


# ---- what the page shows --------------------------------------------------------------------------------
def verdict(score: float, threshold: float | None) -> str:
    """The verdict's word: the one rule of :func:`unistad_edu.calibration.verdict`."""
    from ..calibration import verdict as rule

    judged = rule(score, threshold)
    return "no threshold" if judged is None else "ANOMALOUS" if judged else "normal"


def _thr(row: dict, threshold: float | None) -> float | None:
    """The threshold a row is judged at: its own (routed category's) when it has one."""
    t = row.get("threshold", threshold)
    return None if t is None else float(t)


def result_record(rows: Sequence[dict], errors: Sequence[str], threshold: float | None) -> dict:
    """What the ``/predict`` API returns for programs (last output): exact scores, not the page's rounded text.
    ``{"threshold": t, "results": [{"name", "category", "score", "z", "threshold", "anomalous", "notice"}],
    "errors": [...]}``: each image's routed ``category`` (None for a run with one global threshold), the
    ``threshold`` it was judged at, its standardised score ``z``; ``anomalous`` is ``score > threshold`` (None
    without a threshold)."""
    from ..calibration import verdict as rule

    thr = None if threshold is None else float(threshold)
    return {
        "threshold": thr,
        "results": [
            {
                "name": r["name"],
                "category": r.get("category"),
                "score": float(r["score"]),
                "z": r.get("z"),
                "threshold": _thr(r, thr),
                "anomalous": rule(float(r["score"]), _thr(r, thr)),
                "notice": r.get("notice"),
            }
            for r in rows
        ],
        "errors": [str(e) for e in errors],
    }


def slider_range(cfg: dict) -> tuple[float, float, float]:
    """(maximum, step, initial value) for the threshold slider, from the calibrated threshold and the held-out
    normal scores in config.json."""
    thr = cfg.get("threshold")
    per = (cfg.get("validation") or {}).get("per_class") or {}
    top = max([v.get("max", 0.0) for v in per.values()] + [thr or 0.0])
    maximum = 3.0 * top if top > 0 else 1.0
    maximum = float(f"{maximum:.2g}")
    step = maximum / 1000
    return maximum, step, float(thr) if thr is not None else 0.0


def thumbnail(path, size: int = 112) -> np.ndarray:
    """A small RGB preview of a (trusted) dataset image."""
    from ..data import load_image

    return load_image(path, size)


def render_overlay(
    image: np.ndarray, anomaly_map: np.ndarray, threshold: float | None, scale: str = "fixed"
) -> np.ndarray:
    """The heatmap overlay with its colour bar and labelled ticks (uint8). ``scale="fixed"``: colours from 0 to
    the threshold, so red means "at or above the threshold" and normal images stay cold; ``"image"``: each map's
    own min -> max (the bar says which)."""
    from ..viz import heatmap_with_colorbar

    return heatmap_with_colorbar(
        image, anomaly_map, threshold, "fixed" if scale == "fixed" else "image"
    )


def render_input(image: np.ndarray, anomaly_map: np.ndarray, threshold: float | None) -> np.ndarray:
    """The image as the model sees it, with the predicted region (map > threshold) outlined in cyan -- what
    anomalib's inferencer shows as the predicted mask."""
    from ..viz import outline_region

    return outline_region(image, anomaly_map, threshold)


def render_levels(level_maps: dict, size: int) -> list[tuple[np.ndarray, str]]:
    """Each per-level map coloured on its own scale and enlarged to ``size`` (nearest), with a caption."""
    from ..viz import colorize

    out = []
    for name, m in level_maps.items():
        m = np.asarray(m, dtype=np.float32)
        img = Image.fromarray(colorize(m)).resize((size, size), Image.NEAREST)
        out.append(
            (np.asarray(img), f"{name} ({m.shape[0]}x{m.shape[1]}, max {float(m.max()):.3g})")
        )
    return out


def results_markdown(rows: Sequence[dict], threshold: float | None) -> str:
    """A Markdown table of scored images: name, score, threshold, verdict."""
    if not rows:
        return ""
    routed = any(r.get("category") for r in rows)
    lines = (
        [
            "| image | routed category | anomaly score | threshold | verdict |",
            "|---|---|---:|---:|---|",
        ]
        if routed
        else ["| image | anomaly score | threshold | verdict |", "|---|---:|---:|---|"]
    )
    for r in rows:
        t = _thr(r, threshold)
        v = verdict(r["score"], t)
        shown = f"**{v}**" if v == "ANOMALOUS" else v
        cat = f" {_md_escape(r.get('category') or 'n/a')} |" if routed else ""
        lines.append(
            f"| {_md_escape(r['name'])} |{cat} {r['score']:.4g} | {'n/a' if t is None else f'{t:.4g}'} "
            f"| {shown} |"
        )
    return "\n".join(lines)


def status_markdown(
    rows: Sequence[dict],
    errors: Sequence[str],
    threshold: float | None,
    notes: Sequence[str] = (),
    extra: str = "",
) -> str:
    """The status line(s): a summary of the verdicts, then one line per refused upload."""
    parts = []
    if rows:
        n_bad = sum(1 for r in rows if verdict(r["score"], _thr(r, threshold)) == "ANOMALOUS")
        if len(rows) == 1:
            r = rows[0]
            t = _thr(r, threshold)
            cat = f" (routed to **{_md_escape(r['category'])}**)" if r.get("category") else ""
            parts.append(
                f"**{_md_escape(r['name'])}: {verdict(r['score'], t)}**{cat} - anomaly score "
                f"{r['score']:.4g} vs threshold {'n/a' if t is None else f'{t:.4g}'}."
            )
        else:
            per = len({_thr(r, threshold) for r in rows}) > 1
            parts.append(
                f"**{len(rows)} images scored: {n_bad} anomalous, {len(rows) - n_bad} normal** "
                + (
                    "(each at its routed category's threshold)."
                    if per
                    else f"(threshold {'n/a' if threshold is None else f'{threshold:.4g}'})."
                )
            )
    for e in errors:
        parts.append(f"⚠️ **Upload refused:** {_md_escape(e)}")
    for n in notes:
        parts.append(f"ℹ️ {_md_escape(n)}")
    if extra:
        parts.append(extra)
    return "\n\n".join(parts) if parts else "Upload an image, or click an example."


def _md_escape(text: str) -> str:
    out = str(text)
    for ch in "\\`*_[]<>|#":
        out = out.replace(ch, "\\" + ch)
    return out


def short_path(path) -> str:
    """A path with the home folder written as ``~`` (for what the page and screenshots show)."""
    text = str(path)
    home = str(Path.home())
    return (
        "~" + text[len(home) :]
        if home not in ("", "/") and text.startswith(home + os.sep)
        else text
    )


def _fmt(v, digits=4) -> str:
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return "n/a" if math.isnan(v) else f"{v:.{digits}g}"
    return str(v)


def _threshold_line(cfg: dict) -> str:
    """The model card's threshold line: how the run was calibrated."""
    cal = cfg.get("calibration") or {}
    if cal.get("kind") in ("per-category", "clusters"):
        groups = cal.get("groups") or {}
        return (
            f"- **Thresholds:** one per {'training category' if cal['kind'] == 'per-category' else 'pseudo-category'}"
            f" ({len(groups)}), the image routed to it by the teacher's embedding (no category is given); "
            f"pooled threshold {_fmt(cal.get('global_threshold'))} for comparison."
        )
    return (
        f"- **Threshold:** {_fmt(cfg.get('threshold'))} - {cfg.get('threshold_rule', 'no rule recorded')}; "
        f"one threshold for all categories."
    )


def model_card(
    cfg: dict,
    metrics: dict | None = None,
    run_dir=None,
    heading: bool = True,
    backend: str | None = None,
) -> str:
    """A Markdown model card from config.json (and metrics.json if present); ``backend``: what serves it."""
    lines = (["### Model card"] if heading else []) + _card_facts(cfg, run_dir)
    if backend:
        lines.append(f"- **Served by:** {backend}.")
    lines += _card_threshold_table(cfg)
    lines += _card_metrics(metrics)
    return "\n".join(lines)


def _card_facts(cfg: dict, run_dir) -> list[str]:
    """The model card's bullets: method, teacher, training data, image size, threshold, package."""
    teacher = cfg.get("teacher") or {}
    cats = cfg.get("train_categories") or []
    mc = cfg.get("method_config") or {}
    return [
        f"- **Method:** {cfg.get('method', '?').upper()} - one unified model for all categories "
        f"(it never sees a category label; there is no category picker).",
        f"- **Teacher (frozen, ImageNet-pretrained):** `{teacher.get('name', '?')}`, layers "
        f"{', '.join(map(str, teacher.get('layers') or [])) or '?'}; weights: {teacher.get('weights_source', '?')}.",
        f"- **Training data:** {cfg.get('train_images', '?')} normal images of {len(cats)} categories "
        f"({', '.join(cats) or '?'}) from `{short_path(cfg.get('data_root', '?'))}`"
        + (f"; {cfg.get('epochs_done')} epochs" if cfg.get("epochs_done") else "")
        + (
            f" ({cfg.get('train_seconds'):.0f} s)"
            if isinstance(cfg.get("train_seconds"), (int, float))
            else ""
        )
        + ".",
        f"- **Image size:** {cfg.get('image_size', '?')} x {cfg.get('image_size', '?')} px (uploads are resized to it).",
        _threshold_line(cfg)
        + f" Image score = {((mc.get('scoring') or {}).get('image_score') or 'max')} of the anomaly map; "
        f"verdict = score > threshold.",
        f"- **Package:** unistad-edu {cfg.get('package_version', '?')}"
        + (f"; run folder `{short_path(run_dir)}`" if run_dir else "")
        + ".",
    ]


def _card_threshold_table(cfg: dict) -> list[str]:
    """The model card's table of thresholds per (pseudo-)category, else of held-out normal scores
    per category; no lines when config.json has neither."""
    cal = cfg.get("calibration") or {}
    per = (cfg.get("validation") or {}).get("per_class") or {}
    if cal.get("kind") in ("per-category", "clusters"):
        return [
            "",
            f"**Thresholds per {'category' if cal['kind'] == 'per-category' else 'pseudo-category'}** "
            f"(each image is routed to the nearest by its teacher embedding; a {cal.get('tail')} tail of "
            f"each group's held-out normal scores, quantile {cal.get('quantile')}):",
            "",
            "| category | held-out n | mean | threshold |",
            "|---|---:|---:|---:|",
        ] + [
            f"| {c} | {g.get('n', '?')} | {_fmt(g.get('mean'))} | {_fmt(g.get('threshold'))} |"
            for c, g in (cal.get("groups") or {}).items()
        ]
    if per:
        return [
            "",
            "**Held-out normal scores per category** (what one shared threshold has to fit):",
            "",
            "| category | n | mean | max |",
            "|---|---:|---:|---:|",
        ] + [
            f"| {c} | {s.get('n', '?')} | {_fmt(s.get('mean'))} | {_fmt(s.get('max'))} |"
            for c, s in per.items()
        ]
    return []


def _card_metrics(metrics: dict | None) -> list[str]:
    """The model card's test metrics per category (metrics.json), or how to add them."""
    from ..report import format_table

    if metrics and metrics.get("categories"):
        cols = [
            c
            for c in ("I-AUROC", "I-AP", "P-AUROC", "AUPRO", "mAD")
            if c in metrics.get("mean", {})
        ]
        return [
            "",
            f"**Test metrics per category** (x100, from `metrics.json`, setting "
            f"{metrics.get('setting', '?')}):",
            "",
            format_table(metrics, columns=cols),
        ]
    return [
        "",
        "_No `metrics.json` in the run folder: run `python -m unistad_edu eval --run RUN` to add "
        "per-category metrics here._",
    ]


# ---- networking and the browser -------------------------------------------------------------------------
def delete_cache_setting(keep_minutes: float) -> tuple[int, int] | None:
    """Gradio's ``delete_cache=(every, older_than)`` in seconds for keeping files ``keep_minutes``; None keeps
    them forever (``keep_minutes <= 0``). Gradio also deletes every file the app made when the server stops."""
    if keep_minutes is None or keep_minutes <= 0:
        return None
    age = max(1, int(round(keep_minutes * 60)))
    return max(1, age // 2), age


def free_port(host: str = DEFAULT_HOST) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def is_loopback(host: str) -> bool:
    return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")


def add_demo_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The options of ``python -m unistad_edu demo`` and ``python demo/app.py`` (values checked as parsed)."""
    from .. import options
    from ..export_runtime import BACKENDS

    p.add_argument(
        "--run",
        default=None,
        help="run folder (model.safetensors + config.json) or export folder "
        "(export.json). Default: the README's main job (a memory bank, 256 px) built once on the "
        "synthetic set into $UNISTAD_CACHE/demo_run",
    )
    p.add_argument(
        "--backend",
        choices=BACKENDS,
        default="auto",
        help="for an export folder (python -m unistad_edu export): its runtime (auto: onnxruntime for "
        "ONNX, OpenVINO for OpenVINO IR); PyTorch is not used",
    )
    p.add_argument(
        "--host",
        default=DEFAULT_HOST,
        help="interface to bind (default 127.0.0.1, this machine only; "
        "0.0.0.0 exposes the demo to your network)",
    )
    p.add_argument("--port", type=options.port, default=DEFAULT_PORT)
    limits = (  # flag, parser, default, help: the serving limits, each checked as parsed
        (
            "--max-upload-mb",
            options.positive_float,
            DEFAULT_MAX_UPLOAD_MB,
            "largest accepted upload",
        ),
        (
            "--max-megapixels",
            options.positive_float,
            DEFAULT_MAX_PIXELS / 1e6,
            "largest accepted image (width x height)",
        ),
        (
            "--max-request-megapixels",
            options.positive_float,
            DEFAULT_MAX_REQUEST_PIXELS / 1e6,
            "largest sum of width x height over the files of one request",
        ),
        (
            "--max-files",
            options.positive_int,
            MAX_FILES_PER_REQUEST,
            "most files scored per request; the rest are refused with a message",
        ),
        (
            "--concurrency",
            options.positive_int,
            DEFAULT_CONCURRENCY,
            "requests processed at once (default 2); further requests wait in the queue",
        ),
    )
    for flag, parse, default, text in limits:
        p.add_argument(flag, type=parse, default=default, help=text)
    p.add_argument(
        "--keep-files-minutes",
        type=options.nonnegative_float,
        default=DEFAULT_KEEP_FILES_MINUTES,
        help="delete uploads and rendered images older than this (checked every half of it), and all "
        "of them when the demo stops (Ctrl+C or SIGTERM: they live in a folder of the demo's own "
        "under $GRADIO_TEMP_DIR); 0 keeps them (Gradio's default)",
    )
    p.add_argument(
        "--screenshot",
        default=None,
        metavar="PNG",
        help="render the page with headless Chromium into PNG (after scoring an example) and exit",
    )
    p.add_argument(
        "--bench",
        default=None,
        metavar="JSON",
        help="load-test the app with gradio_client against bare predict(), write JSON and exit",
    )
    p.add_argument("--bench-requests", type=options.positive_int, default=50)
    p.add_argument("--bench-concurrency", type=options.positive_int, default=8)
    return p
