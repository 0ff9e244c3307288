"""Errors and warnings of the architecture search."""

from __future__ import annotations

from typing import Mapping

from lana.errors import LanaError


class SearchError(LanaError):
    """Search input that cannot be used as given (mismatched tables, NaN scores, bad options)."""


class InfeasibleBudgetError(SearchError):
    """No architecture meets the budget(s); ``minimum`` holds the smallest reachable total per table."""

    def __init__(self, message: str, minimum: Mapping[str, float]) -> None:
        super().__init__(message)
        self.minimum = dict(minimum)


class SearchWarning(UserWarning):
    """The search returned less than asked for (fewer than K architectures, a solve hit its time limit)."""
