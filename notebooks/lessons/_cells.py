"""The cell constructors every lesson file uses: ``md(text)``, ``code(text)`` and ``exercise(...)``."""


def md(text: str) -> tuple[str, str]:
    return "md", text.strip("\n")


def code(text: str) -> tuple[str, str]:
    return "code", text.strip("\n")


def exercise(
    title: str, task: str, solution: str, stub: str, check: str, hint: str, more: str
) -> tuple[str, dict]:
    """One exercise. In the lesson: the task (as a note), ``solution`` and the ``check`` cell. In the exercise
    twin (``notebooks/exercises/``): the task, ``stub`` -- the learner's cell, which raises NotImplementedError
    -- and the same ``check`` cell, which fails with ``hint`` until the learner's code agrees with the package's
    own function on small inputs, and with ``more`` too (a second, more specific hint) when it fails again.
    ``check`` may use ``{hint}``: both hints, as a Python literal ``(hint, more)``."""
    return "exercise", {
        "title": title,
        "task": task.strip("\n"),
        "solution": solution.strip("\n"),
        "stub": stub.strip("\n"),
        "check": check.strip("\n").replace("{hint}", repr((hint, more))),
        "hint": hint,
        "more": more,
    }
