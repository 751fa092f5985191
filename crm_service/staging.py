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

    def record(self, rows: Iterable[tuple[int, bool]]) -> None:
        """Count ``(seq, inserted)`` rows returned by an upsert, keeping each row's outcome."""
        for seq, inserted in rows:
            self.per_row[seq] = "inserted" if inserted else "updated"
            if inserted:
                self.inserted += 1
            else:
                self.updated += 1
