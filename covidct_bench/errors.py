"""The one exception users see: a one-line message that names the file, row or config key."""


class BenchError(Exception):
    """Bad input or an unusable environment. The CLI prints ``error: <message>`` and exits 1."""

    def __init__(self, message: str):
        # Keep it to one line whatever the cause carried.
        super().__init__(" ".join(str(message).split()))


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) stopped a long command; the message says what was kept and how to continue.
    The CLI prints ``interrupted: <message>`` and exits 130."""


def reason(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none), for one-line errors."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def first_invalid(e) -> tuple[str, str]:
    """(dotted key path, message) of the first error of a pydantic ``ValidationError``."""
    first = e.errors()[0]
    return ".".join(str(x) for x in first["loc"]), first["msg"]


def root_reason(e: BaseException, limit: int = 300) -> str:
    """The last non-empty line of an exception's root cause (``__cause__`` chain): what a Ray
    Train / Tune failure, wrapped several times, was really about."""
    cause = e
    while getattr(cause, "__cause__", None) is not None:
        cause = cause.__cause__
    text = [line for line in str(cause).strip().splitlines() if line.strip()]
    return (text[-1] if text else type(cause).__name__)[:limit]
