"""Getting upstream files: one code path for https://, file:// and local folders.

A local folder is turned into a ``file://`` URL, so ``--source ../shared/data/covid-ct`` runs the
very code that downloads from GitHub.
"""

from __future__ import annotations

import re
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path, PurePosixPath

from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn,
                           TimeRemainingColumn)

from covidct_bench.errors import BenchError

CHUNK = 1 << 20


class AmountColumn(ProgressColumn):
    """Bytes for tasks added with ``unit="bytes"``, ``done/total`` for everything else."""

    def __init__(self):
        super().__init__()
        self._bytes, self._count = DownloadColumn(), MofNCompleteColumn()

    def render(self, task):
        return (self._bytes if task.fields.get("unit") == "bytes" else self._count).render(task)


def make_progress(**kw) -> Progress:
    """The progress display shared by fetch, extract, verify, synth and cache steps."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), AmountColumn(), TimeRemainingColumn(), **kw)


class Source:
    """Where a dataset's files come from: a URL prefix (http[s]:// or file://) or a local folder."""

    def __init__(self, spec: str | None, default: str):
        spec = spec or default
        self.display = spec
        if re.match(r"^(https?|file)://", spec):
            self.base = spec.rstrip("/") + "/"
        else:
            path = Path(spec).expanduser()
            if not path.is_dir():
                raise BenchError(f"--source {spec}: no such directory (give a folder in the upstream layout, a file:// or an https:// URL)")
            self.base = path.resolve().as_uri() + "/"

    def url(self, rel: str) -> str:
        return self.base + urllib.parse.quote(rel)

    def download(self, rel: str, dest: Path, progress: Progress | None = None, required: bool = True) -> bool:
        """Copy ``rel`` to ``dest``; False if it is optional and absent, a one-line error if required."""
        url = self.url(rel)
        try:
            resp = urllib.request.urlopen(url, timeout=60)
        except urllib.error.HTTPError as e:
            if e.code == 404 and not required:
                return False
            if e.code == 404:
                raise BenchError(f"source {self.display} has no {rel} (HTTP 404); expected the upstream layout") from None
            raise BenchError(f"{url}: HTTP {e.code} {e.reason}") from None
        except urllib.error.URLError as e:
            if isinstance(e.reason, (FileNotFoundError, NotADirectoryError)):
                if not required:
                    return False
                raise BenchError(f"source {self.display} has no {rel}; expected the upstream layout") from None
            raise BenchError(f"{url}: cannot download ({e.reason})") from None
        dest.parent.mkdir(parents=True, exist_ok=True)
        total = int(resp.headers.get("Content-Length") or 0) or None
        task = progress.add_task(f"fetch {rel}", total=total, unit="bytes") if progress else None
        with resp, open(dest, "wb") as out:
            while block := resp.read(CHUNK):
                out.write(block)
                if progress:
                    progress.advance(task, len(block))
        if total is not None and dest.stat().st_size != total:
            raise BenchError(f"{url}: download truncated ({dest.stat().st_size} of {total} bytes)")
        return True


def _unsafe(name: str) -> bool:
    norm = name.replace("\\", "/")
    return (norm.startswith("/") or bool(re.match(r"^[A-Za-z]:", norm))
            or ".." in PurePosixPath(norm).parts)


def safe_extract(zip_path: Path, dest: Path, label: str, progress: Progress | None = None) -> list[str]:
    """Extract a zip, refusing absolute paths, ``..`` entries and links; return the member files.

    Every entry is checked before anything is written; CRCs are checked while extracting.
    """
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError) as e:
        raise BenchError(f"{label}: not a valid zip file ({e})") from None
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir() and not i.filename.startswith("__MACOSX/")]
        for info in infos:
            if _unsafe(info.filename):
                raise BenchError(f"{label}: entry {info.filename!r} points outside the extraction folder; refusing to extract")
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise BenchError(f"{label}: entry {info.filename!r} is a symbolic link; refusing to extract")
        task = progress.add_task(f"extract {zip_path.name}", total=sum(i.file_size for i in infos), unit="bytes") if progress else None
        names = []
        for info in infos:
            target = dest / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, CHUNK)
            except (zipfile.BadZipFile, EOFError, OSError) as e:
                raise BenchError(f"{label}: entry {info.filename!r} is corrupt ({e})") from None
            names.append(info.filename)
            if progress:
                progress.advance(task, info.file_size)
    return names
