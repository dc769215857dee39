"""The package's expected errors that need no torch to name (the CLI catches them; serving an export imports
this module without torch). Each is re-exported where it is raised: ``checkpoint.CheckpointError``,
``teacher.TeacherWeightsError``."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A run folder, checkpoint or export cannot be used; the message says what does not match."""


class TeacherWeightsError(RuntimeError):
    """No usable teacher weights were found; the message says how to get them."""
