"""The Gradio demo: upload images (or click an example), get anomaly score, verdict and heatmap.

One unified model serves every category (no category picker). It works with a run folder of any method (it
only uses ``load_checkpoint``, ``inference.predict``, the run's ``config.json`` and, if present, ``metrics.json``)
and with an export folder (``python -m unistad_edu export``), served by onnxruntime or OpenVINO without PyTorch;
the model card says which backend serves it.
Non-UI logic (safe decoding, default run, model card, load test) lives in :mod:`unistad_edu.demo_support`.

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

from . import demo_support as ds
from . import resolve

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


def build_app(run_dir, model=None, concurrency: int = ds.DEFAULT_CONCURRENCY,
              max_upload_mb: float = ds.DEFAULT_MAX_UPLOAD_MB, max_pixels: int = ds.DEFAULT_MAX_PIXELS,
              queue_size: int = ds.DEFAULT_QUEUE_SIZE, keep_files_minutes: float = ds.DEFAULT_KEEP_FILES_MINUTES,
              max_request_pixels: int = ds.DEFAULT_MAX_REQUEST_PIXELS, max_files: int = ds.MAX_FILES_PER_REQUEST):
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
    from .report import unlike_training

    run = Path(run_dir)
    model = model if model is not None else ds.load_served_model(run)
    infer, backend = ds.predictor(model)  # PyTorch, or onnxruntime / OpenVINO for an export folder
    cfg = dict(getattr(model, "run_config", None) or {})
    calibrated = getattr(model, "threshold", None)
    size = int(cfg.get("image_size") or ds.served_image_size(model))
    examples = ds.example_images(cfg)
    metrics = resolve.load_run_metrics(run)
    s_max, s_step, s_value = ds.slider_range({**cfg, "threshold": calibrated})

    model_lock = threading.Lock()  # one model call at a time: safe for any method; decoding and rendering overlap

    def score_arrays(decoded: Sequence[ds.Decoded]) -> list[dict]:
        with model_lock:
            res = infer([d.array for d in decoded])
        return [{"name": d.name, "score": float(r["score"]), "image": r["image"], "map": r["anomaly_map"],
                 "levels": r.get("level_maps") or {}, "category": r.get("category"), "z": r.get("z"),
                 "calibrated": r.get("threshold"), "notice": r.get("notice")} for d, r in zip(decoded, res)]

    def judged(rows, threshold):
        """Each row with the threshold its verdict uses: its routed category's calibrated one, or the slider's
        value for every image once the slider was moved from its start."""
        moved = threshold is not None and s_value is not None and abs(threshold - s_value) > s_step / 2
        return [{**r, "threshold": threshold if moved or r.get("calibrated") is None else r["calibrated"]}
                for r in rows]

    def views(rows, scale):
        if not rows:
            return [], []
        folder = ds.request_folder(heat_gallery.GRADIO_CACHE)  # this request's own files
        heat = []
        for i, r in enumerate(rows):
            thr = r["threshold"]
            heat += [(ds.write_view(ds.render_input(r["image"], r["map"], thr), folder, f"{i}-input.png"),
                      f"{r['name']} (as the model sees it; outline: map > threshold)"),
                     (ds.write_view(ds.render_overlay(r["image"], r["map"], thr, scale), folder,
                                    f"{i}-overlay.png"),
                      f"score {r['score']:.4g}" + (f" · {r['category']}" if r.get("category") else "")
                      + f" · {ds.verdict(r['score'], thr)}")]
        levels = [(ds.write_view(img, folder, f"{i}-level-{k}.png"), f"{r['name']} · {cap}")
                  for i, r in enumerate(rows) for k, (img, cap) in enumerate(ds.render_levels(r["levels"], size))]
        return heat, levels

    def respond(rows, errors, notes, threshold, scale, extra=""):
        for e in errors:
            gr.Warning(e)
        rows = judged(rows, threshold)
        heat, levels = views(rows, scale)
        state = [{k: r.get(k) for k in ("name", "score", "image", "map", "category", "z", "calibrated")}
                 for r in rows]
        return (ds.status_markdown(rows, errors, threshold, notes, extra), ds.results_markdown(rows, threshold),
                heat, levels, state, ds.result_record(rows, errors, threshold))

    def run_files(items: Sequence[tuple[str, str]], threshold, scale, extra=""):
        """items: (path, display name). Decode each safely, score the good ones, report the bad ones."""
        threshold = _to_float(threshold, calibrated)
        t0 = time.perf_counter()
        decoded, errors, notes = [], [], []
        if len(items) > max_files:
            left = [name for _, name in items[max_files:]]
            errors.append(f"{len(items)} files in one request, more than the limit of {max_files} (file-count "
                          f"limit): not scored: {', '.join(left[:5])}{' ...' if len(left) > 5 else ''} - send "
                          f"them in another request")
            items = items[:max_files]
        budget = ds.PixelBudget(max_request_pixels)
        for path, name in items:
            try:  # one file at a time, reduced to (size, size) at once: never all full-size arrays together
                d = ds.decode_upload(path, name=name, max_pixels=max_pixels, size=size, budget=budget)
            except ds.UploadError as err:
                errors.append(str(err))
                continue
            decoded.append(d)
            if d.note:
                notes.append(f"{d.name}: {d.note}")
        rows = []
        if decoded:
            try:
                rows = score_arrays(decoded)
            except Exception as err:  # keep serving; say what happened
                log.exception("scoring failed")
                errors.append(f"scoring failed ({type(err).__name__}: {err}); the demo keeps running")
        for r in rows:  # unlike every trained category: say so, not only "ANOMALOUS"
            if r.get("category") is None:  # one global threshold: judged from the score alone
                r["notice"] = unlike_training(r["score"], cfg.get("validation") or {})
            if r["notice"]:
                notes.append(f"{r['name']}: {r['notice']}")
        log.info("scored %d image(s), refused %d, in %.2f s", len(rows), len(errors), time.perf_counter() - t0)
        return respond(rows, errors, notes, threshold, scale, extra)

    def on_upload(files, threshold, scale):
        if not files:
            return respond([], [], [], _to_float(threshold, calibrated), scale)
        files = files if isinstance(files, (list, tuple)) else [files]
        return run_files([(str(f), ds.display_name(f)) for f in files], threshold, scale)

    def on_example(threshold, scale, evt: gr.SelectData):
        idx = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not isinstance(idx, int) or not 0 <= idx < len(examples):
            return respond([], ["that example is not available"], [], _to_float(threshold, calibrated), scale)
        ex = examples[idx]
        name = f"{ex.category}/{ex.defect}/{ex.path.name}"
        return run_files([(str(ex.path), name)], threshold, scale,
                         extra=f"Example from the run's test set: category **{ex.category}**, "
                               f"{'a normal image' if ex.defect == 'good' else f'defect **{ex.defect}**'}.")

    def on_threshold(threshold, scale, state):
        rows = state or []
        threshold = _to_float(threshold, calibrated)
        rows = judged(rows, threshold)
        heat, _ = views([{**r, "levels": {}} for r in rows], scale)
        return ds.status_markdown(rows, [], threshold), ds.results_markdown(rows, threshold), heat

    routed = getattr(model, "verdict_calibration", None) is not None and model.verdict_calibration.routed
    thr_info = ("each image is routed to its category and judged at that category's calibrated threshold; moving "
                "the slider sets one threshold for every image" if routed else
                "calibrated on held-out normal images: "
                f"{calibrated:.4g}" if calibrated is not None else "this run has no calibrated threshold: choose one")
    with gr.Blocks(title="unistad-edu demo", analytics_enabled=False,
                   delete_cache=ds.delete_cache_setting(keep_files_minutes)) as demo:
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=2, min_width=320):
                files = gr.File(label=f"Upload images ({ds.FORMAT_HINT}; up to {max_upload_mb:g} MB each)",
                                file_count="multiple", type="filepath", elem_id="upload", height=140)
                threshold = gr.Slider(0.0, s_max, value=s_value, step=s_step, label="Threshold (score > threshold "
                                      "means anomalous)", info=thr_info, elem_id="threshold")
                scale = gr.Radio([("fixed: 0 → threshold (red = above it)", "fixed"),
                                  ("per image: its own min → max", "image")], value="fixed",
                                 label="Heatmap colour scale", elem_id="scale")
                button = gr.Button("Score the uploaded images", variant="primary", elem_id="score-button")
                gr.Markdown("**Examples** (from the run's test set: normal and defective; click one to score it)"
                            if examples else "_No example images: the run's data folder "
                                             f"`{ds.short_path(cfg.get('data_root', '?'))}` is not available here._")
                ex_gallery = gr.Gallery(
                    value=[(ds.thumbnail(e.path, 112), e.caption) for e in examples] if examples else None,
                    columns=4, height="auto", allow_preview=False, show_label=False, elem_id="examples",
                    visible=bool(examples), interactive=False)
            with gr.Column(scale=3, min_width=360):
                status = gr.Markdown("Upload an image, or click an example.", elem_id="status", label="status")
                results = gr.Markdown("", elem_id="results", label="results")
                heat_gallery = heat = gr.Gallery(label="Input and heatmap overlay", columns=2, height="auto",
                                                 elem_id="heatmaps",
                                  object_fit="contain", interactive=False, format="png")  # lossless, as drawn
                with gr.Accordion("Per-level maps (one per teacher level, each on its own colour scale)",
                                  open=False, elem_id="levels-accordion"):
                    levels = gr.Gallery(label="per-level maps", show_label=False, columns=3, height="auto",
                                        elem_id="levels",
                                        interactive=False)
        with gr.Accordion("Model card", open=True, elem_id="model-card-accordion"):
            gr.Markdown(ds.model_card(cfg, metrics, run_dir=run, heading=False, backend=backend),
                        elem_id="model-card")
        state = gr.State([])
        record = gr.JSON(visible=False, label="result")   # for API clients: exact scores and verdicts

        outputs = [status, results, heat, levels, state, record]
        scoring = "score"  # one concurrency limit for every event that decodes and scores (not one per event)
        files.upload(on_upload, [files, threshold, scale], outputs, api_visibility="private", concurrency_id=scoring)
        button.click(on_upload, [files, threshold, scale], outputs, api_name="predict", concurrency_id=scoring)
        ex_gallery.select(on_example, [threshold, scale], outputs, api_visibility="private", concurrency_id=scoring)
        files.clear(lambda: ("Upload an image, or click an example.", "", [], [], [], None), None, outputs,
                    api_visibility="private", queue=False)
        for ev in (threshold.change, scale.change):  # slider drag or typed value: re-judge, no model call
            ev(on_threshold, [threshold, scale, state], [status, results, heat], api_visibility="private",
               concurrency_limit=None, trigger_mode="always_last")

    demo.queue(default_concurrency_limit=max(1, int(concurrency)), max_size=queue_size)
    demo.unistad_launch = {"max_file_size": int(max_upload_mb * 1024 * 1024), "css": CSS, "ssr_mode": False,
                           "show_error": False}
    demo.unistad_run = run
    return demo


def launch(demo, host: str = ds.DEFAULT_HOST, port: int = ds.DEFAULT_PORT, block: bool = True, quiet: bool = False):
    """Start the server (upload size limit, no SSR, no share link). ``block=False`` returns at once."""
    return demo.launch(server_name=host, server_port=port, prevent_thread_lock=not block, quiet=quiet, share=False,
                       inbrowser=False, **getattr(demo, "unistad_launch", {}))
