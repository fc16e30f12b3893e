import json

import numpy as np
import pandas as pd
import pytest
from conftest import EXAMPLE, shared_path, write_jsonl

from metapeft._errors import TaskError
from metapeft.tasks import load_suite, load_task, stratified_indices

ROWS = [
    {"text": f"great film number {i}" if i % 2 else f"awful film number {i}", "label": "pos" if i % 2 else "neg"}
    for i in range(40)
]


def test_folder_with_train_and_test_files(example_task):
    assert example_task.name == "sst2-mini"
    assert len(example_task.train) == 1000 and len(example_task.test) == 300
    assert example_task.label_names == ["negative", "positive"]
    assert example_task.test_source == "file" and not example_task.is_pair


def test_bundled_example_alias():
    assert load_task("example").fingerprint == load_task(EXAMPLE).fingerprint


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".parquet", ".jsonl"])
def test_single_file_formats_get_a_seeded_stratified_split(tmp_path, suffix):
    frame = pd.DataFrame(ROWS)
    path = tmp_path / f"data{suffix}"
    if suffix == ".csv":
        frame.to_csv(path, index=False)
    elif suffix == ".tsv":
        frame.to_csv(path, sep="\t", index=False)
    elif suffix == ".parquet":
        frame.to_parquet(path)
    else:
        write_jsonl(path, ROWS)
    task = load_task(path, seed=1)
    assert len(task.train) == 32 and len(task.test) == 8 and task.test_source == "split"
    assert sorted(np.bincount(task.test.labels)) == [4, 4]  # stratified
    assert load_task(path, seed=1).fingerprint == task.fingerprint  # seeded
    assert load_task(path, seed=2).fingerprint != task.fingerprint


def test_saved_to_disk_dataset_with_class_labels(tmp_path):
    import datasets

    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    rows = {"sentence": [r["text"] for r in ROWS], "label": [int(r["label"] == "pos") for r in ROWS]}
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(rows, features=features),
            "validation": datasets.Dataset.from_dict(rows, features=features).select(range(10)),
        }
    )
    dd.save_to_disk(str(tmp_path / "ds"))
    task = load_task(tmp_path / "ds")
    assert task.label_names == ["neg", "pos"] and len(task.test) == 10 and task.test_source == "file"


def test_sentence_pairs_and_column_flags(tmp_path):
    rows = [{"q1": f"how do I {i}", "q2": f"what is {i}", "dup": i % 3 == 0} for i in range(30)]
    path = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(TaskError, match="no text column"):
        load_task(path)
    task = load_task(path, text_column="q1", pair_column="q2", label_column="dup")
    assert task.is_pair and task.train.pairs[0].startswith("what is")
    assert task.label_names == ["False", "True"]


def test_reference_pair_task_is_detected():
    task = load_task(shared_path("datasets", "mrpc"))
    assert task.is_pair and task.num_labels == 2


@pytest.mark.parametrize(
    "content, message",
    [
        (
            '{"text": "a", "label": "x"}\n{"text": "b", "label": "y"}\n{"text": "c", "label": }\n',
            r"line 3: not valid JSON",
        ),
        ("", "has no rows"),
        ('{"text": "a", "label": "x"}\n{"text": "b", "label": "x"}\n{"text": "c", "label": "x"}\n', "single class"),
        ('{"text": "a", "label": "x"}\n{"text": "b"}\n', "line 2: missing label"),
        ("[1, 2]\n", "line 1: expected a JSON object"),
    ],
)
def test_bad_files_name_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(TaskError, match=message):
        load_task(path)


def test_missing_path_and_unseen_test_labels(tmp_path):
    with pytest.raises(TaskError, match="no such file"):
        load_task(tmp_path / "nope.jsonl")
    write_jsonl(tmp_path / "t" / "train.jsonl", ROWS)
    write_jsonl(tmp_path / "t" / "test.jsonl", [{"text": "meh", "label": "neutral"}])
    with pytest.raises(TaskError, match="never seen in training: 'neutral'"):
        load_task(tmp_path / "t")


def test_a_folder_of_held_out_data_only_or_a_label_read_as_text_is_refused(tmp_path):
    write_jsonl(tmp_path / "only_test" / "test.jsonl", ROWS)
    with pytest.raises(TaskError, match="found held-out test.jsonl"):
        load_task(tmp_path / "only_test")
    path = write_jsonl(tmp_path / "rows.jsonl", ROWS)
    with pytest.raises(TaskError, match="both the label and the text"):
        load_task(path, text_column="label")


def test_unicode_line_separators_inside_text_are_not_line_breaks(tmp_path):
    rows = [{"text": f"hmm\u0085might i suggest {i}\u2028ok", "label": "a" if i % 2 else "b"} for i in range(10)]
    path = tmp_path / "nel.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    task = load_task(path)
    assert len(task.train) + len(task.test) == 10 and "\u0085" in task.train.texts[0]


def test_every_reference_task_loads():
    for entry in load_suite(shared_path("datasets")):
        task = entry.load()
        assert len(task.train) == entry.meta["n_train"] and len(task.test) == entry.meta["n_test"], entry.name
        assert task.num_labels == len(entry.meta["labels"]) and task.is_pair == (entry.meta["task_type"] == "pair")


def test_stratified_indices_keep_every_class_and_are_seeded():
    labels = [0] * 90 + [1] * 9 + [2] * 1
    idx = stratified_indices(labels, 20, seed=0)
    assert len(idx) == 20 and len(set(idx.tolist())) == 20
    assert {labels[i] for i in idx} == {0, 1, 2}
    assert stratified_indices(labels, 20, seed=0).tolist() == idx.tolist()


def test_held_out_split_never_takes_a_class_last_example(tmp_path):
    rows = ROWS + [{"text": "a lone example of a rare class", "label": "rare"}]
    task = load_task(write_jsonl(tmp_path / "rare.jsonl", rows), seed=0)
    rare = task.label_names.index("rare")
    assert rare in task.train.labels and rare not in task.test.labels


def test_subsample_is_stratified_and_named(example_task):
    sub = example_task.subsample(64, seed=3)
    assert len(sub.train) == 64 and sub.name == "sst2-mini@64" and sub.test is example_task.test
    assert abs(np.mean(sub.train.labels) - np.mean(example_task.train.labels)) < 0.05


def test_suite_manifest():
    entries = load_suite(shared_path("datasets"))
    assert len(entries) == 40
    assert entries[0].load().domain == json.loads(shared_path("datasets", "MANIFEST.json").read_text())[0]["domain"]


def test_a_byte_order_mark_is_ignored(tmp_path):
    jsonl = tmp_path / "bom.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8-sig")
    assert load_task(jsonl).fingerprint == load_task(write_jsonl(tmp_path / "plain.jsonl", ROWS)).fingerprint


def test_labels_name_one_class_by_value_in_every_format(tmp_path):
    """1 and 1.0 are one class (named "1") whatever the file format; plain int and text labels are unchanged."""
    import datasets

    texts = [r["text"] for r in ROWS]
    ints = [int(r["label"] == "pos") for r in ROWS]
    plain = load_task(write_jsonl(tmp_path / "ints.jsonl", [{"text": t, "label": y} for t, y in zip(texts, ints)]))
    assert plain.label_names == ["0", "1"]
    mixed = [{"text": t, "label": float(y) if i % 3 else y} for i, (t, y) in enumerate(zip(texts, ints))]
    assert load_task(write_jsonl(tmp_path / "mixed.jsonl", mixed)).label_names == ["0", "1"]
    pd.DataFrame({"text": texts, "label": [float(y) for y in ints]}).to_parquet(tmp_path / "floats.parquet")
    pd.DataFrame({"text": texts, "label": ints}).to_csv(tmp_path / "ints.csv", index=False)
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.Value("float32")})
    datasets.Dataset.from_dict({"text": texts, "label": ints}, features=features).save_to_disk(str(tmp_path / "ds"))
    for path in ("mixed.jsonl", "floats.parquet", "ints.csv", "ds"):
        assert load_task(tmp_path / path).fingerprint == plain.fingerprint, path
    many = load_task(write_jsonl(tmp_path / "many.jsonl", [{"text": f"t{i}", "label": i % 12} for i in range(48)]))
    assert many.label_names == [str(i) for i in range(12)]  # numeric order, as before
    assert load_task(write_jsonl(tmp_path / "text.jsonl", ROWS)).label_names == ["neg", "pos"]


def test_labels_of_different_kinds_are_refused_with_file_and_line(tmp_path):
    for labels, kinds in (([0, 1, "1"], "'1' is text"), ([0, 1, True], "True is true/false")):
        path = write_jsonl(tmp_path / "mixed.jsonl", [{"text": f"t{i}", "label": y} for i, y in enumerate(labels * 4)])
        message = rf"mixed\.jsonl line 3: label {kinds} but the label at \S+mixed\.jsonl line 1 \(0\) is a number"
        with pytest.raises(TaskError, match=message):
            load_task(path)
    write_jsonl(tmp_path / "t" / "train.jsonl", [{"text": f"t{i}", "label": i % 2} for i in range(10)])
    write_jsonl(tmp_path / "t" / "test.jsonl", [{"text": "a", "label": 0}, {"text": "b", "label": "1"}])
    message = r"test\.jsonl line 2: label '1' is text but the label at \S+train\.jsonl line 1 \(0\) is a number"
    with pytest.raises(TaskError, match=message):
        load_task(tmp_path / "t")


def test_invalid_utf8_is_refused_with_file_and_line(tmp_path):
    good = "".join(json.dumps(r) + "\n" for r in ROWS[:4]).encode()
    for name, prefix in (("plain.jsonl", b""), ("bom.jsonl", b"\xef\xbb\xbf")):
        path = tmp_path / name
        path.write_bytes(prefix + good + b'{"text": "caf\xe9", "label": "pos"}\n' + good)
        with pytest.raises(TaskError, match=rf"{name} line 5: not valid UTF-8 \(byte 0xe9 at byte 14 of the line\); "):
            load_task(path)
