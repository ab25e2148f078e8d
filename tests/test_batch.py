"""The batch machinery under concurrency: shards, per-slide locks, the slide loop, killed jobs."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from wsi_pipeline.batch import Shard, read_manifest, resolve_shard, run_slide_batch
from wsi_pipeline.errors import ConfigError, LockedError, SlideOpenError
from wsi_pipeline.files import temporary_then_rename
from wsi_pipeline.locks import SlideLock

# Spawned children import only this module and wsi_pipeline.batch: no inherited threads, no torch.
CTX = multiprocessing.get_context("spawn")


@dataclass(frozen=True, order=True)
class Item:
    slide_id: str
    path: str


def _items(n: int) -> list[Item]:
    return [Item(f"slide-{i:03d}", f"/data/slide-{i:03d}.svs") for i in range(n)]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _write_lock(path: Path, *, host: str, pid: int, age_s: float = 0.0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"host": host, "pid": pid, "started": "2020-01-01T00:00:00+00:00"}))
    if age_s:
        past = time.time() - age_s
        os.utime(path, (past, past))


# --------------------------------------------------------------------------------------------- shards
@pytest.mark.parametrize("n_items", [0, 1, 5, 17])
@pytest.mark.parametrize("count", [1, 2, 3, 8])
def test_shards_cover_every_slide_exactly_once(n_items: int, count: int) -> None:
    items = _items(n_items)
    chosen = [item for i in range(count) for item in Shard(i, count).select(list(reversed(items)))]
    assert sorted(chosen) == sorted(items)
    sizes = [len(Shard(i, count).select(items)) for i in range(count)]
    assert max(sizes) - min(sizes) <= 1


def test_shard_parse_and_env() -> None:
    assert Shard.parse("2/5") == Shard(2, 5)
    for bad in ("5/5", "-1/3", "a/b", "3"):
        with pytest.raises(ConfigError):
            Shard.parse(bad)
    env = {"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "8"}
    assert resolve_shard(None, env) == Shard(3, 8)
    assert resolve_shard("0/2", env) == Shard(0, 2)
    assert resolve_shard(None, {}) is None


# --------------------------------------------------------------------------------------------- locks
def test_lock_held_by_live_process_blocks(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    with SlideLock(path):
        holder = json.loads(path.read_text())
        assert holder["host"] == socket.gethostname() and holder["pid"] == os.getpid()
        with pytest.raises(LockedError, match="held by"):
            SlideLock(path).acquire()
    assert not path.exists()


def test_dead_pid_lock_is_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    _write_lock(path, host=socket.gethostname(), pid=_dead_pid())
    with SlideLock(path):
        assert json.loads(path.read_text())["pid"] == os.getpid()


def test_other_host_lock_is_stale_only_when_its_heartbeat_is_old(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    _write_lock(path, host="elsewhere", pid=1, age_s=10)
    with pytest.raises(LockedError):
        SlideLock(path, stale_after_s=60).acquire()
    _write_lock(path, host="elsewhere", pid=1, age_s=120)
    with SlideLock(path, stale_after_s=60):
        assert json.loads(path.read_text())["host"] == socket.gethostname()


def test_heartbeat_keeps_a_long_held_lock_fresh(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    # Heartbeats every stale_after_s / 4: wide enough a margin for a loaded CI machine.
    with SlideLock(path, stale_after_s=1.2):
        time.sleep(2.5)  # more than stale_after_s: only the heartbeat thread keeps it alive
        assert time.time() - path.stat().st_mtime < 1.2
        with pytest.raises(LockedError):
            SlideLock(path, stale_after_s=1.2).acquire()


def test_release_leaves_a_lock_that_was_taken_over(tmp_path: Path) -> None:
    path = tmp_path / "a.lock"
    lock = SlideLock(path)
    lock.acquire()
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "token": "theirs"}))  # taken over meanwhile
    lock.release()
    assert json.loads(path.read_text())["token"] == "theirs"


def test_a_racer_that_judged_the_lock_stale_late_leaves_the_new_holder_alone(tmp_path: Path) -> None:
    # The interleaving that let two processes hold one lock: B sees the dead holder's lock, A takes it over and
    # creates its own, then B removes "the stale lock", which is now A's. B must re-check before removing.
    path = tmp_path / "a.lock"
    _write_lock(path, host=socket.gethostname(), pid=_dead_pid())
    late = SlideLock(path)
    assert late._is_stale()
    winner = SlideLock(path)
    winner.acquire()
    late._take_over()
    assert path.exists() and winner._owned()
    with pytest.raises(LockedError):
        late.acquire()
    winner.release()
    assert not path.exists()


def _race_for_stale_lock(path: str, barrier, tried, results) -> None:  # noqa: ANN001 - multiprocessing proxies
    lock = SlideLock(Path(path))
    barrier.wait()
    try:
        lock.acquire()
    except LockedError:
        results.put(0)
        tried.wait()
        return
    # Hold the lock until every racer has tried: one that tries after the release may rightly take it, and on a
    # loaded machine a fixed sleep does not guarantee the others have tried by then.
    tried.wait()
    lock.release()
    results.put(1)


@pytest.mark.parametrize("round_", range(2))
def test_processes_racing_for_a_stale_lock_take_it_once(tmp_path: Path, round_: int) -> None:
    path = tmp_path / "a.lock"
    _write_lock(path, host=socket.gethostname(), pid=_dead_pid())
    n = 6
    barrier, tried, results = CTX.Barrier(n), CTX.Barrier(n), CTX.Queue()
    procs = [CTX.Process(target=_race_for_stale_lock, args=(str(path), barrier, tried, results)) for _ in range(n)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=60)
    assert sum(results.get(timeout=5) for _ in procs) == 1
    assert not path.exists() and not path.with_name(path.name + ".takeover").exists()


# --------------------------------------------------------------------------------------------- the loop
def _output(out_dir: Path, item: Item) -> Path:
    return out_dir / f"{item.slide_id}.out"


def _process_to_file(out_dir: Path, log: Path | None = None, delay: float = 0.0):  # noqa: ANN202
    def process(item: Item, lock: SlideLock) -> int:
        if item.slide_id.endswith("3"):
            raise SlideOpenError(f"{item.path}: not a slide; check the file")
        if log is not None:
            with log.open("a") as handle:  # O_APPEND: lines from several processes never interleave
                handle.write(f"{item.slide_id} {os.getpid()}\n")
        time.sleep(delay)
        with temporary_then_rename(_output(out_dir, item)) as tmp:
            tmp.write_text(item.slide_id)
        return 1

    return process


def test_run_slide_batch_records_failures_and_skips_done(tmp_path: Path) -> None:
    items = _items(6)
    result = run_slide_batch(
        items,
        _process_to_file(tmp_path),
        stage="demo",
        out_dir=tmp_path,
        is_done=lambda item: _output(tmp_path, item).exists(),
    )
    assert [r.status for r in result.records] == ["ok", "ok", "ok", "failed", "ok", "ok"]
    assert "not a slide" in result.failed[0].error
    assert {r.slide_id: r.status for r in read_manifest(tmp_path, "demo")}["slide-003"] == "failed"
    assert not list((tmp_path / ".locks" / "demo").iterdir())

    again = run_slide_batch(
        items,
        _process_to_file(tmp_path),
        stage="demo",
        out_dir=tmp_path,
        is_done=lambda item: _output(tmp_path, item).exists(),
    )
    assert [r.status for r in again.records] == ["skipped", "skipped", "skipped", "failed", "skipped", "skipped"]


def test_a_run_removes_the_manifest_temporary_a_killed_run_left(tmp_path: Path) -> None:
    # A run killed between writing its manifest's temporary and renaming it leaves `.demo.csv.tmp-<host>-<pid>`: the
    # next run removes it; a live writer's (another run on the folder) and another host's stay.
    manifests = tmp_path / "manifests"
    manifests.mkdir()
    host = socket.gethostname()
    dead = manifests / f".demo.csv.tmp-{host}-{_dead_pid()}"
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])  # a live writer's process
    live = manifests / f".demo.csv.tmp-{host}-{writer.pid}"
    elsewhere = manifests / ".demo.csv.tmp-another-host-1"
    for path in (dead, live, elsewhere):
        path.write_text("slide_id\n")
    try:
        run_slide_batch(_items(2), _process_to_file(tmp_path), stage="demo", out_dir=tmp_path, is_done=lambda _: False)
    finally:
        writer.kill()
        writer.wait()
    assert not dead.exists() and live.exists() and elsewhere.exists()


def _batch_worker(out_dir: str, log: str, shard: str | None) -> None:
    out = Path(out_dir)
    run_slide_batch(
        _items(16),
        _process_to_file(out, Path(log), delay=0.05),
        stage="demo",
        out_dir=out,
        is_done=lambda item: _output(out, item).exists(),
        shard=Shard.parse(shard) if shard else None,
    )


@pytest.mark.parametrize("shards", [(None, None, None), ("0/2", "1/2", None)], ids=["same-items", "shards+rerun"])
def test_concurrent_processes_never_do_a_slide_twice(tmp_path: Path, shards: tuple) -> None:
    log = tmp_path / "processed.txt"
    procs = [CTX.Process(target=_batch_worker, args=(str(tmp_path), str(log), shard)) for shard in shards]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    done = [line.split()[0] for line in log.read_text().splitlines()]
    expected = [item.slide_id for item in _items(16) if not item.slide_id.endswith("3")]
    assert sorted(done) == expected  # every good slide exactly once
    assert sorted(p.stem for p in tmp_path.glob("*.out")) == expected
    assert not list(tmp_path.glob(".*.tmp-*"))


def _slow_worker(out_dir: str, started: str) -> None:
    out = Path(out_dir)

    def process(item: Item, lock: SlideLock) -> int:
        with temporary_then_rename(_output(out, item)) as tmp:
            tmp.write_text("partial")
            Path(started).write_text(str(os.getpid()))
            time.sleep(60)  # killed here
        return 1

    run_slide_batch(_items(1), process, stage="demo", out_dir=out, is_done=lambda item: _output(out, item).exists())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_job_killed_mid_slide_is_redone_by_the_next_run(tmp_path: Path, sig: signal.Signals) -> None:
    started = tmp_path / "started"
    proc = CTX.Process(target=_slow_worker, args=(str(tmp_path), str(started)))
    proc.start()
    deadline = time.monotonic() + 30
    while not started.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert started.exists()
    os.kill(proc.pid, sig)
    proc.join(timeout=30)
    lock = tmp_path / ".locks" / "demo" / "slide-000.lock"
    item = _items(1)[0]
    assert not _output(tmp_path, item).exists()
    if sig == signal.SIGTERM:  # Slurm's scancel / time limit: the lock and the temporary output are cleaned up
        assert not lock.exists()
        assert not list(tmp_path.glob(".*.tmp-*"))
    else:  # SIGKILL leaves the lock behind; its pid is dead, so the next run takes it over
        assert json.loads(lock.read_text())["pid"] == proc.pid

    result = run_slide_batch(
        [item],
        _process_to_file(tmp_path),
        stage="demo",
        out_dir=tmp_path,
        is_done=lambda it: _output(tmp_path, it).exists(),
    )
    assert [r.status for r in result.records] == ["ok"]
    assert _output(tmp_path, item).read_text() == "slide-000"


def _fork_then_terminate_child() -> int | None:
    """Inside a batch: fork a child (as DataLoader workers are) and SIGTERM it; return the signal it died of."""
    holder: list[int | None] = []

    def process(item: Item, lock: SlideLock) -> int:
        pid = os.fork()
        if pid == 0:
            try:
                time.sleep(30)
            finally:
                os._exit(3)  # reached only if SIGTERM became an exception in the child
        time.sleep(0.2)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        holder.append(os.WTERMSIG(status) if os.WIFSIGNALED(status) else None)
        return 1

    with tempfile.TemporaryDirectory() as out:
        run_slide_batch(_items(1), process, stage="demo", out_dir=Path(out), is_done=lambda item: False)
    return holder[0]


def test_forked_workers_still_die_on_sigterm() -> None:
    # Only the batch's own process turns SIGTERM into KeyboardInterrupt; a worker would otherwise hang at exit.
    with CTX.Pool(1) as pool:  # a fresh process, so pytest's own threads are not forked
        assert pool.apply(_fork_then_terminate_child) == signal.SIGTERM
