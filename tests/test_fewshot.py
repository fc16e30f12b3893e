"""Few-shot adaptation: episodes, the Reptile step, meta-initialisations on disk, adapt() on real data."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import run_cli, write_jsonl

from metapeft._errors import MetapeftError
from metapeft.fewshot import (
    FewShotModel,
    InnerLoop,
    ReptileLearner,
    TaskConfig,
    adapt,
    default_init,
    load_init,
    sample_episode,
    save_init,
)
from metapeft.tasks import Split, Task


def _task(classes: int = 4, per: int = 12) -> Task:
    texts = [f"class {c} example {i}" for c in range(classes) for i in range(per)]
    labels = [c for c in range(classes) for _ in range(per)]
    return Task("synthetic", [f"c{c}" for c in range(classes)], Split(texts, labels), Split(texts[:4], labels[:4]))


def test_episodes_are_n_way_k_shot_disjoint_and_relabelled():
    task = _task()
    rng = np.random.default_rng(0)
    for _ in range(20):
        e = sample_episode(task, TaskConfig("synthetic", classes=3, shots=4, query=5), rng)
        assert sorted(set(e.support.labels)) == [0, 1, 2] and len(e.support) == 12 and len(e.query) == 15
        assert not set(e.support.texts) & set(e.query.texts)  # never the same example in both
        for split in (e.support, e.query):  # the new label j names the original class classes[j]
            assert all(t.startswith(f"class {e.classes[y]} ") for t, y in zip(split.texts, split.labels))
    assert len({tuple(sample_episode(task, TaskConfig("synthetic", 3, 4, 5), rng).classes) for _ in range(20)}) > 1
    with pytest.raises(MetapeftError, match="fewer than 2 labels have 20 training examples"):
        sample_episode(task, TaskConfig("synthetic", 3, 10, 10), rng)


@pytest.fixture(scope="module")
def tiny_model():
    return FewShotModel.build("lora", {"r": 2})


def test_a_reptile_step_moves_only_the_peft_parameters_towards_the_adapted_ones(tiny_model, example_task):
    model = tiny_model
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    episode = sample_episode(example_task, TaskConfig("sst2", 2, 3, 2), np.random.default_rng(1))
    start = {n: p.detach().clone() for n, p in model.meta_parameters().items()}
    assert any("lora_B" in n for n in start) and "log_scale" in start
    inner = InnerLoop(steps=2, lr=1e-2, batch_size=8, max_length=32)
    # with the full step (outer_lr 1) and one episode, Reptile's new initialisation is the adapted parameters
    torch.manual_seed(0)  # the same dropout masks in both adaptations
    result = ReptileLearner(model, inner, outer_lr=1.0, seed=3).meta_train_step([episode])
    after_full = {n: p.detach().clone() for n, p in model.meta_parameters().items()}
    for n, p in model.meta_parameters().items():
        p.data.copy_(start[n])
    torch.manual_seed(0)
    half = ReptileLearner(model, inner, outer_lr=0.5, seed=3).meta_train_step([episode])
    for n, p in model.meta_parameters().items():
        assert torch.allclose(p, start[n] + 0.5 * (after_full[n] - start[n]), atol=1e-6), n
    assert result.update_norm > 0 and half.update_norm == pytest.approx(result.update_norm / 2, rel=1e-4)
    assert any(not torch.equal(after_full[n], start[n]) for n in start if "lora_B" in n)
    for n, p in model.named_parameters():
        if n in frozen:
            assert torch.equal(p, frozen[n]), n  # the encoder's own weights never move
    for n, p in model.meta_parameters().items():
        p.data.copy_(start[n])


def test_first_order_maml_with_adam_resumes_its_outer_state(tiny_model, example_task):
    """Episodic training (no inner steps) moves the initialisation along the query loss; Adam's state round-trips, so a
    resumed run takes the same next step as an uninterrupted one."""
    model = tiny_model
    start = {n: p.detach().clone() for n, p in model.meta_parameters().items()}
    rng = np.random.default_rng(2)
    episodes = [sample_episode(example_task, TaskConfig("sst2", 2, 3, 2), rng) for _ in range(2)]
    inner = InnerLoop(steps=0, lr=1e-3, batch_size=8, max_length=32)
    first = ReptileLearner(model, inner, outer_lr=1e-2, algorithm="fomaml", outer_optimizer="adam")
    first.meta_train_step([episodes[0]])
    saved = {n: p.detach().clone() for n, p in model.meta_parameters().items()}
    state = first.outer_state()
    assert state and all("::" in k for k in state)
    first.meta_train_step([episodes[1]])
    straight = {n: p.detach().clone() for n, p in model.meta_parameters().items()}
    for n, p in model.meta_parameters().items():
        p.data.copy_(saved[n])
    resumed = ReptileLearner(model, inner, outer_lr=1e-2, algorithm="fomaml", outer_optimizer="adam")
    resumed.load_outer_state(state)
    resumed.meta_train_step([episodes[1]])
    for n, p in model.meta_parameters().items():
        assert torch.allclose(p, straight[n], atol=1e-6), n
    assert any(not torch.equal(straight[n], start[n]) for n in start)
    for n, p in model.meta_parameters().items():
        p.data.copy_(start[n])


def test_a_meta_initialisation_round_trips_and_refuses_another_base_model_or_method(tiny_model, tmp_path):
    with torch.no_grad():
        for p in tiny_model.meta_parameters().values():
            p.add_(0.01)
    folder = save_init(
        tiny_model,
        tmp_path / "init",
        {"method": "lora", "settings": {"r": 2}, "base_model": "all-MiniLM-L6-v2", "inner": {"steps": 1}},
    )
    loaded, card = load_init(folder)
    original = tiny_model.meta_parameters()
    for n, p in loaded.meta_parameters().items():
        assert torch.equal(p, original[n]), n
    with pytest.raises(
        MetapeftError, match="meta-trained for base model all-MiniLM-L6-v2, not sentence-transformers/other"
    ):
        load_init(folder, model="sentence-transformers/other")
    with pytest.raises(MetapeftError, match="meta-trained for method lora, not ia3"):
        load_init(folder, method="ia3")
    weights = folder / "init.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(MetapeftError, match="init.safetensors is not a readable safetensors file"):
        load_init(folder)
    from safetensors.torch import save_file

    save_file({"something": torch.zeros(2), "log_scale": torch.zeros(1)}, str(weights))
    with pytest.raises(MetapeftError, match="does not hold the lora parameters its card describes"):
        load_init(folder)


def test_the_shipped_initialisation_is_described_and_loads():
    loaded, card = load_init(default_init())
    assert card["method"] == "lora" and card["base_model"] == "all-MiniLM-L6-v2" and card["iterations"] >= 1
    assert set(card["excluded"]) >= {"sst5", "cr", "dair_emotion", "ag_news"} and not set(card["tasks"]) & set(
        card["excluded"]
    )


def test_adapt_from_the_shipped_initialisation_beats_chance_is_recorded_and_reloads(example_task, tmp_path):
    from metapeft.experience import ExperienceStore
    from metapeft.training import load_classifier

    store = ExperienceStore(f"sqlite:///{tmp_path / 's.db'}")
    task = example_task
    result = adapt(task, shots=16, output_dir=tmp_path / "out", store=store)
    # chance is 0.5; on 300 held-out examples 0.6 is over 3 standard errors above it
    assert result.init == "meta" and result.support_size == 32 and result.accuracy > 0.6
    record = store.get(result.experience_id)
    assert record.status == "finished" and record.tags["few_shot"] == {"shots": 16, "init": "meta", "support_size": 32}
    classifier = load_classifier(result.adapter_path)
    predicted = classifier.predict(task.test.texts)
    assert np.mean([p == task.label_names[y] for p, y in zip(predicted, task.test.labels)]) == pytest.approx(
        result.accuracy, abs=1e-5
    )


def test_adapt_bad_input(tmp_path):
    rows = [{"text": f"text {i}", "label": "a" if i % 5 else "b"} for i in range(40)]
    data = write_jsonl(tmp_path / "d" / "train.jsonl", rows)
    write_jsonl(tmp_path / "d" / "test.jsonl", rows[:10])
    proc = run_cli("adapt", str(data.parent), "--shots", "0")
    assert proc.returncode == 2 and "--shots must be at least 1" in proc.stderr
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "card.json").write_text(
        json.dumps({"method": "lora", "settings": {}, "base_model": "some/other-model", "inner": {}})
    )
    proc = run_cli("adapt", str(data.parent), "--init", str(tmp_path / "foreign"))
    assert proc.returncode == 2 and "meta-trained for base model some/other-model, not all-MiniLM-L6-v2" in proc.stderr
    proc = run_cli("adapt", str(data.parent), "--init", str(tmp_path / "nowhere"))
    assert proc.returncode == 2 and "is not a meta-initialisation" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli(
        "adapt",
        str(data.parent),
        "--shots",
        "12",
        "--json",
        "--store",
        f"sqlite:///{tmp_path / 's.db'}",
        "-o",
        str(tmp_path / "o"),
    )
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert "label 'b' has 8 training examples, fewer than --shots 12: all of them are used" in proc.stderr
    assert json.loads(proc.stdout)["support_size"] == 20


def test_train_and_autotune_adapt_a_few_shot_task_from_the_meta_initialisation(example_task, tmp_path):
    from metapeft.experience import ExperienceStore
    from metapeft.search import autotune

    labels = np.asarray(example_task.train.labels)
    rows = [int(i) for c in range(2) for i in np.flatnonzero(labels == c)[:12]]
    train_rows = [{"text": example_task.train.texts[i], "label": example_task.label_names[labels[i]]} for i in rows]
    test_rows = [
        {"text": t, "label": example_task.label_names[y]}
        for t, y in zip(example_task.test.texts[:100], example_task.test.labels[:100])
    ]
    data = write_jsonl(tmp_path / "few" / "train.jsonl", train_rows).parent
    write_jsonl(data / "test.jsonl", test_rows)
    store = f"sqlite:///{tmp_path / 's.db'}"

    proc = run_cli("train", str(data), "--json", "--no-track", "--store", store, "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-1000:]
    assert "has at most 12 examples per label (≤ 16): adapting from the meta-initialisation" in proc.stderr
    result = json.loads(proc.stdout)
    assert result["init"] == "meta" and result["support_size"] == 24 and result["accuracy"] > 0.5
    proc = run_cli("train", str(data), "--set", "r=4", "--store", store)
    assert (
        proc.returncode == 2
        and "add --no-meta-init to fine-tune with them" in proc.stderr
        and "Traceback" not in proc.stderr
    )

    from metapeft.tasks import load_task

    result = autotune(load_task(str(data)), store=ExperienceStore(store))
    assert result.search is None and result.recommended["few_shot"] and result.final["metrics"]["accuracy"] > 0.5
    assert (
        result.registered["version"] == 1 and "few-shot, no search" in result.registered["tags"]["metapeft.decision"]
    )

    import mlflow

    from metapeft.tracking import MLflowTracker

    with MLflowTracker().fluent():
        model = mlflow.pyfunc.load_model(
            f"models:/{result.registered['name']}/{result.registered['version']}"
        )  # a pyfunc model, not a folder
    labels = model.predict(example_task.test.texts[:20])
    assert len(labels) == 20 and set(labels) <= set(example_task.label_names)
