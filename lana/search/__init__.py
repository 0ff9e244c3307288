"""Architecture search (paper §2.2, Eq. 4): one op per layer minimising the summed score under one
or more budgets, K times with an overlap limit, as integer programs solved and certified by HiGHS.

    from lana.search import Budget, SearchTable, search, search_many
    table = SearchTable.from_files("run/scores.json", ["luts/cpu-ort/demo.json"])
    result = search(table, [Budget("cpu-ort", "0.5x")], k=10)      # result.solutions[i].keys ...
    front = search_many(table, [[Budget("cpu-ort", b)] for b in ("0.4x", "0.5x", "0.6x")], k=10)

Modules: ``table`` and ``budget`` (input), ``solver`` (the public search), ``engine`` (one solve:
LP, incumbent, branch and bound), ``dense`` (arrays and exact pruning), ``highs_model``, ``local``
and ``tabu`` (incumbent search), ``check`` (NumPy re-check), ``sweep`` (many budgets),
``baselines`` and ``oracles`` (comparisons and references), ``synthetic`` (benchmark tables),
``files``, ``report`` and ``plot`` (the ``lana search`` command's file side).
"""

from lana.search.budget import Budget, parse_budgets
from lana.search.errors import InfeasibleBudgetError, SearchError, SearchWarning
from lana.search.result import SearchResult, Solution
from lana.search.solver import search
from lana.search.sweep import SweepResult, search_many
from lana.search.table import SearchTable

__all__ = ["Budget", "InfeasibleBudgetError", "SearchError", "SearchResult", "SearchTable",
           "SearchWarning", "Solution", "SweepResult", "parse_budgets", "search", "search_many"]
