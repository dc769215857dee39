"""The ``paper`` presets kept as data (``methods/paper_recipes.json``) and the configs' ``choices``."""

import pytest

from unistad_edu.methods import METHODS, make_config
from unistad_edu.methods.base import paper_recipes
from unistad_edu.scoring import ScoringConfig


def test_every_method_has_a_recipe_with_a_source_and_only_its_own_fields():
    recipes = paper_recipes()
    assert set(recipes) == set(METHODS)
    for name, recipe in recipes.items():
        assert len(recipe["source"]) > 20, name  # says where the values come from
        fields = set(METHODS[name].Config().to_dict())
        assert set(recipe["values"]) <= fields, (name, set(recipe["values"]) - fields)


def test_recipes_give_the_values_the_papers_state():
    # STPM (BMVC 2021): ResNet-18 at 256 px, SGD lr 0.4, momentum 0.9, 100 epochs, batch 32
    stpm = make_config("stpm", "paper")
    assert (stpm.teacher, stpm.image_size, stpm.optimizer) == ("resnet18", 256, "sgd")
    assert (stpm.lr, stpm.momentum, stpm.epochs, stpm.batch_size) == (0.4, 0.9, 100, 32)
    # UniAD's config.yaml: EfficientNet-B4 stages 1-4, 224 px, AdamW 1e-4, 1000 epochs, step at 800
    uniad = make_config("uniad", "paper")
    assert uniad.teacher == "efficientnet_b4" and uniad.teacher_layers == (0, 1, 2, 3)
    assert (uniad.hidden_dim, uniad.num_heads, uniad.ffn_dim) == (256, 8, 1024)
    assert (uniad.epochs, uniad.step_epochs, uniad.betas) == (1000, 800, (0.9, 0.999))
    # its image score: the max of a 16 x 16 average pool, the other scoring fields at their defaults
    expected = ScoringConfig(fuse="sum", blur_sigma=0.0, image_score="avgpool_max", pool_size=16)
    assert uniad.scoring == expected
    # RD4AD: WideResNet-50, decoder [3, 4, 6] coarse -> fine, Adam 0.005 (0.5, 0.999), 200 epochs
    rd = make_config("rd", "paper")
    assert rd.teacher == "wide_resnet50_2" and rd.decoder_blocks == (6, 4, 3)
    assert (rd.optimizer, rd.lr, rd.betas, rd.epochs) == ("adam", 0.005, (0.5, 0.999), 200)
    dual = make_config("dual_student", "paper")
    assert dual.ed_groups == ((0, 1, 2, 3), (4, 5, 6, 7)) and dual.image_size == 392


def test_a_recipe_read_twice_is_not_changed_by_building_a_config():
    make_config("uniad", "paper", teacher_layers=[1, 2])
    assert paper_recipes()["uniad"]["values"]["teacher_layers"] == [0, 1, 2, 3]
    assert METHODS["uniad"].presets["paper"]["teacher_layers"] == [0, 1, 2, 3]


CHOICES = [(name, f) for name, cls in METHODS.items() for f in {**cls.Config.choices}]


@pytest.mark.parametrize("method, field", CHOICES, ids=[f"{m}-{f}" for m, f in CHOICES])
def test_a_value_outside_a_fields_choices_is_refused_by_name(method, field):
    allowed = METHODS[method].Config.choices[field]
    for value in allowed:
        assert getattr(make_config(method, "cpu", **{field: value}), field) == value
    with pytest.raises(ValueError, match=f"{field} must be one of"):
        make_config(method, "cpu", **{field: "no-such-choice"})


def test_the_methods_own_choices_are_all_listed():
    # the fields with a closed set of values, as the methods' code reads them
    own = {m: set(cls.Config.choices) for m, cls in METHODS.items()}
    assert own["uniad"] == {"jitter_rule", "neck"}
    assert own["rd"] == own["snl"] == {"rd_loss"}
    assert own["memory_bank"] == {"image_score_rule", "border"}
    assert own["dual_student"] == {"semantic_target", "combine"}
    assert own["enhanced_stpm"] == {"combine", "pair2_input", "pair2_student", "attention"}
