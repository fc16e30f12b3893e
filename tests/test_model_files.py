"""``load_classifier`` refuses a damaged run folder in one line that names the file at fault; nothing is unpickled."""

import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

from metapeft._errors import MetapeftError
from metapeft.training import RunConfig, load_classifier, train

KINDS = {"peft": "lora", "full": "full_finetuning", "head": "head_only"}


@pytest.fixture(scope="module")
def runs(small_task, example_profile, tmp_path_factory):
    """One tiny real run per kind of saved folder (peft adapter, full encoder, head only)."""
    root = tmp_path_factory.mktemp("runs")
    for kind, method in KINDS.items():
        train(
            small_task,
            method,
            {"max_steps": 1},
            RunConfig(record=False, track=False, output_dir=root / kind, eval_size=16, eval_points=1),
            profile=example_profile,
        )
    return root


@pytest.fixture
def copy_run(runs, tmp_path):
    """A fresh copy of the run of ``kind``, free to damage."""
    return lambda kind: shutil.copytree(runs / kind, tmp_path / kind)


def _truncate(file):
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])


def _edit_meta(folder, **changes):
    meta = json.loads((folder / "metapeft.json").read_text())
    meta.update(changes)
    meta = {k: v for k, v in meta.items() if v is not ...}
    (folder / "metapeft.json").write_text(json.dumps(meta))


def _refused(folder, file, *fragments) -> str:
    with pytest.raises(MetapeftError) as info:
        load_classifier(folder)
    message = str(info.value)
    assert "\n" not in message and str(file) in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


@pytest.mark.parametrize(
    "kind,name",
    [
        ("peft", "adapter_model.safetensors"),
        ("head", "head.safetensors"),
        ("full", "encoder/model.safetensors"),
        ("peft", "head.safetensors"),
    ],
)
def test_a_truncated_safetensors_file_is_named(copy_run, kind, name):
    folder = copy_run(kind)
    _truncate(folder / name)
    _refused(folder, folder / name, "truncated or corrupt", "retrain")


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adapter_config.json", "head.safetensors"])
def test_a_missing_adapter_or_head_file_is_named(copy_run, name):
    folder = copy_run("peft")
    (folder / name).unlink()
    message = _refused(folder, folder / name, "is missing", "retrain")
    assert "Repo id" not in message


@pytest.mark.parametrize(
    "kind,name,content",
    [
        ("peft", "adapter_config.json", None),
        ("peft", "adapter_config.json", "{}"),
        ("full", "encoder/config.json", None),
    ],
)
def test_a_damaged_config_beside_the_weights_is_named(copy_run, kind, name, content):
    folder = copy_run(kind)
    _truncate(folder / name) if content is None else (folder / name).write_text(content)
    _refused(folder, folder / name, "retrain")


def test_a_missing_full_encoder_is_named(copy_run):
    folder = copy_run("full")
    shutil.rmtree(folder / "encoder")
    _refused(folder, folder / "encoder", "is missing")


@pytest.mark.parametrize("damage", ["truncated", "not json", "a list", "binary"])
def test_an_unreadable_metapeft_json_is_named(copy_run, damage):
    folder = copy_run("head")
    meta = folder / "metapeft.json"
    if damage == "truncated":
        _truncate(meta)
    elif damage == "not json":
        meta.write_text("kind: head\n")
    elif damage == "a list":
        meta.write_text("[]")
    else:
        meta.write_bytes(b"\xff\xfe\x00garbage")
    _refused(folder, meta, "retrain")


@pytest.mark.parametrize(
    "changes,fragment",
    [
        ({"max_length": ...}, "lacks max_length"),
        ({"kind": ..., "base_model": ...}, "lacks kind, base_model"),
        ({"kind": 3}, "kind = 3"),
        ({"kind": "adapter"}, "kind = adapter"),
        ({"max_length": "48"}, "max_length"),
        ({"max_length": 0}, "max_length"),
        ({"base_model": ["x"]}, "base_model"),
        ({"label_names": "negative,positive"}, "label_names"),
        ({"label_names": ["negative", "positive", "neutral"]}, "3 label names"),
        ({"prompt_learning": "no"}, "prompt_learning"),
        ({"format_version": "1"}, "format_version"),
    ],
)
def test_an_invalid_metapeft_json_is_named(copy_run, changes, fragment):
    folder = copy_run("head")
    _edit_meta(folder, **changes)
    _refused(folder, folder / "metapeft.json", fragment, "retrain")


def test_a_folder_from_a_newer_metapeft_asks_for_an_upgrade(copy_run):
    folder = copy_run("head")
    _edit_meta(folder, format_version=99)
    _refused(folder, folder / "metapeft.json", "newer metapeft", "upgrade")


def test_a_head_file_that_holds_no_linear_head_is_named(copy_run):
    folder = copy_run("head")
    save_file({"weights": torch.zeros(2, 384)}, str(folder / "head.safetensors"))
    _refused(folder, folder / "head.safetensors", "linear head")


def test_a_head_of_another_size_than_the_encoder_is_named(copy_run):
    folder = copy_run("head")
    save_file({"weight": torch.zeros(2, 768), "bias": torch.zeros(2)}, str(folder / "head.safetensors"))
    _refused(folder, folder / "head.safetensors", "768")


def test_a_folder_that_is_not_a_run_gets_one_line(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    _refused(tmp_path, tmp_path, "not a metapeft output directory")
    _refused(tmp_path / "notes.txt", tmp_path / "notes.txt", "not a folder")
    _refused(tmp_path / "absent", tmp_path / "absent", "missing")


def _forbid_unpickling(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a pickle file was loaded")

    monkeypatch.setattr(torch, "load", refuse)


def test_a_full_encoder_saved_only_as_pickle_is_refused_unread(copy_run, monkeypatch):
    folder = copy_run("full")
    weights = folder / "encoder" / "model.safetensors"
    torch.save(load_file(str(weights)), folder / "encoder" / "pytorch_model.bin")
    weights.unlink()
    _forbid_unpickling(monkeypatch)
    _refused(folder, weights, "pytorch_model.bin", "pickle")


def test_an_adapter_saved_only_as_pickle_is_refused_unread(copy_run, monkeypatch):
    folder = copy_run("peft")
    weights = folder / "adapter_model.safetensors"
    torch.save(load_file(str(weights)), folder / "adapter_model.bin")
    weights.unlink()
    _forbid_unpickling(monkeypatch)
    _refused(folder, weights, "adapter_model.bin", "pickle")


def test_an_adapter_without_its_weights_is_named(copy_run):
    folder = copy_run("peft")
    save_file({"unrelated": torch.zeros(1)}, str(folder / "adapter_model.safetensors"))
    _refused(folder, folder / "adapter_model.safetensors", "lacks weights")


@pytest.mark.parametrize("kind", list(KINDS))
def test_good_folders_still_reload_and_old_ones_warn(copy_run, small_task, kind):
    folder = copy_run(kind)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a good folder loads without warnings of ours
        reloaded = load_classifier(folder)
    assert set(reloaded.predict(small_task.test.texts[:4])) <= set(small_task.label_names)
    _edit_meta(folder, label_names=...)  # folders older metapeft versions wrote lack label names
    with pytest.warns(UserWarning, match="no label names"):
        assert load_classifier(folder).label_names == ["0", "1"]
