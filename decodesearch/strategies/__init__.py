"""Search strategies (docs/design.md §4), one file each, all on the engine; `make_strategy` by name."""

from decodesearch.strategies.base import PromptFormat, Sample, SearchResult, Searches, Strategy, stream_searches
from decodesearch.strategies.beam_search import BeamSearch
from decodesearch.strategies.budget_forcing import BudgetForcing
from decodesearch.strategies.dvts import DVTS
from decodesearch.strategies.ids import IDS
from decodesearch.strategies.rain import RAIN
from decodesearch.strategies.independent_samples import BestOfN, Greedy, Sampling, SelfConsistency

STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls for cls in (Greedy, Sampling, BestOfN, SelfConsistency, BudgetForcing, IDS, RAIN, BeamSearch, DVTS)
}


def make_strategy(name: str, **kwargs) -> Strategy:
    """The strategy registered as `name`, built with `kwargs`."""
    if name not in STRATEGIES:
        raise ValueError(f"unknown strategy {name!r}; choose one of {', '.join(sorted(STRATEGIES))}")
    return STRATEGIES[name](**kwargs)


__all__ = [
    "BeamSearch", "BestOfN", "BudgetForcing", "DVTS", "Greedy", "IDS", "PromptFormat", "RAIN", "Sample", "SearchResult",
    "Searches", "STRATEGIES", "SelfConsistency", "Sampling", "Strategy", "make_strategy", "stream_searches",
]
