"""The demo in a real browser: headless Debian Chromium driven by Playwright's Python API.

Starts the app on a free loopback port over a tiny trained run, loads the page, uploads a defective image
(score, verdict and heatmap appear), uploads a text file renamed .png (a readable error appears in the page),
then uploads a good image (the app still answers), opens the per-level maps and clicks an example.
Skipped, with the reason, when /usr/bin/chromium or playwright is missing (CI: apt-get install -y chromium).
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from unistad_edu.demo import logic, serving

from .conftest import tiny_synthetic

SIZE = 64
TIMEOUT_MS = 60_000

pytestmark = pytest.mark.skipif(
    not Path(serving.CHROMIUM).is_file(),
    reason=f"{serving.CHROMIUM} not found: install Debian's Chromium "
    f"(apt-get install -y chromium) to run the browser test",
)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return tiny_synthetic(tmp_path_factory, SIZE, n_train=8)


@pytest.fixture(scope="module")
def tiny_run(tiny_data, tmp_path_factory) -> Path:
    import torch

    from unistad_edu.data import MVTecDataset
    from unistad_edu.engine import TrainConfig, fit
    from unistad_edu.methods import build_model
    from unistad_edu.teacher import load_teacher

    torch.set_num_threads(1)
    run = tmp_path_factory.mktemp("run")
    model = build_model("stpm", load_teacher(), image_size=SIZE, batch_size=8)
    fit(
        model,
        MVTecDataset(tiny_data, "train", image_size=SIZE),
        TrainConfig(epochs=1, progress=False),
        out=run,
        extra_config={"data_root": str(tiny_data)},
    )
    return run


@pytest.fixture(scope="module")
def app_url(tiny_run):
    from unistad_edu.demo.page import build_app, launch

    demo = build_app(tiny_run)
    port = logic.free_port()
    launch(demo, "127.0.0.1", port, block=False, quiet=True)  # serves from a thread of this process
    yield f"http://127.0.0.1:{port}/"
    demo.close()


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright (Python) is not installed"
    )
    with sync_api.sync_playwright() as p:
        b = serving.launch_chromium(p)  # /usr/bin/chromium, headless, fresh profile
        yield b
        b.close()


@pytest.fixture(scope="module")
def page(app_url, browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = context.new_page()
    pg.set_default_timeout(TIMEOUT_MS)
    pg.goto(app_url)
    pg.locator("#status").wait_for()  # the Gradio front end has rendered
    yield pg
    context.close()


def _upload(page, path: Path):
    clear = page.locator("#upload button[aria-label='Clear']")
    if clear.count():  # start from an empty file list, as a user would
        clear.first.click()
        page.locator("#status").get_by_text("Upload an image").wait_for()
    page.locator("#upload input[type=file]").set_input_files(str(path))


def _wait_status(page, pattern: str) -> str:
    page.locator("#status").get_by_text(re.compile(pattern)).first.wait_for()
    return page.locator("#status").inner_text()


def test_page_loads(page):
    assert "unistad-edu" in page.title()
    assert page.get_by_text("unified anomaly detection demo").is_visible()
    thumbs = page.locator("#examples button.thumbnail-item")
    thumbs.nth(2).wait_for()
    assert thumbs.count() >= 3  # normal and defective examples
    assert "Model card" in page.content() and "STPM" in page.locator("#model-card").inner_text()
    assert page.locator("#threshold").is_visible()


def test_defective_upload_gives_score_verdict_and_heatmap(page, tiny_data):
    defect = sorted((tiny_data / "bolt" / "test").glob("[!g]*/*.png"))[0]
    t0 = time.perf_counter()
    _upload(page, defect)
    status = _wait_status(page, r"anomaly score")
    assert re.search(r"(ANOMALOUS|normal)", status), status
    assert re.search(r"anomaly score \d+\.\d+", status), status
    table = page.locator("#results").inner_text()
    assert defect.name in table and re.search(r"\d+\.\d+", table)
    heat = page.locator("#heatmaps img")
    heat.nth(1).wait_for()
    assert heat.count() == 2  # the input as the model sees it, and the heatmap overlay
    assert page.evaluate("el => el.complete && el.naturalWidth > 0", heat.nth(1).element_handle())
    assert time.perf_counter() - t0 < 30


def test_text_file_renamed_png_gives_a_readable_error_and_the_app_keeps_serving(
    page, tiny_data, tmp_path
):
    bad = tmp_path / "notes.png"
    bad.write_text("meeting notes: this is not a picture\n")
    _upload(page, bad)
    status = _wait_status(page, r"refused")
    assert "notes.png" in status and "text file" in status and "PNG" in status
    assert (
        page.locator("#heatmaps img").count() == 0
    )  # nothing stale is shown for the refused upload

    good = sorted((tiny_data / "weave" / "test" / "good").glob("*.png"))[0]
    _upload(page, good)
    status = _wait_status(page, r"anomaly score")
    assert good.name in status and "refused" not in status
    page.locator("#heatmaps img").nth(1).wait_for()


def test_threshold_slider_rejudges_without_rerunning(page, tiny_data):
    defect = sorted((tiny_data / "weave" / "test").glob("[!g]*/*.png"))[0]
    _upload(page, defect)
    status = _wait_status(page, r"anomaly score")
    score = float(re.search(r"anomaly score (\d+\.?\d*(?:e-?\d+)?)", status).group(1))
    box = page.locator("#threshold input[type=number]")
    box.fill(f"{score * 0.5:.6g}")
    box.press("Enter")
    assert "ANOMALOUS" in _wait_status(page, r"ANOMALOUS")
    box.fill(f"{score * 2:.6g}")
    box.press("Enter")
    assert f"{defect.name}: normal" in _wait_status(page, r": normal")


def test_level_maps_and_example_click(page):
    page.locator("#levels-accordion").get_by_text("Per-level maps").click()
    page.locator("#levels img").nth(1).wait_for()  # one map per teacher level
    page.locator("#examples button.thumbnail-item").nth(1).click()
    status = _wait_status(page, r"Example from the run's test set")
    assert "anomaly score" in status


def test_too_large_upload_gets_a_visible_message(tiny_run, tiny_data, browser):
    """A second app with a tiny upload limit: Gradio refuses the upload and says so in the page."""
    from unistad_edu.demo.page import build_app, launch

    demo = build_app(tiny_run, max_upload_mb=0.002)  # about 2 KB; the 64 px test PNGs are larger
    port = logic.free_port()
    launch(demo, "127.0.0.1", port, block=False, quiet=True)
    image = sorted((tiny_data / "bolt" / "test" / "good").glob("*.png"))[0]
    assert image.stat().st_size > 0.002 * 1024 * 1024
    context = browser.new_context()
    try:
        pg = context.new_page()
        pg.set_default_timeout(TIMEOUT_MS)
        pg.goto(f"http://127.0.0.1:{port}/")
        pg.locator("#status").wait_for()
        pg.locator("#upload input[type=file]").set_input_files(str(image))
        pg.get_by_text(re.compile("exceed the maximum allowed size")).first.wait_for()
        assert "Upload an image" in pg.locator("#status").inner_text()  # nothing was scored
    finally:
        context.close()
        demo.close()
