"""The user's cache, `$XDG_CACHE_HOME/onegen` (`~/.cache/onegen`): the base model converted from
its GGUF, DeepSpeed's compiled ops, registry versions downloaded for serving.

Every entry is built once, by one process, and published whole. Several processes may want the
same entry at the same moment (two Ray Train workers on a fresh machine, say): `build_once` lets
the first build it under a file lock while the others wait, and marks the entry complete only
after it has been moved into place. An entry without the mark (a run killed mid-build, a layout
from an older version) is rebuilt instead of being read half-written.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock

COMPLETE = ".onegen-complete"  # written last, inside the entry: its presence means "whole"


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "onegen"


def is_complete(entry: Path) -> bool:
    return (entry / COMPLETE).is_file()


def build_once(entry: Path, build: Callable[[Path], Path | None]) -> Path:
    """`entry`, built if it is not complete: `build(tmp)` fills a fresh directory beside it (or
    returns the directory inside `tmp` to publish), which then replaces whatever was at `entry`."""
    if is_complete(entry):
        return entry
    entry.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(entry.with_name(f".{entry.name}.lock")):
        if is_complete(entry):  # another process built it while this one waited
            return entry
        tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".{entry.name}-"))
        try:
            built = build(tmp) or tmp
            (built / COMPLETE).write_text(json.dumps({"built": time.time(), "pid": os.getpid()}) + "\n")
            if entry.exists():  # half-built or stale: nothing else reads it while the lock is held
                shutil.rmtree(entry)
            os.replace(built, entry)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return entry
