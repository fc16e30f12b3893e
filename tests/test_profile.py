import json
import time
import warnings

import numpy as np
import pytest
from conftest import EXAMPLE, write_jsonl

from metapeft._config import data_dir
from metapeft.tasks import cached_profile, load_task, profile_task


def test_profile_describes_task_and_model(example_profile, small_task):
    p = example_profile
    assert p.dataset_size == 48 and p.num_classes == 2 and p.task_type == "single"
    assert 0.9 < p.class_entropy <= 1.0 and p.imbalance_ratio >= 1.0
    assert p.token_length_p50 <= p.token_length_p90 <= p.token_length_p95 <= p.token_length_max
    assert p.sequence_length % 8 == 0 and 16 <= p.sequence_length <= 256
    assert p.vocabulary_size > 100 and p.unk_rate < 0.01
    assert len(p.domain_vector) == 384 and abs(np.linalg.norm(p.domain_vector)) > 0.1
    assert 0.0 <= p.complexity_score <= 1.0 and 0.0 <= p.probe_accuracy <= 1.0
    assert p.model["architecture"] == "BertModel" and p.model["num_layers"] == 6 and p.model["hidden_size"] == 384
    assert p.fingerprint == small_task.fingerprint
    json.dumps(p.as_dict())


def test_easy_task_is_less_complex_than_shuffled_labels(example_task):
    """The complexity landmark must track real signal: same texts, labels shuffled → no better than chance."""
    real = profile_task(example_task.subsample(300, 0))
    shuffled = example_task.subsample(300, 0)
    rng = np.random.default_rng(0)
    shuffled.train.labels = rng.permutation(shuffled.train.labels).tolist()
    noise = profile_task(shuffled)
    assert real.probe_accuracy > noise.probe_accuracy + 0.1
    assert real.complexity_score < noise.complexity_score


def test_profiling_100k_rows_is_fast(tmp_path):
    texts = [json.loads(line) for line in (EXAMPLE / "train.jsonl").read_text().splitlines()]
    rows = [{"text": f"{texts[i % 1000]['text']} #{i}", "label": texts[i % 1000]["label"]} for i in range(100_000)]
    write_jsonl(tmp_path / "big" / "train.jsonl", rows)
    write_jsonl(tmp_path / "big" / "test.jsonl", rows[:1000])
    profile_task(load_task(EXAMPLE).subsample(32, 0))  # warm the model, as a running CLI would be
    started = time.perf_counter()
    profile = profile_task(load_task(tmp_path / "big"))
    elapsed = time.perf_counter() - started
    assert profile.dataset_size == 100_000
    assert elapsed < 20, f"profiling 100k rows took {elapsed:.1f}s"


def test_a_tiny_task_with_a_rare_class_still_gets_a_number(tmp_path):
    """Cross-validation folds of 6 rows leave one class in some folds: the probe skips those, and warns nothing
    (scikit-learn's warning carries the failed fit's traceback, which reached the user's terminal)."""
    rows = [{"text": f"fine film {i}", "label": "pos"} for i in range(5)] + [{"text": "awful film", "label": "neg"}]
    write_jsonl(tmp_path / "tiny" / "train.jsonl", rows)
    write_jsonl(tmp_path / "tiny" / "test.jsonl", rows)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        profile = profile_task(load_task(tmp_path / "tiny"))
    assert np.isfinite(profile.probe_accuracy) and np.isfinite(profile.complexity_score)
    assert not [w for w in caught if "Traceback" in str(w.message) or "fit failed" in str(w.message).lower()]


CORRUPT = {
    "truncated": lambda good: good[: len(good) // 2],
    "wrong shape": lambda good: b"[1, 2, 3]",
    "wrong types": lambda good: json.dumps({**json.loads(good), "num_classes": "2", "domain_vector": [None]}).encode(),
    "binary": lambda good: b"\x00\xff\xfe\x89PNG garbage",
}


@pytest.mark.parametrize("corrupt", CORRUPT.values(), ids=CORRUPT.keys())
def test_a_corrupted_cached_profile_is_recomputed_and_repaired(small_task, example_profile, monkeypatch, corrupt):
    expected = example_profile.as_dict()
    cached_profile(small_task)  # creates the cache file
    (path,) = (data_dir() / "profiles").glob(f"{small_task.fingerprint}-*.json")
    path.write_bytes(corrupt(path.read_bytes()))
    assert cached_profile(small_task).as_dict() == expected
    assert json.loads(path.read_text()) == expected and not list(path.parent.glob("*.tmp"))
    monkeypatch.setattr("metapeft.tasks._profile.profile_task", lambda *a, **k: pytest.fail("the cache was not used"))
    assert cached_profile(small_task).as_dict() == expected
