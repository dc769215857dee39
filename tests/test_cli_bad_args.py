"""Every computing subcommand with a table of bad arguments: a message naming the problem, a non-zero exit,
no traceback (argparse's own errors exit 2 as well)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from unistad_edu import __main__ as cli

BAD = [  # (argv, words the message must hold)
    (["train", "--epochs", "0", "--out", "R"], "--epochs: must be a whole number >= 1"),
    (["train", "--epochs", "-3", "--out", "R"], "--epochs: must be a whole number >= 1"),
    (["train", "--batch-size", "0", "--out", "R"], "--batch-size: must be a whole number >= 1"),
    (["train", "--max-minutes", "0", "--out", "R"], "--max-minutes: must be a finite number > 0"),
    (["train", "--max-minutes", "nan", "--out", "R"], "--max-minutes: must be a finite number > 0"),
    (
        ["train", "--image-size", "3", "--out", "R"],
        "--image-size: must be a whole number of pixels from 32",
    ),
    (["train", "--image-size", "huge", "--out", "R"], "--image-size: must be a whole number"),
    (["train", "--lr", "-1", "--out", "R"], "--lr: must be a finite number > 0"),
    (["train", "--threads", "0", "--out", "R"], "--threads: must be a whole number from 1 to"),
    (["train", "--threads", "999", "--out", "R"], "--threads: must be a whole number from 1 to"),
    (["eval", "--run", "R", "--threads", "100000"], "--threads: must be a whole number from 1 to"),
    (["train", "--lr", "1e30", "--out", "R"], "lr must be in (0, 10], got 1e+30"),
    (["train", "--set", "lr=1e30", "--out", "R"], "lr must be in (0, 10], got 1e+30"),
    (["train", "--set", "gamma=-0.5", "--out", "R"], "gamma must be in (0, 1], got -0.5"),
    (["train", "--set", "momentum=1.5", "--out", "R"], "momentum must be in [0, 1), got 1.5"),
    (
        ["train", "--method", "uniad", "--set", "dropout=1.0", "--out", "R"],
        "dropout must be in [0, 1), got 1.0",
    ),
    (
        ["train", "--method", "unistad", "--set", "w_rec=-1", "--out", "R"],
        "w_rec must be in [0, inf), got -1",
    ),
    (
        ["train", "--set", 'scoring={"topk": 0}', "--out", "R"],
        "topk must be the fraction of pixels averaged",
    ),
    (
        ["train", "--set", 'scoring={"blur_sigma": -2}', "--out", "R"],
        "blur_sigma must be a finite number >= 0",
    ),
    (["train", "--precision", "fp16", "--out", "R"], "invalid choice: 'fp16'"),
    (["train", "--device", "cuda:7", "--out", "R"], "--device cuda:7"),
    (["train", "--device", "banana", "--out", "R"], "--device 'banana' is not a device"),
    (["train", "--set", "lr=abc", "--out", "R"], "--set lr='abc': lr takes a float"),
    (["train", "--set", "epochs=0", "--out", "R"], "--set epochs=0: must be >= 1"),
    (["train", "--set", "nonsense=1", "--out", "R"], "unknown STPMConfig fields ['nonsense']"),
    (["train", "--set", "novalue", "--out", "R"], "--set takes FIELD=VALUE"),
    (
        ["predict", "--run", "R", "--threshold", "nan", "x.png"],
        "--threshold: must be a finite number",
    ),
    (
        ["predict", "--run", "R", "--threshold", "abc", "x.png"],
        "--threshold: must be a finite number",
    ),
    (["demo", "--port", "99999"], "--port: must be a port number from 1 to 65535"),
    (["demo", "--port", "0"], "--port: must be a port number from 1 to 65535"),
    (["demo", "--concurrency", "0"], "--concurrency: must be a whole number >= 1"),
    (["demo", "--max-megapixels", "-1"], "--max-megapixels: must be a finite number > 0"),
    (["bench", "teacher", "--repeats", "0"], "--repeats: must be a whole number >= 1"),
    (["bench", "infer", "--n-images", "0"], "--n-images: must be a whole number >= 1"),
    (["bench", "accuracy", "--epochs", "0"], "--epochs: must be a whole number >= 1"),
    (
        ["data", "synthetic", "--out", "D", "--size", "8"],
        "--size: must be a whole number of pixels from 32",
    ),
    (
        ["data", "synthetic", "--out", "D", "--n-train", "0"],
        "--n-train: must be a whole number >= 1",
    ),
    (["eval", "--run", "/nonexistent/run"], "does not exist"),
    (
        ["figures", "--out", "D", "--only", "heatmaps", "--run", "/nonexistent/run"],
        "does not exist: train first",
    ),
    (
        [
            "figures",
            "--out",
            "D",
            "--only",
            "interference",
            "--interference",
            "/nonexistent/i.json",
        ],
        "/nonexistent/i.json not found -- write it with",
    ),
    (["figures", "--out", "D", "--only", "chart"], "invalid choice: 'chart'"),
]


@pytest.mark.parametrize("argv, words", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_argument_gives_a_message_not_a_traceback(argv, words, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UNISTAD_CACHE", str(tmp_path / "cache"))
    argv = [str(tmp_path / a) if a in ("R", "D") else a for a in argv]
    try:
        code = cli.main(argv)
    except SystemExit as exit_:  # argparse refuses while parsing
        code = exit_.code
    err = capsys.readouterr().err
    assert code not in (0, None), err
    assert words in err, err
    assert "Traceback" not in err


def test_an_unexpected_error_is_one_line_and_a_log_file(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("UNISTAD_CACHE", str(tmp_path))

    def broken(args):
        raise KeyError("something internal")

    monkeypatch.setitem(cli.__dict__, "cmd_figures", broken)
    code = cli.main(["figures", "--out", str(tmp_path / "f")])
    err = capsys.readouterr().err
    assert code == 1 and "Traceback" not in err and "unexpected KeyError" in err
    (log,) = (tmp_path / "logs").glob("error-*.log")
    assert "Traceback" in log.read_text() and str(log) in err


def test_an_os_error_names_the_file(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = cli.main(
        ["data", "synthetic", "--out", str(blocker / "sub"), "--n-train", "1", "--size", "32"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "error:" in err


def test_the_console_gets_no_traceback_from_a_subprocess(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "unistad_edu",
            "train",
            "--epochs",
            "0",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "Traceback" not in r.stderr and "--epochs" in r.stderr


def test_set_null_is_accepted_where_the_field_may_be_none_and_refused_elsewhere():
    from unistad_edu.methods.memory_bank import MemoryBankConfig
    from unistad_edu.options import check_overrides

    check_overrides(MemoryBankConfig, {"projection_dim": None})  # int | None: the exact coreset
    with pytest.raises(ValueError, match="coreset_ratio takes a float"):
        check_overrides(MemoryBankConfig, {"coreset_ratio": None})
