"""The shipped prior: real fine-tuning experience over the 40-task reference suite (see docs/benchmark-protocol.md)."""

from pathlib import Path

HERE = Path(__file__).resolve().parent
DESIGN_PATH = HERE / "design.json"
EXPERIENCES_PATH = HERE / "experiences.jsonl.gz"
