"""The Gradio demo: upload images (or click an example), get anomaly score, verdict and heatmap.

One unified model serves every category (no category picker). It works with a run folder of any method: it
only uses ``load_checkpoint``, ``engine.predict``, the run's ``config.json`` and, if present, ``metrics.json``.
Non-UI logic (safe decoding, default run, model card, load test) lives in :mod:`unistad_edu.demo_support`.

Run it with ``python -m unistad_edu demo [--run RUN]`` or ``python demo/app.py [--run RUN]``; it binds
127.0.0.1 unless ``--host`` says otherwise.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Sequence

import gradio as gr
import numpy as np

from . import demo_support as ds

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
    import torch

    from .checkpoint import load_checkpoint
    from .engine import predict, unlike_training

    run = Path(run_dir)
    model = model if model is not None else load_checkpoint(run)
    cfg = dict(getattr(model, "run_config", None) or {})
    calibrated = getattr(model, "threshold", None)
    size = int(cfg.get("image_size") or model.cfg.image_size)
    examples = ds.example_images(cfg)
    metrics = ds.load_run_metrics(run)
    s_max, s_step, s_value = ds.slider_range({**cfg, "threshold": calibrated})

    model_lock = threading.Lock()  # one model call at a time: safe for any method; decoding and rendering overlap

    def score_arrays(decoded: Sequence[ds.Decoded]) -> list[dict]:
        with model_lock, torch.inference_mode():
            res = predict(model, [d.array for d in decoded])
        return [{"name": d.name, "score": float(r["score"]), "image": r["image"], "map": r["anomaly_map"],
                 "levels": r.get("level_maps") or {}} for d, r in zip(decoded, res)]

    def views(rows, threshold, scale):
        if not rows:
            return [], []
        folder = ds.request_folder(heat_gallery.GRADIO_CACHE)  # this request's own files
        heat = []
        for i, r in enumerate(rows):
            heat += [(ds.write_view(r["image"], folder, f"{i}-input.png"), f"{r['name']} (as the model sees it)"),
                     (ds.write_view(ds.render_overlay(r["image"], r["map"], threshold, scale), folder,
                                    f"{i}-overlay.png"),
                      f"score {r['score']:.4g} · {ds.verdict(r['score'], threshold)}")]
        levels = [(ds.write_view(img, folder, f"{i}-level-{k}.png"), f"{r['name']} · {cap}")
                  for i, r in enumerate(rows) for k, (img, cap) in enumerate(ds.render_levels(r["levels"], size))]
        return heat, levels

    def respond(rows, errors, notes, threshold, scale, extra=""):
        for e in errors:
            gr.Warning(e)
        heat, levels = views(rows, threshold, scale)
        state = [{k: r[k] for k in ("name", "score", "image", "map")} for r in rows]
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
        for r in rows:  # far beyond every category's normal range: say so, not only "ANOMALOUS"
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
        heat, _ = views([{**r, "levels": {}} for r in rows], threshold, scale)
        return ds.status_markdown(rows, [], threshold), ds.results_markdown(rows, threshold), heat

    thr_info = ("calibrated on held-out normal images: "
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
            gr.Markdown(ds.model_card(cfg, metrics, run_dir=run, heading=False), elem_id="model-card")
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


def screenshot(run_dir, out, model=None, width: int = 1280, timeout_s: float = 120.0) -> Path:
    """Render the page in headless Chromium after clicking an example and save a full-page PNG. The example
    is the defective one the model scores highest (an illustration; the model card shows the honest numbers)."""
    import torch
    from playwright.sync_api import sync_playwright

    from .checkpoint import load_checkpoint
    from .engine import predict

    model = model if model is not None else load_checkpoint(run_dir)
    examples = ds.example_images(model.run_config)
    pick = 0
    if examples:
        with torch.inference_mode():
            scores = [r["score"] for r in predict(model, [e.path for e in examples])]
        defects = [i for i, e in enumerate(examples) if e.defect != "good"] or list(range(len(examples)))
        pick = max(defects, key=lambda i: scores[i])
    demo = build_app(run_dir, model=model)
    port = ds.free_port()
    launch(demo, ds.DEFAULT_HOST, port, block=False, quiet=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = ds.launch_chromium(p)
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.set_default_timeout(timeout_s * 1000)
            page.goto(f"http://{ds.DEFAULT_HOST}:{port}/")
            page.locator("#status").wait_for()
            if examples:
                page.locator("#examples button.thumbnail-item").nth(pick).click()
                page.locator("#status").get_by_text("anomaly score").first.wait_for()
                page.locator("#heatmaps img").nth(1).wait_for()
            page.wait_for_timeout(800)
            page.screenshot(path=str(out), full_page=True)
            browser.close()
    finally:
        demo.close()
    return out


def run(args) -> int:
    """The ``demo`` command: resolve the run, then serve, or render a screenshot, or load-test."""
    import json

    from .checkpoint import load_checkpoint

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    run_dir = ds.resolve_run(args.run)
    model = load_checkpoint(run_dir)
    model.teacher.precision = getattr(args, "precision", "auto")  # demo/app.py has no --precision: auto
    max_pixels = int(args.max_megapixels * 1e6)
    if args.bench:
        res = ds.bench_demo(run_dir, n_requests=args.bench_requests, concurrency=args.bench_concurrency,
                            app_concurrency=args.concurrency, model=model)
        Path(args.bench).parent.mkdir(parents=True, exist_ok=True)
        Path(args.bench).write_text(json.dumps(res, indent=2))
        print(json.dumps(res, indent=2))
        print(f"written to {args.bench}")
        return 0 if res["demo"]["failed"] == 0 else 1
    if args.screenshot:
        out = screenshot(run_dir, args.screenshot, model=model)
        print(f"screenshot written to {out}")
        return 0
    if not ds.is_loopback(args.host):
        print(f"warning: serving on {args.host}: anyone who can reach this machine on port {args.port} can use the "
              f"demo (there is no login). Use the default --host 127.0.0.1 to keep it local.", file=sys.stderr)
    own_files = None
    if args.keep_files_minutes > 0:   # a folder of our own inside Gradio's cache, removed when the demo stops
        base = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
        base.mkdir(parents=True, exist_ok=True)
        own_files = Path(tempfile.mkdtemp(prefix="unistad-demo-", dir=base))
        os.environ["GRADIO_TEMP_DIR"] = str(own_files)
    demo = build_app(run_dir, model=model, concurrency=args.concurrency, max_upload_mb=args.max_upload_mb,
                     max_pixels=max_pixels, keep_files_minutes=args.keep_files_minutes,
                     max_request_pixels=int(args.max_request_megapixels * 1e6), max_files=args.max_files)

    def stop(signum, frame):  # SIGTERM (kill, a process manager) stops like Ctrl+C: the server shuts down cleanly
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(f"demo of {run_dir} ({model.run_config.get('method')}) at http://{args.host}:{args.port}/  "
          f"(Ctrl+C to stop)", flush=True)
    try:
        launch(demo, args.host, args.port, block=True)
    finally:
        if own_files is not None:
            shutil.rmtree(own_files, ignore_errors=True)
            print(f"deleted the demo's uploads and rendered images ({own_files})", flush=True)
    return 0


def main(argv=None) -> int:
    parser = ds.add_demo_arguments(argparse.ArgumentParser(prog="demo/app.py", description=__doc__))
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
