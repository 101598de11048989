"""DDPOConfig: documented fields, strict loading (unknown keys, types, ranges) and YAML/JSON round trips."""

import dataclasses
import json

import pytest

from ddpo_study.config import ConfigError, DDPOConfig, field_docs, load_config, save_config


def test_every_field_has_a_one_line_doc():
    docs = field_docs()
    missing = [f.name for f in dataclasses.fields(DDPOConfig) if not docs.get(f.name)]
    assert missing == []


def test_defaults_are_valid_and_follow_ddpo_pytorch_where_it_has_an_opinion():
    cfg = DDPOConfig()
    cfg.validate()
    assert (cfg.eta, cfg.clip_range, cfg.adv_clip_max, cfg.per_prompt_stat_tracking) == (1.0, 1e-4, 5.0, True)
    # groups of images per prompt, each its own baseline: the buffer holds exactly one group
    assert cfg.images_per_prompt == cfg.stat_buffer_size == cfg.stat_min_count


def test_unknown_keys_get_a_close_match_hint():
    with pytest.raises(ConfigError, match=r"'lora_rnak' \(did you mean 'lora_rank'\?\)"):
        DDPOConfig.from_dict({"lora_rnak": 8})
    with pytest.raises(ConfigError, match="'zzz'"):
        DDPOConfig.from_dict({"zzz": 1})


def test_types_are_coerced_only_where_lossless():
    cfg = DDPOConfig.from_dict({"lora_learning_rate": "3e-4", "guidance_scale": 5, "num_epochs": 7})
    assert cfg.lora_learning_rate == 3e-4 and isinstance(cfg.guidance_scale, float) and cfg.num_epochs == 7
    for bad in ({"num_epochs": 2.5}, {"num_epochs": True}, {"per_prompt_stat_tracking": "yes"}, {"mode": 3}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            DDPOConfig.from_dict(bad)


@pytest.mark.parametrize("values, key", [
    ({"mode": "qlora"}, "mode"),
    ({"eta": 0.0}, "eta"),
    ({"guidance_scale": 0.5}, "guidance_scale"),
    ({"timestep_fraction": 0.0}, "timestep_fraction"),
    ({"num_steps": 3, "timestep_fraction": 0.2}, "timestep_fraction"),
    ({"stat_min_count": 9, "stat_buffer_size": 8}, "stat_min_count"),
    ({"samples_per_epoch": 60, "images_per_prompt": 8}, "images_per_prompt"),
    ({"mode": "progressive", "progressive_switch_epoch": 20, "num_epochs": 20}, "progressive_switch_epoch"),
    ({"diversity_form": "sideways"}, "diversity_form"),
    ({"diversity_feature": "sift"}, "diversity_feature"),
    ({"diversity_lambda": -0.5}, "diversity_lambda"),
    ({"mixed_precision": "fp8"}, "mixed_precision"),
    ({"clip_range": 0.0}, "clip_range"),
    ({"device": "tpu"}, "device"),
])
def test_bad_values_name_the_field(values, key):
    with pytest.raises(ConfigError, match=key):
        DDPOConfig.from_dict(values)


def test_yaml_and_json_round_trip_with_overrides(tmp_path):
    (tmp_path / "a.yaml").write_text("mode: full\nfull_learning_rate: 1.0e-4\nseed: 3\n")
    cfg = load_config(tmp_path / "a.yaml", {"seed": 4})
    assert (cfg.mode, cfg.full_learning_rate, cfg.seed) == ("full", 1e-4, 4)
    assert cfg.learning_rate_for(cfg.mode) == 1e-4 and cfg.learning_rate_for("lora") == cfg.lora_learning_rate
    save_config(cfg, tmp_path / "b.json")
    assert json.loads((tmp_path / "b.json").read_text())["seed"] == 4
    assert load_config(tmp_path / "b.json") == cfg


def test_missing_or_malformed_config_files_are_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")


def test_the_stat_trackers_window_follows_the_group_size_unless_set():
    cfg = DDPOConfig(images_per_prompt=4, samples_per_epoch=64)
    assert (cfg.stat_buffer_size, cfg.stat_min_count) == (4, 4)  # each group is its own baseline
    assert cfg.to_dict()["stat_buffer_size"] == 4  # config.json records the number the run used
    explicit = DDPOConfig(images_per_prompt=1, stat_buffer_size=32, stat_min_count=16)  # ddpo-pytorch's scheme
    assert (explicit.stat_buffer_size, explicit.stat_min_count) == (32, 16)
    assert DDPOConfig.from_dict(explicit.to_dict()) == explicit


def test_inner_epochs_stay_below_the_step_probes_random_stream():
    from ddpo_study.seeding import MAX_INNER_EPOCHS

    DDPOConfig(inner_epochs=MAX_INNER_EPOCHS).validate()
    with pytest.raises(ConfigError, match="inner_epochs.*random stream"):
        DDPOConfig(inner_epochs=MAX_INNER_EPOCHS + 1).validate()
