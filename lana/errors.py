"""Errors the CLI reports as one line (``error: ...``, exit code 2) instead of a traceback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class LanaError(Exception):
    """A problem with the user's input or environment; the message says how to fix it."""


class UnknownNameError(LanaError, KeyError):
    """An unknown teacher, op family, pool, device or similar name; the message lists valid names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


def read_json_file(path: str | Path, error: type[LanaError], what: str, *, missing: str,
                   invalid: str) -> Any:
    """The parsed JSON of an input file; ``error`` with one line naming ``what`` the file is and
    the fix (``missing`` when it does not exist, ``invalid`` when it is not JSON)."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise error(f"{what} {path} does not exist; {missing}") from None
    except IsADirectoryError:
        raise error(f"{what} {path} is a folder; pass the file itself") from None
    except UnicodeDecodeError:
        raise error(f"{what} {path} is not text (not UTF-8); {invalid}") from None
    except json.JSONDecodeError as exc:
        raise error(f"{what} {path} is not valid JSON (line {exc.lineno}: {exc.msg}); "
                    f"{invalid}") from None
