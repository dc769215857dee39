"""Export cards are checked, not taken at their word (issue 32, item 2): ``export.json`` gets the checks
``config.json`` gets -- known fields, types, a finite threshold -- every file it names must have a SHA-256 digest
that matches, and every file name must stay inside the export folder. One real export is made; each case alters
a copy of it and is refused with a message naming the field, by ``read_card`` / ``ExportedModel`` and through
``predict``, ``demo`` and ``eval`` (exit 2, no traceback). The untouched copy, an inside link and a card as export
format 1 wrote it are the controls that must still serve."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from unistad_edu import __main__ as cli
from unistad_edu.errors import CheckpointError
from unistad_edu.export_runtime import CARD_FILE, ExportedModel, read_card

from .conftest import tiny_synthetic, train_args

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.slow,
]  # one torch thread; an export (~25 s)

SIZE = 32


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_synthetic(tmp_path_factory, SIZE, n_train=6, n_test_good=1, n_test_defect=1)


@pytest.fixture(scope="module")
def export(data, tmp_path_factory) -> Path:
    """An ONNX export of a one-epoch STPM run (never changed: each case alters a copy)."""
    root = tmp_path_factory.mktemp("card")
    run, out = root / "run", root / "exp"
    assert cli.main(train_args(data, run, SIZE)) == 0
    assert cli.main(["export", "--run", str(run), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def image(data) -> str:
    return str(next(data.glob("bolt/test/good/*.png")))


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNISTAD_CACHE", str(tmp_path / "cache"))


def copy_with(export: Path, dst: Path, change=None, text=None) -> Path:
    """A copy of ``export`` whose card is changed by ``change(card)`` (or replaced by the JSON ``text``)."""
    shutil.copytree(export, dst)
    card = json.loads((dst / CARD_FILE).read_text())
    if change is not None:
        change(card)
    (dst / CARD_FILE).write_text(text if text is not None else json.dumps(card, indent=2))
    return dst


def setter(key, value):
    def change(card):
        card[key] = value

    return change


def _nan_text(export: Path, key: str, literal: str) -> str:
    """The card's JSON with ``key`` set to a bare ``NaN`` / ``Infinity`` / ``-Infinity`` literal."""
    card = json.loads((export / CARD_FILE).read_text())
    card[key] = "@@"
    return json.dumps(card).replace('"@@"', literal)


def digest(value):
    def change(card):
        card["files"]["model.onnx"] = value

    return change


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- the controls --------------------------------------------------------------------------------------------
def test_the_untouched_export_serves(export, image):
    card = read_card(export)
    model = ExportedModel(export, threads=1)
    res = model.predict([image])[0]
    assert (
        model.threshold == card["threshold"]
        and np.isfinite(res["score"])
        and res["anomalous"] in (True, False)
    )


def test_a_card_as_export_format_1_wrote_it_still_serves(export, tmp_path, image):
    def as_format_1(card):
        card["export_format_version"] = 1
        card["outputs"] = {k: card["outputs"][k] for k in ("anomaly_map", "score")}
        for key in ("calibration", "parity", "export_seconds"):
            card.pop(key, None)

    old = copy_with(export, tmp_path / "old", as_format_1)
    res = ExportedModel(old, threads=1).predict([image])[0]
    assert (
        res["threshold"] == read_card(export)["threshold"] and res["category"] is None
    )  # one global threshold


def test_a_null_threshold_still_means_no_threshold(export, tmp_path, image):
    folder = copy_with(
        export, tmp_path / "x", lambda c: (setter("threshold", None)(c), c.pop("calibration"))
    )
    res = ExportedModel(folder, threads=1).predict([image])[0]
    assert res["anomalous"] is None and res["threshold"] is None


def test_a_link_that_stays_inside_the_folder_is_accepted(export, tmp_path):
    folder = copy_with(export, tmp_path / "x")
    (folder / "model.onnx").rename(folder / "graph-v1.onnx")
    (folder / "model.onnx").symlink_to("graph-v1.onnx")
    assert read_card(folder)["model_file"] == "model.onnx"


# ---- the threshold and the other fields ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "literal, shown", [("NaN", "nan"), ("Infinity", "inf"), ("-Infinity", "-inf")]
)
def test_a_non_finite_threshold_is_refused(export, tmp_path, literal, shown):
    folder = copy_with(export, tmp_path / "x", text=_nan_text(export, "threshold", literal))
    with pytest.raises(CheckpointError, match=rf"threshold is {shown}, expected a finite number"):
        ExportedModel(folder)


@pytest.mark.parametrize(
    "key, value, words",
    [
        ("threshold", True, "threshold is True, expected a finite number"),
        ("threshold", "0.5", "threshold is '0.5', expected a finite number"),
        ("threshold", [0.5], "threshold is [0.5], expected a finite number"),
        ("image_size", 0, "image_size is 0, expected an integer image side"),
        ("image_size", "32", "image_size is '32', expected an integer image side"),
        ("image_size", 32.0, "image_size is 32.0, expected an integer image side"),
        ("image_size", True, "image_size is True, expected an integer image side"),
        ("format", "tensorrt", "format is 'tensorrt', expected one of onnx, openvino"),
        ("method", "", "method is '', expected a method name"),
        ("method", 7, "method is 7, expected a method name"),
        (
            "outputs",
            "anomaly_map",
            "outputs is 'anomaly_map', expected an object naming anomaly_map, score",
        ),
        ("outputs", {"score": "x"}, "outputs is {'score': 'x'}"),
        ("run_config", [1], "run_config is [1], expected an object"),
        ("teacher", "lite0", "teacher is 'lite0', expected an object"),
        ("opset", "18", "opset is '18', expected an integer"),
        ("threshold_rule", 3, "threshold_rule is 3, expected text"),
        ("export_seconds", "fast", "export_seconds is 'fast', expected a finite number"),
        (
            "notes",
            "added by hand",
            "field 'notes' is 'added by hand', expected only the fields an export writes",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 20 else None,
)
def test_a_field_of_the_wrong_kind_is_refused_by_name(export, tmp_path, key, value, words):
    folder = copy_with(export, tmp_path / "x", setter(key, value))
    with pytest.raises(CheckpointError) as err:
        ExportedModel(folder)
    assert words in str(err.value) and str(folder / CARD_FILE) in str(err.value), str(err.value)


@pytest.mark.parametrize(
    "value, words",
    [
        (True, "export_format_version (a whole number >= 1; found True)"),
        (0, "export_format_version (a whole number >= 1; found 0)"),
        ("2", "export_format_version (a whole number >= 1; found '2')"),
    ],
)
def test_the_format_version_must_be_a_whole_number(export, tmp_path, value, words):
    folder = copy_with(export, tmp_path / "x", setter("export_format_version", value))
    with pytest.raises(CheckpointError, match="not a unistad-edu export card") as err:
        read_card(folder)
    assert words in str(err.value)


def test_a_card_that_is_not_an_object_or_lacks_a_field_is_refused(export, tmp_path):
    with pytest.raises(CheckpointError, match="export_format_version"):
        read_card(copy_with(export, tmp_path / "list", text="[1, 2]"))
    with pytest.raises(CheckpointError, match="lacks 'model_file'"):
        read_card(copy_with(export, tmp_path / "nomodel", lambda c: c.pop("model_file")))


def test_the_embedded_run_config_is_checked_like_a_config_json(export, tmp_path):
    def nan_run_threshold(card):
        card["run_config"]["threshold"] = float("nan")

    folder = copy_with(export, tmp_path / "x", nan_run_threshold)
    with pytest.raises(CheckpointError, match=r"\(run_config\): threshold is nan"):
        read_card(folder)

    def bad_statistic(card):
        card["run_config"]["validation"] = {"per_class": {"bolt": {"mean": "high"}}}

    with pytest.raises(
        CheckpointError, match=r"\(run_config\): validation\.per_class\.bolt\.mean is 'high'"
    ):
        read_card(copy_with(export, tmp_path / "y", bad_statistic))


def test_a_bad_calibration_block_is_refused(export, tmp_path):
    with pytest.raises(CheckpointError, match="calibration"):
        read_card(
            copy_with(export, tmp_path / "x", setter("calibration", {"kind": "crystal-ball"}))
        )


# ---- digests -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, shown",
    [
        ("", "''"),
        (None, "None"),
        ("abc123", "'abc123'"),
        (0, "0"),
    ],
    ids=["empty", "null", "short", "number"],
)
def test_every_file_needs_a_digest(export, tmp_path, value, shown):
    folder = copy_with(export, tmp_path / "x", digest(value))
    with pytest.raises(
        CheckpointError, match=rf"the SHA-256 of model\.onnx is {shown}, expected 64 lowercase hex"
    ):
        ExportedModel(folder)


def test_an_empty_digest_no_longer_hides_a_substituted_graph(export, tmp_path):
    folder = copy_with(export, tmp_path / "x", digest(""))
    (folder / "model.onnx").write_bytes(
        (folder / "model.onnx").read_bytes()[:-16]
    )  # a different graph
    with pytest.raises(CheckpointError, match="SHA-256 of model.onnx is ''"):
        read_card(folder)


def test_a_changed_file_with_its_digest_kept_is_refused(export, tmp_path):
    folder = copy_with(export, tmp_path / "x")
    with open(folder / "model.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(CheckpointError, match="is not the file that was exported"):
        read_card(folder)


def test_the_files_table_must_name_files_and_the_model(export, tmp_path):
    with pytest.raises(
        CheckpointError, match=r"files is \{\}, expected an object of file name -> SHA-256"
    ):
        read_card(copy_with(export, tmp_path / "empty", setter("files", {})))

    def other_model(card):  # model.onnx stays digested, the model served would not be
        card["model_file"] = "other.onnx"

    folder = copy_with(export, tmp_path / "x", other_model)
    shutil.copyfile(folder / "model.onnx", folder / "other.onnx")
    with pytest.raises(
        CheckpointError,
        match=r"model_file is 'other.onnx', expected one of the files with a digest",
    ):
        read_card(folder)


def test_openvino_weights_beside_the_graph_must_be_digested(export, tmp_path):
    def as_openvino(card):
        card.update(
            format="openvino",
            model_file="model.xml",
            files={"model.xml": _sha(export / "model.onnx")},
        )

    folder = copy_with(export, tmp_path / "x", as_openvino)
    shutil.copyfile(folder / "model.onnx", folder / "model.xml")
    with pytest.raises(
        CheckpointError, match=r"model\.bin \(the OpenVINO weights read beside model\.xml\)"
    ):
        read_card(folder)


# ---- file names ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name",
    ["/tmp/model.onnx", "../exp/model.onnx", "sub/model.onnx", "..", ".", ""],
    ids=["absolute", "dotdot", "sub-folder", "parent", "self", "empty"],
)
def test_model_file_must_be_a_plain_name_inside_the_folder(export, tmp_path, name):
    folder = copy_with(export, tmp_path / "x", setter("model_file", name))
    with pytest.raises(
        CheckpointError,
        match=r"model_file is .*expected a plain file name inside the export folder",
    ):
        ExportedModel(folder)


@pytest.mark.parametrize("name", ["/etc/hostname", "../outside.onnx", "a/../../b.onnx"])
def test_a_listed_file_must_stay_inside_the_folder(export, tmp_path, name):
    def add(card):
        card["files"][name] = "0" * 64

    folder = copy_with(export, tmp_path / "x", add)
    with pytest.raises(
        CheckpointError, match=r"files\[.*expected a plain file name inside the export folder"
    ):
        read_card(folder)


def test_a_link_leading_out_of_the_folder_is_refused_even_with_the_right_digest(export, tmp_path):
    """The issue's substituted graph: the card unchanged, model.onnx a link to a copy elsewhere (same bytes,
    same digest -- and tomorrow, other bytes)."""
    folder = copy_with(export, tmp_path / "x")
    outside = tmp_path / "elsewhere" / "model.onnx"
    outside.parent.mkdir()
    shutil.copyfile(folder / "model.onnx", outside)
    (folder / "model.onnx").unlink()
    (folder / "model.onnx").symlink_to(outside)
    with pytest.raises(
        CheckpointError, match=r"symbolic link to .*elsewhere/model\.onnx, outside the folder"
    ):
        ExportedModel(folder)


# ---- through the commands ------------------------------------------------------------------------------------
ALTERED = {
    "nan-threshold": lambda export: {"text": _nan_text(export, "threshold", "NaN")},
    "empty-digest": lambda export: {"change": digest("")},
    "model-outside": lambda export: {"change": setter("model_file", "../run/model.onnx")},
}


@pytest.mark.parametrize(
    "case, words",
    [
        ("nan-threshold", "threshold is nan"),
        ("empty-digest", "the SHA-256 of model.onnx is ''"),
        ("model-outside", "model_file is '../run/model.onnx'"),
    ],
)
@pytest.mark.parametrize("command", ["predict", "demo"])
def test_predict_and_the_demo_refuse_an_altered_card(
    export, image, tmp_path, capsys, case, words, command
):
    folder = copy_with(export, tmp_path / "x", **ALTERED[case](export))
    argv = {
        "predict": ["predict", "--run", str(folder), image, "--out", str(tmp_path / "p")],
        "demo": ["demo", "--run", str(folder), "--screenshot", str(tmp_path / "s.png")],
    }[command]
    capsys.readouterr()
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unexpected" not in err and words in err, err
    assert not (tmp_path / "p").exists() and not (tmp_path / "s.png").exists()  # nothing was scored


def test_eval_never_scores_an_export_folder(export, tmp_path, capsys):
    """``eval`` evaluates run folders only (it needs the PyTorch model): an export, altered or not, is refused."""
    folder = copy_with(export, tmp_path / "x", **ALTERED["model-outside"](export))
    for target in (folder, export):
        capsys.readouterr()
        assert (
            cli.main(
                ["eval", "--run", str(target), "--no-progress", "--json", str(tmp_path / "m.json")]
            )
            == 2
        )
        err = capsys.readouterr().err
        assert "has no config.json" in err and "Traceback" not in err, err
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize("where", ["map", "score"])
def test_parity_with_a_nan_output_is_not_within_tolerance(where):
    """A graph that outputs NaN must fail the parity check (a NaN difference used to compare as 'not above')."""
    import numpy as np

    from unistad_edu.export import PARITY_TOLERANCE, compare

    maps, scores = np.zeros((3, 8, 8), np.float32), np.array([0.1, 0.2, 0.3], np.float32)
    em, es = maps.copy(), scores.copy()
    if where == "map":
        em[1, 2, 3] = np.nan
    else:
        es[2] = np.nan
    parity = compare((maps, scores), (em, es), threshold=0.5)
    assert not parity["max_rel"] <= PARITY_TOLERANCE
    assert compare((maps, scores), (maps.copy(), scores.copy()), threshold=0.5)["max_rel"] == 0.0
