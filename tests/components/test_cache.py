import multiprocessing
import time
from pathlib import Path

import pytest

from components.cache import COMPLETE, build_once, is_complete


def _slow_build(tmp: Path) -> None:
    (tmp / "weights").write_text("w")
    with open(tmp.parent / "builds.log", "a") as log:  # one line per build that ran
        log.write("built\n")
    time.sleep(0.5)  # long enough for the other process to arrive while this one holds the lock


def _want(entry: str, results) -> None:
    results.put((Path(build_once(Path(entry), _slow_build)) / "weights").read_text())


def _write(path: Path, text: str = "w") -> None:
    path.write_text(text)


def test_two_processes_build_an_entry_once_and_both_read_it_whole(tmp_path):
    entry = tmp_path / "model"
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    procs = [ctx.Process(target=_want, args=(str(entry), results)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [results.get(timeout=5) for _ in procs] == ["w", "w"]
    assert (tmp_path / "builds.log").read_text() == "built\n"
    assert is_complete(entry)


def test_a_half_built_entry_is_rebuilt(tmp_path):
    entry = tmp_path / "model"
    entry.mkdir()
    (entry / "tokenizer.json").write_text("{}")  # what an interrupted conversion left: no mark
    build_once(entry, lambda tmp: _write(tmp / "model.safetensors"))
    assert sorted(p.name for p in entry.iterdir()) == sorted([COMPLETE, "model.safetensors"])


def test_a_complete_entry_is_not_built_again(tmp_path):
    entry = build_once(tmp_path / "model", lambda tmp: _write(tmp / "a", "1"))
    build_once(entry, lambda tmp: pytest.fail("built twice"))
    assert (entry / "a").read_text() == "1"


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    def broken(tmp: Path) -> None:
        (tmp / "partial").write_text("x")
        raise RuntimeError("conversion failed")

    with pytest.raises(RuntimeError, match="conversion failed"):
        build_once(tmp_path / "model", broken)
    assert [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")] == []
