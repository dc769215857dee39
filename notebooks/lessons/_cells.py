"""The two cell constructors every lesson file uses: ``md(text)`` and ``code(text)``."""


def md(text: str) -> tuple[str, str]:
    return "md", text.strip("\n")


def code(text: str) -> tuple[str, str]:
    return "code", text.strip("\n")
