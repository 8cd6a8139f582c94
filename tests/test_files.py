"""The one atomic write (src/infra/files.py): whole files only, no temp file left, concurrent writers safe."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from src.infra import files
from src.training.config import PROJECT_ROOT


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(files.TEMP_PREFIX))


def test_text_and_bytes_replace_the_file_and_leave_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "report.md"
    files.write_text_atomic(target, "first\n")
    files.write_bytes_atomic(target, b"second\n")
    assert target.read_bytes() == b"second\n"
    assert leftovers(target.parent) == []


def test_a_new_file_gets_the_umask_a_replaced_one_keeps_its_mode_a_secret_is_never_readable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    umask = os.umask(0o022)
    try:
        files.write_text_atomic(tmp_path / "new.txt", "x")
        assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o644
        (tmp_path / "new.txt").chmod(0o640)
        files.write_text_atomic(tmp_path / "new.txt", "y")
        assert (tmp_path / "new.txt").stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(umask)

    modes_when_opened: list[int] = []  # every byte of the secret goes through the descriptor opened here
    real_fdopen = os.fdopen

    def fdopen(descriptor: int, *args, **kwargs):
        modes_when_opened.append(os.fstat(descriptor).st_mode & 0o777)
        return real_fdopen(descriptor, *args, **kwargs)

    monkeypatch.setattr(os, "fdopen", fdopen)
    files.write_text_atomic(tmp_path / "auth.ini", "password = s3cret\n", mode=0o600)
    assert modes_when_opened == [0o600]
    assert (tmp_path / "auth.ini").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("name", ["arrays.npz", "epoch-00001.weights.h5", "best.keras", "curves.png"])
def test_a_writer_callable_gets_a_fresh_temp_path_with_the_targets_name(tmp_path: Path, name: str) -> None:
    """Keras, matplotlib and NumPy pick the format from the suffix (.weights.h5 has two)."""
    given: list[Path] = []

    def write(temp: Path) -> None:
        assert not temp.exists()
        given.append(temp)
        temp.write_bytes(b"content")

    assert files.write_atomic(tmp_path / name, write)
    [temp] = given
    assert temp.name == name and temp.parent.parent == tmp_path
    assert (tmp_path / name).read_bytes() == b"content" and leftovers(tmp_path) == []


def test_numpy_savez_writes_to_the_target_name_not_a_renamed_one(tmp_path: Path) -> None:
    target = tmp_path / "arrays.npz"  # np.savez appends .npz to a path that lacks it
    files.write_atomic(target, lambda temp: np.savez_compressed(temp, x=np.arange(3)))
    np.testing.assert_array_equal(np.load(target)["x"], np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["arrays.npz"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_a_writer_that_fails_half_way_leaves_the_old_file_and_no_temp(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / "best.keras"
    target.write_bytes(b"old")

    def crash(temp: Path) -> None:
        temp.write_bytes(b"half a fi")
        raise error

    with pytest.raises(type(error)):
        files.write_atomic(target, crash)
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_a_writer_that_writes_nothing_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "best.keras"
    target.write_bytes(b"old")
    assert files.write_atomic(target, lambda temp: None) is False
    assert target.read_bytes() == b"old" and leftovers(tmp_path) == []


def test_the_file_is_fsynced_before_the_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A power loss cannot be staged in a test; the order of the fsyncs around the rename is what makes
    # the write durable, so it is what is checked (os.fsync and os.replace are recorded, then run).
    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(descriptor: int) -> None:
        events.append(("fsync", os.readlink(f"/proc/self/fd/{descriptor}")))
        real_fsync(descriptor)

    def replace(source: str, target: str) -> None:
        events.append(("replace", str(target)))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    target = tmp_path / "metrics.json"
    files.write_text_atomic(target, "{}")
    kinds = [kind for kind, _ in events]
    assert kinds == ["fsync", "replace", "fsync"]
    assert events[0][1].endswith("/metrics.json") and events[0][1] != str(target)  # the temp file
    assert events[2][1] == str(tmp_path)  # the folder, after the rename


def _contents(writer: int) -> bytes:
    return bytes([65 + writer]) * 300_000  # large enough that a write takes several system calls


def _check_whole(target: Path, stop: threading.Event, seen: set[bytes], errors: list[str]) -> None:
    while not stop.is_set():
        try:
            content = target.read_bytes()
        except FileNotFoundError:
            continue
        if len(set(content)) != 1 or len(content) != 300_000:
            errors.append(f"partial or mixed file: {len(content)} bytes, {sorted(set(content))[:5]}")
        seen.add(content[:1])


def test_concurrent_threads_never_leave_a_partial_or_mixed_file(tmp_path: Path) -> None:
    target, stop, seen, errors = tmp_path / "shared.bin", threading.Event(), set(), []
    reader = threading.Thread(target=_check_whole, args=(target, stop, seen, errors))
    reader.start()

    def write_many(writer: int) -> None:
        try:
            for _ in range(25):
                files.write_bytes_atomic(target, _contents(writer))
        except Exception as error:  # an exception in a thread would not fail the test by itself
            errors.append(f"writer {writer}: {error!r}")

    writers = [threading.Thread(target=write_many, args=(writer,)) for writer in range(6)]
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    stop.set()
    reader.join()
    assert errors == []
    assert target.read_bytes() in {_contents(writer) for writer in range(6)}
    assert leftovers(tmp_path) == [] and len(seen) > 1


@pytest.mark.slow  # four real processes (cheap: no TensorFlow import)
def test_concurrent_processes_never_leave_a_partial_or_mixed_file(tmp_path: Path) -> None:
    target, stop, seen, errors = tmp_path / "shared.bin", threading.Event(), set(), []
    script = (
        "import sys; from pathlib import Path; from src.infra.files import write_bytes_atomic\n"
        "content = bytes([65 + int(sys.argv[1])]) * 300_000\n"
        "for _ in range(40): write_bytes_atomic(Path(sys.argv[2]), content)\n"
    )
    reader = threading.Thread(target=_check_whole, args=(target, stop, seen, errors))
    reader.start()
    environment = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    processes = [
        subprocess.Popen([sys.executable, "-c", script, str(writer), str(target)], env=environment)
        for writer in range(4)
    ]
    codes = [process.wait(timeout=120) for process in processes]
    stop.set()
    reader.join()
    assert codes == [0, 0, 0, 0]
    assert errors == []
    assert target.read_bytes() in {_contents(writer) for writer in range(4)}
    assert leftovers(tmp_path) == []


def test_the_lock_names_its_holder_beside_the_lock_file_and_forgets_it_on_release(tmp_path: Path) -> None:
    """filelock owns the lock file's content (its format may change): the holder's text lives beside it.
    A waiter in another process reading it is in tests/test_concurrency.py."""
    lock = tmp_path / "state" / "0123456789abcdef.lock"
    holder = lock.with_name("0123456789abcdef.lock.holder")
    holder.parent.mkdir()
    holder.write_text("pid 1 of a SIGKILLed job")  # left by a holder that could not clean up
    with files.exclusive_lock(lock, "pid 2 on host since now"):
        assert holder.read_text() == "pid 2 on host since now"
        assert leftovers(lock.parent) == []
    assert lock.exists() and not holder.exists()
    with files.exclusive_lock(lock):  # no holder text (the store's lock): no holder file either
        assert not holder.exists()
