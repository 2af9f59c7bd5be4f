"""Where results and checkpoints live: a local folder or a URI (``file://``, ``s3://``, ``gs://``).

``Location`` is a small path object over a ``pyarrow.fs`` filesystem (the filesystems Ray Train and
Tune use for their own ``storage_path``), so the grid, its results store and the report run one
code path whatever the storage is; a ``file://`` URI exercises it on a laptop. Only what the
results store needs is here: join, list, read, write, delete, copy a folder up or down.

Publishing a file never shows a half-written one: on a local filesystem it is written to a
temporary file and renamed; on an object store (S3, GCS) an object becomes visible only once its
upload completes, so it is written in one put.

Datasets are not storage: on a cluster they are read from a path every node sees (a shared
filesystem or the same file mount on every node).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from covidct_bench.errors import BenchError, reason

_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
CACHE_ENV = "COVIDCT_BENCH_CACHE"


def is_uri(where) -> bool:
    return isinstance(where, str) and bool(_URI.match(where))


def cache_dir() -> Path:
    """Local copies of remote files (e.g. a CSSL backbone read by every worker of a node)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "covidct-bench").expanduser()


def check_job_results(results, in_job: bool | None = None) -> None:
    """Inside a Ray job (``in_job``; default: detected) the working directory is a temporary copy on
    the head node: results written relative to it would be lost with the job's session."""
    if is_uri(str(results)) or Path(results).is_absolute():
        return
    if in_job is None:
        in_job = bool(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR")) or "runtime_resources/working_dir_files" in os.getcwd()
    if in_job:
        raise BenchError(f"--results {results}: the job runs in a temporary copy of the working directory on the head "
                         "node, so relative results would be lost; pass a storage URI (s3://BUCKET/results) or an "
                         "absolute path every node sees")


class Location:
    """A file or folder: a pyarrow filesystem + a path in it (+ the URI scheme it came from)."""

    __slots__ = ("fs", "path", "scheme")

    def __init__(self, fs, path: str, scheme: str = ""):
        self.fs, self.path, self.scheme = fs, path.rstrip("/") or "/", scheme

    @classmethod
    def of(cls, where: "str | os.PathLike | Location") -> "Location":
        if isinstance(where, Location):
            return where
        import pyarrow.fs as pafs

        text = os.fspath(where)
        if is_uri(text):
            try:
                fs, path = pafs.FileSystem.from_uri(text)
            except Exception as e:  # ArrowInvalid (unknown scheme), ArrowNotImplementedError, OSError (credentials)
                raise BenchError(f"{text}: not a storage URI pyarrow can open ({reason(e)})") from None
            return cls(fs, path, text.split("://", 1)[0].lower())
        return cls(pafs.LocalFileSystem(), str(Path(text).expanduser().resolve()))

    # -- names
    @property
    def uri(self) -> str:
        """What to print or store: the plain path of a local folder, else ``scheme://path``."""
        return f"{self.scheme}://{self.path}" if self.scheme else self.path

    def __str__(self) -> str:
        return self.uri

    def __repr__(self) -> str:
        return f"Location({self.uri!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Location) and other.uri == self.uri

    def __hash__(self) -> int:
        return hash(self.uri)

    def __lt__(self, other: "Location") -> bool:
        return self.uri < other.uri

    def __truediv__(self, part: str) -> "Location":
        return Location(self.fs, f"{self.path}/{str(part).strip('/')}", self.scheme)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    @property
    def stem(self) -> str:
        return Path(self.name).stem

    @property
    def parent(self) -> "Location":
        return Location(self.fs, self.path.rsplit("/", 1)[0] or "/", self.scheme)

    @property
    def is_local(self) -> bool:
        import pyarrow.fs as pafs

        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def local(self) -> Path:
        """The local path (a local folder or a ``file://`` URI); an error for object stores."""
        if not self.is_local:
            raise BenchError(f"{self.uri}: not on a local filesystem")
        return Path(self.path)

    def for_ray(self) -> tuple[str, object | None]:
        """``(storage_path, storage_filesystem)`` for a Ray Train / Tune ``RunConfig``."""
        return (self.path, None) if not self.scheme else (self.path, self.fs)

    # -- queries
    def _info(self):
        return self.fs.get_file_info(self.path)

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.File

    def is_dir(self) -> bool:
        import pyarrow.fs as pafs

        return self._info().type == pafs.FileType.Directory

    def iterdir(self) -> list["Location"]:
        import pyarrow.fs as pafs

        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        return sorted((Location(self.fs, i.path, self.scheme) for i in infos), key=lambda loc: loc.path)

    def glob(self, pattern: str) -> list["Location"]:
        """Entries of this folder whose name matches ``pattern`` (not recursive)."""
        return [c for c in self.iterdir() if fnmatch.fnmatchcase(c.name, pattern)]

    def stamp(self) -> str:
        """Size + modification time: changes when the file is replaced."""
        info = self._info()
        return f"{info.size}:{info.mtime_ns}"

    # -- reading
    def read_bytes(self) -> bytes:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return f.read()
        except FileNotFoundError:
            raise FileNotFoundError(self.uri) from None

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.read_bytes().decode(encoding)

    def read_parquet(self):
        import pandas as pd

        return pd.read_parquet(self.path, filesystem=self.fs)

    def local_copy(self) -> Path:
        """A local file with this file's content: the file itself when local, else a cached download
        (keyed by URI, size and modification time, so a replaced file is fetched again)."""
        if self.is_local:
            return self.local
        key = hashlib.sha256(f"{self.uri}\0{self.stamp()}".encode()).hexdigest()[:20]
        dest = cache_dir() / "storage" / key / self.name
        if not dest.is_file():
            from covidct_bench.io import atomic_path

            with atomic_path(dest) as tmp:
                tmp.write_bytes(self.read_bytes())
        return dest

    def download(self, dest: str | os.PathLike, keep=None) -> Path:
        """Copy this folder's files under ``dest`` (``keep(relative_path)``: which ones)."""
        import pyarrow.fs as pafs

        dest = Path(dest)
        for info in self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True, allow_not_found=True)):
            rel = info.path[len(self.path):].lstrip("/")
            if info.type != pafs.FileType.File or (keep is not None and not keep(rel)):
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(Location(self.fs, info.path, self.scheme).read_bytes())
        return dest

    # -- writing
    def mkdir(self) -> None:
        self.fs.create_dir(self.path, recursive=True)

    @contextlib.contextmanager
    def writing(self) -> Iterator[Path]:
        """Yield a local temporary file; on success it becomes this file whole (else it is dropped)."""
        from covidct_bench.io import atomic_path

        if self.is_local:
            with atomic_path(self.path) as tmp:
                yield tmp
            return
        with tempfile.TemporaryDirectory(prefix="covidct-upload-") as d:
            tmp = Path(d) / self.name
            yield tmp
            data = tmp.read_bytes()
            with self.fs.open_output_stream(self.path) as out:  # one put: the object appears whole
                out.write(data)

    def write_bytes(self, data: bytes) -> None:
        with self.writing() as tmp:
            tmp.write_bytes(data)

    def write_text(self, text: str, encoding: str = "utf-8") -> None:
        self.write_bytes(text.encode(encoding))

    def upload(self, local_dir: str | os.PathLike) -> None:
        """Copy the files of a local folder into this folder (each file published whole)."""
        local_dir = Path(local_dir)
        for f in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            (self / f.relative_to(local_dir).as_posix()).write_bytes(f.read_bytes())

    def unlink(self, missing_ok: bool = True) -> None:
        try:
            self.fs.delete_file(self.path)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def rmtree(self) -> None:
        if self.is_local:
            shutil.rmtree(self.path, ignore_errors=True)
        elif self.is_dir():
            self.fs.delete_dir(self.path)
