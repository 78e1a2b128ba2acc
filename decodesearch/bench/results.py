"""Crash-safe JSONL results store for benchmark runs, with resume and shard merging.

File layout (UTF-8 JSONL, one JSON object per line):

* line 1, the header: ``{"decodesearch_results": 1, "config": {...}, "created": "<UTC ISO time>"}``.
  ``config`` is the run configuration (JSON values; nested dicts allowed) that decides whether
  a rerun may resume into this file: model, dataset, strategy and its options, seed,
  max_new_tokens, dtype, prompt... Keys that must not block a resume (``--limit``, output
  path, progress options) should be left out of it or passed as ``ignore_keys``.
* then one record per finished problem, appended, flushed and fsync'd as each finishes.

Per-problem record (written by the runner from a strategy's SearchResult):

=====================  ======================================================================
``id``                 str, the problem id (unique in a file)
``problem``            str, the problem text
``gold``               str, the reference answer
``kind``               "math" | "aime": the checker used (optional; report falls back to the
                       header's ``config["kind"]``, then "math")
``answer``             str | None, the final extracted answer (after aggregation, e.g. the vote)
``correct``            bool, ``answer`` checked against ``gold``
``samples``            list of dicts, one per sample/branch that produced a final text (may be
                       ``[]``): ``text`` (str, the generated text), ``answer`` (str | None),
                       ``correct`` (bool), ``answers_before_triggers`` (list of str | None:
                       the answer extracted just before each self-correction trigger, in
                       order; ``[]`` if none), optional ``correct_before_triggers`` (list of
                       bool, same length; computed by the report when absent), optional
                       ``tokens_generated`` (int) and ``tokens_forced`` (int, teacher-forced
                       trigger/cue tokens)
``tokens_generated``   int, tokens sampled for this problem over all samples/branches
                       (teacher-forced prompt, trigger and judge tokens excluded)
``tokens_forwarded``   int, tokens fed through the model for this problem's search (prefill +
                       extend + decode; the search's ``stats.tokens_forwarded``)
``wall_s``             float, wall-clock seconds from the problem's start to its end (searches
                       run concurrently, so these overlap)
``strategy``           str, strategy name (e.g. "sampling", "self_consistency", "ids", "rain")
=====================  ======================================================================

Optional extras: ``error`` (str, the problem failed; ``correct`` false), ``trace`` (dict),
``meta`` (dict). Readers must ignore unknown keys.

One id, one record: a later line with an id already in the file is ignored, except that a record
with an ``error`` is superseded by a later record of the same id (a retried problem,
``bench --retry-errors``), which takes its place in file order.

Safety: an existing file is never rewritten. Opening it for a resume only ever (a) drops a
trailing partial line left by a killed writer (bytes after the last newline that are not a
complete JSON object) or (b) adds the missing newline after a complete last record; every
other problem (config mismatch, corrupt line in the middle, not a results file) raises before
anything is written. A second writer on the same file is refused (a ``filelock`` on ``<path>.lock``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

from filelock import FileLock, Timeout


def writer_lock(path: str | os.PathLike) -> FileLock:
    """The lock a process holds while it writes ``path`` (the file ``<path>.lock``; never waits)."""
    return FileLock(f"{path}.lock", timeout=0)


def acquire_writer_lock(path: str | os.PathLike) -> FileLock:
    """Take ``path``'s writer lock, or raise RuntimeError when another process holds it."""
    lock = writer_lock(path)
    try:
        lock.acquire()
    except Timeout:
        raise RuntimeError(f"{path} is being written by another process") from None
    return lock

__all__ = [
    "FORMAT_VERSION",
    "ResultsFile",
    "open_results",
    "read_results",
    "config_diff",
    "shard_path",
    "find_shards",
    "merge_shards",
]

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
HEADER_KEY = "decodesearch_results"
_HEADER_PREFIX = b'{"' + HEADER_KEY.encode() + b'"'  # how every header line starts (written first)


def _json_default(obj):
    if callable(getattr(obj, "as_dict", None)) and not isinstance(obj, type):  # trace events, stats: their own record
        return obj.as_dict()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy / torch scalars and arrays
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    raise TypeError(f"object of type {type(obj).__name__} is not JSON serializable")


def _dumps(obj) -> str:
    return json.dumps(obj, ensure_ascii=False, default=_json_default)


def _normalize(config: dict) -> dict:
    """The config as it reads back from JSON (tuples -> lists, dataclasses -> dicts, ...)."""
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    return json.loads(_dumps(config))


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


_MISSING = object()

#: Top-level config keys recorded only since a later version of this library (`settings`: the
#: strategy's whole settings dataclass). A file written before lacks them and stays resumable; a
#: file that has them is compared on them.
ADDED_KEYS = ("settings",)


def config_diff(old: dict, new: dict, ignore_keys: Iterable[str] = ()) -> list[str]:
    """Human-readable differences between two configs (`old`: the file's), one string per differing
    (dotted) key.

    Nested dicts are compared key by key (``"sampler.temperature"``); a key listed in
    ``ignore_keys`` (top-level or dotted) and everything under it is ignored, and so is one of
    `ADDED_KEYS` that `old` lacks.
    """
    ignore = set(ignore_keys) | {k for k in ADDED_KEYS if k not in old}

    def ignored(key: str) -> bool:
        parts = key.split(".")
        return any(".".join(parts[: i + 1]) in ignore for i in range(len(parts)))

    a, b = _flatten(_normalize(old)), _flatten(_normalize(new))
    diffs = []
    for key in sorted(set(a) | set(b)):
        if ignored(key):
            continue
        va, vb = a.get(key, _MISSING), b.get(key, _MISSING)
        if va == vb:
            continue
        sa = "(absent)" if va is _MISSING else json.dumps(va, ensure_ascii=False)
        sb = "(absent)" if vb is _MISSING else json.dumps(vb, ensure_ascii=False)
        diffs.append(f"{key}: file has {sa}, this run has {sb}")
    return diffs


# ---------------------------------------------------------------------------------------------
# Reading


@dataclasses.dataclass
class _Scan:
    header: dict | None  # None: empty file (or only a partial header line)
    records: list[dict]  # deduplicated by id, first occurrence kept, file order
    good_end: int  # byte offset just past the last complete line
    tail: str  # "none" | "partial" (dropped) | "unterminated" (complete record without newline)
    size: int


def _scan_bytes(data: bytes, path: Path) -> _Scan:
    parts = data.split(b"\n")
    complete, tail = parts[:-1], parts[-1]
    header: dict | None = None
    records: list[dict] = []
    seen: dict[str, int] = {}  # id -> index in records
    dups = 0

    def take(obj, lineno: int):
        nonlocal header, dups
        if header is None:
            if not (isinstance(obj, dict) and HEADER_KEY in obj):
                raise ValueError(f"{path}:{lineno}: not a decodesearch results file (first line is not a header)")
            if obj[HEADER_KEY] != FORMAT_VERSION:
                raise ValueError(f"{path}:{lineno}: results format version {obj[HEADER_KEY]!r}, expected {FORMAT_VERSION}")
            if not isinstance(obj.get("config"), dict):
                raise ValueError(f"{path}:{lineno}: header has no 'config' object")
            header = obj
            return
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            raise ValueError(f"{path}:{lineno}: record is not an object with a string 'id'")
        if obj["id"] in seen:
            at = seen[obj["id"]]
            if records[at].get("error"):  # a retried problem: the later attempt supersedes the error
                records[at] = obj
            else:
                dups += 1
            return
        seen[obj["id"]] = len(records)
        records.append(obj)

    for lineno, raw in enumerate(complete, 1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(
                f"{path}:{lineno}: corrupt line ({e}); only a killed run's last line is repaired "
                "automatically, so the file is left untouched"
            ) from None
        take(obj, lineno)

    good_end = len(data) - len(tail)
    tail_state = "none"
    if tail.strip():
        try:
            obj = json.loads(tail)
        except ValueError:  # JSONDecodeError / UnicodeDecodeError: a line torn by a killed write
            if header is None and not (tail.startswith(_HEADER_PREFIX) or _HEADER_PREFIX.startswith(tail)):
                raise ValueError(f"{path}:{len(complete) + 1}: not a decodesearch results file") from None
            tail_state = "partial"
        else:  # a complete object whose newline never reached the disk
            take(obj, len(complete) + 1)
            good_end = len(data)
            tail_state = "unterminated"
    elif tail:
        tail_state = "partial"  # trailing whitespace only
    if dups:
        log.warning("%s: %d duplicate record id(s); the first occurrence of each is used", path, dups)
    return _Scan(header, records, good_end, tail_state, len(data))


def read_results(path: str | os.PathLike) -> tuple[dict, list[dict]]:
    """``(config, records)`` of a results file, read-only.

    A partial last line (killed writer) is ignored; records with an id seen earlier in the file
    are ignored (first occurrence wins), unless the earlier one has an ``error`` (then the later
    one replaces it). Raises FileNotFoundError, or ValueError for an empty
    file, a file without a header, or a corrupt line other than the last.
    """
    path = Path(path)
    scan = _scan_bytes(path.read_bytes(), path)
    if scan.header is None:
        raise ValueError(f"{path}: empty results file (no header)")
    return scan.header["config"], scan.records


# ---------------------------------------------------------------------------------------------
# Writing


class ResultsFile:
    """An open results file in append mode (from ``open_results``). Use as a context manager.

    ``config``: the header's config. ``finished``: ids already in the file (in file order),
    grows with ``append``. ``records``: the records read at open time (not updated by append).
    ``errored``: ids whose latest record has an ``error`` (updated by append).
    """

    def __init__(self, path: Path, fh, config: dict, records: list[dict], fsync: bool, lock: FileLock):
        self.path = path
        self._fh = fh
        self._lock = lock
        self.config = config
        self.records = records
        self.finished: list[str] = [r["id"] for r in records]
        self._finished_set = set(self.finished)
        self.errored: set[str] = {r["id"] for r in records if r.get("error")}
        self._fsync = fsync

    def __contains__(self, pid: str) -> bool:
        return pid in self._finished_set

    def append(self, record: dict) -> None:
        """Append one problem's record as one line, then flush and fsync.

        Raises ValueError if the record has no string ``id`` or its id is already in the file
        (an id whose record has an ``error`` may be appended again: the new record supersedes it),
        TypeError if it is not JSON serializable (nothing is written then).
        """
        if self._fh is None:
            raise ValueError(f"{self.path}: results file is closed")
        if not isinstance(record, dict) or not isinstance(record.get("id"), str):
            raise ValueError("a results record must be a dict with a string 'id'")
        if record["id"] in self._finished_set and record["id"] not in self.errored:
            raise ValueError(f"{self.path}: id {record['id']!r} is already in the file")
        line = (_dumps(record) + "\n").encode("utf-8")  # serialise fully before writing anything
        self._fh.write(line)
        self._fh.flush()
        if self._fsync:
            os.fsync(self._fh.fileno())
        if record["id"] not in self._finished_set:
            self.finished.append(record["id"])
            self._finished_set.add(record["id"])
        if record.get("error"):
            self.errored.add(record["id"])
        else:
            self.errored.discard(record["id"])

    def close(self) -> None:
        if self._fh is not None:
            try:
                self._fh.flush()
            finally:
                self._fh.close()
                self._fh = None
                self._lock.release()

    def __enter__(self) -> "ResultsFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def open_results(
    path: str | os.PathLike,
    config: dict,
    ignore_keys: Iterable[str] = (),
    fsync: bool = True,
) -> ResultsFile:
    """Open ``path`` for appending records of a run with configuration ``config``.

    New or empty file: the header is written. Existing file: its header config must equal
    ``config`` (after a JSON round trip; keys in ``ignore_keys`` are not compared), else
    ValueError naming every differing key and the file is left untouched; on a match, the
    returned ``ResultsFile.finished`` lists the ids to skip. A partial last line from a killed
    run is dropped (nothing else is changed). Raises RuntimeError if another process has the
    file open through ``open_results`` (its ``writer_lock``).
    """
    path = Path(path)
    config = _normalize(config)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    lock = acquire_writer_lock(path)
    created = not path.exists()
    try:
        fh = open(path, "ab")  # creates if missing; never truncates
    except BaseException:
        lock.release()
        raise
    try:
        with open(path, "rb") as rf:
            data = rf.read()
        scan = _scan_bytes(data, path)
        if scan.header is None:
            # Empty file, or only a partial header from a run killed at its very start.
            fh.truncate(0)
            header = {HEADER_KEY: FORMAT_VERSION, "config": config,
                      "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            fh.write((_dumps(header) + "\n").encode("utf-8"))
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
                if created:
                    _fsync_dir(path)
            return ResultsFile(path, fh, config, [], fsync, lock)
        diffs = config_diff(scan.header["config"], config, ignore_keys)
        if diffs:
            raise ValueError(
                f"{path} was written by a run with a different configuration:\n  "
                + "\n  ".join(diffs)
                + "\nUse another output path, or rerun with the file's configuration to resume it."
            )
        if scan.tail == "partial":
            log.warning("%s: dropping a partial last line (%d bytes) left by an interrupted run",
                        path, scan.size - scan.good_end)
            fh.truncate(scan.good_end)
        elif scan.tail == "unterminated":
            fh.write(b"\n")
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())
        return ResultsFile(path, fh, scan.header["config"], scan.records, fsync, lock)
    except BaseException:
        fh.close()
        lock.release()
        raise


# ---------------------------------------------------------------------------------------------
# Shards


def shard_path(path: str | os.PathLike, rank: int) -> Path:
    """Shard file of ``rank`` for results file ``path``: ``run.jsonl`` -> ``run.rank{rank}.jsonl``
    (a path not ending in ``.jsonl`` gets ``.rank{rank}.jsonl`` appended)."""
    path = Path(path)
    if path.name.endswith(".jsonl"):
        return path.with_name(f"{path.name[: -len('.jsonl')]}.rank{rank}.jsonl")
    return path.with_name(f"{path.name}.rank{rank}.jsonl")


def find_shards(path: str | os.PathLike) -> list[Path]:
    """Existing shard files of ``path``, sorted by rank."""
    path = Path(path)
    probe = shard_path(path, 0).name
    stem = probe[: probe.index(".rank0.jsonl")]
    pat = re.compile(re.escape(stem) + r"\.rank(\d+)\.jsonl$")
    found = []
    parent = path.parent if str(path.parent) else Path(".")
    for p in parent.iterdir() if parent.exists() else []:
        m = pat.match(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def merge_shards(
    path: str | os.PathLike,
    config: dict | None = None,
    world_size: int | None = None,
    order: Sequence[str] | None = None,
    ignore_keys: Iterable[str] = (),
    remove: bool = False,
) -> int:
    """Merge shard files ``shard_path(path, i)`` into ``path``; return the number of records added.

    Shards are ranks ``0..world_size-1`` (all must exist) or, if ``world_size`` is None, every
    existing shard. Every shard's config must equal ``config`` (default: the first shard's),
    else ValueError naming the shard and the differing keys. ``path`` is opened with
    ``open_results`` (so an existing file with the same config is resumed: ids already in it
    are not added again, except over a record with an ``error``); a record id present in several
    shards is taken once, from the lowest rank. Records are appended in ``order`` (a list of ids;
    others after, in shard order) or in shard order. Partial last lines in shards are ignored. With ``remove``, shard files are
    deleted after the merge is on disk.
    """
    path = Path(path)
    if world_size is not None:
        shards = [shard_path(path, r) for r in range(world_size)]
        missing = [str(s) for s in shards if not s.exists()]
        if missing:
            raise FileNotFoundError(f"missing shard file(s): {', '.join(missing)}")
    else:
        shards = find_shards(path)
        if not shards:
            raise FileNotFoundError(f"no shard files {shard_path(path, 0).name.replace('rank0', 'rank*')} next to {path}")
    loaded = [(s, *read_results(s)) for s in shards]
    ref = _normalize(config) if config is not None else loaded[0][1]
    for s, cfg, _ in loaded:
        diffs = config_diff(ref, cfg, ignore_keys)
        if diffs:
            raise ValueError(f"shard {s} has a different configuration:\n  " + "\n  ".join(diffs))
    merged: dict[str, dict] = {}
    for _, _, recs in loaded:
        for r in recs:
            merged.setdefault(r["id"], r)
    ids = list(merged)
    if order is not None:
        rank = {pid: i for i, pid in enumerate(order)}
        ids.sort(key=lambda pid: (0, rank[pid]) if pid in rank else (1, 0))  # stable for the rest
    added = 0
    with open_results(path, ref, ignore_keys=ignore_keys) as out:
        old = {r["id"]: r for r in out.records}
        for pid in ids:
            # new ids, and retried problems whose shard record replaces an error in `path`
            if pid not in out or (pid in out.errored and _normalize(merged[pid]) != old.get(pid)):
                out.append(merged[pid])
                added += 1
    if remove:
        for s in shards:
            s.unlink()
    return added
