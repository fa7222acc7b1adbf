"""What ran a training: Python, torch, CUDA and the GPUs, the CPU, the host and OS, the container, allow-listed
environment variables (SLURM's job), the lock files' hashes, as run tags; the installed packages as a list.

Reading every installed package's metadata takes a few hundred milliseconds and ``nvidia-smi`` as much again:
`gather` runs off the training thread. It knows neither Lightning nor MLflow's client; it only names the tags.
No environment variable's value is read unless its name is allow-listed, and never one that looks like a secret.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import importlib.metadata
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lightning_mlflow_ext.lineage.git import repo_root
from lightning_mlflow_ext.run.provenance import source_dir
from lightning_mlflow_ext.run.tags import MAX_TAG_VALUE, env_tag, env_variable_tag, lockfile_tag
from lightning_mlflow_ext.values.names import is_valid_name, truncate_value
from lightning_mlflow_ext.values.redaction import Redactor
from lightning_mlflow_ext.values.urls import strip_url_credentials

__all__ = [
    "DEFAULT_VARIABLES",
    "LOCK_FILES",
    "PACKAGES_ARTIFACT",
    "Environment",
    "Gpu",
    "gather",
    "recorded_variables",
    "visible_gpus",
]

#: The artifact listing every installed distribution as ``name==version``, sorted by name.
PACKAGES_ARTIFACT = "environment/packages.txt"

#: Environment variables whose values are recorded (``lightning_mlflow_ext.env.var.<NAME>``) when set: which
#: scheduler job ran the training, where, and which GPUs it was given. Users add names with
#: ``log_environment=[...]``; a secret-looking name is refused.
DEFAULT_VARIABLES = (
    "SLURM_JOB_ID",
    "SLURM_JOB_NAME",
    "SLURM_ARRAY_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "SLURM_JOB_NODELIST",
    "SLURM_JOB_NUM_NODES",
    "SLURM_NTASKS",
    "SLURM_JOB_PARTITION",
    "SLURM_CLUSTER_NAME",
    "SLURM_RESTART_COUNT",
    "CUDA_VISIBLE_DEVICES",
)

#: Files that pin the installed packages, looked for in the working directory and the git repository roots of
#: the working directory and of the code being run; each is hashed, none is uploaded (a requirements file may
#: name a private index with its credentials).
LOCK_FILES = (
    "uv.lock",
    "poetry.lock",
    "Pipfile.lock",
    "pdm.lock",
    "pixi.lock",
    "conda-lock.yml",
    "environment.yml",
    "environment.yaml",
    "requirements*.txt",
)
_MAX_LOCK_FILES = 20
_MAX_LOCK_FILE_BYTES = 64 * 1024 * 1024

#: Where a container runtime names the image (their values, with any credentials stripped, are the image).
_IMAGE_VARIABLES = ("APPTAINER_CONTAINER", "SINGULARITY_CONTAINER", "CONTAINER_IMAGE")
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NVIDIA_SMI_TIMEOUT_S = 5.0

#: ENV_FACTS name -> the distribution whose version it is (the first one installed).
_VERSIONS = {
    "torch": ("torch",),
    "lightning": ("lightning",),
    "pytorch_lightning": ("pytorch-lightning",),
    "mlflow": ("mlflow", "mlflow-skinny"),
    "lightning_mlflow_ext": ("lightning-mlflow-ext",),
}


@dataclass(frozen=True)
class Environment:
    """What `gather` found: run tags, and the installed packages as text."""

    tags: dict[str, str] = field(default_factory=dict)
    packages: str = ""


@dataclass(frozen=True)
class Gpu:
    index: str
    uuid: str
    name: str
    memory_mib: str
    driver: str


def recorded_variables(extra: Iterable[str], redactor: Redactor) -> tuple[str, ...]:
    """`DEFAULT_VARIABLES` and the user's ``extra`` names; ValueError for a name that is not a variable name or
    that looks like a secret (by ``redactor``: the built-in words and the user's ``redact=``)."""
    names = list(DEFAULT_VARIABLES)
    for name in extra:
        if not isinstance(name, str) or not _VARIABLE_NAME.fullmatch(name):
            raise ValueError(
                f"log_environment names {name!r}, which is not an environment variable name; give names such as "
                "'SLURM_JOB_QOS' (letters, digits and '_')."
            )
        if redactor.is_secret(name):
            raise ValueError(
                f"log_environment names {name!r}, which looks like a secret: its value is never recorded. "
                "Remove it from log_environment."
            )
        if name not in names:
            names.append(name)
    return tuple(names)


def gather(variables: Sequence[str], redactor: Redactor) -> Environment:
    """Everything this module records (slow: call it off the training thread). A fact that cannot be read is
    left out; nothing here raises for a machine that lacks something."""
    packages = installed_packages()
    tags: dict[str, str] = {}
    for part in (
        lambda: software_tags(packages),
        machine_tags,
        gpu_tags,
        container_tags,
        lambda: variable_tags(variables, redactor),
        lock_file_tags,
    ):
        tags.update(_safely(part))
    text = "".join(f"{name}=={version}\n" for name, version in sorted(packages.items()))
    return Environment({key: truncate_value(value, MAX_TAG_VALUE)[0] for key, value in tags.items()}, text)


def _safely(part: Callable[[], dict[str, str]]) -> dict[str, str]:
    try:
        return part()
    except Exception:  # one unreadable fact must not cost the others
        return {}


def _key(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


# ---- software ---------------------------------------------------------------------------------------


def installed_packages() -> dict[str, str]:
    """name -> version of every installed distribution (names as pip compares them); the first on ``sys.path``
    wins, as for imports.

    Read from the ``<name>-<version>.dist-info`` folder names, which the packaging specifications fix: a
    millisecond, where parsing every METADATA file (``importlib.metadata``) takes a quarter of a second.
    """
    found: dict[str, str] = {}
    for entry in sys.path:
        try:
            folders = [item for item in os.scandir(entry or ".") if item.name.endswith((".dist-info", ".egg-info"))]
        except OSError:
            continue  # a zip file, a folder that does not exist
        for folder in folders:
            name, _, rest = folder.name.rpartition(".")[0].partition("-")
            version = rest.split("-")[0] or _metadata_version(folder.path)  # "name.egg-info" has none
            if name and version:
                found.setdefault(_key(name), version)
    return found


def _metadata_version(path: str) -> str | None:
    try:
        return importlib.metadata.Distribution.at(path).version
    except Exception:  # a broken install: listed without it rather than failing the list
        return None


def software_tags(packages: dict[str, str]) -> dict[str, str]:
    by_key = {_key(name): version for name, version in packages.items()}
    tags = {
        env_tag("python"): platform.python_version(),
        env_tag("python_implementation"): platform.python_implementation(),
    }
    for fact, names in _VERSIONS.items():
        version = next((by_key[name] for name in names if name in by_key), None)
        if version:
            tags[env_tag(fact)] = version
    torch = sys.modules.get("torch")  # imported by Lightning already; never imported here
    if torch is not None:
        tags[env_tag("torch")] = str(torch.__version__)
        if torch.version.cuda:
            tags[env_tag("cuda")] = str(torch.version.cuda)
        if torch.backends.cudnn.is_available():
            tags[env_tag("cudnn")] = str(torch.backends.cudnn.version())
    return tags


# ---- the machine ------------------------------------------------------------------------------------


def machine_tags() -> dict[str, str]:
    tags = {env_tag("host"): socket.gethostname(), env_tag("platform"): platform.platform()}
    count = os.cpu_count()
    if count:
        tags[env_tag("cpu_count")] = str(count)
    if hasattr(os, "sched_getaffinity"):  # what a SLURM job or a container may use, fewer than the machine has
        tags[env_tag("cpus_available")] = str(len(os.sched_getaffinity(0)))
    model = _cpu_model()
    if model:
        tags[env_tag("cpu_model")] = model
    memory = _memory_mib()
    if memory:
        tags[env_tag("memory_mib")] = memory
    with contextlib.suppress(OSError, KeyError, AttributeError):  # not Linux, or no os-release: see platform
        tags[env_tag("os")] = platform.freedesktop_os_release()["PRETTY_NAME"]
    return tags


def _proc_field(path: str, name: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as lines:
            for line in lines:
                key, _, value = line.partition(":")
                if key.strip() == name:
                    return value.strip()
    except OSError:
        pass
    return None


def _cpu_model() -> str | None:
    if sys.platform.startswith("linux"):
        # platform.processor() runs `uname -p` on Linux, which says "x86_64" or "unknown".
        return _proc_field("/proc/cpuinfo", "model name") or platform.machine() or None
    return platform.processor() or platform.machine() or None


def _memory_mib() -> str | None:
    total = _proc_field("/proc/meminfo", "MemTotal")  # "65843068 kB"
    if total and total.endswith("kB"):
        return str(int(total[:-2]) // 1024)
    return None


# ---- GPUs -------------------------------------------------------------------------------------------


def gpu_tags() -> dict[str, str]:
    """The GPUs this process may use: from ``nvidia-smi`` (which comes with the driver), else from torch when
    CUDA is already initialized (never initialized here: that would take GPU memory and break a later fork)."""
    gpus = visible_gpus(_nvidia_smi(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    if gpus is not None:
        tags = {env_tag("gpu_count"): str(len(gpus))}
        if gpus:
            tags[env_tag("nvidia_driver")] = gpus[0].driver
            tags[env_tag("gpu_names")] = ", ".join(dict.fromkeys(gpu.name for gpu in gpus))
            tags[env_tag("gpu_memory_mib")] = ", ".join(dict.fromkeys(gpu.memory_mib for gpu in gpus))
        return tags
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    if torch.version.cuda is None and getattr(torch.version, "hip", None) is None:
        return {env_tag("gpu_count"): "0"}  # a CPU-only torch uses no GPU, whatever the machine has
    if not torch.cuda.is_initialized():
        return {}
    properties = [torch.cuda.get_device_properties(i) for i in range(torch.cuda.device_count())]
    tags = {env_tag("gpu_count"): str(len(properties))}
    if properties:
        tags[env_tag("gpu_names")] = ", ".join(dict.fromkeys(p.name for p in properties))
        tags[env_tag("gpu_memory_mib")] = ", ".join(dict.fromkeys(str(p.total_memory // 2**20) for p in properties))
    return tags


def _nvidia_smi() -> list[Gpu] | None:
    """Every GPU of the node, or None without ``nvidia-smi`` (or when it fails: no driver loaded)."""
    command = shutil.which("nvidia-smi")
    if command is None:
        return None
    query = "--query-gpu=index,uuid,name,memory.total,driver_version"
    try:
        done = subprocess.run(
            [command, query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=_NVIDIA_SMI_TIMEOUT_S,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(done.stdout)


def parse_nvidia_smi(text: str) -> list[Gpu]:
    """``nvidia-smi --query-gpu=index,uuid,name,memory.total,driver_version --format=csv,noheader,nounits``."""
    gpus = []
    for line in text.splitlines():
        fields = [part.strip() for part in line.split(",")]
        if len(fields) == 5:
            gpus.append(Gpu(*fields))
    return gpus


def visible_gpus(gpus: list[Gpu] | None, cuda_visible_devices: str | None) -> list[Gpu] | None:
    """The GPUs of ``gpus`` a process sees under ``CUDA_VISIBLE_DEVICES`` (indices, or GPU UUIDs and their
    prefixes), in its order; as CUDA does, the list stops at the first entry that names no GPU (``-1``: none).
    An entry of another form (a MIG instance) cannot be matched with ``nvidia-smi``'s GPUs: all are returned."""
    if gpus is None or cuda_visible_devices is None:
        return gpus
    visible: list[Gpu] = []
    for entry in (part.strip() for part in cuda_visible_devices.split(",")):
        if entry.lstrip("-").isdigit():
            match = next((gpu for gpu in gpus if gpu.index == entry), None)
        elif entry.startswith("GPU-"):
            match = next((gpu for gpu in gpus if gpu.uuid.startswith(entry)), None)
        elif entry:
            return gpus
        else:
            match = None
        if match is None:
            break
        visible.append(match)
    return visible


# ---- container, variables, lock files ---------------------------------------------------------------


def container_tags() -> dict[str, str]:
    """The container runtime the process runs in, as far as it shows, and the image when a runtime names it."""
    kind = None
    image = next((os.environ[name] for name in _IMAGE_VARIABLES if os.environ.get(name)), None)
    if os.environ.get("APPTAINER_CONTAINER"):
        kind = "apptainer"
    elif os.environ.get("SINGULARITY_CONTAINER"):
        kind = "singularity"
    elif os.path.exists("/run/.containerenv"):
        kind = "podman"
        image = image or _containerenv_image()
    elif os.path.exists("/.dockerenv"):
        kind = "docker"
    elif "KUBERNETES_SERVICE_HOST" in os.environ:  # only the name is looked at
        kind = "kubernetes"
    tags = {}
    if kind:
        tags[env_tag("container")] = kind
    if image:
        tags[env_tag("container_image")] = strip_url_credentials(image)
    return tags


def _containerenv_image() -> str | None:
    """``image="..."`` of podman's ``/run/.containerenv`` (filled in for privileged containers only)."""
    try:
        with open("/run/.containerenv", encoding="utf-8", errors="replace") as lines:
            for line in lines:
                key, _, value = line.partition("=")
                if key.strip() == "image":
                    return value.strip().strip('"') or None
    except OSError:
        pass
    return None


def variable_tags(variables: Sequence[str], redactor: Redactor) -> dict[str, str]:
    """The allow-listed variables that are set, by name; a secret-looking name is skipped here too."""
    tags = {}
    for name in variables:
        value = os.environ.get(name)
        if value is not None and not redactor.is_secret(name):
            tags[env_variable_tag(name)] = strip_url_credentials(value)
    return tags


def lock_file_tags() -> dict[str, str]:
    """``lockfile.<name>.sha256`` for each lock file of `LOCK_FILES` in the working directory, else in the git
    repository roots (the working directory's, the code's); the first file of a name found is the one hashed."""
    folders = dict.fromkeys(
        os.path.realpath(folder) for folder in (os.getcwd(), repo_root(os.getcwd()), repo_root(source_dir())) if folder
    )
    tags: dict[str, str] = {}
    for folder in folders:
        for path in _lock_files(Path(folder)):
            tag = lockfile_tag(path.name)
            if tag not in tags and is_valid_name(tag) and len(tags) < _MAX_LOCK_FILES:
                digest = _sha256(path)
                if digest:
                    tags[tag] = digest
    return tags


def _lock_files(folder: Path) -> list[Path]:
    try:
        names = sorted(entry.name for entry in os.scandir(folder) if entry.is_file())
    except OSError:
        return []
    found = [folder / name for name in names if any(fnmatch.fnmatchcase(name, p) for p in LOCK_FILES)]
    return [path for path in found if path.stat().st_size <= _MAX_LOCK_FILE_BYTES]


def _sha256(path: Path) -> str | None:
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as data:
            for block in iter(lambda: data.read(1 << 20), b""):
                digest.update(block)
    except OSError:
        return None  # unreadable: no hash rather than a wrong one
    return digest.hexdigest()
