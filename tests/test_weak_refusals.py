"""Refusals that used to end in the catch-all `error: unexpected ...` (exit 1) or named neither the file nor
the field: each now exits 2 with the file and the field in the message. Each case alters a copy of a real run
(or a real data folder) the way a hostile or careless user might."""

from __future__ import annotations

import json
import shutil

import pytest

from unistad_edu.__main__ import main


def _cfg(**kv):
    def alter(run):
        c = json.loads((run / "config.json").read_text())
        c.update(kv)
        (run / "config.json").write_text(json.dumps(c))

    return alter


def _mc(**kv):
    def alter(run):
        c = json.loads((run / "config.json").read_text())
        c["method_config"].update(kv)
        (run / "config.json").write_text(json.dumps(c))

    return alter


def _file(name, text):
    return lambda run: (run / name).write_text(text)


EVAL = ["eval", "--run", "{run}", "--no-progress", "--image-only", "--json", "{tmp}/m.json"]
# `bench leaderboard` of one run against the reference file the case writes into it
LEADERBOARD_WITH_REFERENCE = (
    "bench leaderboard --entry x {run} --reference {run}/ref.json --data {data}".split()
)
CASES = [  # (id, alteration, command, words the message must hold)
    ("data_root_number", _cfg(data_root=5), EVAL, ["config.json", "data_root is 5"]),
    ("train_root_list", _cfg(train_root=["a"]), EVAL, ["config.json", "train_root"]),
    ("categories_text", _cfg(train_categories="bottle"), EVAL, ["config.json", "train_categories"]),
    (
        "categories_numbers",
        _cfg(train_categories=[1, 2]),
        EVAL,
        ["config.json", "train_categories"],
    ),
    ("config_list", _file("config.json", "[1, 2]"), EVAL, ["config.json", "JSON list"]),
    ("config_text", _file("config.json", '"run"'), EVAL, ["config.json", "JSON str"]),
    ("teacher_text", _cfg(teacher="lite0"), EVAL, ["config.json", "teacher is 'lite0'"]),
    ("lr_text_in_config", _mc(lr="fast"), EVAL, ["config.json", "method_config", "lr is 'fast'"]),
    ("epochs_float_in_config", _mc(epochs=2.5), EVAL, ["config.json", "epochs is 2.5"]),
    ("scoring_text_in_config", _mc(scoring="max"), EVAL, ["config.json", "scoring is 'max'"]),
    ("setting_list", _file("setting.json", "[]"), EVAL, ["setting.json", "JSON list"]),
    ("setting_bad_json", _file("setting.json", "{bad"), EVAL, ["setting.json", "cannot be read"]),
    (
        "setting_no_categories",
        _file(
            "setting.json", json.dumps({"setting": "per-class", "method": "stpm", "data_root": "x"})
        ),
        EVAL,
        ["setting.json", "categories is None"],
    ),
    (
        "setting_no_data_root",
        _file(
            "setting.json",
            json.dumps({"setting": "per-class", "method": "stpm", "categories": ["a"]}),
        ),
        EVAL,
        ["setting.json", "data_root"],
    ),
    (
        "set_scoring_bad_json",
        None,
        EVAL + ["--set", "scoring={bad"],
        ["--set", "scoring is '{bad'"],
    ),
    (
        "set_scoring_unknown",
        None,
        EVAL + ["--set", 'scoring={"nope": 1}'],
        ["--set", "unknown scoring fields"],
    ),
    ("set_lr_text", None, EVAL + ["--set", "lr=fast"], ["lr"]),
    (
        "leaderboard_metrics_list",
        _file("metrics.json", "[]"),
        ["bench", "leaderboard", "--entry", "x", "{run}", "--data", "{data}", "--n-images", "2"],
        ["metrics.json", "JSON list"],
    ),
    (
        "leaderboard_metrics_bad_json",
        _file("metrics.json", "{bad"),
        ["bench", "leaderboard", "--entry", "x", "{run}", "--data", "{data}", "--n-images", "2"],
        ["metrics.json", "cannot be read"],
    ),
    (
        "leaderboard_reference_list",
        _file("ref.json", "[]"),
        LEADERBOARD_WITH_REFERENCE,
        ["ref.json", "JSON list"],
    ),
    (
        "leaderboard_reference_bad_values",
        _file("ref.json", json.dumps({"label": "x", "categories": {"a": 5}})),
        LEADERBOARD_WITH_REFERENCE,
        ["ref.json", "not a reference file"],
    ),
    (
        "figures_leaderboard_list",
        _file("lb.json", "[]"),
        ["figures", "--leaderboard", "{run}/lb.json", "--only", "leaderboard", "--out", "{tmp}/f"],
        ["lb.json", "JSON list"],
    ),
    (
        "run_is_a_file",
        None,
        ["eval", "--run", "{run}/model.safetensors"],
        ["model.safetensors", "is a file"],
    ),
    (
        "predict_out_is_a_file",
        _file("o", "x"),
        ["predict", "--run", "{run}", "--out", "{run}/o", "{image}"],
        ["--out", "is a file"],
    ),
]


@pytest.mark.parametrize("name, alter, argv, words", CASES, ids=[c[0] for c in CASES])
def test_a_weak_refusal_now_names_the_file_and_field(
    demo_run, demo_data, tmp_path, capsys, name, alter, argv, words
):
    run = tmp_path / "run"
    shutil.copytree(demo_run, run)
    if alter is not None:
        alter(run)
    image = sorted(demo_data.rglob("test/good/*.png"))[0]
    fill = {"{run}": run, "{tmp}": tmp_path, "{data}": demo_data, "{image}": image}
    args = []
    for a in argv:
        for k, v in fill.items():
            a = a.replace(k, str(v))
        args.append(a)
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "unexpected" not in err
    for w in words:
        assert w in err, (w, err)


@pytest.mark.parametrize(
    "text, words",
    [
        ("[1]", "JSON list"),
        ("{bad", "cannot be read"),
        (json.dumps({"archives": [], "categories": {}}), "archives is []"),
    ],
)
def test_a_damaged_record_of_downloads_is_named(tmp_path, capsys, text, words):
    (tmp_path / "DOWNLOADS.json").write_text(text)
    assert (
        main(
            [
                "data",
                "mvtec",
                "--out",
                str(tmp_path),
                "--categories",
                "bottle",
                "--url",
                "http://127.0.0.1:9/x.tar.xz",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "DOWNLOADS.json" in err and words in err and "unexpected" not in err


def test_a_synthetic_manifest_that_is_a_list_is_not_a_crash(tmp_path, capsys):
    out = tmp_path / "syn"
    out.mkdir()
    (out / "SYNTHETIC.json").write_text("[]")
    assert (
        main(["data", "synthetic", "--out", str(out), "--force", "--size", "32", "--n-train", "2"])
        == 2
    )
    err = capsys.readouterr().err
    assert "SYNTHETIC.json" in err and "unexpected" not in err
