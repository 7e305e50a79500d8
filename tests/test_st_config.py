"""Reading sentence-transformers files: both pooling-config styles, both module-name styles, errors."""

import json

import pytest

from embedder.errors import ModelError
from embedder.models.st_config import pooling_modes, read_pipeline_spec


def test_legacy_boolean_keys():
    assert pooling_modes({"pooling_mode_cls_token": True, "pooling_mode_mean_tokens": False}) == ("cls",)
    assert pooling_modes({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}) == ("max", "mean")


def test_new_string_and_list():
    assert pooling_modes({"pooling_mode": "lasttoken"}) == ("lasttoken",)
    assert pooling_modes({"pooling_mode": ["mean", "cls"]}) == ("cls", "mean")
    with pytest.raises(ModelError, match="unsupported pooling mode 'median'"):
        pooling_modes({"pooling_mode": "median"})
    with pytest.raises(ModelError, match="no pooling mode"):
        pooling_modes({})


def write(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


@pytest.mark.parametrize("prefix", ["sentence_transformers.models.", "sentence_transformers.sentence_transformer.modules."])
def test_modules_json_in_both_name_styles(tmp_path, prefix):
    write(tmp_path / "modules.json", [
        {"idx": 0, "name": "0", "path": "", "type": prefix + "Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": prefix + "Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": prefix + "Normalize"},
    ])
    write(tmp_path / "1_Pooling" / "config.json", {"pooling_mode": "cls", "include_prompt": False})
    write(tmp_path / "sentence_bert_config.json", {"max_seq_length": 77, "do_lower_case": True})
    write(tmp_path / "config_sentence_transformers.json",
          {"prompts": {"query": "query: "}, "default_prompt_name": None})
    spec = read_pipeline_spec(tmp_path)
    assert spec.pooling == ("cls",) and spec.normalize and not spec.include_prompt
    assert spec.max_seq_length == 77 and spec.do_lower_case
    assert spec.prompts == {"query": "query: "}


def test_unknown_module_is_refused(tmp_path):
    write(tmp_path / "modules.json", [{"idx": 0, "name": "0", "path": "", "type": "my_pkg.CustomRouter"}])
    with pytest.raises(ModelError, match="unsupported sentence-transformers module my_pkg.CustomRouter"):
        read_pipeline_spec(tmp_path)


def test_bare_checkpoint_defaults_to_mean(tmp_path):
    spec = read_pipeline_spec(tmp_path)
    assert spec.pooling == ("mean",) and not spec.normalize and not spec.has_st_files
