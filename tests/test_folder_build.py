"""A folder built whole (files.staging_folder + files.install_folder): export, the demo's default model, the
synthetic set and a downloaded category all use it. Checked here on plain folders against what a reader may
see at each moment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from unistad_edu.files import install_folder, staging_folder


def _tree(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): p.read_text()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_the_folder_appears_only_when_complete(tmp_path):
    dest = tmp_path / "out"
    with staging_folder(dest) as stage:
        (stage / "a.txt").write_text("1")
        assert not dest.exists()  # nothing to read while it is being built
        assert stage.parent == tmp_path and stage.name.startswith(".out.build-")
        (stage / "sub").mkdir()
        (stage / "sub" / "b.txt").write_text("2")
        assert install_folder(stage, dest)
    assert _tree(dest) == {"a.txt": "1", "sub/b.txt": "2"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no staging or old folder left


def test_an_error_while_building_leaves_nothing_and_keeps_the_old_folder(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with staging_folder(dest) as stage:
            (stage / "new.txt").write_text("new")
            raise RuntimeError("boom")
    assert _tree(dest) == {"old.txt": "old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("decision", [True, False, "refuse"])
def test_replace_decides_what_happens_to_an_existing_folder(tmp_path, decision):
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "old.txt").write_text("old")
    seen = []

    def replace(old: Path) -> bool:
        seen.append(_tree(old))  # asked while the old folder is still whole, in place
        if decision == "refuse":
            raise PermissionError("not ours")
        return decision

    with staging_folder(dest) as stage:
        (stage / "new.txt").write_text("new")
        if decision == "refuse":
            with pytest.raises(PermissionError, match="not ours"):
                install_folder(stage, dest, replace)
        else:
            assert install_folder(stage, dest, replace) is decision
    assert seen == [{"old.txt": "old"}]
    assert _tree(dest) == ({"new.txt": "new"} if decision is True else {"old.txt": "old"})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_no_replace_keeps_an_existing_folder(tmp_path):
    dest = tmp_path / "out"
    dest.mkdir()
    with staging_folder(dest) as stage:
        (stage / "x").write_text("x")
        assert install_folder(stage, dest) is False
    assert list(dest.iterdir()) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_a_link_in_place_of_the_folder_is_replaced_as_a_link_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    dest = tmp_path / "out"
    dest.symlink_to(target)
    with staging_folder(dest) as stage:
        (stage / "new.txt").write_text("new")
        assert install_folder(stage, dest, lambda old: True)
    assert not dest.is_symlink() and _tree(dest) == {"new.txt": "new"}
    assert _tree(target) == {"keep.txt": "keep"}  # the link's target is untouched


def test_staging_folders_of_dead_processes_are_removed_live_ones_kept(tmp_path):
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    dead_pid = int(dead.stdout)  # that process has exited
    stale = tmp_path / f".out.build-{dead_pid}-0123abcd"
    live = tmp_path / f".out.build-{os.getppid()}-89abcdef"  # our parent runs
    other = (
        tmp_path / f".other.build-{dead_pid}-0123abcd"
    )  # another folder's: not this one's business
    for folder in (stale, live, other):
        folder.mkdir()
    with staging_folder(tmp_path / "out") as stage:
        assert not stale.exists() and live.is_dir() and other.is_dir() and stage.is_dir()
