"""Lesson 11 -- serving the demo: a run folder behind Gradio on loopback, queried with gradio_client. Cells for
``notebooks/11_serving_the_demo.ipynb`` (built by ``notebooks/_build.py``)."""

from _cells import code, exercise, md

CELLS = [
    md(r"""
# Lesson 11 — Serving: the demo on loopback, queried from code, and stopped again

Every lesson so far scored images inside the notebook. A model someone else can *use* is served: a process
holds the model and answers requests. The package's demo does that with [Gradio](https://www.gradio.app):
`python -m unistad_edu demo --run RUN` loads a **run folder**, and serves a page where one uploads images and
gets an anomaly score, a verdict and a heatmap. The same page is an HTTP API, which
[`gradio_client`](https://www.gradio.app/guides/getting-started-with-the-python-client) calls from Python.

In this lesson we go through the whole path, and we check each step against the package's own numbers:

1. **train** a small unified model and save it as a run folder (weights + `config.json`) — what gets served;
2. **launch** the demo from the notebook, bound to **127.0.0.1** (loopback) on a free port;
3. **query** it with `gradio_client`: normal and defective images, a bad upload, a few timings — and compare
   what comes back with `inference.predict` on the same images in the notebook;
4. **stop** it, and show that it is really gone;
5. **export** the same run to ONNX, serve it with onnxruntime and OpenVINO — no PyTorch — check that it gives
   the same answers, and time the three backends.
"""),
    code(r"""
import atexit
import contextlib
import json
import os
import shutil
import socket
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import psutil
from gradio_client import Client, handle_file
from IPython.display import Markdown, display
from PIL import Image

from unistad_edu import MVTecDataset, TrainConfig, build_model, evaluate, fit, load_checkpoint, predict, report, viz
from unistad_edu.demo import logic
from unistad_edu.demo import serving
from unistad_edu.course import method_and_teacher, setup
from unistad_edu.metrics import load_metrics, save_metrics

lesson = setup(["bottle", "cookie", "metal_plate"])   # quick/full switch (UNISTAD_QUICK), device, data, categories
QUICK, device, root, CATEGORIES = lesson.quick, lesson.device, lesson.root, lesson.categories
OVERRIDES = dict(image_size=128, epochs=4, batch_size=8) if QUICK else dict(image_size=256)
N_TRAIN = 40 if QUICK else None      # normal training images per category (None: all)
N_TEST = 16 if QUICK else None       # test images per category for the model card's metrics (None: all)
QUICK_STEPS = 80                     # optimiser steps in quick mode
N_TIMED = 6 if QUICK else 30         # requests timed in section 5
print(lesson.describe(method="stpm", overrides=OVERRIDES))
"""),
    md(r"""
## 1. Something to serve: a run folder

The demo never sees a Python object from our notebook: it loads a **run folder** from disk, like any other
program would. `fit(..., out=RUN)` writes one: the student's weights (`model.safetensors`), a
`config.json` that says how to rebuild the model (method, its config, which teacher — name, layers and a hash
of its weights) and the **threshold** calibrated on held-out normal images, plus a training log and a resume
state. We add the test metrics (`metrics.json`) so that the page's model card can show them.

The model is a unified STPM (lesson 02) on several categories at once — one model, no category picker. Its
quality is not the topic; any method's run folder is served the same way.
"""),
    code(r"""
cfg, teacher = method_and_teacher(lesson, "stpm", **OVERRIDES)  # cpu preset if offline
SIZE = cfg.image_size
train = MVTecDataset(root, "train", categories=CATEGORIES, image_size=SIZE).evenly(N_TRAIN)
test = MVTecDataset(root, "test", categories=CATEGORIES, image_size=SIZE).evenly(N_TEST)
EPOCHS = cfg.epochs
if QUICK:  # enough epochs for ~QUICK_STEPS batches (fit holds 10 % out and drops the last partial batch)
    EPOCHS = max(cfg.epochs, -(-QUICK_STEPS // max(1, int(0.9 * len(train)) // cfg.batch_size)))

WORK = Path(tempfile.mkdtemp(prefix="unistad_lesson11_"))   # removed at the end of the lesson
RUN = WORK / "run"
model = build_model("stpm", teacher, cfg=cfg).to(device)
result = fit(model, train, TrainConfig(epochs=EPOCHS, batch_size=cfg.batch_size, device=device, progress=False),
             out=RUN, extra_config={"data_root": str(Path(root).resolve()), "setting": "unified",
                                    "preset": lesson.preset, "trained_by": "lesson 11"})
save_metrics(evaluate(model, test, progress=False), RUN / "metrics.json")
THRESHOLD = result.threshold
print(f"trained {result.epochs_done} epochs in {result.seconds:.0f} s on {len(train)} normal images; "
      f"threshold {THRESHOLD:.4g}\n")
for p in sorted(RUN.iterdir()):
    print(f"  {p.name:26s} {p.stat().st_size / 1024:9.1f} KiB")
"""),
    md(r"""
What the server needs is `model.safetensors` + `config.json` (and `metrics.json` for the card);
`train_state.safetensors` (optimiser state, to `--resume` training) and `train_log.jsonl` are for training only.
`safetensors` holds tensors and nothing else — unlike a pickled `.pt` file, loading it cannot run code, which
matters the moment a run folder comes from someone else.

The **model card** below is what the page shows under the results: built by `logic.model_card` from
`config.json` and `metrics.json` alone. It states what a user must know before trusting a verdict: which
categories the model was trained on, at what image size, and how the threshold was chosen.
"""),
    code(r"""
run_config = json.loads((RUN / "config.json").read_text())
display(Markdown(logic.model_card(run_config, load_metrics(RUN / "metrics.json"), run_dir=RUN)))
"""),
    md(r"""
The notebook loads the run folder exactly as the server will (`load_checkpoint`, which also checks that the
teacher, the tensors and the config belong together). Its scores are the reference the served ones must
match. First, a sanity check that the folder reproduces the model we just trained:
"""),
    code(r"""
served_model = load_checkpoint(RUN)          # what the demo process loads, loaded here
examples = logic.example_images(run_config)     # the page's example images: per category a normal one and defects
paths = [e.path for e in examples]
direct = predict(served_model, paths)        # inference.predict: the package's own scoring path
in_memory = predict(model, paths)
gap = max(abs(a["score"] - b["score"]) / abs(b["score"]) for a, b in zip(direct, in_memory))
print(f"{len(examples)} example images ({sum(e.defect == 'good' for e in examples)} normal); scores of the "
      f"reloaded vs the in-memory model differ by at most {gap:.2e} (relative)")
"""),
    md(r"""
## 2. Launch it — where, and how

**Where: loopback.** A server *binds* an address. `127.0.0.1` (loopback) is an address only this machine can
reach: a browser or a script **on this machine** can connect, nothing from the network can — though every user
and process on this machine can, so loopback is not a login. `0.0.0.0` binds every interface: anyone who can
route packets to this machine reaches the demo — no login, no TLS, and your CPU scores whatever they upload.
That is why `DEFAULT_HOST` is `127.0.0.1` and Gradio's public share links are switched off (`share=False`).

To let someone in **deliberately**, keep the server on loopback and open one door:

* an SSH tunnel — `ssh -L 7860:127.0.0.1:7860 you@server` on your laptop, then open `http://127.0.0.1:7860`:
  only people with an SSH account get in;
* a reverse proxy (nginx, Caddy) that adds TLS and authentication in front of the loopback server;
* or, on a network you trust, `python -m unistad_edu demo --host 0.0.0.0` — the command warns that there is no
  login.

**How: a child process.** Two ways exist: `page.launch(build_app(RUN), block=False)` runs the server on
threads *inside* the notebook's kernel; `logic.serve_in_subprocess(RUN)` starts the deployment command
`python -m unistad_edu demo --run RUN --host 127.0.0.1 --port PORT` as a **child process**, waits until it
answers, and terminates it when the `with` block ends. We use the child process:

* it is the same command a user runs, so we test and time what is deployed, and the client's work in the
  notebook does not compete with the server for one Python interpreter;
* stopping a process is complete by construction: when it exits, the OS closes its socket and frees its
  threads and memory. An in-process server (`demo.close()`) frees the port too, but its threads, queue and a
  second copy of the model live on in the kernel.

The price is a few seconds to start a second Python. And if the notebook never reaches the "stop" cell? Jupyter
starts each kernel as the leader of its own process group, and signals the whole group when it restarts or
shuts the kernel down — our child goes with it. For a plain interpreter exit (these cells run as a script) we
also register the stop with `atexit`.
`free_port` asks the OS for a port nobody uses (bind to port 0), so two runs of this lesson never collide.

A server also writes **files**: Gradio keeps every upload, and every picture it sends back, in its cache folder
(`GRADIO_TEMP_DIR`, by default `/tmp/gradio`), and the client saves what it downloads. Uploads are other
people's data, so the demo keeps them in a folder of its own inside that cache, deletes files older than
`--keep-files-minutes` (default 60) and removes the whole folder when it stops. We point both caches into the
lesson's folder, to watch that happen. (The child process inherits the kernel's
environment, so setting `os.environ` before the launch reaches it.)
"""),
    code(r"""
SERVER_FILES, CLIENT_FILES = WORK / "server_files", WORK / "client_files"
os.environ["GRADIO_TEMP_DIR"] = str(SERVER_FILES)   # the child's upload and output cache
server = contextlib.ExitStack()                 # holds the `with serve_in_subprocess(...)` open across cells
atexit.register(server.close)                   # safety net: stop the child if the kernel exits early
t0 = time.perf_counter()
URL = server.enter_context(serving.serve_in_subprocess(RUN, timeout_s=300))
START_S = time.perf_counter() - t0
HOST, PORT = httpx.URL(URL).host, httpx.URL(URL).port

# the child process, found among this kernel's children by the port it was told to use
proc = next(p for p in psutil.Process().children(recursive=True)
            if "unistad_edu" in p.cmdline() and str(PORT) in p.cmdline())
listening = [c.laddr for c in proc.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
print(f"pid {proc.pid}: {' '.join(proc.cmdline()[1:])}")
print(f"started in {START_S:.1f} s; listening on {[f'{a.ip}:{a.port}' for a in listening]}")
"""),
    md(r"""
Do not take the `--host` argument's word for it: the operating system's list of the process's sockets
(above, via `psutil`) says which address it really listens on. And from this machine's *other* addresses —
the ones the network sees — the port is closed:
"""),
    code(r"""
def refuses(host, port, timeout=2.0):
    # True if nothing accepts a TCP connection at host:port
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return False
    except OSError:
        return True


other_addresses = sorted({a.address for addrs in psutil.net_if_addrs().values() for a in addrs
                          if a.family == socket.AF_INET and not logic.is_loopback(a.address)})
print(f"127.0.0.1:{PORT} accepts connections: {not refuses('127.0.0.1', PORT)}")
other_refused = {addr: refuses(addr, PORT) for addr in other_addresses}
for addr, refused in other_refused.items():
    print(f"{addr}:{PORT} accepts connections: {not refused}")
if not other_addresses:
    print("(this machine has no non-loopback IPv4 address to try)")
"""),
    md(r"""
## 3. Query it from Python

`gradio_client.Client(URL)` reads the app's description and lists its **API endpoints**. The page wires
several events (upload, clicking an example, moving the threshold slider); only one is published as an API,
`/predict` — the "Score" button. The others are `api_visibility="private"` in `build_app`: an API is a
promise, and the fewer we make, the fewer we must keep.
"""),
    code(r"""
client = Client(URL, verbose=False, download_files=str(CLIENT_FILES), analytics_enabled=False)
api = client.view_api(print_info=False, return_format="dict")
for name, ep in api["named_endpoints"].items():
    print(f"endpoint {name}")
    for p in ep["parameters"]:
        print(f"  in : {p['parameter_name']:10s} {p['python_type']['type']:26s} {p['label']}")
    for r in ep["returns"]:
        print(f"  out: {r['label']:26s} {r['python_type']['type']}")
print("unnamed endpoints:", len(api.get("unnamed_endpoints", {})))
"""),
    md(r"""
Three inputs: the files, the threshold, the heatmap colour scale. Five outputs, in this order: a status line
and a results table (Markdown strings, for people), the heatmap gallery (for each image: the image as the model
sees it, then the overlay), the per-level maps, and `result` — a JSON record for programs, hidden on the page:
the threshold, and per image its name, its **exact** score and `anomalous` (score > threshold), plus the
refusal messages. The page's table rounds scores to 4 significant digits for reading; a program should never
parse it. We send every example image, one request each, at the calibrated threshold.
"""),
    code(r"""
def ask(files, threshold=THRESHOLD):
    # one request to /predict; returns (status text, per-image results of the JSON record, heat gallery, levels)
    status, table, heat, levels, record = client.predict([handle_file(str(f)) for f in files], threshold, "fixed",
                                                         api_name="/predict")
    assert record["threshold"] == threshold
    return status, record["results"], heat, levels


served = []
for e, d in zip(examples, direct):
    status, rows, heat, levels = ask([e.path])
    assert len(rows) == 1, status
    served.append({"category": e.category, "defect": e.defect, "served score": rows[0]["score"],
                   "direct score": d["score"], "served verdict": logic.verdict(rows[0]["score"], THRESHOLD),
                   "served anomalous": rows[0]["anomalous"], "direct anomalous": d["anomalous"],
                   "direct verdict": logic.verdict(d["score"], THRESHOLD), "heat": heat, "levels": levels})
rel_gap = [abs(s["served score"] - s["direct score"]) / abs(s["direct score"]) for s in served]
display(Markdown(report.markdown_table([{k: v for k, v in s.items() if k not in ("heat", "levels")} | {"relative gap": g}
                                     for s, g in zip(served, rel_gap)], digits=5)))
print(f"largest relative gap served vs direct: {max(rel_gap):.1e}")
"""),
    md(r"""
Same scores (to float precision), same verdicts — the server computes what `inference.predict` computes, on
the same run folder. (Is
the model any good? The model card's metrics say that; the verdict column compared with the `defect` column
shows it image by image.)

The **heatmaps** come back as image files. The demo asks its gallery for PNG (Gradio's default is lossy
WebP), so each served overlay should match the overlay the notebook draws with `logic.render_overlay`
from `predict`'s anomaly map at its routed threshold (the colour bar ends there), up to rounding — and be far from any other image's. Still, never read numbers off
a picture: the exact score is in the JSON record.
"""),
    code(r"""
def load_rgb(item):
    return np.asarray(Image.open(item["image"]).convert("RGB"), dtype=np.float32)


mine = [logic.render_overlay(d["image"], d["anomaly_map"], d["threshold"], "fixed").astype(np.float32) for d in direct]
theirs = [load_rgb(s["heat"][1]) for s in served]          # gallery item 1 = the overlay (item 0 = the input)


def mean_abs_diff(a, b):
    # mean |a - b| in 0..255 over the part both pictures cover: the colour bar's tick labels are as wide as
    # their text, so two images' overlays can differ in width by a few pixels
    h, w = min(a.shape[0], b.shape[0]), min(a.shape[1], b.shape[1])
    return np.abs(a[:h, :w] - b[:h, :w]).mean()


assert all(t.shape == m.shape for t, m in zip(theirs, mine)), "a served overlay has another size than its own"
diff = np.array([[mean_abs_diff(t, m) for m in mine] for t in theirs])   # served i vs direct j
own = np.diag(diff)
others = np.where(np.eye(len(diff), dtype=bool), np.inf, diff).min(axis=1)
print(f"mean |served - direct| per pixel, own overlay: at most {own.max():.2f} of 255; "
      f"nearest other image's overlay: at least {others.min():.2f}")
show = [i for i, s in enumerate(served) if s["defect"] == "good"][:1] + \
       [i for i, s in enumerate(served) if s["defect"] != "good"][:3]
viz.image_grid([theirs[i].astype(np.uint8) for i in show] + [mine[i].astype(np.uint8) for i in show],
               [f"served: {served[i]['category']}/{served[i]['defect']} {served[i]['served score']:.4g}" for i in show]
               + ["drawn in the notebook" for _ in show], cols=len(show),
               title="heatmap overlays: from the server (top) and from predict() in the notebook (bottom)").show()
"""),
    md(r"""
## 4. A bad upload

Anyone can upload anything: an empty file, a PDF, a screenshot of 100 megapixels, a text file renamed
`.png`. The server decodes every upload with the package's one decoder, `data.decode_image` (through
`logic.decode_upload`), which checks before decoding
(size, format, pixel count) and turns every failure into a sentence for the person who uploaded it — and
keeps serving. We send a text file named `notes.png`, then a batch of a good image and the bad file, then a
good image alone.
"""),
    code(r"""
bad = WORK / "notes.png"
bad.write_text("These are my notes about the production line, not a picture.\n" * 3)
bad_status, bad_rows, bad_heat, _ = ask([bad])
print("bad upload ->", bad_status, f"| scored rows: {len(bad_rows)}, heatmaps: {len(bad_heat)}\n")

mixed_status, mixed_rows, _, _ = ask([paths[0], bad])
print("good + bad  ->", mixed_status.replace("\n\n", " / "), "\n")

after_status, after_rows, _, _ = ask([paths[-1]])
after_score = after_rows[0]["score"] if after_rows else float("nan")
print("afterwards  ->", after_status, f"(direct: {direct[-1]['score']:.4g})")
"""),
    md(r"""
## 5. What serving costs

A served request does far more than the model call: upload over HTTP, a place in the queue, safe decoding,
the model, rendering and PNG-encoding five pictures, and the client downloading them. We time a few
single-image requests, one after the other, against `inference.predict` on the same files in the notebook.
This is a ratio on *this* machine, with nothing else being served — not a target. (`python -m unistad_edu
demo --bench OUT.json` runs a real load test: many requests from several client threads.)
"""),
    code(r"""
timed = [paths[i % len(paths)] for i in range(N_TIMED)]
t_served, t_direct = [], []
for p in timed:
    t0 = time.perf_counter()
    ask([p])
    t_served.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    predict(served_model, [p])
    t_direct.append(time.perf_counter() - t0)
med_served, med_direct = statistics.median(t_served), statistics.median(t_direct)
LATENCY_RATIO = med_served / med_direct
print(f"median of {N_TIMED}: served {med_served * 1e3:.0f} ms, direct predict {med_direct * 1e3:.0f} ms "
      f"-> a served request takes {LATENCY_RATIO:.1f}x the bare model call")
"""),
    md(r"""
## 6. Stop it

Leaving the `with` block (here: closing the `ExitStack`) terminates the child (SIGTERM; SIGKILL if it does not
exit within 20 s) and waits for it. Then check, rather than believe: the process is gone, nothing accepts
connections on the port, and the client gets a connection error instead of an answer.

Stopping also removes the **files**: every uploaded image — `notes.png` too — is in the server's cache while it
serves; a clean stop (SIGTERM or Ctrl+C: the demo turns SIGTERM into a clean shutdown) deletes the demo's own
cache folder. A server killed with SIGKILL cannot clean up: then only the periodic deletion of old files, at the
next start of a demo, and your operating system's temp cleaning remain.
"""),
    code(r"""
serving_uploads = sorted({p.name for p in SERVER_FILES.rglob("*") if p.is_file() and p.suffix == ".png"})
print(f"while serving, the server's cache holds {len(serving_uploads)} uploaded PNGs, e.g. {serving_uploads[:3]}")
server.close()
atexit.unregister(server.close)
stopped_running = proc.is_running()
stopped_refuses = refuses(HOST, PORT)
try:
    client.predict([handle_file(str(paths[0]))], THRESHOLD, "fixed", api_name="/predict")
    client_error = None
except Exception as err:                     # connection refused, seen through gradio_client / httpx
    client_error = f"{type(err).__name__}: {str(err)[:120]}"
leftover = [p.pid for p in psutil.Process().children(recursive=True) if "unistad_edu" in p.cmdline()]
print(f"process {proc.pid} running: {stopped_running}; {HOST}:{PORT} refuses connections: {stopped_refuses}")
print(f"a request now: {client_error}")
print(f"child processes of this kernel still running the package: {leftover}")

kept = sorted(p for p in SERVER_FILES.rglob("*") if p.is_file())
kept_uploads = sorted({p.name for p in kept if p.suffix == ".png"})
print(f"\nleft in the server's file cache after the stop: {len(kept)} files, "
      f"{sum(p.stat().st_size for p in kept) / 1024:.0f} KiB, uploads among them: {kept_uploads[:4]}")
os.environ.pop("GRADIO_TEMP_DIR")
"""),
    md(r"""
## 7. Export: the same model without PyTorch

A run folder needs this package and PyTorch to be served. `python -m unistad_edu export --run RUN --format
onnx` (here: `export.export_run`) turns it into **one graph** in the [ONNX](https://onnx.ai) format: from the
image tensor — the teacher's normalisation inside — through the student, the shared scoring path (upsampling,
blur, image score) to the anomaly map and the score. Any ONNX runtime can then serve it: `onnxruntime`, or
Intel's [OpenVINO](https://docs.openvino.ai) (which also has its own format, `--format openvino`). The batch size
stays free; the image size is the run's, fixed, and written into the folder's card (`export.json`) with the
threshold, the method, the teacher and the run's `save_id`.

An export is only useful if it gives **the same answers**. `export_run` checks that before it writes
anything; here we check it again ourselves, on the example images, against `predict` in fp32 (the graph's
precision): the largest difference of any map pixel or score, as a fraction of the threshold, and the verdicts.
"""),
    code(r"""
from unistad_edu.export import PARITY_TOLERANCE, export_run
from unistad_edu.export_runtime import ExportedModel

EXPORT = export_run(RUN, "onnx", out=WORK / "export-onnx", log=lambda m: None)
card = json.loads((EXPORT / "export.json").read_text())
print(f"{EXPORT.name}: {', '.join(f'{p.name} ({p.stat().st_size / 1e6:.1f} MB)' for p in sorted(EXPORT.iterdir()))}")
print(f"card: method {card['method']}, image size {card['image_size']}, threshold {card['threshold']:.4g}, "
      f"precision {card['precision']}, save_id {card['save_id'][:8]}... (the run's: {run_config['save_id'][:8]}...)")

reference = predict(served_model, paths, precision="fp32")      # PyTorch, the graph's precision
backends = {name: ExportedModel(EXPORT, backend=name) for name in ("onnxruntime", "openvino")}
parity = {}
for name, exported in backends.items():
    got = exported.predict(paths)
    d = max(max(abs(a["score"] - b["score"]), float(np.abs(a["anomaly_map"] - b["anomaly_map"]).max()))
            for a, b in zip(reference, got))
    parity[name] = {"max |Δ| / threshold": d / THRESHOLD,
                    "verdicts differ": sum(a["anomalous"] != b["anomalous"] for a, b in zip(reference, got))}
    print(f"{exported.backend:45s} max |Δ| = {d / THRESHOLD:.1e} of the threshold, "
          f"{parity[name]['verdicts differ']} of {len(paths)} verdicts differ")
"""),
    md(r"""
And what it buys: the same images scored one at a time (batch 1, what a demo request is) by PyTorch — in fp32
and at the precision `predict` chooses on this CPU — and by the two runtimes. Interleaved, median of three
rounds, on *this* machine; the speed-up depends on the CPU, so we print it rather than assert it
(`python -m unistad_edu bench export` measures every method, in `docs/benchmarks.md`).
"""),
    code(r"""
from unistad_edu.precision import resolve as resolve_precision
from unistad_edu.timing import interleaved

arrays = [r["image"] for r in reference]                         # the decoded (S, S, 3) images
auto_prec = resolve_precision("auto", "cpu", served_model.teacher, SIZE).name  # what predict() uses on this CPU
fns = {"PyTorch fp32": lambda: [predict(served_model, [a], precision="fp32") for a in arrays]}
if auto_prec != "fp32":
    fns[f"PyTorch {auto_prec}"] = lambda: [predict(served_model, [a], precision=auto_prec) for a in arrays]
fns.update({name: (lambda m=m: [m.predict([a]) for a in arrays]) for name, m in backends.items()})
speed = interleaved(fns, len(arrays), repeats=3)                   # images/s
display(Markdown("| backend | batch-1 ms / image | vs PyTorch fp32 |\n|---|---:|---:|\n" + "\n".join(
    f"| {k} | {1e3 / v:.1f} | {v / speed['PyTorch fp32']:.2f}x |" for k, v in speed.items())))
shutil.rmtree(WORK, ignore_errors=True)
"""),
    md(r"""
## Your turn

2 small tasks on the heart of this lesson. In the exercise notebook (`notebooks/exercises/11_serving_the_demo.ipynb`) each marked cell is a stub for you to write; the check after it runs your function and the package's own on the same small inputs, and says what is still missing.
"""),
    exercise(
        "the verdict",
        task=r"""
Write `my_verdict(score, threshold)`: the text the demo shows: "ANOMALOUS" if the score is **above** the
threshold, "normal" otherwise, and "no threshold" when the threshold is None.
""",
        solution=r"""
def my_verdict(score, threshold):
    if threshold is None:
        return "no threshold"
    return "ANOMALOUS" if score > threshold else "normal"
""",
        stub=r"""
def my_verdict(score, threshold):
    # your code: three cases
    raise NotImplementedError
""",
        check=r"""
from unistad_edu.demo import logic
from unistad_edu.course import check

_cases = [(0.5, 0.4), (0.4, 0.4), (0.1, 0.4), (2.0, None)]
check("Exercise 1 (verdict)", lambda: [my_verdict(s, t) for s, t in _cases],
      lambda: [logic.verdict(s, t) for s, t in _cases], hint={hint})
""",
        hint="look closely at the case where the score equals the threshold: which side does the package's rule put it on?",
        more="The package flags only a score strictly greater than the threshold, so a score equal to it is normal; test for a missing threshold first, before any comparison, and return the three texts spelt exactly as the task writes them.",
    ),
    exercise(
        "is the export the same model?",
        task=r"""
Write `my_parity(ref_maps, ref_scores, maps, scores, threshold)` -> `(max_rel, verdicts_differ)`: the largest
|difference| of any map pixel or score, divided by the threshold, and how many verdicts (score > threshold)
differ between the reference (PyTorch) and the export.
""",
        solution=r"""
import numpy as np


def my_parity(ref_maps, ref_scores, maps, scores, threshold):
    worst = max(np.abs(ref_maps - maps).max(), np.abs(ref_scores - scores).max())
    return float(worst / abs(threshold)), int(((ref_scores > threshold) != (scores > threshold)).sum())
""",
        stub=r"""
import numpy as np


def my_parity(ref_maps, ref_scores, maps, scores, threshold):
    # your code: the largest |difference| over maps and scores / threshold, and the number of flipped verdicts
    raise NotImplementedError
""",
        check=r"""
import numpy as np

from unistad_edu.course import check
from unistad_edu.export import compare

_rng = np.random.default_rng(0)
_rm, _rs = _rng.random((4, 8, 8)), np.array([0.2, 0.49, 0.51, 0.9])
_m, _s = _rm + _rng.normal(0, 1e-3, _rm.shape), _rs + np.array([0, 0.02, 0, 0])
_res = compare((_rm, _rs), (_m, _s), 0.5)
check("Exercise 2 (parity)", lambda: my_parity(_rm, _rs, _m, _s, 0.5),
      lambda: (_res["max_rel"], _res["verdicts_differ"]), hint={hint})
""",
        hint="the worst absolute difference anywhere, maps and scores alike, measured in units of the threshold",
        more="Take the largest absolute difference of the maps and of the scores separately, keep the larger of the two, divide it by the absolute threshold and return that as a float; then compare the verdicts (strictly above the threshold) of the two score arrays and count the disagreements as an int.",
    ),
    md(r"""
## Check yourself

**Exercise.** (1) Start the demo again with `serving.serve_in_subprocess(RUN)` in a `with` block, and from a
terminal on this machine run `curl http://127.0.0.1:PORT/config`; then try the machine's other address. What
would you change, and what would you add in front, to let one colleague use it? (2) Send the same request
with the threshold set to half the calibrated one: which numbers in the response change, and which cannot?
(3) Send 8 requests at once from 4 threads (`concurrent.futures.ThreadPoolExecutor`): how does the latency of
one request change, and why (look at `DEFAULT_CONCURRENCY` and the model lock in `build_app`)?

The cell checks the lesson's claims on this run's numbers:

1. the server listened on **loopback only**, and the machine's other addresses refused the port;
2. the **served scores equal** `predict`'s on the same run folder (to float precision: the JSON record
   carries the exact value), the **verdicts** follow `score > threshold`, normal and defective images were both sent,
   and each served heatmap equals the notebook's drawing of the same image (lossless PNG: mean |Δ| under half a
   grey level) and is closest to its own image's overlay;
3. the **bad upload** got a readable message naming the file and no score, a mixed batch scored the good image
   and refused the bad one, and the server **still answered** afterwards with the right score;
4. after the stop, the process had **exited**, the port **refused** connections and the client got an
   **error**, with no server process left behind, and the uploads that were in the server's file cache while it
   served were deleted;
5. the **export** reproduces the run: with onnxruntime and with OpenVINO every map pixel and score is within
   `PARITY_TOLERANCE` of the threshold of `predict` in fp32, no verdict differs, and the card names the run's
   `save_id` and threshold.
"""),
    code(r"""
print(f"1. listening on {[a.ip for a in listening]}; other addresses refused: {other_refused}")
assert logic.is_loopback(HOST) and listening and all(logic.is_loopback(a.ip) for a in listening)
assert all(other_refused.values()), "the server was reachable from a non-loopback address"

print(f"2. {len(served)} images, largest relative score gap {max(rel_gap):.1e}; "
      f"heatmaps: own <= {own.max():.2f} < others >= {others.min():.2f}")
assert {s["defect"] == "good" for s in served} == {True, False}, "need both normal and defective images"
assert max(rel_gap) <= 1e-5, "served scores differ from predict() on the same run folder"
assert all(s["served verdict"] == s["direct verdict"] for s in served)
assert all(s["served anomalous"] == s["direct anomalous"] for s in served)  # each at its routed category's threshold
assert np.all(own < others), "a served heatmap is not closest to its own image's overlay"
assert own.max() < 0.5, "the served heatmap is not the overlay predict() gives (lossless PNG expected)"

print(f"3. bad upload: {bad_status[:70]}...; afterwards score {after_score:.4g} vs {direct[-1]['score']:.4g}")
assert "refused" in bad_status and "notes.png" in bad_status and "text file" in bad_status
assert not bad_rows and not bad_heat
assert len(mixed_rows) == 1 and "refused" in mixed_status
assert abs(after_score - direct[-1]["score"]) <= 1e-5 * abs(direct[-1]["score"]), "the server stopped answering"

print(f"4. process running: {stopped_running}; port refuses: {stopped_refuses}; client: {client_error}; "
      f"leftover: {leftover}")
assert not stopped_running and stopped_refuses and client_error is not None and not leftover
assert "notes.png" in serving_uploads and "notes.png" not in kept_uploads and not kept_uploads, \
    f"uploads: {serving_uploads} while serving, {kept_uploads} after the stop"

print(f"5. export parity: {parity}")
assert all(p["max |Δ| / threshold"] <= PARITY_TOLERANCE for p in parity.values()), "the export drifted"
assert all(p["verdicts differ"] == 0 for p in parity.values()), "an exported verdict differs from the run's"
assert card["save_id"] == run_config["save_id"] and card["threshold"] == THRESHOLD
"""),
]
