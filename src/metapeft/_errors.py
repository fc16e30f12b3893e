"""User-facing errors.

Every problem a user can fix (bad path, malformed file, unknown method, out-of-range value…) is raised as a
:class:`MetapeftError` whose message is one line saying what is wrong, where, and how to fix it. The CLI prints
that line and exits non-zero; anything else is a bug and is reported as one.
"""


class MetapeftError(Exception):
    """A problem with the user's input or environment, explained in one line."""


class TaskError(MetapeftError):
    """The dataset cannot be loaded or is unusable for classification."""


class MethodError(MetapeftError):
    """Unknown method, unknown or out-of-range hyperparameter."""


class IncompatibleMethodError(MethodError):
    """The method cannot run on the chosen base model."""


class OptionError(MetapeftError):
    """A run or search option out of its range. ``option`` names the field (``eval_size``), so that a command line
    can name its own flag (``--eval-size``) instead."""

    def __init__(self, option: str, problem: str):
        super().__init__(f"{option} {problem}")
        self.option, self.problem = option, problem


class StoreError(MetapeftError):
    """The experience store cannot be opened or read."""
