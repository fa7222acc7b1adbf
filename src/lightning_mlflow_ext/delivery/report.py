"""What a flush or a park tells the run: what is not in the store yet, where it is kept, and why."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class DeliveryReport:
    """What is not in the store yet: refused writes (and why), writes still pending delivery, where they are
    kept, and why delivery stopped (a run-wide fault or a bug), if it did."""

    rejected: int = 0
    pending: int = 0
    errors: list[str] = field(default_factory=list)
    #: The journal file holding undelivered writes; set only when that file exists.
    journal: str | None = None
    #: Why delivery stopped and what to do, when a run-wide fault or a bug stopped it.
    halted: str | None = None
    #: Points that could be neither delivered nor written to the journal (an unwritable save_dir).
    lost: int = 0

    def undelivered_message(self, run_id: str) -> str | None:
        """One message for what did not reach the store, naming the journal only when it exists."""
        if not self.pending and not self.lost:
            return None
        parts = [f"MLflow run {run_id}: {self.pending} writes are not delivered"]
        if self.halted:
            parts.append(f" ({self.halted})")
        if self.journal:
            parts.append(f". They are kept in {self.journal}; deliver them with: lightning-mlflow sync {self.journal}")
        if self.lost:
            parts.append(f". {self.lost} could not be written to the journal either and are lost")
        return "".join(parts)
