"""What a staged merge did, shared by the order and profile stores."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field


@dataclass
class MergeResult:
    """What a merge did: counts, and for small batches the outcome per staged ``seq``."""

    staged: int = 0
    inserted: int = 0
    updated: int = 0
    per_row: dict[int, str] = field(default_factory=dict)

    @property
    def duplicates(self) -> int:
        """Staged rows that changed nothing."""
        return self.staged - self.inserted - self.updated

    def record_outcomes(self, rows: Iterable[tuple[int, str]]) -> None:
        """Keep ``(seq, outcome)`` pairs ("inserted"/"updated") and count them."""
        for seq, outcome in rows:
            self.per_row[seq] = outcome
            if outcome == "inserted":
                self.inserted += 1
            else:
                self.updated += 1
