"""The bad-input catalogue: every way a user can hand us something wrong, and the message they get.

Each case builds its bad input in a temporary folder, runs it the way a user would -- through the CLI
(``python -m unistad_edu ...``, called in-process), the checkpoint loader, or the demo's upload decoder --
and checks three things: the call fails cleanly (exit code 2 / a specific exception type), the message
names the problem and what to do (matched by text), and no traceback reaches the user.
``docs/reliability.md`` lists the same cases with their messages.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest
import torch
from safetensors.torch import load_file, save_file

from unistad_edu.__main__ import main
from unistad_edu.checkpoint import CheckpointError, load_checkpoint
from unistad_edu.demo.logic import UploadError, decode_upload

from .conftest import make_category, write_image

SIZE = 64


# ---- shared inputs ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def good_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("good")
    make_category(root, "widget", n_train=4, n_good=1, n_defect=1, size=(SIZE, SIZE))
    return root


@pytest.fixture(scope="module")
def good_run(good_data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run") / "stpm"
    rc = main(
        [
            "train",
            "--method",
            "stpm",
            "--data",
            str(good_data),
            "--out",
            str(run),
            "--epochs",
            "1",
            "--image-size",
            str(SIZE),
            "--no-progress",
        ]
    )
    assert rc == 0
    return run


def copy_run(run: Path, tmp: Path) -> Path:
    dst = tmp / "run_copy"
    shutil.copytree(run, dst)
    return dst


def png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG whose header claims width x height but that has no pixel data (a huge image in 60 bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = (
        b"\x89PNG\r\n\x1a\n"
        + struct.pack(">I", len(ihdr))
        + chunk
        + struct.pack(">I", zlib.crc32(chunk))
    )
    for name in (
        b"IDAT",
        b"IEND",
    ):  # empty pixel data, then the end: a well-formed header, no pixels
        data += struct.pack(">I", 0) + name + struct.pack(">I", zlib.crc32(name))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# ---- the catalogue ------------------------------------------------------------------------------------------
@dataclass
class Case:
    id: str
    area: str  # folder layout | image file | mask | checkpoint | config/CLI | upload
    run: Callable  # (tmp, good_data, good_run) -> ("cli", argv) | ("call", thunk)
    message: str  # regex the message must match


def _data_case(build: Callable[[Path], None], extra=()) -> Callable:
    def run(tmp, good_data, good_run):
        root = tmp / "data"
        root.mkdir()
        build(root)
        return "cli", [
            "train",
            "--method",
            "stpm",
            "--data",
            str(root),
            "--out",
            str(tmp / "out"),
            "--epochs",
            "1",
            "--image-size",
            str(SIZE),
            "--no-progress",
            *extra,
        ]

    return run


def _broken_category(change: Callable[[Path], None]) -> Callable[[Path], None]:
    def build(root):
        cat = make_category(root, "widget", n_train=3, n_good=1, n_defect=1, size=(SIZE, SIZE))
        change(cat)

    return build


def _symlink_loop(root: Path) -> None:
    make_category(root, "widget", n_train=3, n_good=1, n_defect=1, size=(SIZE, SIZE))
    (root / "widget" / "loop").symlink_to(root, target_is_directory=True)
    (root / "nothing_here").mkdir()
    (root / "nothing_here" / "self").symlink_to(root / "nothing_here", target_is_directory=True)


def _eval_data_case(build: Callable[[Path], None]) -> Callable:
    """A broken test split, found where it is read: ``eval --data`` of a good run on the broken folder."""

    def run(tmp, good_data, good_run):
        root = tmp / "data"
        root.mkdir()
        build(root)
        return "cli", ["eval", "--run", str(good_run), "--data", str(root), "--no-progress"]

    return run


def _eval_copy(change: Callable[[Path], None]) -> Callable:
    def run(tmp, good_data, good_run):
        run_dir = copy_run(good_run, tmp)
        change(run_dir)
        return "cli", ["eval", "--run", str(run_dir), "--no-progress"]

    return run


def _edit_config(**changes) -> Callable[[Path], None]:
    def change(run_dir):
        cfg = json.loads((run_dir / "config.json").read_text())
        for dotted, value in changes.items():
            node = cfg
            *path, last = dotted.split("__")
            for key in path:
                node = node[key]
            node[last] = value
        (run_dir / "config.json").write_text(json.dumps(cfg))

    return change


def _nan_weights(run_dir: Path) -> None:
    tensors = load_file(str(run_dir / "model.safetensors"))
    name = sorted(tensors)[0]
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = float("nan")
    save_file(tensors, str(run_dir / "model.safetensors"))


def _truncate(run_dir: Path) -> None:
    f = run_dir / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _pickle_only(run_dir: Path) -> None:
    (run_dir / "model.safetensors").unlink()
    torch.save({"weights": torch.zeros(2)}, run_dir / "model.pt")  # what other tools leave behind


def _train_with(*args: str) -> Callable:
    """A case that runs ``train ARGS --data GOOD --out TMP/o`` on the good data."""
    return lambda tmp, d, r: ("cli", ["train", *args, "--data", str(d), "--out", str(tmp / "o")])


def _upload(make: Callable[[Path], Path]) -> Callable:
    def run(tmp, good_data, good_run):
        path = make(tmp)
        return "call", lambda: decode_upload(path)

    return run


def _call(thunk_factory: Callable) -> Callable:
    def run(tmp, good_data, good_run):
        return "call", thunk_factory(tmp, good_data, good_run)

    return run


CASES = [
    # -- folder layouts
    Case(
        "empty data folder",
        "folder layout",
        _data_case(lambda root: None),
        r"no categories found under .*MVTec AD layout",
    ),
    Case(
        "data folder does not exist",
        "folder layout",
        lambda tmp, d, r: (
            "cli",
            ["train", "--data", str(tmp / "nope"), "--out", str(tmp / "o"), "--no-progress"],
        ),
        r"data folder .*nope does not exist: pass --data",
    ),
    Case(
        "category without train/good",
        "folder layout",
        _data_case(_broken_category(lambda cat: shutil.rmtree(cat / "train"))),
        r"no categories found under .*a category is a folder holding train/good/",
    ),
    Case(
        "train/good has no images",
        "folder layout",
        _data_case(
            _broken_category(lambda cat: [p.unlink() for p in (cat / "train" / "good").iterdir()])
        ),
        r"train/good holds no images .*: put the normal training images of category 'widget' there",
    ),
    Case(
        "no test folder",
        "folder layout",
        _eval_data_case(_broken_category(lambda cat: shutil.rmtree(cat / "test"))),
        r"category 'widget' has no test/ folder .*add test/good and test/<defect> folders",
    ),
    Case(
        "symlink loops in the data folder",
        "folder layout",
        _data_case(_symlink_loop),
        r"__trains__",
    ),
    Case(
        "unknown category asked for",
        "folder layout",
        _data_case(_broken_category(lambda cat: None), extra=("--categories", "gizmo")),
        r"gizmo",
    ),
    # -- image files
    Case(
        "0-byte image",
        "image file",
        _data_case(
            _broken_category(lambda cat: (cat / "train" / "good" / "000.png").write_bytes(b""))
        ),
        r"000\.png is an empty \(0-byte\) file, not an image: delete or replace it",
    ),
    Case(
        "truncated PNG",
        "image file",
        _data_case(
            _broken_category(
                lambda cat: (cat / "train" / "good" / "001.png").write_bytes(
                    (cat / "train" / "good" / "001.png").read_bytes()[:200]
                )
            )
        ),
        r"001\.png is corrupt or truncated .*re-export or remove it",
    ),
    Case(
        "text file named .png",
        "image file",
        _data_case(
            _broken_category(lambda cat: (cat / "train" / "good" / "002.png").write_text("hello"))
        ),
        r"002\.png is not a readable image \(it holds text\): re-save it as PNG/JPEG, or remove it",
    ),
    Case(
        "1x1 image",
        "image file",
        _data_case(
            _broken_category(lambda cat: write_image(cat / "train" / "good" / "000.png", (1, 1)))
        ),
        r"000\.png is only 1x1 pixels: too small",
    ),
    Case(
        "100-megapixel image",
        "image file",
        _data_case(
            _broken_category(
                lambda cat: png_header_only(cat / "train" / "good" / "000.png", 10_000, 10_000)
            )
        ),
        r"000\.png has 10000x10000 = 100 MP, more than the 64 MP limit: downscale",
    ),
    # -- masks
    Case(
        "defect image without a mask",
        "mask",
        _eval_data_case(_broken_category(lambda cat: shutil.rmtree(cat / "ground_truth"))),
        r"has no mask: expected .*ground_truth/scratch/000_mask\.png\. Add the mask",
    ),
    Case(
        "mask of another size",
        "mask",
        _eval_data_case(
            _broken_category(
                lambda cat: write_image(
                    cat / "ground_truth" / "scratch" / "000_mask.png",
                    (SIZE // 2, SIZE // 2),
                    value=255,
                    mode="L",
                )
            ),
        ),
        r"is 32x32 but its image .* is 64x64: masks must have the image's size",
    ),
    Case(
        "mask that is not an image",
        "mask",
        _eval_data_case(
            _broken_category(
                lambda cat: (cat / "ground_truth" / "scratch" / "000_mask.png").write_text("x")
            )
        ),
        r"000_mask\.png is not a readable image",
    ),
    # -- checkpoints
    Case(
        "run folder does not exist",
        "checkpoint",
        lambda tmp, d, r: ("cli", ["eval", "--run", str(tmp / "missing_run"), "--no-progress"]),
        r"does not exist: train first",
    ),
    Case(
        "run without config.json",
        "checkpoint",
        _eval_copy(lambda run: (run / "config.json").unlink()),
        r"no config\.json",
    ),
    Case(
        "config.json is not JSON",
        "checkpoint",
        _eval_copy(lambda run: (run / "config.json").write_text("{not json")),
        r"not valid JSON",
    ),
    Case(
        "truncated model.safetensors", "checkpoint", _eval_copy(_truncate), r"corrupt or truncated"
    ),
    Case("NaN in the weights", "checkpoint", _eval_copy(_nan_weights), r"NaN/inf.*diverged"),
    Case(
        "pickle checkpoint instead of safetensors",
        "checkpoint",
        _eval_copy(_pickle_only),
        r"holds \['model\.pt'\], which are pickle files and are never loaded",
    ),
    Case(
        "checkpoint of another teacher",
        "checkpoint",
        _eval_copy(_edit_config(teacher__weights_hash="0" * 64)),
        r"teacher weights.*use the same teacher",
    ),
    Case(
        "checkpoint of another method",
        "checkpoint",
        _call(lambda tmp, d, run: lambda: load_checkpoint(run, method="uniad")),
        r"holds a 'stpm' model, not 'uniad'",
    ),
    Case(
        "checkpoint names an unknown method",
        "checkpoint",
        _eval_copy(_edit_config(method="stpm_v9")),
        r"unknown method 'stpm_v9'",
    ),
    Case(
        "weights file of a different run",
        "checkpoint",
        _eval_copy(_edit_config(n_tensors=3)),
        r"expects 3: the files are from different runs",
    ),
    # -- configs and CLI arguments
    Case(
        "unknown method name",
        "config/CLI",
        _train_with("--method", "patchcorex"),
        r"unknown method 'patchcorex'; available",
    ),
    Case(
        "unknown preset",
        "config/CLI",
        _train_with("--preset", "gpu9000"),
        r"unknown preset 'gpu9000'",
    ),
    Case(
        "--set of an unknown field",
        "config/CLI",
        _train_with("--set", "hiden_dim=3"),
        r"unknown STPMConfig fields \['hiden_dim'\]",
    ),
    Case(
        "--set without '='",
        "config/CLI",
        _train_with("--set", "jitter"),
        r"--set takes FIELD=VALUE",
    ),
    Case(
        "invalid scoring rule",
        "config/CLI",
        _train_with("--set", 'scoring={"fuse": "median"}'),
        r"fuse must be one of",
    ),
    Case(
        "eval --set of an unknown field",
        "config/CLI",
        lambda tmp, d, run: (
            "cli",
            ["eval", "--run", str(run), "--set", "no_such=1", "--no-progress"],
        ),
        r"cannot apply --set \{'no_such': 1\}",
    ),
    Case(
        "predict on a file that is not an image",
        "config/CLI",
        lambda tmp, d, run: (
            "cli",
            [
                "predict",
                "--run",
                str(run),
                str(Path(tmp / "notes.png").write_text("hi") and tmp / "notes.png"),
            ],
        ),
        r"notes\.png is not a readable image \(it holds text\): re-save it",
    ),
    # -- uploads (the demo)
    Case(
        "upload: text file",
        "upload",
        _upload(lambda tmp: Path(tmp / "a.png").write_text("hello") and tmp / "a.png"),
        r"a\.png is a text file, not an image .*upload a PNG",
    ),
    Case(
        "upload: 0-byte file",
        "upload",
        _upload(lambda tmp: Path(tmp / "e.png").write_bytes(b"") or tmp / "e.png"),
        r"e\.png is an empty \(0-byte\) file",
    ),
    Case(
        "upload: 100-megapixel image",
        "upload",
        _upload(lambda tmp: png_header_only(tmp / "big.png", 10_000, 10_000)),
        r"100\.0 megapixels, more than the demo's limit .*downscale it first",
    ),
]


TABLE_ENV = (
    "UNISTAD_BAD_INPUTS_TABLE"  # set to a file path: the catalogue is written there as Markdown
)
_ROWS: dict[int, str] = {}


@pytest.fixture(scope="module", autouse=True)
def catalogue_table(tmp_path_factory):
    """With ``UNISTAD_BAD_INPUTS_TABLE=FILE``, write what the user is told in every case as the Markdown table of
    docs/reliability.md (``python scripts/bad_inputs_table.py`` runs this module so)."""
    yield
    target = os.environ.get(TABLE_ENV)
    if target and _ROWS:
        lines = [
            "| # | area | bad input | where | what the user is told |",
            "|---|---|---|---|---|",
        ]
        lines += [_ROWS[n] for n in sorted(_ROWS)]
        Path(target).write_text("\n".join(lines) + "\n")


def _record(case, kind, what, message, tmp, base) -> None:
    if not os.environ.get(TABLE_ENV):
        return
    where = (
        f"`python -m unistad_edu {what[0]}`"
        if kind == "cli"
        else "demo upload decoder"
        if case.area == "upload"
        else "`load_checkpoint`"
    )
    message = re.sub(
        r"note: this machine is already busy[^\n]*\n", "", message
    )  # the load, not the case
    message = (
        message.replace(str(tmp), "…")
        .replace(str(base), "…")
        .replace("\n", " ")
        .replace("|", "/")
        .strip()
    )
    n = CASES.index(case) + 1
    _ROWS[n] = f"| {n} | {case.area} | {case.id} | {where} | {message} |"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gets_a_specific_message(
    case, tmp_path, good_data, good_run, capsys, tmp_path_factory
):
    kind, what = case.run(tmp_path, good_data, good_run)
    if kind == "cli":
        try:
            rc = main(what)
        except SystemExit as exit_:  # argparse's own usage errors
            rc = exit_.code
        out = capsys.readouterr()
        text = out.err + out.out
        if (
            case.message == r"__trains__"
        ):  # symlink loops must simply not hang or crash: training works
            assert rc == 0, text
            _record(
                case,
                kind,
                what,
                f"(exit {rc}) trains normally",
                tmp_path,
                tmp_path_factory.getbasetemp(),
            )
            return
        assert rc == 2, f"exit code {rc}, output:\n{text}"
        message = out.err
    else:
        with pytest.raises((CheckpointError, UploadError, ValueError)) as err:
            what()
        message = f"{type(err.value).__name__}: {err.value}"
        text = str(err.value)
    assert "Traceback" not in text
    assert re.search(case.message, message, flags=re.IGNORECASE | re.DOTALL), message
    _record(case, kind, what, message, tmp_path, tmp_path_factory.getbasetemp())


def test_catalogue_is_large_and_covers_every_area():
    areas = {c.area for c in CASES}
    assert len(CASES) >= 25
    assert areas == {"folder layout", "image file", "mask", "checkpoint", "config/CLI", "upload"}
    assert len({c.id for c in CASES}) == len(CASES)


def test_checkpoint_loader_refuses_anything_but_safetensors(good_run, tmp_path):
    from unistad_edu.checkpoint import read_tensors

    torch.save({"w": torch.zeros(1)}, tmp_path / "model.pt")
    with pytest.raises(CheckpointError, match="only .safetensors"):
        read_tensors(tmp_path / "model.pt")


def test_servers_bind_loopback_by_default():
    from unistad_edu.__main__ import build_parser
    from unistad_edu.demo.logic import DEFAULT_HOST

    args = build_parser().parse_args(["demo"])
    assert DEFAULT_HOST == "127.0.0.1" and getattr(args, "host", DEFAULT_HOST) == "127.0.0.1"
