"""The demo as a process: serve a run (``python -m unistad_edu demo`` / ``python demo/app.py``), render a
screenshot of the page with headless Chromium, and load-test the running app over loopback.

Apart from the page (:mod:`unistad_edu.demo.page`, which builds and launches the Gradio Blocks) and from the
page's non-UI logic (:mod:`unistad_edu.demo.logic`: decoding, default run, model card): this module imports
both, and neither imports it.

* :func:`run` / :func:`main`: the ``demo`` command -- resolve the run, then serve, or ``--screenshot``, or
  ``--bench``.
* :func:`serve_in_subprocess`: the demo as deployed, a child process on a free loopback port, stopped after.
* :func:`bench_demo`: a load test of the running app with ``gradio_client`` against the bare
  :func:`~unistad_edu.inference.predict` path (same images, same model, same run).

Gradio's client and playwright are imported inside the functions that need them.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..files import atomic_write_text
from ..resolve import resolve_run
from . import logic
from .logic import DEFAULT_CONCURRENCY, DEFAULT_HOST, example_images, free_port
from .page import build_app, launch

log = logging.getLogger("unistad_edu.demo")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-quic",
    "--no-first-run",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def launch_chromium(playwright, headless: bool = True):
    """Debian's Chromium through Playwright's API (Playwright's own browser downloads are not used)."""
    if not Path(CHROMIUM).is_file():
        raise FileNotFoundError(f"{CHROMIUM} not found: apt-get install -y chromium")
    return playwright.chromium.launch(
        executable_path=CHROMIUM, headless=headless, args=CHROMIUM_ARGS
    )


# ---- load test ------------------------------------------------------------------------------------------
def _percentiles(values: Sequence[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return {"p50_ms": None, "p95_ms": None, "mean_ms": None}
    return {
        "p50_ms": round(float(np.percentile(v, 50)) * 1e3, 1),
        "p95_ms": round(float(np.percentile(v, 95)) * 1e3, 1),
        "mean_ms": round(float(v.mean()) * 1e3, 1),
    }


def _timed_pool(fn, items, concurrency: int) -> tuple[list[float], list[str], float]:
    from concurrent.futures import ThreadPoolExecutor

    def one(item):
        t0 = time.perf_counter()
        try:
            fn(item)
            return time.perf_counter() - t0, None
        except Exception as err:  # counted as a failure
            return time.perf_counter() - t0, f"{type(err).__name__}: {err}"

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as ex:
        done = list(ex.map(one, items))
    wall = time.perf_counter() - t0
    return [d for d, e in done if e is None], [e for _, e in done if e is not None], wall


@contextlib.contextmanager
def serve_in_subprocess(
    run_dir,
    concurrency: int = DEFAULT_CONCURRENCY,
    timeout_s: float = 180.0,
    log: Callable[[str], None] = print,
    extra_args: Sequence[str] = (),
    started: list | None = None,
    env: dict | None = None,
):
    """Start ``python -m unistad_edu demo --run RUN [extra_args]`` on a free loopback port in a child process,
    wait until it answers, yield its URL, and stop it (that child only) afterwards. ``started``: a list the
    child's ``Popen`` is appended to (e.g. to watch its memory); ``env``: the child's environment (default:
    this process's)."""
    import subprocess

    port = free_port()
    logf = tempfile.TemporaryFile()
    proc = subprocess.Popen(
        _demo_command(run_dir, port, concurrency, extra_args),
        stdout=logf,
        stderr=subprocess.STDOUT,
        env={**(os.environ if env is None else env), "GRADIO_ANALYTICS_ENABLED": "False"},
    )
    if started is not None:
        started.append(proc)
    url = f"http://{DEFAULT_HOST}:{port}/"
    try:
        waited = _wait_until_serving(proc, logf, url, timeout_s)
        log(f"demo serving at {url} (pid {proc.pid}) after {waited:.1f} s")
        yield url
    finally:
        stop_process(proc, timeout_s=20.0)
        logf.close()


def _demo_command(run_dir, port: int, concurrency: int, extra_args: Sequence[str]) -> list[str]:
    """The command line of the demo serving ``run_dir`` on the loopback ``port``."""
    return [
        sys.executable,
        "-m",
        "unistad_edu",
        "demo",
        "--run",
        str(run_dir),
        "--host",
        DEFAULT_HOST,
        "--port",
        str(port),
        "--concurrency",
        str(concurrency),
        *map(str, extra_args),
    ]


def _wait_until_serving(proc, logf, url: str, timeout_s: float) -> float:
    """Poll ``url`` until the demo in ``proc`` answers; the seconds it took. Raises if the child
    exits (with the end of its log ``logf``) or does not answer within ``timeout_s``."""
    import urllib.request

    t0 = time.perf_counter()
    while True:
        if proc.poll() is not None:
            logf.seek(0)
            raise RuntimeError(
                f"the demo exited with {proc.returncode}:\n{logf.read().decode(errors='replace')[-2000:]}"
            )
        try:
            with urllib.request.urlopen(url + "config", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.perf_counter() - t0 > timeout_s:
            raise TimeoutError(f"the demo did not answer on {url} within {timeout_s:.0f} s")
        time.sleep(0.3)
    return time.perf_counter() - t0


def stop_process(proc, timeout_s: float = 20.0) -> int:
    """Ask a child process to stop (SIGTERM: the demo shuts down cleanly and deletes its files), kill it if it
    has not exited within ``timeout_s``; returns its exit code."""
    import subprocess

    proc.terminate()
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@contextlib.contextmanager
def _in_process(run, model, app_concurrency: int):
    """The demo served by this process on a free loopback port; yields its URL, closes it after."""
    demo = build_app(run, model=model, concurrency=app_concurrency)
    port = free_port()
    launch(demo, DEFAULT_HOST, port, block=False, quiet=True)
    try:
        yield f"http://{DEFAULT_HOST}:{port}/"
    finally:
        demo.close()


def _load_test(url: str, seq: Sequence[Path], thr, concurrency: int, warmup: int):
    """(latencies, errors, wall seconds) of ``seq`` uploaded to the page's ``/predict`` from ``concurrency``
    client threads, after ``warmup`` calls; a reply that is not a score counts as an error."""
    from gradio_client import Client, handle_file

    client = Client(url, verbose=False)

    def call(path):
        out = client.predict([handle_file(str(path))], thr, "fixed", api_name="/predict")
        status = out[0]
        if (
            "refused" in status.lower()
            or "failed" in status.lower()
            or "anomaly score" not in status
        ):
            raise RuntimeError(status)
        return out

    for p in seq[:warmup]:
        call(p)
    return _timed_pool(call, seq, concurrency)


def _bare_timings(infer, seq: Sequence[Path], concurrency: int, warmup: int):
    """(latencies, errors, wall seconds) of the bare model call on each of ``seq``, after ``warmup``
    calls: one call at a time, then from ``concurrency`` threads."""

    def bare(path):
        return infer([str(path)])

    for p in seq[:warmup]:
        bare(p)
    return _timed_pool(bare, seq, 1), _timed_pool(bare, seq, concurrency)


def _timing(lat, err, wall, errors_shown=False) -> dict:
    """One timed pool's report: counts, first errors if ``errors_shown``, latency, throughput."""
    return {
        "ok": len(lat),
        "failed": len(err),
        **({"errors": err[:5]} if errors_shown else {}),
        **_percentiles(lat),
        "throughput_rps": round(len(lat) / wall, 2),
        "wall_s": round(wall, 2),
    }


def _bench_setup(
    run, cfg: dict, n_requests, concurrency, app_concurrency, in_process, n_images, backend
):
    """The load test's report header: what was measured, on which run, settings and machine."""
    import platform

    return {
        "what": "demo load test: gradio_client over loopback vs bare inference.predict (same images, model, run)",
        "run": str(run),
        "method": cfg.get("method"),
        "image_size": cfg.get("image_size"),
        "n_requests": n_requests,
        "client_concurrency": concurrency,
        "app_concurrency_limit": app_concurrency,
        "app": "in this process" if in_process else "child process (python -m unistad_edu demo)",
        "images": n_images,
        "backend": backend,
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}",
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }


def bench_demo(
    run_dir=None,
    n_requests: int = 50,
    concurrency: int = 8,
    app_concurrency: int = DEFAULT_CONCURRENCY,
    images: Sequence | None = None,
    warmup: int = 2,
    model=None,
    in_process: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Load-test the demo over loopback and compare it with the bare model call.

    The app serves ``run_dir`` on a free 127.0.0.1 port - in a child process as deployed
    (``python -m unistad_edu demo --run RUN``), or in this process with ``in_process=True``. ``n_requests``
    uploads are sent from ``concurrency`` client threads with ``gradio_client`` to the endpoint the page uses
    (``/predict``); each is timed end to end (upload, queue, safe decoding, model, heatmap images, download).
    Then the bare path is timed on the same images with the same run's model: ``inference.predict`` on the file,
    one call at a time and from ``concurrency`` threads. Returns counts, failures, p50/p95/mean latency (ms)
    and throughput (requests/s) of each."""
    run = resolve_run(run_dir, log=log)
    model = model if model is not None else logic.load_served_model(run)
    infer, backend = logic.predictor(model)
    if images is None:
        images = [e.path for e in example_images(model.run_config)]
    if not images:
        raise ValueError(
            f"no images to send: {run}'s data_root has no test images; pass images=[...]"
        )
    seq = [Path(images[i % len(images)]) for i in range(n_requests)]
    thr = model.threshold

    server = (
        _in_process(run, model, app_concurrency)
        if in_process
        else serve_in_subprocess(run, concurrency=app_concurrency, log=log)
    )
    with server as url:
        lat, errors, wall = _load_test(url, seq, thr, concurrency, warmup)
    bare_seq, bare_threads = _bare_timings(infer, seq, concurrency, warmup)
    result = {
        **_bench_setup(
            run,
            model.run_config,
            n_requests,
            concurrency,
            app_concurrency,
            in_process,
            len(images),
            backend,
        ),
        "demo": _timing(lat, errors, wall, errors_shown=True),
        "bare_predict_sequential": _timing(*bare_seq),
        f"bare_predict_{concurrency}_threads": _timing(*bare_threads),
    }
    seq_tp = result["bare_predict_sequential"]["throughput_rps"]
    result["demo_throughput_vs_bare_sequential"] = (
        round(result["demo"]["throughput_rps"] / seq_tp, 3) if seq_tp else None
    )
    return result


def screenshot(run_dir, out, model=None, width: int = 1280, timeout_s: float = 120.0) -> Path:
    """Render the page in headless Chromium after clicking an example and save a full-page PNG. The example
    is the defective one the model scores highest (an illustration; the model card shows the honest numbers)."""
    from playwright.sync_api import sync_playwright

    model = model if model is not None else logic.load_served_model(run_dir)
    examples = logic.example_images(model.run_config)
    pick = 0
    if examples:
        infer, _ = logic.predictor(model)
        scores = [r["score"] for r in infer([e.path for e in examples])]
        defects = [i for i, e in enumerate(examples) if e.defect != "good"] or list(
            range(len(examples))
        )
        pick = max(defects, key=lambda i: scores[i])
    demo = build_app(run_dir, model=model)
    port = logic.free_port()
    launch(demo, logic.DEFAULT_HOST, port, block=False, quiet=True)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.set_default_timeout(timeout_s * 1000)
            page.goto(f"http://{logic.DEFAULT_HOST}:{port}/")
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
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    run_dir = resolve_run(args.run)
    model = logic.load_served_model(
        run_dir,
        backend=args.backend,
        threads=getattr(args, "threads", None),
        precision=getattr(args, "precision", "auto"),
    )  # demo/app.py has no --precision
    max_pixels = int(args.max_megapixels * 1e6)
    if args.bench:
        return _run_bench(args, run_dir, model)
    if args.screenshot:
        out = screenshot(run_dir, args.screenshot, model=model)
        print(f"screenshot written to {out}")
        return 0
    return _serve(args, run_dir, model, max_pixels)


def _run_bench(args, run_dir, model) -> int:
    """``--bench``: load-test the demo, write and print the JSON report; 1 if a request failed."""
    import json

    res = bench_demo(
        run_dir,
        n_requests=args.bench_requests,
        concurrency=args.bench_concurrency,
        app_concurrency=args.concurrency,
        model=model,
    )
    Path(args.bench).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.bench), json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    print(f"written to {args.bench}")
    return 0 if res["demo"]["failed"] == 0 else 1


def _own_files_folder() -> Path:
    """A folder of the demo's own inside Gradio's cache, made ``GRADIO_TEMP_DIR``; its path."""
    base = Path(os.environ.get("GRADIO_TEMP_DIR") or Path(tempfile.gettempdir()) / "gradio")
    base.mkdir(parents=True, exist_ok=True)
    own_files = Path(tempfile.mkdtemp(prefix="unistad-demo-", dir=base))
    os.environ["GRADIO_TEMP_DIR"] = str(own_files)
    return own_files


def _serve(args, run_dir, model, max_pixels: int) -> int:
    """Serve the demo until Ctrl+C or SIGTERM, then delete its uploads and rendered images."""
    if not logic.is_loopback(args.host):
        print(
            f"warning: serving on {args.host}: anyone who can reach this machine on port {args.port} can use the "
            f"demo (there is no login). Use the default --host 127.0.0.1 to keep it local.",
            file=sys.stderr,
        )
    own_files = None
    if (
        args.keep_files_minutes > 0
    ):  # a folder of our own inside Gradio's cache, removed when the demo stops
        own_files = _own_files_folder()
    demo = build_app(
        run_dir,
        model=model,
        concurrency=args.concurrency,
        max_upload_mb=args.max_upload_mb,
        max_pixels=max_pixels,
        keep_files_minutes=args.keep_files_minutes,
        max_request_pixels=int(args.max_request_megapixels * 1e6),
        max_files=args.max_files,
    )

    def stop(
        signum, frame
    ):  # SIGTERM (kill, a process manager) stops like Ctrl+C: the server shuts down cleanly
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    print(
        f"demo of {run_dir} ({model.run_config.get('method')}, served by {logic.predictor(model)[1]}) at "
        f"http://{args.host}:{args.port}/  (Ctrl+C to stop)",
        flush=True,
    )
    try:
        launch(demo, args.host, args.port, block=True)
    finally:
        if own_files is not None:
            shutil.rmtree(own_files, ignore_errors=True)
            print(f"deleted the demo's uploads and rendered images ({own_files})", flush=True)
    return 0


def main(argv=None) -> int:
    parser = logic.add_demo_arguments(
        argparse.ArgumentParser(prog="demo/app.py", description=__doc__)
    )
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
