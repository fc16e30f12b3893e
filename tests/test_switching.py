"""Switching the method during a run (merge-and-continue), with the real MiniLM weights."""

import numpy as np
import pytest
import torch

from metapeft._backbone import backbone_info, load_tokenizer
from metapeft._errors import MetapeftError
from metapeft.methods import get_method
from metapeft.training import RunConfig, SwitchAt, TrainerCallback, fit, load_classifier, train
from metapeft.training._engine import Batches


class Watch(TrainerCallback):
    """Logits on a fixed batch at each curve point and right after each switch (before the next method's first step)."""

    def __init__(self, task, schedule: dict[int, str]):
        self.batch = Batches(load_tokenizer(None), task.test.select(np.arange(24)), 32).collate(list(range(24)), torch.device("cpu"))
        self.schedule, self.at_point, self.at_switch, self.events = schedule, {}, {}, []

    def _logits(self, state):
        state.model.eval()
        with torch.no_grad():
            return state.model(**self.batch).clone()

    def on_evaluate(self, state):
        self.at_point[state.step] = self._logits(state)

    def should_switch(self, state):
        from metapeft.training import Switch

        return Switch(self.schedule[state.step], reason="test") if state.step in self.schedule else None

    def on_switch(self, state):
        self.events.append((state.step, state.method, type(state.optimizer).__name__))
        self.at_switch[state.step] = self._logits(state)


def test_merge_and_continue_keeps_predictions_through_a_chain_of_switches_and_reloads(small_task, example_profile, tmp_path):
    # every method that changes weights, each merged before the next starts: lora → ia3 → loha → adalora → dora → full → head
    chain = ["ia3", "loha", "adalora", "dora", "full_finetuning", "head_only"]
    steps = 2 * (len(chain) + 1)
    watch = Watch(small_task, {2 * (i + 1): m for i, m in enumerate(chain)})
    run = RunConfig(record=False, track=False, output_dir=tmp_path / "run", eval_size=16, eval_points=len(chain) + 1, final_eval_size=10_000)
    result = train(small_task, "lora", {"max_steps": steps, "batch_size": 8}, run, profile=example_profile, callbacks=[watch])
    switches = result.metrics["switches"]
    assert [(s["from"], s["to"], s["step"]) for s in switches] == list(zip(["lora", *chain[:-1]], chain, range(2, steps, 2)))
    for step in watch.at_switch:  # the next method starts as the identity: the model predicts exactly what it did
        torch.testing.assert_close(watch.at_switch[step], watch.at_point[step], atol=1e-4, rtol=1e-4)
    assert [e[1] for e in watch.events] == chain
    assert all(s["accuracy_before"] is not None and s["accuracy_after"] is not None for s in switches)
    assert result.curve[-1]["method"] == "head_only" and result.metrics["steps"] == steps
    # saved as a whole encoder (what the merged methods learned is in its weights) and reloaded like any run
    reloaded = load_classifier(result.adapter_path)
    assert reloaded.meta["kind"] == "full" and reloaded.meta["started_with"] == "lora" and len(reloaded.meta["switches"]) == len(chain)
    test = small_task.test
    accuracy = np.mean([p == small_task.label_names[y] for p, y in zip(reloaded.predict(test.texts, test.pairs), test.labels)])
    assert accuracy == pytest.approx(result.metrics["accuracy"], abs=1e-5)  # the metric is rounded to 5 places


def test_a_switch_to_virtual_tokens_saves_them_over_the_merged_encoder(small_task, example_profile, tmp_path):
    run = RunConfig(record=False, track=False, output_dir=tmp_path / "run", eval_size=16, eval_points=2, final_eval_size=10_000)
    result = train(small_task, "lora", {"max_steps": 4}, run, profile=example_profile, callbacks=[SwitchAt(2, "prompt_tuning", {"learning_rate": 3e-2})])
    assert [s["to"] for s in result.metrics["switches"]] == ["prompt_tuning"]
    reloaded = load_classifier(result.adapter_path)
    assert reloaded.meta["kind"] == "peft" and reloaded.meta["prompt_learning"] and (tmp_path / "run" / "encoder" / "model.safetensors").exists()
    test = small_task.test
    accuracy = np.mean([p == small_task.label_names[y] for p, y in zip(reloaded.predict(test.texts, test.pairs), test.labels)])
    assert accuracy == pytest.approx(result.metrics["accuracy"], abs=1e-5)  # the metric is rounded to 5 places


def test_virtual_tokens_cannot_be_switched_from(small_task):
    spec = get_method("prompt_tuning")
    with pytest.raises(MetapeftError, match="cannot switch from prompt_tuning: its virtual tokens cannot be merged"):
        fit(small_task, spec, spec.make_config({"max_steps": 4}), backbone_info(None), RunConfig(eval_size=16, eval_points=2), max_length=32,
            device=torch.device("cpu"), callbacks=[SwitchAt(2, "lora")])  # fmt: skip
