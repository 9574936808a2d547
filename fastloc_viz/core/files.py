"""Writing files safely: atomic replacement and output locations checked before any work.

An interrupted run never leaves a half-written file in place of a good one: everything is
written to a temporary file beside the target, flushed to disk, then renamed over it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile

__all__ = ["JsonLines", "check_writable", "make_dir", "open_json_lines", "read_json_lines", "write_bytes_atomic", "write_text_atomic"]


def write_text_atomic(path: str | os.PathLike[str], text: str, *, what: str = "file") -> pathlib.Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; see :func:`write_bytes_atomic`."""
    return write_bytes_atomic(path, text.encode("utf-8"), what=what)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes, *, what: str = "file") -> pathlib.Path:
    """Write ``data`` to ``path`` atomically: a temporary file beside it, fsync, then a rename.

    Raises:
        FileNotFoundError: the directory does not exist.
        NotADirectoryError: a component of the directory is a file.
        IsADirectoryError: ``path`` is a directory.
        PermissionError: the directory is not writable.
        OSError: any other failure (disk full, ...), naming the path.
    """
    target = pathlib.Path(path).expanduser()
    parent = target.parent if str(target.parent) else pathlib.Path(".")
    if target.is_dir():
        raise IsADirectoryError(f"cannot write the {what} to {str(target)!r}: it is a directory; give a file name")
    for up in (parent, *parent.parents):
        if up.exists() and not up.is_dir():
            raise NotADirectoryError(
                f"cannot write the {what} to {str(target)!r}: {str(up)!r} is a file, not a directory"
            )
    if not parent.is_dir():
        raise FileNotFoundError(
            f"cannot write the {what} to {str(target)!r}: the directory {str(parent)!r} does not exist"
        )
    try:
        fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{target.name}.", suffix=".tmp")
    except PermissionError as err:
        raise PermissionError(
            f"cannot write the {what} to {str(target)!r}: the directory {str(parent)!r} is not writable"
        ) from err
    except OSError as err:
        raise OSError(f"cannot write the {what} to {str(target)!r}: {err.strerror or err}") from err
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        # mkstemp creates the file 0600; give it the usual umask-based mode.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, target)
    except BaseException as err:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, PermissionError):
            raise PermissionError(f"cannot write the {what} to {str(target)!r}: {err.strerror or err}") from err
        if isinstance(err, OSError):
            raise OSError(f"cannot write the {what} to {str(target)!r}: {err.strerror or err}") from err
        raise
    return target


def make_dir(path: str | os.PathLike[str], what: str = "the output directory") -> pathlib.Path:
    """Create a directory (and its parents), or say clearly why it cannot be."""
    path = pathlib.Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise NotADirectoryError(f"cannot create {what} {str(path)!r}: a file is in the way") from None
    except NotADirectoryError:
        raise NotADirectoryError(f"cannot create {what} {str(path)!r}: a part of the path is a file") from None
    except PermissionError:
        raise PermissionError(f"cannot create {what} {str(path)!r}: permission denied") from None
    except OSError as e:
        raise OSError(f"cannot create {what} {str(path)!r}: {e.strerror or e}") from None
    return path


def check_writable(out: str | os.PathLike[str], what: str = "the report") -> None:
    """Fail before any work when a file cannot be written to ``out``."""
    out = pathlib.Path(out)
    if out.is_dir():
        raise IsADirectoryError(f"cannot write {what} to {str(out)!r}: it is a directory; give a file name")
    make_dir(out.parent)
    if not os.access(out.parent, os.W_OK):
        raise PermissionError(f"cannot write {what} to {str(out)!r}: the directory is not writable")


def read_json_lines(directory: str | os.PathLike[str], pattern: str):
    """The JSON objects of every file in ``directory`` matching ``pattern``, line by line,
    skipping lines that do not parse (one cut by an interruption)."""
    for part in sorted(pathlib.Path(directory).glob(pattern)):
        with open(part) as f:
            for line in f:
                try:
                    d = json.loads(line)
                except ValueError:
                    continue
                if isinstance(d, dict):
                    yield d


def open_json_lines(path: str | os.PathLike[str]):
    """``path`` opened for appending JSON lines; a last line an interruption cut is ended
    first, so it spoils only itself."""
    f = open(path, "a+")  # noqa: SIM115 - the caller keeps it open across rows
    if f.tell() > 0:
        f.seek(f.tell() - 1)
        if f.read(1) != "\n":
            f.write("\n")
    return f


class JsonLines:
    """An append-only JSON-lines store for one configuration, for resumable runs.

    ``root/<key>/spec.json`` describes the configuration (``key``: a hash of ``spec``); rows
    go to ``root/<key>/<name>``, one JSON object per line, flushed at once, so an interrupted
    run loses at most the row in flight. :meth:`rows` reads every file matching ``pattern``
    (several writers, one file each) and skips lines that do not parse (a line cut by an
    interruption).
    """

    def __init__(self, root: str | os.PathLike[str], spec: dict, name: str = "rows.jsonl") -> None:
        text = json.dumps(spec, sort_keys=True, default=str)
        self.dir = pathlib.Path(root) / hashlib.sha1(text.encode()).hexdigest()[:16]
        self.dir.mkdir(parents=True, exist_ok=True)
        if not (self.dir / "spec.json").exists():
            write_text_atomic(self.dir / "spec.json", json.dumps(spec, indent=1, sort_keys=True, default=str),
                              what="cache spec")
        self.path = self.dir / name
        self._file = None

    def rows(self, pattern: str | None = None):
        """Every row written so far (of the files matching ``pattern``, default this one's)."""
        return read_json_lines(self.dir, pattern or self.path.name)

    def append(self, row: dict) -> None:
        if self._file is None:
            self._file = open_json_lines(self.path)
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
