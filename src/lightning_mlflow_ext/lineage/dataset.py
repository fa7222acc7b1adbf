"""One MLflow dataset input per data split, carrying the split's fingerprint and a source that can fetch it.

``log_datasets(client, run_id, {"train": "data/train", "val": "data/val"})`` is all a caller needs.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlflow.data.dataset_source import DatasetSource
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import Dataset as DatasetEntity
from mlflow.entities import DatasetInput, InputTag
from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

from lightning_mlflow_ext.lineage.fingerprint import Fingerprint, fingerprint
from lightning_mlflow_ext.lineage.sources import DVCDatasetSource, GitDatasetSource

if TYPE_CHECKING:
    # Only for the annotation: this module is imported while `import mlflow` is still running (see __init__).
    from mlflow import MlflowClient

__all__ = [
    "DatasetRecord",
    "LineageDataset",
    "dataset_records",
    "dataset_source",
    "lineage_dataset",
    "log_datasets",
]


def dataset_source(fp: Fingerprint) -> DatasetSource:
    """The source that gives back the version ``fp`` describes.

    DVC data → `DVCDatasetSource`; data committed to git → `GitDatasetSource`; data no commit holds
    (untracked, outside any repository, a repository with no commits) → MLflow's local-file source, which
    records where the data was and nothing more. The repository URL is the git remote's, else the local
    working-tree root; with a remote, the working-tree root is kept too (``local_repo``), which ``load()``
    reads first when it holds the commit.
    """
    url = fp.repo_url or fp.repo_root
    trained_in = fp.repo_root if fp.repo_url else None
    if url and fp.commit:
        if fp.tracker == "dvc":
            return DVCDatasetSource(url, fp.commit, fp.path, fp.dvc_remote, fp.dvc_remote_url, local_repo=trained_in)
        if fp.tracker == "git":
            return GitDatasetSource(url, fp.commit, fp.path, local_repo=trained_in)
    local = Path(fp.repo_root, fp.path) if fp.repo_root else Path(fp.path)
    return resolve_dataset_source(local.absolute().as_uri())


class LineageDataset(MetaDataset):
    """A `MetaDataset` whose profile is the fingerprint, so the MLflow UI shows commit, dirty flags, size."""

    def __init__(self, source: DatasetSource, name: str, fp: Fingerprint) -> None:
        self._fingerprint = fp
        super().__init__(source, name=name, digest=fp.digest)

    @property
    def fingerprint(self) -> Fingerprint:
        return self._fingerprint

    @property
    def profile(self) -> dict[str, Any]:
        return self._fingerprint.to_dict()

    def to_dict(self) -> dict[str, str]:
        config = super().to_dict()
        config["profile"] = json.dumps(self.profile, sort_keys=True)
        return config

    @property
    def source_type(self) -> str:
        """The type MLflow records for the source (``git``, ``dvc``, ``local``, ...)."""
        return self.to_entity().source_type

    def to_entity(self) -> DatasetEntity:
        """The MLflow ``Dataset`` entity a run's dataset input carries."""
        return self._to_mlflow_entity()


def lineage_dataset(
    split: str, data: str | os.PathLike[str] | Fingerprint, *, check_remote: bool = True
) -> LineageDataset:
    """The dataset to log for ``split``: named after the split, digest and source from the fingerprint.

    One name per split matters: MLflow keeps one input per (name, digest) in a run, so two splits reading the
    same data under one name would lose the second split's context.
    """
    fp = data if isinstance(data, Fingerprint) else fingerprint(data, check_remote=check_remote)
    return LineageDataset(dataset_source(fp), name=split, fp=fp)


#: One dataset input as plain JSON (what the journal keeps): the dataset's fields and its split as ``context``.
DatasetRecord = dict[str, str]


def _built(
    datasets: Mapping[str, str | os.PathLike[str] | Fingerprint], check_remote: bool
) -> dict[str, LineageDataset]:
    return {split: lineage_dataset(split, data, check_remote=check_remote) for split, data in datasets.items()}


def dataset_records(
    datasets: Mapping[str, str | os.PathLike[str] | Fingerprint], *, check_remote: bool = True
) -> tuple[list[DatasetRecord], dict[str, Fingerprint]]:
    """One dataset input per split (the split is its context), as plain records, and each split's fingerprint.

    Building them reads git and DVC only; sending them is the run's writer's job.
    """
    built = _built(datasets, check_remote)
    records: list[DatasetRecord] = []
    for split, dataset in built.items():
        entity = dataset.to_entity()
        record = {
            "name": entity.name,
            "digest": entity.digest,
            "source_type": entity.source_type,
            "source": entity.source,
            "context": split,
        }
        record.update({key: value for key, value in (("schema", entity.schema), ("profile", entity.profile)) if value})
        records.append(record)
    return records, {split: dataset.fingerprint for split, dataset in built.items()}


def log_datasets(
    client: MlflowClient,
    run_id: str,
    datasets: Mapping[str, str | os.PathLike[str] | Fingerprint],
    *,
    check_remote: bool = True,
) -> dict[str, Fingerprint]:
    """Log one dataset input per split (the context tag ``mlflow.data.context`` is the split name) in one
    ``log_inputs`` request, right away; return each split's fingerprint. (A logger sends them through its
    writer instead, so that they survive an outage.)

    Logging the same splits again is harmless: MLflow keeps one input per (name, digest).
    """
    built = _built(datasets, check_remote)
    inputs = [
        DatasetInput(dataset.to_entity(), tags=[InputTag(MLFLOW_DATASET_CONTEXT, split)])
        for split, dataset in built.items()
    ]
    if inputs:
        client.log_inputs(run_id, datasets=inputs)
    return {split: dataset.fingerprint for split, dataset in built.items()}
