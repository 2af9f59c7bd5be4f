"""The one exception users see: a one-line message that names the file, row or config key."""


class BenchError(Exception):
    """Bad input or an unusable environment. The CLI prints ``error: <message>`` and exits 1."""

    def __init__(self, message: str):
        # Keep it to one line whatever the cause carried.
        super().__init__(" ".join(str(message).split()))
