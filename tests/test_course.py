"""The lessons' shared setup (unistad_edu.course) and the per-category cap every lesson uses."""

from __future__ import annotations

import pytest

from unistad_edu import course
from unistad_edu.data import MVTecDataset

from .conftest import make_category


@pytest.fixture
def three_cats(tmp_path):
    for name, n in (("alpha", 7), ("beta", 3), ("gamma", 5)):
        make_category(tmp_path, name, n_train=n)
    return tmp_path


@pytest.mark.parametrize(
    "value, quick", [("1", True), ("0", False), ("true", True), ("no", False), (" 1 ", True)]
)
def test_quick_mode_reads_the_switch(monkeypatch, value, quick):
    monkeypatch.setenv("UNISTAD_QUICK", value)
    assert course.quick_mode() is quick


def test_quick_mode_default_and_bad_value(monkeypatch):
    monkeypatch.delenv("UNISTAD_QUICK", raising=False)
    assert course.quick_mode() is True
    monkeypatch.setenv("UNISTAD_QUICK", "fast")
    with pytest.raises(ValueError, match="UNISTAD_QUICK must be 1"):
        course.quick_mode()


def test_setup_quick_picks_the_named_categories_present(monkeypatch, three_cats):
    monkeypatch.setenv("UNISTAD_QUICK", "1")
    lesson = course.setup(["gamma", "missing", "alpha"], data=three_cats, quick_threads=None)
    assert lesson.quick and lesson.categories == ["gamma", "alpha"]
    assert lesson.found == ["alpha", "beta", "gamma"]
    assert lesson.preset == "cpu" and lesson.device in ("cpu", "cuda")
    assert "['gamma', 'alpha']" in lesson.describe() and "quick mode" in lesson.describe()


def test_setup_falls_back_when_too_few_named_categories_exist(monkeypatch, three_cats):
    monkeypatch.setenv("UNISTAD_QUICK", "1")
    lesson = course.setup(
        ["bottle", "cookie", "alpha"], data=three_cats, fallback=2, quick_threads=None
    )
    assert lesson.categories == [
        "alpha",
        "beta",
    ]  # only one named category found: the first two instead


def test_setup_full_mode_uses_every_category(monkeypatch, three_cats):
    monkeypatch.setenv("UNISTAD_QUICK", "0")
    lesson = course.setup(["alpha"], data=three_cats, quick_threads=None)
    assert not lesson.quick and lesson.categories == ["alpha", "beta", "gamma"]


def test_setup_on_an_empty_folder_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("UNISTAD_QUICK", "1")
    from unistad_edu.data import DataError

    with pytest.raises(DataError, match="no categories found"):
        course.setup(None, data=tmp_path)


def test_method_and_teacher_falls_back_to_the_cpu_preset_offline(monkeypatch, three_cats):
    from unistad_edu import teacher as teacher_mod

    monkeypatch.setenv("UNISTAD_QUICK", "1")
    lesson = course.setup(None, data=three_cats, quick_threads=None)
    lesson.preset = "paper"
    real = teacher_mod.load_teacher
    asked = []

    def fake_load(
        name, **kw
    ):  # the paper teacher is "not downloadable"; the cpu one loads for real
        asked.append(name)
        if len(asked) == 1:
            raise teacher_mod.TeacherWeightsError(f"no weights for {name} offline")
        return real(name, **kw)

    monkeypatch.setattr(teacher_mod, "load_teacher", fake_load)
    cfg, teacher = course.method_and_teacher(lesson, "stpm", image_size=64)
    assert lesson.preset == "cpu" and cfg.image_size == 64
    assert asked[0] != asked[1] and teacher.backbone_name == asked[1]


@pytest.mark.parametrize("n", [1, 2, 3, 100])
def test_evenly_caps_each_category_and_spreads_over_its_files(three_cats, n):
    ds = MVTecDataset(three_cats, "train")
    capped = ds.evenly(n)
    for cat, sizes in {"alpha": 7, "beta": 3, "gamma": 5}.items():
        files = sorted(r.path.name for r in ds.records if r.category == cat)
        kept = [r.path.name for r in capped.records if r.category == cat]
        assert len(kept) == min(n, sizes)
        assert kept[0] == files[0]
        if n > 1:
            assert kept[-1] == files[-1]  # evenly spread: first and last file both kept
        assert len(set(kept)) == len(kept)


def test_evenly_none_keeps_everything_and_zero_is_an_error(three_cats):
    ds = MVTecDataset(three_cats, "train")
    assert ds.evenly(None) is ds
    with pytest.raises(ValueError, match="n >= 1"):
        ds.evenly(0)


def test_lesson_data_caps_both_sets_and_warms_one_cache(monkeypatch, three_cats, lite0_teacher):
    monkeypatch.setenv("UNISTAD_QUICK", "1")
    lesson = course.setup(["alpha", "gamma"], data=three_cats, quick_threads=None)
    train, test, cache = course.lesson_data(lesson, 32, n_train=2, n_test=3, teacher=lite0_teacher)
    assert train.categories == ["alpha", "gamma"] and len(train) == 4
    from unistad_edu.cache import content_hash

    distinct = {
        content_hash(r.path) for r in train.records + test.records
    }  # entries belong to file contents
    assert (
        len(test) == 2 * 3
        and cache.misses == len(train) + len(test)
        and len(cache) == len(distinct)
    )
    no_teacher = course.lesson_data(lesson, 32)
    assert no_teacher[2] is None and len(no_teacher[0]) == 7 + 5


def test_check_gives_the_second_hint_only_from_the_second_failure_and_a_tick_when_right(
    monkeypatch, capsys
):
    monkeypatch.setattr(course, "_FAILED_CHECKS", {})
    hints = ("think about the sign", "the order of the two arguments matters")

    def wrong():
        return [1.0, 2.0]

    said = []
    for _ in range(3):
        with pytest.raises(course.ExerciseNotDone) as info:
            course.check("Exercise 9 (sign)", wrong, lambda: [1.0, -2.0], hint=hints)
        said.append(str(info.value))
    assert hints[0] in said[0] and hints[1] not in said[0] and "again" in said[0]
    assert all(hints[0] in s and hints[1] in s for s in said[1:])
    # another task starts again at its first hint; a stub is "not done yet"; one string is always shown whole

    def stub():
        raise NotImplementedError

    with pytest.raises(course.ExerciseNotDone, match="not done yet") as info:
        course.check("Exercise 8 (other)", stub, lambda: 1.0, hint=hints)
    assert hints[1] not in str(info.value)
    with pytest.raises(course.ExerciseNotDone, match="Hint: one string"):
        course.check("Exercise 7", wrong, lambda: [0.0, 0.0], hint="one string")
    course.check("Exercise 9 (sign)", lambda: [1.0, -2.0], lambda: [1.0, -2.0], hint=hints)
    assert "✓ Exercise 9 (sign)" in capsys.readouterr().out
