"""Dagster's local compute logs, mirrored to the terminal by a thread (``compute_logs`` in dagster.yaml).

While a run captures its steps' stdout and stderr into files (which the UI shows), Dagster's
:class:`LocalComputeLogManager` mirrors them back to the terminal with a ``tail -F`` process per stream, each
watched by a Python process of its own that kills the tail should the run's process die. A captured run so
starts four processes, two of them Python interpreters, and waits for them to end: on this 2-core machine
30-40 ms of a 3.8 s incremental run of the 1M-record bench (medians of five runs with capture off and on, and
of six alternating runs with this class and Dagster's), the interpreters starting up on the core the run's
DuckDB statements use.

This subclass mirrors each file with a thread instead: the same files under the same base folder (so the UI
reads them as before, through this class), the same redirection of the process's file descriptors (output
of C libraries is captured too), and nothing left to orphan when the process dies. Removing the
``compute_logs`` block from dagster.yaml returns to Dagster's class.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Generator, Sequence
from contextlib import contextmanager
from typing import IO, Any

from dagster._core.execution.compute_logs import redirect_to_file
from dagster._core.storage.compute_log_manager import CapturedLogContext, ComputeIOType
from dagster._core.storage.local_compute_log_manager import IO_TYPE_EXTENSION, LocalComputeLogManager
from dagster._serdes import ConfigurableClassData
from dagster._utils import ensure_file, touch_file

#: How often a mirror looks for new output while the run writes.
POLL_SECONDS = 0.1
#: Bytes read at a time.
_CHUNK = 1 << 16


def _fileno(stream: IO[Any]) -> int | None:
    try:
        return stream.fileno()
    except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation is an OSError and a ValueError
        return None  # a test runner's stand-in stream: Dagster neither redirects nor mirrors it either


def _write_all(fd: int, data: bytes) -> bool:
    view = memoryview(data)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError:
        return False
    return True


@contextmanager
def mirrored_to_file(stream: IO[Any], path: str) -> Generator[None, None, None]:
    """Write what the process writes to ``stream``'s file descriptor into ``path`` (appending), and copy it
    from there to where ``stream`` went before, as it arrives. Everything written inside the block reaches
    both before the block ends."""
    ensure_file(path)
    fd = _fileno(stream)
    if fd is None:
        yield
        return
    terminal = os.dup(fd)  # where the stream goes now: the mirror writes there
    done = threading.Event()
    with open(path, "rb") as captured:
        captured.seek(0, os.SEEK_END)  # what an earlier capture left in the file was mirrored then

        def pump() -> None:
            while True:
                finishing = done.is_set()  # read after the flag: the last pass sees everything written
                chunk = captured.read(_CHUNK)
                if chunk:
                    if not _write_all(terminal, chunk):
                        return  # the terminal went away (a closed pipe): the file still gets everything
                elif finishing:
                    return
                else:
                    done.wait(POLL_SECONDS)

        mirror = threading.Thread(target=pump, name=f"compute-log-mirror-{fd}", daemon=True)
        mirror.start()
        try:
            with redirect_to_file(stream, path):
                yield
        finally:
            done.set()
            mirror.join()
            os.close(terminal)


class ThreadMirroredComputeLogManager(LocalComputeLogManager):
    """:class:`LocalComputeLogManager` whose captures are mirrored by threads (:func:`mirrored_to_file`)
    instead of ``tail`` and watcher processes. ``base_dir`` defaults to Dagster's, ``$DAGSTER_HOME/storage``."""

    def __init__(
        self,
        base_dir: str | None = None,
        polling_timeout: float | None = None,
        inst_data: ConfigurableClassData | None = None,
    ):
        base_dir = base_dir or os.path.join(os.environ.get("DAGSTER_HOME") or os.getcwd(), "storage")
        super().__init__(base_dir, polling_timeout=polling_timeout, inst_data=inst_data)

    @classmethod
    def config_type(cls) -> Any:
        from dagster import Field, Float, StringSource

        return {
            "base_dir": Field(StringSource, is_required=False),
            "polling_timeout": Field(Float, is_required=False),
        }

    @classmethod
    def from_config_value(
        cls, inst_data: ConfigurableClassData | None, config_value: Any
    ) -> ThreadMirroredComputeLogManager:
        return cls(inst_data=inst_data, **config_value)

    @contextmanager
    def capture_logs(self, log_key: Sequence[str]) -> Generator[CapturedLogContext, None, None]:
        outpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDOUT])
        errpath = self.get_captured_local_path(log_key, IO_TYPE_EXTENSION[ComputeIOType.STDERR])
        with mirrored_to_file(sys.stdout, outpath), mirrored_to_file(sys.stderr, errpath):
            yield CapturedLogContext(log_key)
        touch_file(self.complete_artifact_path(log_key))  # as Dagster's: the capture is complete
