"""Own what you delete (issue 32, item 1): ``--overwrite`` / ``--force`` replace only a folder whose marker says
the package wrote it as the same kind of thing -- a run with a run, an export with an export, a synthetic set with
a synthetic set, a validation set with a validation set, a downloaded category with a download. Every refusal is
checked for what matters to the user: exit code 2 (or the exception), a message naming what is there, no
traceback, and every byte of what was there still there (:func:`snapshot` before and after)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from unistad_edu import __main__ as cli
from unistad_edu import download as dl
from unistad_edu import runs
from unistad_edu.export import ExportError, check_replaceable
from unistad_edu.synthetic import MANIFEST_NAME, make_synthetic
from unistad_edu.validation import make_validation

from .conftest import make_category, tiny_synthetic, train_args, write_image
from .test_download import QUIET, _no_proxy, mvtec_category, serve, server  # noqa: F401  (fixtures and archive builder)

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32
NOWHERE = "http://127.0.0.1:9/never.tar.xz"  # a refusal must come before any request (port 9: nothing listens)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_synthetic(tmp_path_factory, SIZE, n_train=6, n_test_good=1, n_test_defect=1)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNISTAD_CACHE", str(tmp_path / "cache"))


def _train_args(data, out, *extra) -> list[str]:
    return train_args(data, out, SIZE, *extra)


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    """A unified run written by the CLI, evaluated, with one prediction (never changed: tests copy it)."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert cli.main(_train_args(data, run)) == 0
    assert (
        cli.main(
            ["eval", "--run", str(run), "--no-progress", "--precision", "fp32", "--threads", "1"]
        )
        == 0
    )
    image = next(data.glob("weave/test/good/*.png"))
    assert (
        cli.main(
            ["predict", "--run", str(run), str(image), "--precision", "fp32", "--threads", "1"]
        )
        == 0
    )
    return run


@pytest.fixture(scope="module")
def per_class(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("per_class") / "run"
    assert cli.main(_train_args(data, run, "--setting", "per-class")) == 0
    return run


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("exported") / "exp"
    assert cli.main(["export", "--run", str(trained), "--out", str(out)]) == 0
    return out


def snapshot(path: Path) -> dict[str, bytes | str]:
    """Every file under ``path`` (or ``path`` itself) with its bytes; links as 'link -> target'."""
    path = Path(path)
    if path.is_symlink():
        return {".": f"link -> {os.readlink(path)}"}
    if path.is_file():
        return {".": path.read_bytes()}
    out = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if p.is_symlink():
            out[rel] = f"link -> {os.readlink(p)}"
        elif p.is_file():
            out[rel] = p.read_bytes()
        else:
            out[rel + "/"] = b""
    return out


def refused(argv, capsys, *words) -> str:
    """Run the CLI, expect exit 2 and a one-line message holding ``words``; returns the message."""
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    lines = [
        ln for ln in err.splitlines() if ln.startswith("error: ")
    ]  # (a "machine is busy" note may precede)
    assert len(lines) == 1 and "Traceback" not in err and "unexpected" not in err, err
    for word in words:
        assert word in lines[0], (word, err)
    return lines[0]


def _names(folder: Path) -> list[str]:
    """What ``folder`` holds, but the test's own cache folder."""
    return sorted(p.name for p in folder.iterdir() if p.name != "cache")


def copy_run(run: Path, dst: Path) -> Path:
    shutil.copytree(run, dst)
    return dst


def user_images(folder: Path, n: int = 3) -> Path:
    for i in range(n):
        write_image(folder / f"photo_{i}.png", seed=i)
    return folder


# ---- train --overwrite ----------------------------------------------------------------------------------------
def _foreign_tool(folder: Path) -> Path:
    """What another tool leaves: its config.json, metrics.json and predictions/ (the issue's example)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": "resnet18", "lr": 0.1, "epochs": 30}))
    (folder / "metrics.json").write_text(json.dumps({"auroc": 0.93}))
    user_images(folder / "predictions")
    return folder


def test_train_overwrite_refuses_another_tools_run_folder(data, tmp_path, capsys):
    folder = _foreign_tool(tmp_path / "other")
    before = snapshot(folder)
    err = refused(
        _train_args(data, folder, "--overwrite"),
        capsys,
        "did not write",
        "config.json",
        "metrics.json",
        "predictions/",
        "move those files away",
    )
    assert "unistad-edu run config" in err
    assert snapshot(folder) == before
    refused(_train_args(data, folder, "--resume"), capsys, "did not write")  # nor continued
    refused(_train_args(data, folder), capsys, "did not write")
    assert snapshot(folder) == before


def _config_without_format(run: Path) -> None:
    cfg = json.loads((run / "config.json").read_text())
    del cfg["format"]  # every field but the one only our writer puts there
    (run / "config.json").write_text(json.dumps(cfg))


def _user_file_in_predictions(run: Path) -> None:
    write_image(run / "predictions" / "holiday.jpg")


def _other_metrics(run: Path) -> None:
    (run / "metrics.json").write_text(json.dumps({"auroc": 0.5, "tool": "anomalib"}))


def _other_log(run: Path) -> None:
    (run / "train_log.jsonl").write_text("step 1 loss 0.3\nstep 2 loss 0.2\n")


def _weights_without_our_config(run: Path) -> None:
    from safetensors.numpy import save_file

    (run / "config.json").unlink()
    save_file(
        {"w": np.zeros(3, np.float32)}, str(run / "model.safetensors")
    )  # no save_id in its metadata


def _state_without_our_info(run: Path) -> None:
    from safetensors.numpy import save_file

    save_file(
        {"w": np.zeros(3, np.float32)},
        str(run / "train_state.safetensors"),
        metadata={"by": "other"},
    )


def _predictions_is_a_link(run: Path) -> None:
    shutil.rmtree(run / "predictions")
    (run.parent / "elsewhere").mkdir()
    (run / "predictions").symlink_to(run.parent / "elsewhere")


@pytest.mark.parametrize(
    "alter, named",
    [
        (_config_without_format, 'config.json (not a unistad-edu run config: no "format"'),
        (_user_file_in_predictions, "predictions/ (holds holiday.jpg"),
        (_other_metrics, "metrics.json (not a unistad-edu metrics table"),
        (_other_log, "train_log.jsonl (not a unistad-edu training log"),
        (
            _weights_without_our_config,
            "model.safetensors (weights without a unistad-edu config.json",
        ),
        (_state_without_our_info, "train_state.safetensors (no unistad-edu resume info"),
        (_predictions_is_a_link, "predictions (a symbolic link)"),
    ],
    ids=[
        "config-without-format",
        "user-file-in-predictions",
        "other-metrics",
        "other-log",
        "foreign-weights",
        "foreign-state",
        "predictions-link",
    ],
)
def test_overwrite_refuses_a_run_folder_holding_files_the_package_did_not_write(
    trained, tmp_path, alter, named
):
    run = copy_run(trained, tmp_path / "run")
    alter(run)
    before = snapshot(run)
    for flags in ({"overwrite": True}, {"resume": True}, {}):
        with pytest.raises(runs.RunFolderError, match="did not write") as err:
            runs.prepare(run, {}, say=lambda m: None, **flags)
        assert named in str(err.value), str(err.value)
    assert snapshot(run) == before


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda tmp, exp, data: exp, "a unistad-edu export folder (export.json)"),
        (lambda tmp, exp, data: data, "a unistad-edu synthetic data set (SYNTHETIC.json)"),
    ],
    ids=["export", "synthetic-set"],
)
@pytest.mark.slow  # over 30 s on a 2-core CPU
def test_train_into_a_folder_of_another_kind_is_refused(
    data, exported, tmp_path, capsys, make, words
):
    target = make(tmp_path, exported, data)
    before = snapshot(target)
    refused(_train_args(data, target, "--overwrite"), capsys, words, "not a run folder")
    assert snapshot(target) == before


def test_overwrite_of_a_per_class_run_checks_every_sub_run(per_class, tmp_path):
    run = copy_run(per_class, tmp_path / "pc")
    (run / "bolt" / "config.json").write_text(json.dumps({"epochs": 3}))
    before = snapshot(run)
    with pytest.raises(
        runs.RunFolderError, match=r"bolt/config\.json \(not a unistad-edu run config"
    ):
        runs.prepare(run, None, overwrite=True, per_class=True, say=lambda m: None)
    assert snapshot(run) == before


def test_overwrite_of_a_per_class_run_keeps_user_files_in_its_sub_runs(per_class, tmp_path):
    run = copy_run(per_class, tmp_path / "pc")
    (run / "weave" / "notes.txt").write_text("mine")
    said = []
    runs.prepare(run, None, overwrite=True, per_class=True, say=said.append)
    assert sorted(p.name for p in run.iterdir()) == [
        "weave"
    ]  # bolt/ held only the run: gone; setting.json gone
    assert sorted(p.name for p in (run / "weave").iterdir()) == ["notes.txt"]
    assert "bolt/" in said[0] and "weave/" in said[0]


def _as_an_older_version_wrote_it(run: Path) -> None:
    """config.json without the fields added since the first version; predictions named without an index."""
    cfg = json.loads((run / "config.json").read_text())
    for key in (
        "save_id",
        "train_root",
        "train_categories",
        "calibration",
        "validation",
        "precision",
    ):
        cfg.pop(key, None)
    (run / "config.json").write_text(json.dumps(cfg))
    for p in (run / "predictions").iterdir():
        p.rename(p.with_name(p.name.split("_", 1)[1]))  # 000_x_heatmap.png -> x_heatmap.png


def _interrupted_in_epoch_one(run: Path) -> None:
    """Killed before the first checkpoint: only the log and the resume state are there."""
    for name in ("config.json", "model.safetensors", "metrics.json"):
        (run / name).unlink()
    shutil.rmtree(run / "predictions")


def _killed_mid_log_append(run: Path) -> None:
    with open(run / "train_log.jsonl", "a") as f:
        f.write('{"epoch": 2, "lo')


@pytest.mark.parametrize(
    "alter",
    [
        lambda run: None,
        _as_an_older_version_wrote_it,
        _interrupted_in_epoch_one,
        _killed_mid_log_append,
    ],
    ids=["as-written", "older-version", "interrupted", "torn-log-line"],
)
def test_overwrite_replaces_a_run_the_package_wrote_and_keeps_user_files(trained, tmp_path, alter):
    run = copy_run(trained, tmp_path / "run")
    alter(run)
    (run / "notes.txt").write_text("mine")
    runs.prepare(run, {}, overwrite=True, say=lambda m: None)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]


def test_train_overwrite_cli_replaces_its_own_run(data, trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    old = json.loads((run / "config.json").read_text())["save_id"]
    assert cli.main(_train_args(data, run, "--overwrite")) == 0
    assert json.loads((run / "config.json").read_text())["save_id"] != old
    assert not (run / "metrics.json").exists() and not (run / "predictions").exists()


# ---- export --overwrite ---------------------------------------------------------------------------------------
def _export_args(run, out) -> list[str]:
    return ["export", "--run", str(run), "--out", str(out), "--overwrite"]


def test_export_overwrite_refuses_the_run_folder_itself(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    before = snapshot(run)
    refused(_export_args(run, run), capsys, "is the run folder", "delete the run's model")
    refused(
        _export_args(run, tmp_path), capsys, "holds the run folder being exported"
    )  # a folder above it
    refused(
        _export_args(run, Path(os.path.relpath(run))), capsys, "is the run folder"
    )  # another spelling
    assert snapshot(run) == before
    assert _names(tmp_path) == ["run"]  # no .run.old-… or temporary folder


def _file(tmp: Path, exp: Path) -> Path:
    (tmp / "target.onnx").write_bytes(b"not an export folder")
    return tmp / "target.onnx"


def _user_folder(tmp: Path, exp: Path) -> Path:
    return user_images(tmp / "target")


def _synthetic_set(tmp: Path, exp: Path) -> Path:
    return make_synthetic(
        tmp / "target", size=SIZE, n_train=1, n_test_good=1, n_test_defect=0, categories=("weave",)
    )


def _foreign_card(tmp: Path, exp: Path) -> Path:
    folder = user_images(tmp / "target", 1)
    (folder / "export.json").write_text(
        json.dumps({"model": "photo_0.png"})
    )  # no export_format_version
    return folder


def _export_with_a_user_file(tmp: Path, exp: Path) -> Path:
    folder = shutil.copytree(exp, tmp / "target")
    (folder / "README.md").write_text("how we deploy this model")
    return folder


def _link_to_an_export(tmp: Path, exp: Path) -> Path:
    (tmp / "target").symlink_to(exp)
    return tmp / "target"


@pytest.mark.parametrize(
    "make, words",
    [
        (_file, ["is a file", "not an export folder"]),
        (
            _user_folder,
            [
                "a folder unistad-edu did not write (photo_0.png, photo_1.png, photo_2.png)",
                "not an export folder",
            ],
        ),
        (_synthetic_set, ["a unistad-edu synthetic data set", "not an export folder"]),
        (_foreign_card, ["no unistad-edu export.json"]),
        (_export_with_a_user_file, ["also holds README.md", "which no export wrote"]),
        (_link_to_an_export, ["a symbolic link (to "]),
    ],
    ids=[
        "file",
        "user-images",
        "synthetic-set",
        "foreign-export-json",
        "export-plus-user-file",
        "link",
    ],
)
def test_export_overwrite_refuses_what_is_not_an_export(
    trained, exported, tmp_path, capsys, make, words
):
    target = make(tmp_path, exported)
    before, card_before = snapshot(target), snapshot(exported)
    refused(_export_args(trained, target), capsys, "--overwrite refused", *words)
    assert snapshot(target) == before and snapshot(exported) == card_before
    assert not list(tmp_path.glob(".target*"))  # no hidden .target.old-… or staging folder


def test_export_overwrite_accepts_an_empty_folder_or_an_export(trained, exported, tmp_path):
    (tmp_path / "empty").mkdir()
    assert check_replaceable(tmp_path / "empty", trained) is None  # nothing in it to lose
    assert check_replaceable(exported, trained) is None
    with pytest.raises(ExportError, match="is a file"):
        check_replaceable(_file(tmp_path, exported), trained)


@pytest.mark.slow  # over 30 s on a 2-core CPU
def test_export_overwrite_replaces_another_export(trained, exported, tmp_path, capsys):
    target = shutil.copytree(exported, tmp_path / "exp")
    card = json.loads((target / "export.json").read_text())
    card["source_run"] = "an older run"
    (target / "export.json").write_text(json.dumps(card))
    assert cli.main(_export_args(trained, target)) == 0
    assert json.loads((target / "export.json").read_text())["source_run"] == str(trained)
    assert _names(tmp_path) == ["exp"]  # the old export is gone, nothing hidden left


# ---- data synthetic --force -----------------------------------------------------------------------------------
def _syn_args(out, *extra) -> list[str]:
    return [
        "data",
        "synthetic",
        "--out",
        str(out),
        "--size",
        str(SIZE),
        "--n-train",
        "2",
        "--force",
        *extra,
    ]


def _small_set(out: Path, size: int = 48) -> Path:
    return make_synthetic(
        out, size=size, n_train=2, n_test_good=1, n_test_defect=1, categories=("weave",)
    )


def _real_dataset(tmp: Path, trained: Path) -> Path:
    root = tmp / "target"
    make_category(root, "widget")
    make_category(root, "gizmo")
    return root


def _validation_set(tmp: Path, trained: Path) -> Path:
    return make_validation(_small_set(tmp / "src"), tmp / "target", size=SIZE)


def _a_run(tmp: Path, trained: Path) -> Path:
    return copy_run(trained, tmp / "target")


def _plain_file(tmp: Path, trained: Path) -> Path:
    (tmp / "target").write_text("a file, not a data set")
    return tmp / "target"


def _forged_manifest(tmp: Path, trained: Path) -> Path:
    root = _real_dataset(tmp, trained)
    (root / MANIFEST_NAME).write_text(
        json.dumps({"config": {"size": 32}})
    )  # the name, not our format
    return root


def _user_image_added(tmp: Path, trained: Path) -> Path:
    root = _small_set(tmp / "target")
    write_image(root / "weave" / "train" / "good" / "my_extra_photo.png")
    return root


def _user_category_added(tmp: Path, trained: Path) -> Path:
    root = _small_set(tmp / "target")
    make_category(root, "mine")
    return root


def _link_to_a_set(tmp: Path, trained: Path) -> Path:
    (tmp / "target").symlink_to(_small_set(tmp / "real_set"))
    return tmp / "target"


@pytest.mark.parametrize(
    "make, words",
    [
        (
            _real_dataset,
            ["a folder unistad-edu did not write (gizmo, widget)", "with no SYNTHETIC.json"],
        ),
        (_validation_set, ["a unistad-edu validation set (VALIDATION.json)"]),
        (_a_run, ["a unistad-edu run folder (config.json)"]),
        (_plain_file, ["is a file, not a synthetic data set"]),
        (_forged_manifest, ["with no SYNTHETIC.json written by this generator"]),
        (_user_image_added, ["also holds weave/train/good/my_extra_photo.png", "did not write"]),
        (_user_category_added, ["also holds mine/", "did not write"]),
        (_link_to_a_set, ["a symbolic link (to "]),
    ],
    ids=[
        "real-dataset",
        "validation-set",
        "run",
        "file",
        "forged-manifest",
        "user-image-added",
        "user-category-added",
        "link",
    ],
)
def test_data_synthetic_force_refuses_what_the_generator_did_not_write(
    trained, tmp_path, capsys, make, words
):
    target = make(tmp_path, trained)
    before = snapshot(target)
    refused(_syn_args(target), capsys, "--force refused", *words)
    assert snapshot(target) == before
    assert not list(tmp_path.glob(".target.build-*"))  # no staging folder left


@pytest.mark.parametrize(
    "damage",
    [
        lambda root: None,
        lambda root: next((root / "weave" / "test" / "good").glob("*.png")).unlink(),
    ],
    ids=["other-settings", "image-missing"],
)
def test_data_synthetic_force_regenerates_a_synthetic_set(tmp_path, capsys, damage):
    root = _small_set(tmp_path / "syn", size=48)
    damage(root)
    assert cli.main(_syn_args(root)) == 0  # asked: 32 px, the default categories
    made = json.loads((root / MANIFEST_NAME).read_text())["config"]
    assert made["size"] == SIZE and made["categories"] == ["weave", "grain", "bolt", "pcb"]


def test_the_generators_file_list_is_exactly_what_it_writes(tmp_path):
    from unistad_edu.ownership import foreign_entries
    from unistad_edu.synthetic import SyntheticConfig, _generated_paths

    cfg = SyntheticConfig(
        size=SIZE, n_train=11, n_test_good=1, n_test_defect=2, categories=("weave", "pcb")
    )
    root = make_synthetic(tmp_path / "syn", cfg)
    on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*")}
    assert on_disk == _generated_paths(
        cfg
    )  # nothing the check would call foreign, nothing it would miss
    assert foreign_entries(root, lambda rel, is_dir: rel in _generated_paths(cfg)) == []
    from unistad_edu.synthetic import check_replaceable as replaceable_set

    assert replaceable_set(root) is None  # the whole set, as written, may be replaced


# ---- data validation --force ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """6 training images: 2 are held out (a validation set with test/ folders)."""
    return make_synthetic(
        tmp_path_factory.mktemp("valsrc") / "src",
        size=SIZE,
        n_train=6,
        n_test_good=1,
        n_test_defect=0,
        categories=("weave",),
    )


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda tmp, src: _small_set(tmp / "target"), "a unistad-edu synthetic data set"),
        (
            lambda tmp, src: user_images(tmp / "target"),
            "a folder unistad-edu did not write (photo_0.png",
        ),
        (lambda tmp, src: _plain_file(tmp, src), "is a file"),
        (
            lambda tmp, src: _with(
                make_validation(src, tmp / "target", size=SIZE), "weave/test/good/mine.txt"
            ),
            "also holds weave/test/good/mine.txt",
        ),
        (
            lambda tmp, src: _with(make_validation(src, tmp / "target", size=SIZE), "extra/"),
            "also holds extra/",
        ),
    ],
    ids=["synthetic-set", "user-images", "file", "user-file-inside", "user-folder-inside"],
)
def test_data_validation_force_refuses_what_it_did_not_build(source, tmp_path, make, words):
    target = make(tmp_path, source)
    before = snapshot(target)
    with pytest.raises(FileExistsError, match="--force refused") as err:
        make_validation(source, target, size=SIZE, seed=3, force=True)
    assert words in str(err.value), str(err.value)
    assert snapshot(target) == before


def _with(root: Path, rel: str) -> Path:
    """``root`` with a user's file (or, ending in '/', folder) added at ``rel``."""
    if rel.endswith("/"):
        (root / rel).mkdir()
    else:
        (root / rel).write_text("mine")
    return root


def _two_widgets(tmp: Path) -> Path:
    """Two categories of the same folder name: they are called 'a/widget' and 'b/widget'."""
    for group in ("a", "b"):
        make_category(tmp / "two" / group, "widget", n_train=6)
    return tmp / "two"


@pytest.mark.parametrize(
    "make_source",
    [lambda tmp, source: source, lambda tmp, source: _two_widgets(tmp)],
    ids=["one-category", "nested-category-names"],
)
def test_data_validation_force_replaces_a_validation_set(source, tmp_path, capsys, make_source):
    src = make_source(tmp_path, source)
    out = make_validation(src, tmp_path / "val", size=SIZE, seed=0)
    assert (
        cli.main(
            [
                "data",
                "validation",
                "--data",
                str(src),
                "--out",
                str(out),
                "--size",
                str(SIZE),
                "--seed",
                "1",
                "--force",
            ]
        )
        == 0
    )
    assert json.loads((out / "VALIDATION.json").read_text())["spec"]["seed"] == 1


# ---- data mvtec --force ---------------------------------------------------------------------------------------
def _dl_args(out, *extra) -> list[str]:
    return [
        "data",
        "mvtec",
        "--out",
        str(out),
        "--categories",
        "bottle",
        "--url",
        NOWHERE,
        "--no-progress",
        "--retries",
        "0",
        "--force",
        *extra,
    ]


def _recorded(out: Path) -> None:
    (out / "DOWNLOADS.json").write_text(
        json.dumps(
            {
                "archives": {},
                "categories": {"bottle": {"dataset": "MVTec AD", "archive": "bottle.tar.xz"}},
            }
        )
    )


@pytest.mark.parametrize(
    "make, words",
    [
        (
            lambda out: make_category(out, "bottle"),
            "was not installed by a download ('bottle' is not recorded",
        ),
        (
            lambda out: (out / "bottle").write_text("a file"),
            "is a file, not a downloaded category folder",
        ),
        (lambda out: (_recorded(out), (out / "bottle").write_text("a file")), "is a file"),
        (
            lambda out: (
                make_category(out.parent / "mine", "x"),
                (out / "bottle").symlink_to(out.parent / "mine"),
            ),
            "a symbolic link (to ",
        ),
    ],
    ids=["user-folder", "file", "recorded-but-a-file", "link"],
)
def test_data_mvtec_force_refuses_a_category_no_download_installed(tmp_path, capsys, make, words):
    out = tmp_path / "mvtec"
    out.mkdir()
    make(out)
    before = snapshot(out)
    refused(_dl_args(out), capsys, "--force refused", words)
    assert snapshot(out) == before


def test_data_mvtec_force_replaces_a_downloaded_category(server, tmp_path):  # noqa: F811 (the fixture)
    url, sha = serve(server, "/bottle.tar.xz", mvtec_category())
    out = tmp_path / "mvtec"
    dl.download_mvtec(out, ["bottle"], url=url, sha256=sha, transfer=QUIET)
    (out / "bottle" / "train" / "good" / "000.png").write_bytes(b"damaged")
    url2, sha2 = serve(server, "/bottle2.tar.xz", mvtec_category(seed=5))
    dl.download_mvtec(out, ["bottle"], url=url2, sha256=sha2, force=True, transfer=QUIET)
    assert (out / "bottle" / "train" / "good" / "000.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(p.name for p in out.iterdir()) == ["DOWNLOADS.json", "bottle"]


@pytest.mark.parametrize(
    "extra", ["train/good/my_photo.png", "notes.txt", "ground_truth/new_defect/000_mask.png"]
)
def test_data_mvtec_force_keeps_files_a_user_added_to_a_downloaded_category(
    server,  # noqa: F811
    tmp_path,
    extra,
):
    url, sha = serve(server, "/bottle.tar.xz", mvtec_category())
    out = tmp_path / "mvtec"
    dl.download_mvtec(out, ["bottle"], url=url, sha256=sha, transfer=QUIET)
    listed = json.loads((out / "DOWNLOADS.json").read_text())["categories"]["bottle"]["files"]
    assert listed == sorted(
        p.relative_to(out / "bottle").as_posix() for p in (out / "bottle").rglob("*") if p.is_file()
    )
    mine = out / "bottle" / extra
    mine.parent.mkdir(parents=True, exist_ok=True)
    mine.write_bytes(b"mine")
    url2, sha2 = serve(server, "/bottle2.tar.xz", mvtec_category(seed=5))
    with pytest.raises(dl.DownloadError, match="no download installed"):
        dl.download_mvtec(out, ["bottle"], url=url2, sha256=sha2, force=True, transfer=QUIET)
    assert mine.read_bytes() == b"mine"


# ---- the demo's default model folder ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "what", ["photos", "a_file", "another_run", "default_plus_user_file", "link"]
)
def test_the_demos_default_model_folder_is_replaced_only_when_the_demo_wrote_it(
    tmp_path, demo_run, what
):
    from unistad_edu import resolve, runs

    from .conftest import DEMO_SPEC

    run = tmp_path / "demo_run"
    if what == "photos":
        run.mkdir()
        (run / "holiday.png").write_bytes(b"not really")
    elif what == "a_file":
        run.write_text("mine")
    elif what == "another_run":  # a run folder, but not one the demo wrote (no marker)
        shutil.copytree(demo_run, run)
        (run / resolve.DEFAULT_MARKER).unlink()
    elif what == "default_plus_user_file":
        shutil.copytree(demo_run, run)
        (run / "notes.txt").write_text("mine")
    else:
        run.symlink_to(demo_run)
    before = sorted(p.name for p in run.iterdir()) if run.is_dir() else run.read_text()
    other_spec = {
        **DEMO_SPEC,
        "seed": DEMO_SPEC["seed"] + 1,
    }  # so the folder is not reused as it is
    with pytest.raises(runs.RunFolderError, match="never replaced"):
        resolve.ensure_default_run(
            run, spec=other_spec, data_root=tmp_path / "unused", progress=False, log=lambda m: None
        )
    assert (sorted(p.name for p in run.iterdir()) if run.is_dir() else run.read_text()) == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".demo_run")]


def test_an_earlier_default_model_is_replaceable():
    import tempfile

    from unistad_edu import resolve

    with tempfile.TemporaryDirectory() as d:
        run = Path(d) / "demo_run"
        resolve.check_default_replaceable(run)  # absent
        run.mkdir()
        resolve.check_default_replaceable(run)  # empty
        (run / resolve.DEFAULT_MARKER).write_text("{}")
        resolve.check_default_replaceable(run)  # a marker (an interrupted earlier default model)
