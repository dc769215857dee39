"""`--json` and `--out` never write through a symbolic link, onto a device or pipe, or over a folder: the
link and what it points to stay as they were, and the message names the path."""

from __future__ import annotations

import os

import pytest

from unistad_edu.__main__ import main
from unistad_edu.files import NotAFileError, atomic_write_text, check_replaceable


@pytest.fixture()
def victim(tmp_path):
    """A file outside the folder the user names, and its content."""
    v = tmp_path / "elsewhere" / "important.json"
    v.parent.mkdir()
    v.write_text("keep me")
    return v


@pytest.mark.parametrize("how", ["link_to_file", "dangling_link", "link_to_dev", "fifo", "folder"])
def test_atomic_write_refuses_what_is_not_a_regular_file(tmp_path, victim, how):
    p = tmp_path / "out" / "metrics.json"
    p.parent.mkdir()
    if how == "link_to_file":
        p.symlink_to(victim)
    elif how == "dangling_link":
        p.symlink_to(tmp_path / "elsewhere" / "new.json")
    elif how == "link_to_dev":
        p.symlink_to("/dev/null")
    elif how == "fifo":
        os.mkfifo(p)
    else:
        p.mkdir()
    before = os.readlink(p) if p.is_symlink() else None
    with pytest.raises(NotAFileError, match="metrics.json"):
        atomic_write_text(p, "{}")
    assert victim.read_text() == "keep me" and not (tmp_path / "elsewhere" / "new.json").exists()
    if before is not None:
        assert p.is_symlink() and os.readlink(p) == before
    assert sorted(x.name for x in p.parent.iterdir()) == ["metrics.json"]  # no temporary file left


def test_a_regular_file_or_nothing_is_replaced(tmp_path):
    p = tmp_path / "m.json"
    check_replaceable(p)
    atomic_write_text(p, "a")
    atomic_write_text(p, "b")
    assert p.read_text() == "b"


def test_eval_json_onto_a_link_is_refused(demo_run, tmp_path, victim, capsys):
    link = tmp_path / "m.json"
    link.symlink_to(victim)
    assert (
        main(["eval", "--run", str(demo_run), "--json", str(link), "--no-progress", "--image-only"])
        == 2
    )
    err = capsys.readouterr().err
    assert "symbolic link" in err and str(link) in err
    assert victim.read_text() == "keep me" and link.is_symlink()


def test_predict_out_never_writes_through_a_link_inside_it(
    demo_run, demo_data, tmp_path, victim, capsys
):
    img = sorted((demo_data).rglob("test/good/*.png"))[0]
    out = tmp_path / "pred"
    out.mkdir()
    (out / f"000_{img.stem}_heatmap.png").symlink_to(victim)
    assert main(["predict", "--run", str(demo_run), "--out", str(out), str(img)]) == 2
    assert "symbolic link" in capsys.readouterr().err and victim.read_text() == "keep me"


# ---- one writer per run folder; metrics say which save they describe ----------------------------------------
def test_eval_and_predict_into_a_run_being_trained_are_refused(
    demo_run, demo_data, tmp_path, capsys
):
    import shutil

    from unistad_edu import files

    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    img = sorted(demo_data.rglob("test/good/*.png"))[0]
    with files.folder_lock(
        run, "run folder"
    ):  # what `train --overwrite` holds while it replaces the run
        assert main(["eval", "--run", str(run), "--no-progress", "--image-only"]) == 2
        assert "being written by another process" in capsys.readouterr().err
        assert main(["predict", "--run", str(run), str(img)]) == 2
        assert "being written by another process" in capsys.readouterr().err
        # writing elsewhere reads the run without the lock
        assert (
            main(
                [
                    "eval",
                    "--run",
                    str(run),
                    "--no-progress",
                    "--image-only",
                    "--json",
                    str(tmp_path / "m.json"),
                ]
            )
            == 0
        )
    capsys.readouterr()


@pytest.mark.slow  # over 30 s on a 2-core CPU
def test_metrics_record_their_save_and_readers_refuse_another(demo_run, tmp_path, capsys):
    import json
    import shutil

    from unistad_edu import runs
    from unistad_edu.leaderboard import parse_entry
    from unistad_edu.resolve import load_run_metrics

    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    assert main(["eval", "--run", str(run), "--no-progress", "--image-only"]) == 0
    capsys.readouterr()
    table = json.loads((run / "metrics.json").read_text())
    cfg = json.loads((run / "config.json").read_text())
    assert table["save_id"] == cfg["save_id"] and len(cfg["save_id"]) == 32
    assert load_run_metrics(run) is not None
    # the run is saved again (what a retraining does: a new save_id for config and weights)
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(run / "model.safetensors"), framework="pt") as st:
        tensors = {k: st.get_tensor(k) for k in st.keys()}
        meta = dict(st.metadata())
    meta["save_id"] = cfg["save_id"] = "0" * 32
    save_file(tensors, str(run / "model.safetensors"), metadata=meta)
    (run / "config.json").write_text(json.dumps(cfg))
    assert load_run_metrics(run) is None  # the demo's card shows no metrics of another model
    with pytest.raises(runs.StaleMetrics, match="another save"):
        runs.check_metrics_save(table, run)
    from unistad_edu.leaderboard import collect

    with pytest.raises(runs.StaleMetrics, match="eval --run"):
        collect([parse_entry(["x", str(run)])], n_images=2, progress=False)
    from unistad_edu.export import export_run

    try:
        ex = export_run(run, "onnx", out=tmp_path / "ex")
    except Exception as err:  # no ONNX runtime here: the copying rule is what is tested below
        pytest.skip(f"export unavailable: {err}")
    assert not (ex / "metrics.json").exists()
