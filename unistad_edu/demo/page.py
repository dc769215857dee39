"""The Gradio demo: upload images (or click an example), get anomaly score, verdict and heatmap.

One unified model serves every category (no category picker). It works with a run folder of any method (it
only uses ``load_checkpoint``, ``inference.predict``, the run's ``config.json`` and, if present, ``metrics.json``)
and with an export folder (``python -m unistad_edu export``), served by onnxruntime or OpenVINO without PyTorch;
the model card says which backend serves it.
Non-UI logic (safe decoding, default run, model card, load test) lives in :mod:`unistad_edu.demo.logic`.

Run it with ``python -m unistad_edu demo [--run RUN]`` or ``python demo/app.py [--run RUN]``; it binds
127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Sequence

import gradio as gr
import numpy as np

from .. import resolve
from . import logic

log = logging.getLogger("unistad_edu.demo")

INTRO = """# unistad-edu · unified anomaly detection demo
One model, trained on **normal images only** of several product categories at once, scores any image from
those categories: the higher the **anomaly score**, the less the image looks like the normal ones it learned;
the **heatmap** shows where. Upload one or several images, or click an example below.
"""

CSS = """
#status {min-height: 2.5em}
#examples .grid-wrap, #heatmaps .grid-wrap, #levels .grid-wrap {min-height: 0 !important; max-height: none !important}
#results table {font-variant-numeric: tabular-nums}
"""


def _to_float(value, default):
    try:
        v = float(value)
        return v if np.isfinite(v) else default
    except (TypeError, ValueError):
        return default


class Page:
    """What the page does on each event, without its layout: the served model (a run or an export folder),
    its calibration and the request limits; ``on_upload`` / ``on_example`` / ``on_threshold`` return the
    outputs of the page's components. ``cache_dir``: where rendered pictures go (Gradio's cache, once the page
    is built)."""

    def __init__(
        self,
        run_dir,
        model=None,
        max_pixels: int = logic.DEFAULT_MAX_PIXELS,
        max_request_pixels: int = logic.DEFAULT_MAX_REQUEST_PIXELS,
        max_files: int = logic.MAX_FILES_PER_REQUEST,
    ):
        self.run = Path(run_dir)
        self.model = model if model is not None else logic.load_served_model(self.run)
        self.infer, self.backend = logic.predictor(
            self.model
        )  # PyTorch, or onnxruntime / OpenVINO (export)
        self.run_config = dict(getattr(self.model, "run_config", None) or {})
        self.calibrated = getattr(self.model, "threshold", None)
        self.size = int(self.run_config.get("image_size") or logic.served_image_size(self.model))
        self.examples = logic.example_images(self.run_config)
        self.metrics = resolve.load_run_metrics(self.run)
        self.slider = logic.slider_range(
            {**self.run_config, "threshold": self.calibrated}
        )  # (max, step, value)
        self.max_pixels, self.max_request_pixels, self.max_files = (
            max_pixels,
            max_request_pixels,
            max_files,
        )
        self.model_lock = (
            threading.Lock()
        )  # one model call at a time (any method); decoding, rendering overlap
        self.cache_dir = None

    def threshold_info(self) -> str:
        cal = getattr(self.model, "verdict_calibration", None)
        if cal is not None and cal.routed:
            return (
                "each image is routed to its category and judged at that category's calibrated threshold; "
                "moving the slider sets one threshold for every image"
            )
        if self.calibrated is not None:
            return f"calibrated on held-out normal images: {self.calibrated:.4g}"
        return "this run has no calibrated threshold: choose one"

    def score_arrays(self, decoded: Sequence[logic.Decoded]) -> list[dict]:
        with self.model_lock:
            res = self.infer([d.array for d in decoded])
        return [
            {
                "name": d.name,
                "score": float(r["score"]),
                "image": r["image"],
                "map": r["anomaly_map"],
                "levels": r.get("level_maps") or {},
                "category": r.get("category"),
                "z": r.get("z"),
                "calibrated": r.get("threshold"),
                "notice": r.get("notice"),
            }
            for d, r in zip(decoded, res)
        ]

    def judged(self, rows, threshold):
        """Each row with the threshold its verdict uses: its routed category's calibrated one, or the slider's
        value for every image once the slider was moved from its start."""
        _, step, start = self.slider
        moved = threshold is not None and start is not None and abs(threshold - start) > step / 2
        return [
            {
                **r,
                "threshold": threshold if moved or r.get("calibrated") is None else r["calibrated"],
            }
            for r in rows
        ]

    def views(self, rows, scale):
        """(input + overlay pictures, per-level pictures) of ``rows``, written to this request's own folder."""
        if not rows:
            return [], []
        folder = logic.request_folder(self.cache_dir)
        heat = []
        for i, r in enumerate(rows):
            thr = r["threshold"]
            seen = logic.render_input(r["image"], r["map"], thr)
            overlay = logic.render_overlay(r["image"], r["map"], thr, scale)
            heat += [
                (
                    logic.write_view(seen, folder, f"{i}-input.png"),
                    f"{r['name']} (as the model sees it; outline: map > threshold)",
                ),
                (
                    logic.write_view(overlay, folder, f"{i}-overlay.png"),
                    f"score {r['score']:.4g}"
                    + (f" · {r['category']}" if r.get("category") else "")
                    + f" · {logic.verdict(r['score'], thr)}",
                ),
            ]
        levels = [
            (logic.write_view(img, folder, f"{i}-level-{k}.png"), f"{r['name']} · {cap}")
            for i, r in enumerate(rows)
            for k, (img, cap) in enumerate(logic.render_levels(r["levels"], self.size))
        ]
        return heat, levels

    def respond(self, rows, errors, notes, threshold, scale, extra=""):
        for e in errors:
            gr.Warning(e)
        rows = self.judged(rows, threshold)
        heat, levels = self.views(rows, scale)
        state = [
            {k: r.get(k) for k in ("name", "score", "image", "map", "category", "z", "calibrated")}
            for r in rows
        ]
        return (
            logic.status_markdown(rows, errors, threshold, notes, extra),
            logic.results_markdown(rows, threshold),
            heat,
            levels,
            state,
            logic.result_record(rows, errors, threshold),
        )

    def decode(self, items: Sequence[tuple[str, str]]):
        """(decoded images, refusals, notes) of ``items`` (path, display name): at most ``max_files``, each
        reduced to the model's size at once (never all full-size arrays together), within the request's
        pixel budget."""
        decoded, errors, notes = [], [], []
        if len(items) > self.max_files:
            left = [name for _, name in items[self.max_files :]]
            errors.append(
                f"{len(items)} files in one request, more than the limit of {self.max_files} (file-count "
                f"limit): not scored: {', '.join(left[:5])}{' ...' if len(left) > 5 else ''} - send "
                f"them in another request"
            )
            items = items[: self.max_files]
        budget = logic.PixelBudget(self.max_request_pixels)
        for path, name in items:
            try:
                d = logic.decode_upload(
                    path, name=name, max_pixels=self.max_pixels, size=self.size, budget=budget
                )
            except logic.UploadError as err:
                errors.append(str(err))
                continue
            decoded.append(d)
            if d.note:
                notes.append(f"{d.name}: {d.note}")
        return decoded, errors, notes

    def run_files(self, items: Sequence[tuple[str, str]], threshold, scale, extra=""):
        """items: (path, display name). Decode each safely, score the good ones, report the bad ones."""
        from ..report import unlike_training

        threshold = _to_float(threshold, self.calibrated)
        t0 = time.perf_counter()
        decoded, errors, notes = self.decode(items)
        rows = []
        if decoded:
            try:
                rows = self.score_arrays(decoded)
            except Exception as err:  # keep serving; say what happened
                log.exception("scoring failed")
                errors.append(
                    f"scoring failed ({type(err).__name__}: {err}); the demo keeps running"
                )
        for r in rows:  # unlike every trained category: say so, not only "ANOMALOUS"
            if r.get("category") is None:  # one global threshold: judged from the score alone
                r["notice"] = unlike_training(r["score"], self.run_config.get("validation") or {})
            if r["notice"]:
                notes.append(f"{r['name']}: {r['notice']}")
        log.info(
            "scored %d image(s), refused %d, in %.2f s",
            len(rows),
            len(errors),
            time.perf_counter() - t0,
        )
        return self.respond(rows, errors, notes, threshold, scale, extra)

    def on_upload(self, files, threshold, scale):
        if not files:
            return self.respond([], [], [], _to_float(threshold, self.calibrated), scale)
        files = files if isinstance(files, (list, tuple)) else [files]
        return self.run_files([(str(f), logic.display_name(f)) for f in files], threshold, scale)

    def on_example(self, threshold, scale, evt: gr.SelectData):
        idx = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not isinstance(idx, int) or not 0 <= idx < len(self.examples):
            return self.respond(
                [],
                ["that example is not available"],
                [],
                _to_float(threshold, self.calibrated),
                scale,
            )
        ex = self.examples[idx]
        kind = "a normal image" if ex.defect == "good" else f"defect **{ex.defect}**"
        return self.run_files(
            [(str(ex.path), f"{ex.category}/{ex.defect}/{ex.path.name}")],
            threshold,
            scale,
            extra=f"Example from the run's test set: category **{ex.category}**, {kind}.",
        )

    def on_threshold(self, threshold, scale, state):
        threshold = _to_float(threshold, self.calibrated)
        rows = self.judged(state or [], threshold)
        heat, _ = self.views([{**r, "levels": {}} for r in rows], scale)
        return (
            logic.status_markdown(rows, [], threshold),
            logic.results_markdown(rows, threshold),
            heat,
        )


def build_app(
    run_dir,
    model=None,
    concurrency: int = logic.DEFAULT_CONCURRENCY,
    max_upload_mb: float = logic.DEFAULT_MAX_UPLOAD_MB,
    max_pixels: int = logic.DEFAULT_MAX_PIXELS,
    queue_size: int = logic.DEFAULT_QUEUE_SIZE,
    keep_files_minutes: float = logic.DEFAULT_KEEP_FILES_MINUTES,
    max_request_pixels: int = logic.DEFAULT_MAX_REQUEST_PIXELS,
    max_files: int = logic.MAX_FILES_PER_REQUEST,
):
    """The demo as a ``gr.Blocks`` over the run folder ``run_dir`` (``model``: an already loaded model of it).

    The queue is configured here: ``concurrency`` requests are processed at once (safe decoding and heatmap
    rendering overlap; the model call itself is serialised by a lock, so any method is safe), ``queue_size``
    more wait; the upload, button and example events share that one limit. ``max_pixels`` caps width x height
    of one upload, ``max_request_pixels`` their sum over one request and ``max_files`` the number of files
    scored per request; each image is reduced to the model's size as soon as it is decoded, so a worker holds
    one full-size image at a time. Every rendered picture is written to a folder of its own request (never a
    file another request is being sent), inside Gradio's cache. Launch it with :func:`launch`, which also
    applies the upload size limit ``max_upload_mb``. Uploads and rendered images are deleted once older than
    ``keep_files_minutes`` and when the server stops (0: kept, Gradio's default) -- they are other people's data."""
    page = Page(
        run_dir,
        model,
        max_pixels=max_pixels,
        max_request_pixels=max_request_pixels,
        max_files=max_files,
    )
    with gr.Blocks(
        title="unistad-edu demo",
        analytics_enabled=False,
        delete_cache=logic.delete_cache_setting(keep_files_minutes),
    ) as demo:
        parts = _layout(page, max_upload_mb)
        _wire(page, parts)
    demo.queue(default_concurrency_limit=max(1, int(concurrency)), max_size=queue_size)
    demo.unistad_launch = {
        "max_file_size": int(max_upload_mb * 1024 * 1024),
        "css": CSS,
        "ssr_mode": False,
        "show_error": False,
    }
    demo.unistad_run = page.run
    return demo


def _layout(page: Page, max_upload_mb: float) -> dict:
    """The page's components (inside an open ``gr.Blocks``), by name."""
    gr.Markdown(INTRO)
    with gr.Row():
        c = _input_column(page, max_upload_mb)
        c.update(_output_column())
    _model_card_panel(page)
    c["state"] = gr.State([])
    c["record"] = gr.JSON(
        visible=False, label="result"
    )  # for API clients: exact scores and verdicts
    page.cache_dir = c["heat"].GRADIO_CACHE
    return c


def _input_column(page: Page, max_upload_mb: float) -> dict:
    """The left column: upload, threshold, colour scale, score button and examples, by name."""
    s_max, s_step, s_value = page.slider
    c = {}
    with gr.Column(scale=2, min_width=320):
        c["files"] = gr.File(
            label=f"Upload images ({logic.FORMAT_HINT}; up to {max_upload_mb:g} MB each)",
            file_count="multiple",
            type="filepath",
            elem_id="upload",
            height=140,
        )
        c["threshold"] = gr.Slider(
            0.0,
            s_max,
            value=s_value,
            step=s_step,
            elem_id="threshold",
            label="Threshold (score > threshold means anomalous)",
            info=page.threshold_info(),
        )
        c["scale"] = gr.Radio(
            [
                ("fixed: 0 → threshold (red = above it)", "fixed"),
                ("per image: its own min → max", "image"),
            ],
            value="fixed",
            label="Heatmap colour scale",
            elem_id="scale",
        )
        c["button"] = gr.Button(
            "Score the uploaded images", variant="primary", elem_id="score-button"
        )
        c["examples"] = _examples_gallery(page)
    return c


def _examples_gallery(page: Page):
    """The examples' heading and clickable gallery (hidden when the run's data is not here)."""
    examples = page.examples
    data_root = logic.short_path(page.run_config.get("data_root", "?"))
    gr.Markdown(
        "**Examples** (from the run's test set: normal and defective; click one to score it)"
        if examples
        else f"_No example images: the run's data folder `{data_root}` is not available here._"
    )
    return gr.Gallery(
        value=[(logic.thumbnail(e.path, 112), e.caption) for e in examples] if examples else None,
        columns=4,
        height="auto",
        allow_preview=False,
        show_label=False,
        elem_id="examples",
        visible=bool(examples),
        interactive=False,
    )


def _output_column() -> dict:
    """The right column: status, results table, heatmap gallery and per-level maps, by name."""
    c = {}
    with gr.Column(scale=3, min_width=360):
        c["status"] = gr.Markdown(
            "Upload an image, or click an example.", elem_id="status", label="status"
        )
        c["results"] = gr.Markdown("", elem_id="results", label="results")
        c["heat"] = gr.Gallery(
            label="Input and heatmap overlay",
            columns=2,
            height="auto",
            elem_id="heatmaps",
            object_fit="contain",
            interactive=False,
            format="png",
        )  # lossless, as drawn
        with gr.Accordion(
            "Per-level maps (one per teacher level, each on its own colour scale)",
            open=False,
            elem_id="levels-accordion",
        ):
            c["levels"] = gr.Gallery(
                label="per-level maps",
                show_label=False,
                columns=3,
                height="auto",
                elem_id="levels",
                interactive=False,
            )
    return c


def _model_card_panel(page: Page) -> None:
    """The open accordion with the served model's card."""
    with gr.Accordion("Model card", open=True, elem_id="model-card-accordion"):
        gr.Markdown(
            logic.model_card(
                page.run_config, page.metrics, run_dir=page.run, heading=False, backend=page.backend
            ),
            elem_id="model-card",
        )


def _wire(page: Page, c: dict) -> None:
    """The page's events: upload, button and example share one concurrency limit (they decode and score);
    the slider and the colour scale re-judge without a model call."""
    outputs = [c[k] for k in ("status", "results", "heat", "levels", "state", "record")]
    inputs = [c["files"], c["threshold"], c["scale"]]
    scoring = (
        "score"  # one concurrency limit for every event that decodes and scores (not one per event)
    )
    c["files"].upload(
        page.on_upload, inputs, outputs, api_visibility="private", concurrency_id=scoring
    )
    c["button"].click(page.on_upload, inputs, outputs, api_name="predict", concurrency_id=scoring)
    c["examples"].select(
        page.on_example,
        [c["threshold"], c["scale"]],
        outputs,
        api_visibility="private",
        concurrency_id=scoring,
    )
    c["files"].clear(
        lambda: ("Upload an image, or click an example.", "", [], [], [], None),
        None,
        outputs,
        api_visibility="private",
        queue=False,
    )
    for ev in (
        c["threshold"].change,
        c["scale"].change,
    ):  # slider drag or typed value: re-judge, no model call
        ev(
            page.on_threshold,
            [c["threshold"], c["scale"], c["state"]],
            [c["status"], c["results"], c["heat"]],
            api_visibility="private",
            concurrency_limit=None,
            trigger_mode="always_last",
        )


def launch(
    demo,
    host: str = logic.DEFAULT_HOST,
    port: int = logic.DEFAULT_PORT,
    block: bool = True,
    quiet: bool = False,
):
    """Start the server (upload size limit, no SSR, no share link). ``block=False`` returns at once."""
    return demo.launch(
        server_name=host,
        server_port=port,
        prevent_thread_lock=not block,
        quiet=quiet,
        share=False,
        inbrowser=False,
        **getattr(demo, "unistad_launch", {}),
    )
