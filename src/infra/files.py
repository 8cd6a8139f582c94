"""Small file helpers shared by the stages: atomic writes, an inter-process lock, Markdown tables.

Every file the project keeps is written through `write_atomic` (or its text, bytes and figure forms):

1. the content is written into a fresh temp folder `.tmp-<random>/` (mode 700) beside the target, under
   the target's own name (Keras, matplotlib and NumPy pick the format from the suffix; `.weights.h5` has
   two), so two writers of one file never share a temp file;
2. the file is flushed and fsynced: its bytes are on disk before its name is;
3. `os.replace` renames it over the target (atomic on POSIX: a reader sees the old file or the new one);
4. the target's folder is fsynced, so the rename itself survives a power loss.

After a crash the target is either its old content or its new content, never a mix. A kill in the
middle of step 1 can leave a `.tmp-*` folder behind: nothing reads it, and it can be deleted.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

TEMP_PREFIX = ".tmp-"  # resume.carry_outputs skips these


def write_atomic(path: Path, write: Callable[[Path], Any], mode: int | None = None) -> bool:
    """Call `write(temp)`, then make what it wrote `path`, atomically and durably (module docstring).

    `temp` does not exist yet and ends with `path`'s name, suffixes included. If `write` creates no file
    (Keras' ModelCheckpoint when the monitored value did not improve), `path` is left as it was and False
    is returned. If `write` raises, the temp file is deleted and `path` is untouched. `mode` (e.g. 0o600
    for a file that holds a secret) is set before the file gets its final name; by default a new file
    gets the umask's permissions and a replaced one keeps its own.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp_dir = Path(tempfile.mkdtemp(prefix=TEMP_PREFIX, dir=path.parent))  # mode 700: private until renamed
    temp = temp_dir / path.name
    try:
        write(temp)
        if not temp.exists():
            return False
        if mode is None and path.exists():
            mode = path.stat().st_mode & 0o7777
        if mode is not None:
            os.chmod(temp, mode)
        _fsync(temp)
        os.replace(temp, path)
        _fsync(path.parent)
        return True
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)


def write_bytes_atomic(path: Path, content: bytes, mode: int | None = None) -> None:
    """`path` holds `content` in full or keeps its old content, even across a crash or a power loss."""

    def write(temp: Path) -> None:
        # O_EXCL: the file is created here with `mode` already set, before any byte of a secret is in it
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
        with os.fdopen(os.open(temp, flags, 0o600 if mode is not None else 0o666), "wb") as stream:
            stream.write(content)

    write_atomic(path, write, mode)


def write_text_atomic(path: Path, text: str, mode: int | None = None) -> None:
    """`write_bytes_atomic` for text (UTF-8)."""
    write_bytes_atomic(path, text.encode(), mode)


def save_figure_atomic(figure: Any, path: Path, dpi: int = 120) -> None:
    """A matplotlib figure to `path` (format from its suffix), atomically."""
    write_atomic(path, lambda temp: figure.savefig(temp, dpi=dpi))


def _fsync(path: Path) -> None:
    """Flush a file's or a folder's entry to disk (a folder's fsync makes a rename in it durable)."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def exclusive_lock(lock_path: Path, holder: str = "", on_wait: Callable[[str], None] | None = None) -> Iterator[None]:
    """Hold an exclusive lock between processes on `lock_path` (created, and left in place, beside what it
    guards). If another process holds it, `on_wait` is called once with that holder's `holder` text, then
    this one waits for it.

    An OS lock (flock, via filelock): the kernel releases it when its process ends, however it ends, so
    a SIGKILLed holder never blocks the next process. The lock file itself is never deleted (a process
    waiting on a deleted file would hold a lock nobody else sees) and never written: it is filelock's.
    The holder's text goes to `<lock>.holder`, written atomically, so a waiter never reads half of it.
    """
    from filelock import FileLock, Timeout

    lock_path.parent.mkdir(parents=True, exist_ok=True)
    holder_path = lock_path.with_name(f"{lock_path.name}.holder")
    lock = FileLock(lock_path, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        if on_wait is not None:
            on_wait(_read_holder(holder_path))
        lock.acquire()
    try:
        if holder:  # a SIGKILLed holder's text may still be there: replace it
            write_text_atomic(holder_path, holder)
        yield
    finally:
        if holder:
            holder_path.unlink(missing_ok=True)  # the next waiter must not name a holder that has gone
        lock.release()


def _read_holder(holder_path: Path) -> str:
    try:
        return holder_path.read_text(errors="replace").strip()
    except OSError:  # none yet, or its holder has just released the lock
        return ""


def markdown_table(header: Sequence[Any], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(str(cell) for cell in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def json_safe(value: Any) -> Any:
    """`value` with every non-finite float (a diverged run's NaN and infinite losses) as None, through dicts,
    lists and tuples: strict JSON that DVC, browsers and other readers accept."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(item) for item in value]
    return value


RECORD = "trial.json"  # a finished trial's record (the fair protocol's and the callback study's trial folders)


def read_record(folder: Path, config_hash: str | None = None) -> dict[str, Any] | None:
    """The finished trial recorded in `folder/trial.json` (of `config_hash`, when given), or None. Written once
    the trial's MLflow run ended FINISHED; a report stage reads it without importing any training code."""
    path = folder / RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return record if config_hash is None or record.get("config_hash") == config_hash else None
