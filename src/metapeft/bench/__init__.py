"""``metapeft bench``: run a design of fine-tuning runs over a suite into the experience store."""

from ._design import Design, Pass, RunSpec, expand, scoring_pool
from ._runner import finished_keys, pending_keys, release_stale_claims, run_bench, run_one

__all__ = [
    "Design",
    "Pass",
    "RunSpec",
    "expand",
    "finished_keys",
    "pending_keys",
    "release_stale_claims",
    "run_bench",
    "run_one",
    "scoring_pool",
]
