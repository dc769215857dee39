"""The benchmark commands run and report ratios (speed targets are checked in docs/benchmarks.md, not here)."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys

import pytest

from unistad_edu import bench


def test_bench_teacher_small():
    r = bench.bench_teacher(image_size=64, batch_size=2, repeats=1)
    assert set(r["ratios"]) == {
        "channels_last_bf16_vs_fp32",
        "cache_hit_memory_vs_forward",
        "cache_hit_disk_vs_forward",
    }
    assert all(v > 0 for v in r["images_per_s"].values())


def test_bench_train_and_infer_cli(tmp_path):
    from unistad_edu.synthetic import make_synthetic

    data = make_synthetic(
        tmp_path / "syn set", size=64, n_train=6, n_test_good=1, n_test_defect=1
    )  # a space
    for what, key in (("train", "engine_vs_bare"), ("infer", "engine_vs_teacher_only")):
        out = tmp_path / f"{what}.json"
        md = tmp_path / "bench.md"
        r = subprocess.run(
            [
                sys.executable,
                "-m",
                "unistad_edu",
                "bench",
                what,
                "--data",
                str(data),
                "--image-size",
                "64",
                "--batch-size",
                "4",
                "--repeats",
                "1",
                "--json",
                str(out),
                "--markdown",
                str(md),
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr
        result = json.loads(out.read_text())
        assert result["ratios"][key] > 0 and result["machine"]
        assert f"bench {what}" in md.read_text()
        # the recorded command can be pasted into a shell: the path with a space stays one argument
        assert f"--data {shlex.quote(str(data))}" in md.read_text()


def _small_set(tmp_path, n_train, categories):
    """A 64 px synthetic set: ``n_train`` normal training images, 2 normal and 1 defective test image each."""
    from unistad_edu.synthetic import make_synthetic

    return make_synthetic(
        tmp_path / "syn",
        size=64,
        n_train=n_train,
        n_test_good=2,
        n_test_defect=1,
        categories=categories,
    )


@pytest.mark.slow  # over 30 s on a 2-core CPU
def test_bench_accuracy_side_by_side(tmp_path):
    data = _small_set(tmp_path, 6, ("weave", "bolt"))
    r = bench.bench_accuracy(
        "stpm",
        data,
        out_dir=tmp_path / "runs",
        epochs=1,
        extra_args=("--image-size", "64"),
        protocol="equal-epochs",
    )
    assert set(r["settings"]) == {"per-class", "unified"}
    for s in r["settings"].values():
        assert s["peak_rss_mb"] > 0 and s["train_wall_s"] > 0
        assert set(s["metrics"]["categories"]) == {"weave", "bolt"}
    r.update(date="today", machine="test")
    md = bench.to_markdown("accuracy", r, "cmd")
    assert "gap I-AUROC" in md and "| **mean** |" in md and "±" not in md  # one seed: no spread
    u, p = (r["settings"][k]["metrics"]["mean"]["I-AUROC"] for k in ("unified", "per-class"))
    assert f"{100 * u - 100 * p:+.1f}" in md.split("| **mean** |")[1].splitlines()[0]


@pytest.mark.slow  # over 30 s on a 2-core CPU
def test_bench_accuracy_equal_steps_per_category_over_seeds(tmp_path):
    """Lesson 03's rule: each per-class model takes the unified model's steps / K, in whole epochs of its own
    category (counted here from the runs' own config files); two seeds give means and sample stds."""
    import json

    data = _small_set(tmp_path, 12, ("weave", "bolt", "grain"))
    r = bench.bench_accuracy(
        "stpm",
        data,
        out_dir=tmp_path / "runs",
        epochs=3,
        seeds=(0, 1),
        extra_args=("--image-size", "64", "--batch-size", "4"),
    )
    assert r["protocol"] == "equal-steps-per-category" and r["seeds"] == [0, 1]
    for seed in (0, 1):
        uni = json.loads((tmp_path / "runs" / f"stpm_unified_s{seed}" / "config.json").read_text())
        unified_steps = uni["epochs_done"] * (uni["train_images"] // 4)
        share = -(-unified_steps // 3)  # per category, rounded up
        for cat in ("weave", "bolt", "grain"):
            c = json.loads(
                (tmp_path / "runs" / f"stpm_per-class_s{seed}" / cat / "config.json").read_text()
            )
            per_epoch = c["train_images"] // 4
            assert c["epochs_done"] == max(
                1, -(-share // per_epoch)
            )  # whole epochs reaching the share
    for setting, s in r["settings"].items():
        per_seed = [x["metrics"]["mean"]["I-AUROC"] for x in s["seeds"]]
        assert len(per_seed) == 2
        assert s["metrics"]["mean"]["I-AUROC"] == pytest.approx(sum(per_seed) / 2)
        assert s["metrics"]["std"]["mean"]["I-AUROC"] == pytest.approx(
            abs(per_seed[0] - per_seed[1]) / 2**0.5
        )
    r.update(date="today", machine="test")
    assert "±" in bench.to_markdown("accuracy", r, "cmd")
    with pytest.raises(ValueError, match="protocol"):
        bench.bench_accuracy("stpm", data, protocol="equal-pixels")


def test_bench_train_cache_comparison(tmp_path):
    from unistad_edu.synthetic import make_synthetic

    data = make_synthetic(
        tmp_path / "syn", size=64, n_train=6, n_test_good=1, n_test_defect=1, categories=("weave",)
    )
    work = bench.Workload("uniad", data, image_size=64, batch_size=4, n_images=8, repeats=1)
    r = bench.bench_train(work, compare="cache")
    assert set(r["images_per_s"]) == {"teacher_every_step", "cached_features"}
    assert r["ratios"]["cached_vs_teacher_every_step"] > 0
