"""Diverse verifier tree search (DVTS, HF search-and-learn) on the engine.

`n // beam_width` independent subtrees, each a greedy step-level search: every round each subtree
keeps only its best-scored active beam and forks it `beam_width` times at the step boundary, so the
subtrees cannot collapse onto one another (diversity by construction). Everything else (step
decoding, scorers, aggregation, the final choice) is `BeamSearch`'s.
"""

from __future__ import annotations

from decodesearch.engine import Branch
from decodesearch.engine.scheduler import SearchEngine
from decodesearch.strategies.beam_search import Beam, BeamSearch


class DVTS(BeamSearch):
    name = "dvts"

    async def first_beams(self, engine: SearchEngine, root: Branch) -> list[Beam]:
        return [Beam(b, group=i // self.beam_width) for i, b in enumerate(await engine.fork(root, self.n))]

    def keep(self, active: list[Beam]) -> list[Beam]:
        """The best active beam of each subtree (ties: the earlier beam)."""
        best: dict[int, Beam] = {}
        for b in active:
            if b.group not in best or b.score > best[b.group].score:
                best[b.group] = b
        return [best[g] for g in sorted(best)]
