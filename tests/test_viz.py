"""viz: overlays, tables, plotly figures and the ipywidgets explorer build, with the right shapes (fast)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from unistad_edu import report, viz


def _square_mask(size=16, lo=4, hi=10):
    m = np.zeros((size, size), np.uint8)
    m[lo:hi, lo:hi] = 1
    return m


def test_mask_boundary_is_the_ring_of_the_mask():
    m = _square_mask()
    b = viz.mask_boundary(m)
    assert b.dtype == bool and b.shape == m.shape
    assert b.sum() == 4 * (6 - 1)  # perimeter of a 6 x 6 square
    assert not (b & (m == 0)).any()
    assert viz.mask_boundary(m, width=3).sum() == 36  # thick enough to fill it
    assert not viz.mask_boundary(np.zeros((8, 8))).any()


def test_mask_overlay_tints_only_the_mask_and_resizes_it():
    img = np.full((32, 32, 3), 100, np.uint8)
    out = viz.mask_overlay(img, _square_mask(16), color=(255, 0, 0), alpha=0.5, outline=False)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert (out[0, 0] == 100).all()  # outside the mask: untouched
    assert tuple(out[12, 12]) == (178, 50, 50)  # inside (mask scaled x2): 50 % red
    assert (img == 100).all()  # the input is not modified
    ring = viz.mask_overlay(
        img, _square_mask(16)[None], color=(0, 255, 0), alpha=0.0
    )  # (1, H, W) accepted
    assert tuple(ring[8, 12]) == (0, 255, 0) and tuple(ring[12, 12]) == (100, 100, 100)
    gray = viz.mask_overlay(np.full((16, 16), 7, np.uint8), _square_mask(16))
    assert gray.shape == (16, 16, 3)


def test_markdown_table():
    text = report.markdown_table(
        [{"a": "x", "b": 0.12345}, {"a": "y", "b": float("nan"), "c": 3}], digits=2
    )
    lines = text.splitlines()
    assert lines[0] == "| a | b | c |" and lines[1] == "|---|---|---|"
    assert lines[2] == "| x | 0.12 |  |" and lines[3] == "| y | n/a | 3 |"
    assert report.markdown_table([{"a": 1, "b": 2}], columns=["b"]).splitlines()[2] == "| 2 |"


def test_loss_curve():
    fig = viz.loss_curve([{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.0}])
    assert list(fig.data[0].x) == [1, 2] and list(fig.data[0].y) == [2.0, 1.0]


def test_feature_map_grid_one_row_per_level():
    image = np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)
    feats = {
        "a": torch.rand(1, 8, 8, 8),
        "b": torch.rand(1, 16, 4, 4),
        "c": np.random.rand(5, 2, 2),
    }
    fig = viz.feature_map_grid(image, feats, n_channels=2)
    assert len(fig.data) == 3 * 4
    assert np.asarray(fig.data[0].z).shape == (8, 8, 3)  # the image at level a's 8 x 8 grid
    assert np.asarray(fig.data[4].z).shape == (4, 4, 3)


@pytest.mark.parametrize("method", ["pca", "tsne"])
def test_embed_2d_and_scatter(method):
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 1, (12, 6)), rng.normal(8, 1, (12, 6))])
    cats = ["a"] * 12 + ["b"] * 12
    xy = viz.embed_2d(x, method=method)
    assert xy.shape == (24, 2) and np.isfinite(xy).all()
    if method == "pca":  # two well separated clusters stay separated along the first axis
        assert abs(xy[:12, 0].mean() - xy[12:, 0].mean()) > 3 * xy[:12, 0].std()
        fitted = viz.embed_2d(torch.as_tensor(x), fit_on=np.arange(24) < 20)
        assert fitted.shape == (24, 2)
    fig = viz.embedding_scatter(
        x,
        cats,
        groups=["train"] * 20 + ["test"] * 4,
        method=method,
        hover=[f"img{i}" for i in range(24)],
    )
    assert sum(len(t.x) for t in fig.data) == 24
    assert {t.legendgroup.split(",")[0].strip() for t in fig.data} == {"a", "b"}
    with pytest.raises(ValueError):
        viz.embed_2d(x, method="umap")


def test_image_browser_constructs_and_reacts():
    pytest.importorskip("ipywidgets")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(4)]
    maps = [rng.random((16, 16)).astype(np.float32) * (i + 1) for i in range(4)]
    masks = [_square_mask(32, 8, 20)] * 4
    box = viz.image_browser(
        images,
        maps=maps,
        masks=masks,
        scores=[float(m.max()) for m in maps],
        labels=[0, 1, 0, 1],
        titles=list("wxyz"),
        categories=["p", "q", "p", "q"],
        threshold=1.5,
    )
    assert len(box.panels) == 3 and all(p.value[:4] == b"\x89PNG" for p in box.panels)
    assert "<b>w</b>" in box.info.value and "ANOMALOUS" not in box.info.value  # score < 1 < 1.5
    box.index.value = 3
    assert "<b>z</b>" in box.info.value and "ANOMALOUS" in box.info.value
    before = box.panels[2].value
    box.threshold.value = box.threshold.max
    assert box.panels[2].value != before and "ANOMALOUS" not in box.info.value
    box.category.value = "q"
    assert box.selection == [1, 3] and box.index.max == 1 and "<b>x</b>" in box.info.value
    plain = viz.image_browser(images)  # images only: one panel, no threshold
    assert len(plain.panels) == 1 and plain.threshold is None and plain.category is None
    with pytest.raises(ValueError):
        viz.image_browser(images, scores=[1.0])


def test_as_uint8_round_trips_a_dataset_image():
    arr = np.random.default_rng(1).integers(0, 256, (8, 6, 3), dtype=np.uint8)
    t = torch.from_numpy(arr).permute(2, 0, 1).float() / 255
    assert (viz.as_uint8(t) == arr).all() and viz.as_uint8(arr) is arr
    assert viz.as_uint8(torch.rand(1, 4, 4)).shape == (4, 4, 3)


def test_scores_by_category_one_panel_per_run_and_threshold_lines():
    rng = np.random.default_rng(2)
    cats = np.array(["b", "a", "b", "a", "b", "a"])
    labels = np.array([0, 0, 1, 1, 0, 1])
    runs = {
        "per-class": {"scores": rng.random(6), "labels": labels, "categories": cats},
        "unified": {"scores": rng.random(6) + 1, "labels": labels, "categories": list(cats)},
    }
    fig = viz.scores_by_category(
        runs, thresholds={"per-class": {"a": 0.5, "b": 0.7}, "unified": 1.5}, log_y=True
    )
    assert len(fig.data) == 4  # normal and defect boxes in each of the two panels
    assert [t.name for t in fig.data] == ["normal", "defect"] * 2
    assert [t.showlegend for t in fig.data] == [
        True,
        True,
        False,
        False,
    ]  # one legend for both panels
    normal = fig.data[0]
    assert (
        sorted(normal.x) == ["a", "b", "b"] and len(normal.y) == 3
    )  # every normal image of panel 1, as points
    lines = [s for s in fig.layout.shapes]
    assert len(lines) == 3  # one short line per category in panel 1, one line across panel 2
    assert sorted(s.y0 for s in lines) == [0.5, 0.7, 1.5]
    assert fig.layout.yaxis.type == "log" and fig.layout.yaxis2.type == "log"  # every panel
    assert len(viz.scores_by_category(runs).layout.shapes) == 0
    with pytest.raises(ValueError):
        viz.scores_by_category({"x": {"scores": [1.0], "labels": [0, 1], "categories": ["a", "a"]}})


def test_loss_curves_one_line_per_run():
    fig = viz.loss_curves(
        {
            "a": [{"epoch": 1, "loss": 3.0}, {"epoch": 2, "loss": 2.0}],
            "b": [{"epoch": 1, "loss": 1.0}],
        },
        log_y=True,
    )
    assert [t.name for t in fig.data] == ["a", "b"]
    assert list(fig.data[0].y) == [3.0, 2.0] and list(fig.data[1].x) == [1]
    assert fig.layout.yaxis.type == "log"


def test_run_switcher_keeps_the_image_when_switching():
    pytest.importorskip("ipywidgets")
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    maps = {"low": [0.5 * ramp] * 3, "high": [2.0 * ramp] * 3}
    box = viz.run_switcher(
        maps,
        scores={"low": [0.5] * 3, "high": [2.0] * 3},
        images=images,
        titles=list("xyz"),
        categories=["p", "q", "q"],
        threshold=1.0,
        vmax=2.0,
    )
    low, high = box.browsers["low"], box.browsers["high"]
    assert box.children[1] is low and box.current is low
    low.index.value = 2
    assert (
        high.index.value == 2 and "<b>z</b>" in high.info.value
    )  # linked: the other run shows the same image
    box.selector.value = "high"
    assert box.children[1] is high and box.current is high and "ANOMALOUS" in high.info.value
    assert (
        low.threshold.max == high.threshold.max == 2.1
    )  # one slider range (the larger maps'), so values fit
    high.threshold.value = 0.4
    assert low.threshold.value == 0.4 and "ANOMALOUS" in low.info.value  # linked too: 0.5 > 0.4
    high.category.value = "p"
    assert low.selection == [0] and "<b>x</b>" in low.info.value
    unlinked = viz.run_switcher(maps, images=images, link=(), buttons=False)
    unlinked.browsers["low"].index.value = 1
    assert unlinked.browsers["high"].index.value == 0
    with pytest.raises(ValueError):
        viz.run_switcher(maps, scores={"other": [1.0] * 3}, images=images)
    with pytest.raises(ValueError):
        viz.run_switcher(maps, images=images, link=("zoom",))


def test_matrix_grid_shares_colour_axes_between_panels_of_one_range():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    fig = viz.matrix_grid(
        [a, torch.tensor(a) * 2, a - 5],
        titles=["t", "s", "d"],
        cols=2,
        zrange=[(0, 22), (0, 22), None],
        colorscale=["Viridis", "Viridis", "RdBu"],
    )
    assert [tr.type for tr in fig.data] == ["heatmap"] * 3
    assert (
        fig.data[0].coloraxis == fig.data[1].coloraxis != fig.data[2].coloraxis
    )  # same range: one axis
    shared, own = fig.layout[fig.data[0].coloraxis], fig.layout[fig.data[2].coloraxis]
    assert (shared.cmin, shared.cmax) == (0, 22) and (own.cmin, own.cmax) == (
        -5,
        6,
    )  # own: the matrix's range
    assert np.asarray(fig.data[1].z).tolist() == (2 * a).tolist()
    assert fig.layout.yaxis.autorange == "reversed"  # row 0 on top
    assert (
        len({tr.coloraxis for tr in viz.matrix_grid([a, a]).data}) == 2
    )  # default: every panel its own range
    with pytest.raises(ValueError):
        viz.matrix_grid([a, a], titles=["only one"])
    with pytest.raises(ValueError):
        viz.matrix_grid([np.zeros(3)])


def test_rate_curves_thins_long_curves_and_keeps_the_ends():
    x = np.r_[0.0, np.sort(np.random.default_rng(0).random(20000)), 1.0]
    fig = viz.rate_curves(
        {"a": (x, np.sqrt(x)), "b": ([0, 0.5, 1], [0, 0.9, 1])},
        max_points=300,
        x_max=0.3,
        mark_x=0.3,
    )
    a = fig.data[0]
    assert len(a.x) <= 302 and a.x[0] == 0.0 and a.x[-1] == 1.0 and a.y[-1] == 1.0
    assert list(fig.data[1].x) == [0, 0.5, 1]  # short curves are drawn as given
    assert fig.data[2].name.startswith("chance") and list(fig.data[2].x) == [0, 0.3]
    assert tuple(fig.layout.xaxis.range) == (0, 0.3)
    with pytest.raises(ValueError):
        viz.rate_curves({"bad": ([0, 1], [0])})


def test_threshold_rows_counts_per_category_and_overall():
    scores = [0.1, 0.9, 0.4, 0.6, 0.2, 0.8]
    labels = [0, 1, 0, 1, 0, 1]
    cats = ["a", "a", "b", "b", "b", "b"]
    rows = {r["category"]: r for r in viz.threshold_rows(scores, labels, cats, 0.5)}
    assert list(rows) == ["a", "b", "all"]
    assert (
        rows["a"]["recall"] == 1.0 and rows["a"]["false alarms"] == 0.0 and rows["a"]["F1"] == 1.0
    )
    assert rows["b"]["defects"] == 2 and rows["b"]["normals"] == 2 and rows["b"]["recall"] == 1.0
    assert rows["all"]["defects"] == 3 and rows["all"]["precision"] == 1.0
    high = {r["category"]: r for r in viz.threshold_rows(scores, labels, cats, 0.85)}
    assert (
        high["b"]["recall"] == 0.0 and np.isnan(high["b"]["precision"]) and high["b"]["F1"] == 0.0
    )
    assert high["all"]["recall"] == pytest.approx(1 / 3)
    low = {r["category"]: r for r in viz.threshold_rows(scores, labels, cats, 0.0)}
    assert low["b"]["false alarms"] == 1.0  # everything flagged
    with pytest.raises(ValueError):
        viz.threshold_rows([0.1], [0, 1], ["a", "a"], 0.5)


def test_threshold_explorer_updates_the_table_and_jumps_to_marks():
    pytest.importorskip("ipywidgets")
    scores = np.array([0.1, 0.9, 0.4, 0.6])
    box = viz.threshold_explorer(
        scores, [0, 1, 0, 1], ["a", "a", "b", "b"], threshold=0.5, marks={"strict": 0.95}
    )
    assert box.threshold.value == pytest.approx(0.5)
    assert box.rows()[-1]["recall"] == 1.0 and "<table>" in box.table.value
    box.buttons[0].click()
    assert box.threshold.value == pytest.approx(0.95)
    assert box.rows()[-1]["recall"] == 0.0 and "0.95" in box.table.value


def _tables():
    return {
        "a": {
            "categories": {"x": {"I-AUROC": 0.9}, "y": {"I-AUROC": 0.5}},
            "mean": {"I-AUROC": 0.7},
        },
        "b": {
            "categories": {"x": {"I-AUROC": 0.6}, "y": {"I-AUROC": 0.95}},
            "mean": {"I-AUROC": 0.775},
        },
        "c": {"categories": {"x": {"I-AUROC": 0.8}}, "mean": {"I-AUROC": 0.8}},
    }


def test_results_rows_rank_by_any_column_and_put_missing_last():
    from unistad_edu.viz import results_rows

    assert [r["method"] for r in results_rows(_tables())] == ["c", "b", "a"]
    by_y = results_rows(_tables(), sort_by="y")
    assert [r["method"] for r in by_y] == ["b", "a", "c"] and np.isnan(by_y[-1]["y"])
    assert by_y[0]["y"] == pytest.approx(95.0)
    with pytest.raises(ValueError, match="sort_by"):
        results_rows(_tables(), sort_by="z")


def test_results_explorer_rerenders_when_the_dropdowns_change():
    from unistad_edu.viz import results_explorer

    box = results_explorer(_tables(), metrics=("I-AUROC",))
    first = box.table.value
    assert "ranked by mean" in first and first.index(">c<") < first.index(">a<")
    box.sort_by.value = "x"
    assert [r["method"] for r in box.rows()] == ["a", "c", "b"]
    assert "ranked by x" in box.table.value and box.table.value != first
    assert "font-weight:bold" in box.table.value


def test_browse_indices_take_defective_then_normal_per_category():
    from unistad_edu.viz import browse_indices

    cats = ["b", "a", "a", "b", "a", "a", "b", "a"]
    labels = [1, 0, 1, 0, 1, 0, 1, 1]
    # brute force: per category in order, defective indices first, then normal, capped at 1 each
    assert browse_indices(cats, labels, 2, order=["a", "b"]) == [2, 1, 0, 3]
    assert browse_indices(cats, labels, None) == [2, 4, 7, 1, 5, 0, 6, 3]
    assert browse_indices(cats, labels, 4, order=["b"]) == [0, 6, 3]


def test_pick_defects_and_threshold_unit_grid(tmp_path):
    from unistad_edu.data import MVTecDataset
    from unistad_edu.synthetic import make_synthetic

    data = make_synthetic(
        tmp_path / "syn",
        size=32,
        n_train=2,
        n_test_good=1,
        n_test_defect=3,
        categories=("weave", "bolt"),
    )
    test = MVTecDataset(data, "test", image_size=32)
    n = len(test)
    labels = np.array([r.label for r in test.records])
    cats = np.array([r.category for r in test.records])
    out = {
        "categories": cats,
        "labels": labels,
        "scores": np.arange(n, dtype=float) + 1,
        "maps": np.ones((n, 32, 32)),
        "masks": np.zeros((n, 32, 32)),
    }
    show = viz.pick_defects(out, 2, ["weave", "bolt"])
    assert len(show) == 4 and all(labels[i] == 1 for i in show)
    assert [cats[i] for i in show] == ["weave", "weave", "bolt", "bolt"]
    per_image = {
        k: v for k, v in out.items() if k != "masks"
    }  # a model whose threshold differs per image
    fig = viz.threshold_unit_grid(
        test, show, {"a": (out, 2.0), "b": (per_image, np.full(n, 4.0))}, title="t"
    )
    titles = [a.text for a in fig.layout.annotations]
    assert len(titles) == 12  # 3 rows x 4 images
    assert titles[4] == f"a: {out['scores'][show[0]] / 2.0:.2f} x thr"
    assert titles[8] == f"b: {out['scores'][show[0]] / 4.0:.2f} x thr"


# ---- the demo's picture: outline of the predicted region, heatmap with its colour bar ---------------------------
def test_outline_region_draws_the_border_of_the_map_above_the_threshold():
    from unistad_edu.viz import OUTLINE_COLOUR, outline_region, predicted_region

    image = np.full((32, 32, 3), 100, np.uint8)
    amap = np.zeros((32, 32), np.float32)
    amap[8:16, 10:20] = 2.0  # a rectangle above the threshold 1.0
    region = predicted_region(amap, 1.0, (32, 32))
    assert region.sum() == 8 * 10
    out = outline_region(image, amap, 1.0, width=1)
    cyan = np.all(out == OUTLINE_COLOUR, axis=-1)
    border = np.zeros((32, 32), bool)
    border[8:16, 10:20] = True
    border[9:15, 11:19] = False  # the rectangle's one-pixel frame
    assert np.array_equal(cyan, border)
    assert np.array_equal(out[~border], image[~border])  # nothing else changed
    assert np.array_equal(outline_region(image, amap, 5.0), image)  # nothing above the threshold
    assert np.array_equal(outline_region(image, amap, None), image)  # no threshold, no outline
    small = np.zeros((8, 8), np.float32)
    small[2:4, 2:4] = 2.0  # a coarse map is resized to the image first
    assert predicted_region(small, 1.0, (32, 32)).any()


def test_heatmap_with_colorbar_holds_the_overlay_and_the_bar():
    from unistad_edu.viz import colorbar, heatmap_with_colorbar, overlay

    image = np.full((48, 48, 3), 80, np.uint8)
    amap = np.linspace(0, 2, 48 * 48, dtype=np.float32).reshape(48, 48)
    pic = heatmap_with_colorbar(image, amap, 1.0)
    assert (
        pic.shape[0] >= 48 and pic.shape[1] > 48 + 14
    )  # overlay, then the bar and its labels to the right
    np.testing.assert_array_equal(
        pic[:48, :48], overlay(image, amap, alpha=0.5, vmin=0.0, vmax=1.0)
    )
    ramp = colorbar(10)
    top, bottom = ramp[0, 0], ramp[-1, 0]  # the colours of the threshold and of 0
    cols = [
        x
        for x in range(48, pic.shape[1])
        if np.array_equal(pic[0, x], top)
        and any(np.array_equal(pic[y, x], bottom) for y in range(pic.shape[0]))
    ]
    assert cols, (
        "no colour-bar column (threshold colour on top, 0's colour below) right of the overlay"
    )
