"""Errors the CLI reports as one line (``error: ...``, exit code 2) instead of a traceback."""


class LanaError(Exception):
    """A problem with the user's input or environment; the message says how to fix it."""


class UnknownNameError(LanaError, KeyError):
    """An unknown teacher, op family, pool, device or similar name; the message lists valid names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""
