"""Sizes and content hashes of a file or folder on disk, computed the way git and DVC compute them.

So dirty or untracked data gets the hash it would get once committed or ``dvc add``-ed.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = ["dvc_md5", "git_object_sha", "iter_files", "nearest_dir", "size_and_count"]

_CHUNK = 1 << 20


def nearest_dir(path: Path) -> Path:
    """The nearest existing folder holding ``path`` (``path`` itself if it is a real folder).

    A symlinked folder counts as an entry of its parent, so it is looked up from there.
    """
    probe = path if path.is_dir() and not path.is_symlink() else path.parent
    while not probe.is_dir() and probe != probe.parent:
        probe = probe.parent
    return probe


def iter_files(path: Path) -> Iterator[tuple[str, Path]]:
    """(posix path relative to ``path``, file) for every file under ``path``; a file yields itself as ``""``.

    Sorted, symlinks to files included, ``.git`` folders skipped, symlinked folders not followed.
    """
    if not path.is_dir():
        yield "", path
        return
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = sorted(name for name in dirnames if name != ".git")
        base = Path(dirpath)
        for name in sorted(filenames):
            file = base / name
            yield file.relative_to(path).as_posix(), file


def size_and_count(path: Path) -> tuple[int, int]:
    """Total bytes and number of files under ``path`` (1 for a file)."""
    size = count = 0
    for _, file in iter_files(path):
        try:
            size += file.stat().st_size
        except FileNotFoundError:  # a dangling symlink holds no data
            continue
        count += 1
    return size, count


def _file_hash(file: Path, hasher: hashlib._Hash, header: bytes = b"") -> str:
    hasher.update(header)
    with file.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            hasher.update(chunk)
    return hasher.hexdigest()


def dvc_md5(path: Path) -> str:
    """The md5 DVC 3 records for ``path``: of the bytes for a file, ``<md5>.dir`` for a folder.

    A folder's hash is the md5 of DVC's sorted JSON listing of ``{"md5", "relpath"}`` entries.
    """
    if not path.is_dir():
        return _file_hash(path, hashlib.md5(usedforsecurity=False))
    entries = [
        {"md5": _file_hash(file, hashlib.md5(usedforsecurity=False)), "relpath": rel}
        for rel, file in iter_files(path)
        if file.exists()
    ]
    listing = json.dumps(sorted(entries, key=lambda entry: entry["relpath"]), sort_keys=True)
    return hashlib.md5(listing.encode("utf-8"), usedforsecurity=False).hexdigest() + ".dir"


def git_object_sha(path: Path, algorithm: str = "sha1") -> str:
    """The git object id ``path`` would have once committed: a blob for a file, a tree for a folder.

    Follows git's object format (modes 100644/100755/120000/40000, empty folders left out). Clean and
    smudge filters (line endings, LFS) are not applied, so such files hash as their bytes on disk.
    """
    if path.is_symlink() or not path.is_dir():
        return _blob_sha(path, algorithm).hex()
    tree = _tree_sha(path, algorithm)
    # An empty folder has no git object; the empty tree's id is the one answer that cannot collide.
    return (tree or hashlib.new(algorithm, b"tree 0\0").digest()).hex()


def _blob_sha(file: Path, algorithm: str) -> bytes:
    if file.is_symlink():
        target = os.fsencode(os.readlink(file))
        return hashlib.new(algorithm, b"blob %d\0" % len(target) + target).digest()
    header = b"blob %d\0" % file.stat().st_size
    return bytes.fromhex(_file_hash(file, hashlib.new(algorithm), header))


def _tree_sha(folder: Path, algorithm: str) -> bytes | None:
    entries: list[tuple[bytes, bytes]] = []  # (sort key, entry bytes)
    for child in os.scandir(folder):
        name = os.fsencode(child.name)
        path = Path(child.path)
        if child.is_symlink():
            mode, sha = b"120000", _blob_sha(path, algorithm)
        elif child.is_dir():
            if child.name == ".git":
                continue
            sub = _tree_sha(path, algorithm)
            if sub is None:
                continue
            # git orders a folder as if its name ended with "/".
            entries.append((name + b"/", b"40000 " + name + b"\0" + sub))
            continue
        else:
            executable = child.stat().st_mode & stat.S_IXUSR
            mode, sha = (b"100755" if executable else b"100644"), _blob_sha(path, algorithm)
        entries.append((name, mode + b" " + name + b"\0" + sha))
    if not entries:
        return None
    body = b"".join(entry for _, entry in sorted(entries))
    return hashlib.new(algorithm, b"tree %d\0" % len(body) + body).digest()
