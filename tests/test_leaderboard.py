"""bench leaderboard (every method on the same data, with its costs) and the README figures rendered from it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unistad_edu.__main__ import main as cli

from .conftest import tiny_synthetic

SIZE = 64


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    return tiny_synthetic(tmp_path_factory, SIZE, n_test_defect=2)


@pytest.fixture(scope="module")
def runs(tiny_data, tmp_path_factory) -> dict[str, Path]:
    """Two trained methods: a student (STPM) and the memory bank (stored patches)."""
    import torch

    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("runs")
    out = {}
    for method, extra in (("stpm", ["--epochs", "1"]), ("memory_bank", [])):
        out[method] = base / method
        assert (
            cli(
                [
                    "train",
                    "--method",
                    method,
                    "--data",
                    str(tiny_data),
                    "--image-size",
                    str(SIZE),
                    "--out",
                    str(out[method]),
                    "--no-progress",
                    *extra,
                ]
            )
            == 0
        )
    assert (
        cli(["eval", "--run", str(out["stpm"]), "--no-progress"]) == 0
    )  # memory_bank: evaluated by the bench
    return out


@pytest.fixture(scope="module")
def board(runs, tiny_data, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("lb") / "leaderboard.json"
    assert (
        cli(
            [
                "bench",
                "leaderboard",
                "--entry",
                "STPM",
                str(runs["stpm"]),
                "--entry",
                "bank",
                str(runs["memory_bank"]),
                "--data",
                str(tiny_data),
                "--n-images",
                "6",
                "--batch-size",
                "4",
                "--repeats",
                "1",
                "--json",
                str(path),
            ]
        )
        == 0
    )
    return path


def test_leaderboard_rows_hold_eval_metrics_and_measured_costs(board, runs):
    from unistad_edu import leaderboard

    result = leaderboard.load(board)
    rows = {r["label"]: r for r in result["rows"]}
    assert set(rows) == {"STPM", "bank"}
    stpm_eval = json.loads((runs["stpm"] / "metrics.json").read_text())
    assert rows["STPM"]["mean"]["I-AUROC"] == pytest.approx(stpm_eval["mean"]["I-AUROC"])
    assert (runs["memory_bank"] / "metrics.json").is_file()  # missing evaluation was run and saved
    for label, method in (("STPM", "stpm"), ("bank", "memory_bank")):
        r = rows[label]
        assert r["method"] == method
        assert r["state_mib"] == pytest.approx(
            (runs[method] / "model.safetensors").stat().st_size / 2**20
        )
        assert r["infer_img_s"] > 0 and r["infer_ms_per_img"] == pytest.approx(
            1000 / r["infer_img_s"]
        )
        assert r["infer_vs_teacher_only"] == pytest.approx(
            r["infer_img_s"] / result["teacher_only_img_s"]
        )
        assert 0 <= r["mean"]["I-AUROC"] <= 1
    assert result["timed_images"] == 6  # 3 per category, both categories


def test_leaderboard_table_is_sorted_and_markdown_names_every_method(board):
    from unistad_edu import leaderboard

    result = leaderboard.load(board)
    rows = leaderboard.table(result)
    assert [r["I-AUROC"] for r in rows] == sorted((r["I-AUROC"] for r in rows), reverse=True)
    text = leaderboard.markdown(result)
    assert "| STPM |" in text and "| bank |" in text and "ms/img" in text
    cats, values = leaderboard.per_category(result)
    assert cats == ["bolt", "weave"] and all(len(v) == 2 for v in values.values())


def test_leaderboard_rejects_bad_entries_and_files(tmp_path, runs):
    from unistad_edu import leaderboard

    with pytest.raises(FileNotFoundError, match="not a run folder"):
        leaderboard.parse_entry(["x", str(tmp_path)])
    with pytest.raises(ValueError, match="LABEL RUN"):
        leaderboard.parse_entry(["x"])
    other = tmp_path / "metrics.json"
    other.write_text(json.dumps({"mean": {}, "categories": {}}))
    with pytest.raises(ValueError, match="not a leaderboard file"):
        leaderboard.load(other)


def _png_ok(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.load()
        arr = np.asarray(im)
    assert arr.std() > 0  # not a blank canvas
    return im.size


def test_figures_render_every_readme_figure(tmp_path, board, runs, tiny_data):
    acc = {
        "method": "stpm",
        "protocol": "equal-steps",
        "settings": {
            s: {
                "metrics": {
                    "categories": {
                        "bolt": {"I-AUROC": a, "P-AUROC": 0.9},
                        "weave": {"I-AUROC": b, "P-AUROC": 0.8},
                    },
                    "mean": {"I-AUROC": (a + b) / 2, "P-AUROC": 0.85},
                }
            }
            for s, a, b in (("unified", 0.7, 0.9), ("per-class", 0.8, 0.95))
        },
    }
    (tmp_path / "acc.json").write_text(json.dumps(acc))
    out = tmp_path / "docs"
    assert (
        cli(
            [
                "figures",
                "--out",
                str(out),
                "--interference",
                str(tmp_path / "acc.json"),
                "--leaderboard",
                str(board),
                "--run",
                str(runs["stpm"]),
                "--data",
                str(tiny_data),
            ]
        )
        == 0
    )
    for name in ("interference.png", "leaderboard.png", "heatmaps.png"):
        w, h = _png_ok(out / name)
        assert w > 300 and h > 150
    assert not list(out.glob(".*.tmp"))


def test_figures_name_the_command_for_a_missing_input(tmp_path, capsys):
    code = cli(
        [
            "figures",
            "--out",
            str(tmp_path),
            "--only",
            "leaderboard",
            "--leaderboard",
            str(tmp_path / "no.json"),
        ]
    )
    assert code == 1 and "bench leaderboard" in capsys.readouterr().err
    assert not (tmp_path / "leaderboard.png").exists()


def test_interference_figure_needs_both_settings(tmp_path):
    from unistad_edu.figures import interference_figure

    (tmp_path / "a.json").write_text(json.dumps({"settings": {"unified": {}}}))
    with pytest.raises(ValueError, match="both settings"):
        interference_figure(tmp_path / "a.json", tmp_path / "x.png")


def test_leaderboard_reports_the_false_alarm_rate_at_the_threshold(board, runs):
    """Each row carries the share of test/good flagged at its calibrated threshold, the same number eval wrote."""
    from unistad_edu import leaderboard

    result = leaderboard.load(board)
    for r in result["rows"]:
        method = r["method"]
        far = json.loads((runs[method] / "metrics.json").read_text())["false_alarms"]
        assert r["false_alarm_rate"] == pytest.approx(far["all"]) and r[
            "false_alarm_target"
        ] == pytest.approx(0.01)
        assert r["false_alarms_by_category"] == pytest.approx(
            {c: v["rate"] for c, v in far["categories"].items()}, nan_ok=True
        )
    by_label = {r["label"]: r for r in result["rows"]}
    for row in leaderboard.table(result):  # the table's "method" column is the entry's label
        assert row["false alarms %"] == round(100 * by_label[row["method"]]["false_alarm_rate"], 1)
    assert "False alarms per product" in leaderboard.markdown(result)


def test_false_alarms_per_product_are_averaged_over_seeds_and_the_worst_is_shown():
    """Two seeds: bolt flagged 0.10 and 0.30 of its normal images, weave 0.0 and 0.02 -> 20.0 and 1.0 %, the
    worst product 20.0 % while the pooled rate says 5 %."""
    from unistad_edu.leaderboard import aggregate, false_alarm_table, markdown, table

    def row(run, bolt, weave):
        return {
            "label": "m",
            "run": run,
            "method": "stpm",
            "mean": {"I-AUROC": 0.9},
            "categories": {"bolt": {"I-AUROC": 0.9}, "weave": {"I-AUROC": 0.9}},
            "state_mib": 1.0,
            "false_alarm_rate": 0.05,
            "false_alarms_by_category": {"bolt": bolt, "weave": weave},
            "infer_ms_per_img": 10.0,
            "infer_vs_teacher_only": 0.5,
        }

    result = {
        "rows": aggregate([row("s0", 0.10, 0.0), row("s1", 0.30, 0.02)]),
        "timed_images": 2,
        "timing_batch_size": 1,
        "teacher_only_img_s": 1.0,
        "data": "x",
    }
    assert false_alarm_table(result) == [{"method": "m", "bolt": 20.0, "weave": 1.0}]
    (shown,) = table(result)
    assert shown["false alarms %"] == 5.0 and shown["worst product FA %"] == 20.0
    assert "| m | 20.0 | 1.0 |" in markdown(result)


def test_figures_take_error_bars_from_a_results_spread_over_seeds():
    from unistad_edu.figures import _spread

    metrics = {
        "std": {
            "categories": {"a": {"I-AUROC": 0.02}, "b": {"I-AUROC": 0.0}},
            "mean": {"I-AUROC": 0.01},
        }
    }
    assert _spread(metrics, ["a", "b"], "I-AUROC") == [
        2.0,
        0.0,
        1.0,
    ]  # x100, categories then the mean
    assert _spread({"categories": {}}, ["a"], "I-AUROC") is None  # one seed: no error bars drawn


def test_seeds_of_one_label_become_one_row_with_mean_and_sample_std():
    from unistad_edu.leaderboard import aggregate, table

    def row(run, i_auroc, cookie, train_s):
        return {
            "label": "STPM",
            "run": run,
            "method": "stpm",
            "mean": {"I-AUROC": i_auroc, "P-AUROC": 0.9},
            "categories": {"cookie": {"I-AUROC": cookie}},
            "train_s": train_s,
            "peak_rss_mb": 100.0 + train_s,
            "state_mib": 2.0,
            "false_alarm_rate": 0.01,
            "infer_ms_per_img": 10.0,
            "infer_vs_teacher_only": 0.5,
        }

    rows = [
        row("s0", 0.80, 0.70, 10.0),
        row("s1", 0.90, 0.75, 20.0),
        row("s2", 0.85, 0.95, 30.0),
        {**row("b", 0.97, 0.99, 5.0), "label": "bank"},
    ]
    (stpm, bank) = aggregate(rows)
    assert stpm["seeds"] == ["s0", "s1", "s2"] and bank["seeds"] == ["b"] and "std" not in bank
    assert stpm["mean"]["I-AUROC"] == pytest.approx(0.85)
    assert stpm["std"]["mean"]["I-AUROC"] == pytest.approx(np.std([0.80, 0.90, 0.85], ddof=1))
    assert stpm["categories"]["cookie"]["I-AUROC"] == pytest.approx(np.mean([0.70, 0.75, 0.95]))
    assert stpm["std"]["categories"]["cookie"]["I-AUROC"] == pytest.approx(
        np.std([0.70, 0.75, 0.95], ddof=1)
    )
    assert stpm["train_s"] == pytest.approx(20.0) and stpm["peak_rss_mb"] == 130.0
    shown = {r["method"]: r for r in table({"rows": [stpm, bank]})}
    assert shown["STPM"]["seeds"] == 3 and shown["STPM"]["I-AUROC ±"] == round(
        100 * np.std([0.8, 0.9, 0.85], ddof=1), 1
    )
    assert shown["bank"]["seeds"] == 1 and shown["bank"]["I-AUROC ±"] is None
    assert (
        shown["STPM"]["peak RSS MiB"] == 130 and shown["bank"]["peak RSS MiB"] == 105
    )  # the largest seed's


def test_methods_are_compared_with_the_best_paired_by_seed():
    from scipy import stats

    from unistad_edu.leaderboard import aggregate, markdown, paired

    def row(label, run, i_auroc):
        return {
            "label": label,
            "run": run,
            "method": "m",
            "mean": {"I-AUROC": i_auroc},
            "categories": {},
            "train_s": 1.0,
            "peak_rss_mb": 1.0,
            "state_mib": 1.0,
            "infer_ms_per_img": 1.0,
            "infer_vs_teacher_only": 1.0,
        }

    bank, ts, one = [0.97, 0.96, 0.965], [0.93, 0.92, 0.935], [0.90]
    rows = aggregate(
        [row("bank", f"b{i}", v) for i, v in enumerate(bank)]
        + [row("TS", f"t{i}", v) for i, v in enumerate(ts)]
        + [row("single", "s", one[0])]
    )
    result = {
        "rows": rows,
        "timed_images": 1,
        "timing_batch_size": 1,
        "teacher_only_img_s": 1.0,
        "data": "d",
    }
    ((label, cmp_),) = paired(result, "bank")  # the one-seed row cannot be paired
    ref = stats.ttest_rel(np.multiply(ts, 100), np.multiply(bank, 100))
    assert label == "TS" and cmp_.mean == pytest.approx(100 * (np.mean(ts) - np.mean(bank)))
    assert cmp_.p_t == pytest.approx(ref.pvalue) and cmp_.p_sign_flip == pytest.approx(0.25)
    text = markdown(result)
    assert "against the best, *bank*" in text and "- TS: -3.7 [" in text and "single:" not in text


def test_a_label_given_twice_is_timed_once_and_reported_as_two_seeds(runs, tiny_data, tmp_path):
    path = tmp_path / "lb.json"
    assert (
        cli(
            [
                "bench",
                "leaderboard",
                "--entry",
                "STPM",
                str(runs["stpm"]),
                "--entry",
                "STPM",
                str(runs["stpm"]),
                "--data",
                str(tiny_data),
                "--n-images",
                "4",
                "--batch-size",
                "4",
                "--repeats",
                "1",
                "--json",
                str(path),
            ]
        )
        == 0
    )
    (row,) = json.loads(path.read_text())["rows"]
    assert (
        len(row["seeds"]) == 2 and row["std"]["mean"]["I-AUROC"] == 0.0
    )  # the same run twice: no spread


def test_an_outside_reference_row_is_averaged_by_hand_and_shown_first(board, tmp_path):
    """--reference FILE: an outside row (metrics only), its mean over its categories, above the methods."""
    from unistad_edu import leaderboard

    ref_file = tmp_path / "ref.json"
    ref_file.write_text(
        json.dumps(
            {
                "label": "PatchCore elsewhere",
                "source": "somebody's run",
                "categories": {
                    "a": {"I-AUROC": 1.0, "P-AUROC": 0.9},
                    "b": {"I-AUROC": 0.8, "P-AUROC": 0.7},
                },
            }
        )
    )
    ref = leaderboard.load_reference(ref_file)
    assert ref["mean"] == pytest.approx({"I-AUROC": 0.9, "P-AUROC": 0.8})
    result = {**leaderboard.load(board), "references": [ref]}
    rows = leaderboard.table(result)
    assert rows[0] == {"method": "PatchCore elsewhere", "I-AUROC": 90.0, "P-AUROC": 80.0}
    assert [r["method"] for r in rows[1:]] == [
        r["method"] for r in leaderboard.table(leaderboard.load(board))
    ]
    md = leaderboard.markdown(result)
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| method | ") and "train s" in lines[0]  # the methods' columns
    assert lines[1].startswith("| PatchCore elsewhere | 90.0 |") and "somebody's run" in md
    shipped = leaderboard.load_reference(
        Path(__file__).parents[1] / "docs/results/reference_anomalib27_patchcore.json"
    )
    assert (
        round(100 * shipped["mean"]["I-AUROC"], 1) == 96.7
    )  # issue 16's table: 100, 96.2, 87.3, 100, 100
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"label": "x"}))
    with pytest.raises(ValueError, match="not a reference file"):
        leaderboard.load_reference(bad)
