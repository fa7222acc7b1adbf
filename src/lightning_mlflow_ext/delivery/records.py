"""What delivery carries: one record of writes to a run, and the JSON line it is kept as in a journal.

Everything the package changes in a run is a ``Record``; the writer sends it, the journal keeps it while the
store does not take it. Nothing here touches a file or the network.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

#: A metric point: (key, value, timestamp in ms, step).
MetricPoint = tuple[str, float, int, int]
KeyValue = tuple[str, str]

#: The journal format this version writes; a journal of a newer one is refused rather than misread.
FORMAT_VERSION = 1


@dataclass(frozen=True)
class ArtifactOp:
    """One change to a run's artifacts: store a staged file (``put``: ``path`` is the staged local file, kept
    under ``save_dir`` until the store has it), remove an artifact (``delete``: ``path`` is the artifact path), or
    log a model (``model``: ``path`` is the staged model folder, ``details`` what the logged model and its
    registration carry; see ``delivery.logged_models``), or remove one (``delete_model``: ``path`` is the change
    id of the ``model`` change that made it, ``details`` its ``experiment_id`` and ``name``)."""

    kind: Literal["put", "delete", "model", "delete_model"]
    path: str
    artifact_dir: str | None = None
    details: Mapping[str, Any] | None = None

    def to_json(self) -> list[Any]:
        data: list[Any] = [self.kind, self.path, self.artifact_dir]
        return data if self.details is None else [*data, dict(self.details)]

    @classmethod
    def from_json(cls, data: Any) -> ArtifactOp:
        kind, path, artifact_dir, *rest = data
        if kind not in ("put", "delete", "model", "delete_model") or len(rest) > 1:
            raise ValueError(f"not an artifact change: {data!r}")
        details = rest[0] if rest else None
        if details is not None and not isinstance(details, dict):
            raise ValueError(f"not an artifact change: {data!r}")
        return cls(kind, str(path), None if artifact_dir is None else str(artifact_dir), details)

    def describe(self) -> str:
        if self.kind == "delete":
            return f"delete {self.path}"
        if self.kind == "model":
            return f"log model {(self.details or {}).get('name', '?')}"
        if self.kind == "delete_model":
            return f"delete logged model {(self.details or {}).get('name', '?')}"
        return f"upload {self.artifact_dir or '.'}/{os.path.basename(self.path)}"


@dataclass
class Record:
    """One unit of work: metric points, params, tags, a run status, or a change to the run's artifacts."""

    metrics: list[MetricPoint] = field(default_factory=list)
    params: list[KeyValue] = field(default_factory=list)
    tags: list[KeyValue] = field(default_factory=list)
    status: str | None = None
    end_time: int | None = None
    artifact: ArtifactOp | None = None
    #: Dataset inputs: each the dataset's fields and its split as ``context`` (``lineage.dataset_records``).
    inputs: list[dict[str, str]] = field(default_factory=list)

    @property
    def size(self) -> int:
        """Points, the unit progress is counted in: one per metric point, param, tag and input, one for a status
        or an artifact change. Splitting a record keeps the sum."""
        extra = (1 if self.status else 0) + (1 if self.artifact else 0)
        return len(self.metrics) + len(self.params) + len(self.tags) + len(self.inputs) + extra

    def to_json(self) -> str:
        data: dict[str, Any] = {}
        if self.metrics:
            data["m"] = self.metrics
        if self.params:
            data["p"] = self.params
        if self.tags:
            data["t"] = self.tags
        if self.status:
            data["s"] = [self.status, self.end_time]
        if self.artifact:
            data["a"] = self.artifact.to_json()
        if self.inputs:
            data["i"] = self.inputs
        return json.dumps(data, separators=(",", ":"))

    @classmethod
    def from_json(cls, line: str) -> Record:
        """Raises ValueError, TypeError or KeyError for a line that is not a whole record."""
        data = json.loads(line)
        if not isinstance(data, dict):
            raise ValueError(f"not a record: {line[:80]!r}")
        status = data.get("s") or [None, None]
        return cls(
            metrics=[(str(k), float(v), int(ts), int(step)) for k, v, ts, step in data.get("m", [])],
            params=[(str(k), str(v)) for k, v in data.get("p", [])],
            tags=[(str(k), str(v)) for k, v in data.get("t", [])],
            status=status[0],
            end_time=status[1],
            artifact=ArtifactOp.from_json(data["a"]) if "a" in data else None,
            inputs=[{str(k): str(v) for k, v in item.items()} for item in data.get("i", [])],
        )


def to_lines(records: list[Record]) -> bytes:
    """Records as journal lines, one each."""
    return "".join(record.to_json() + "\n" for record in records).encode()


@dataclass
class Header:
    """A journal's first line: which run its records belong to, and where that run is tracked."""

    run_id: str
    tracking_uri: str

    def to_line(self) -> bytes:
        return (json.dumps({"journal": FORMAT_VERSION, **self.__dict__}) + "\n").encode()
