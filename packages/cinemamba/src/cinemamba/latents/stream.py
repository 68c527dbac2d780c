"""A resampled WebDataset stream whose micro-batch `b` is a pure function of (seed, rank, b).

Each rank draws shards with replacement (WebDataset's "resampled" mode) from its own seeded
generator: draw `d` of rank `r` is shard `choice(seed, r, d)`, read front to back. Because the
sample count of every shard is known (from the shard set's plan or manifest), the position of
micro-batch `b` (samples `b*m .. b*m + m - 1` of the rank's stream) maps to a (draw, offset)
without reading anything, so resuming at batch `b` opens one shard and skips to the offset:
the engine's exact resume costs one partial shard read.

A sample that fails to decode, or a position a truncated shard did not deliver, is counted
once by reason (the count belongs to the micro-batch holding that position) and replaced, so
every micro-batch holds `batch_size` distinct samples: the replacements come from a reserve
stream seeded by (seed, rank, b) that starts at a random position, so micro-batch `b` stays a
function of `b` alone and the stand-ins are spread over the data instead of always being the
next good sample (issue 14: one key delivered 9 times in a row). With DataLoader workers,
worker `w` of `n` builds micro-batches `b = start + w (mod n)`; the DataLoader's round-robin returns
them in order.
"""

from __future__ import annotations

import logging
import tarfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

log = logging.getLogger(__name__)

MAX_BAD_RUN = 10_000  # consecutive bad samples after which the data is declared unusable


@dataclass(frozen=True)
class ShardList:
    """Shard URLs (paths, `pipe:` commands, http URLs) and the number of samples in each."""

    urls: tuple[str, ...]
    counts: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.urls) != len(self.counts):
            raise ValueError(f"{len(self.urls)} shard urls but {len(self.counts)} counts")
        if not self.urls or sum(self.counts) == 0:
            raise ValueError("the shard list holds no samples")


def draw_shard(seed: int, rank: int, draw: int, num_shards: int) -> int:
    """Which shard rank `rank` reads at its `draw`-th draw (with replacement)."""
    return int(np.random.default_rng([seed, rank, draw]).integers(num_shards))


def locate(shards: ShardList, seed: int, rank: int, position: int) -> tuple[int, int]:
    """(draw, offset in that draw's shard) of sample `position` of a rank's stream."""
    draw = 0
    while True:
        n = shards.counts[draw_shard(seed, rank, draw, len(shards.urls))]
        if position < n:
            return draw, position
        position -= n
        draw += 1


class _CountingReader:
    """A read-only stream wrapper that counts the bytes read (to spot a missing tar end)."""

    def __init__(self, raw: Any) -> None:
        self.raw, self.count = raw, 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.count += len(data)
        return data


class TruncatedTarError(tarfile.ReadError):
    """A tar that was readable at first and then ends early (cut short, not merely corrupt)."""


def read_tar(url: str) -> Iterator[dict[str, Any]]:
    """The samples of one tar shard as WebDataset dicts ({"__key__", "__url__", "ext": bytes});
    a tar cut short raises `tarfile.ReadError` after its last complete sample
    (`TruncatedTarError` once at least one member was read).

    Python's streaming tar reader (and so WebDataset's) takes a tar cut at or inside a header
    for a complete one and delivers the last, partial sample as if whole (issue 14). Here a
    member with short data, or a tar without its end-of-archive blocks, raises instead, and the
    sample in progress is not delivered (it may lack members).
    """
    key, fields = None, {}
    try:
        with wds.gopen(url) as raw:
            stream = _CountingReader(raw)
            with tarfile.open(fileobj=stream, mode="r|*") as tar:
                for info in tar:
                    if not info.isreg():
                        continue
                    name = info.name.rpartition("/")[2]
                    k = info.name[: len(info.name) - len(name)] + name.partition(".")[0]
                    data = tar.extractfile(info).read()
                    if len(data) != info.size:
                        raise TruncatedTarError(f"{info.name}: {len(data)} of {info.size} bytes")
                    ext = name.partition(".")[2]
                    # a field seen again under the same key starts a second sample with that
                    # key (a duplicate the caller can count) instead of overwriting the first
                    if key is not None and (k != key or ext in fields):
                        yield {"__key__": key, "__url__": url, **fields}
                        fields = {}
                    key = k
                    fields[ext] = data
                end = tar.offset
            while stream.read(1 << 16):
                pass
            if key is not None and stream.count - end < 1024:  # two zero blocks end a tar
                raise TruncatedTarError("the tar ends without its end-of-archive blocks")
    except (tarfile.TarError, EOFError) as err:
        if key is None or isinstance(err, TruncatedTarError):
            raise
        raise TruncatedTarError(f"{type(err).__name__}: {err}") from err
    if key is not None:
        yield {"__key__": key, "__url__": url, **fields}


class SampleStream:
    """Positions `start, start+1, ...` of a rank's resampled stream as (position, raw sample).

    `window > 1` shuffles the stream in consecutive blocks of `window` positions: block k's
    samples (read in order, across shard boundaries) are yielded in a permutation seeded by
    (seed, rank, k). Shards written in class order then still mix within a batch, memory holds
    one block, and a position stays a pure function of (seed, rank, position): resuming reads
    the one block that holds `start`.
    """

    def __init__(
        self,
        shards: ShardList,
        seed: int,
        rank: int,
        window: int = 0,
        reader: Callable[[str], Iterator[dict[str, Any]]] = read_tar,
    ) -> None:
        if window < 0:
            raise ValueError(f"shuffle window must be >= 0, got {window}")
        self.shards, self.seed, self.rank, self.window = shards, seed, rank, window
        # `reader(url)` yields a shard's samples; a bucket's stream passes one that keeps only
        # that bucket's samples (cinemamba.data.buckets), `shards.counts` counting just those.
        self.reader = reader
        self.skipped: Counter = Counter()

    def reserve(self, batch: int) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """Stand-in samples for micro-batch `batch`: another resampled stream, seeded by
        (seed, rank, batch), from a random position (its skips are not counted: the samples
        it misses are counted where they occur in the main stream).

        The positions it yields are its own, `(batch + 1) * 2**64 + j` for its j-th sample,
        beyond any position of the main stream: decoders seed a sample's random choices
        (clip start, crop, latent window) by position, and the reserve's stream positions
        start within the first pass, so stand-ins would otherwise repeat a few windows
        (window starts far from uniform when many videos are shorter than the window;
        issue 15).
        """
        rng = np.random.default_rng([self.seed, self.rank, batch, 0x5E5E])
        other = SampleStream(self.shards, int(rng.integers(2**62)), self.rank, reader=self.reader)
        base = (batch + 1) << 64
        for j, (_, sample) in enumerate(other(int(rng.integers(sum(self.shards.counts))))):
            yield base + j, sample

    def __call__(self, start: int) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """Yield (position, sample) from `start` on; sample is None where a shard is short."""
        if self.window <= 1:
            yield from self._ordered(start)
            return
        block = start // self.window
        ordered = self._ordered(block * self.window)
        while True:
            base = block * self.window
            samples = [next(ordered)[1] for _ in range(self.window)]
            order = np.random.default_rng([self.seed, self.rank, block, 0x5F]).permutation(
                self.window
            )
            for j in range(max(start - base, 0), self.window):
                yield base + j, samples[order[j]]
            block += 1

    def _ordered(self, start: int) -> Iterator[tuple[int, dict[str, Any] | None]]:
        """The stream in read order (no shuffle window) from `start` on."""
        draw, offset = locate(self.shards, self.seed, self.rank, start)
        position = start
        while True:
            index = draw_shard(self.seed, self.rank, draw, len(self.shards.urls))
            url, expected = self.shards.urls[index], self.shards.counts[index]
            seen = 0
            try:
                for sample in self.reader(url):
                    if seen >= expected:
                        break
                    if seen >= offset:
                        yield position, sample
                        position += 1
                    seen += 1
            except Exception as err:  # truncated tar, vanished file, failed pipe, ...
                log.warning("shard %s unreadable after %d samples: %s", url, seen, err)
                self.skipped["unreadable_shard"] += 1
            # Positions the shard promised but did not deliver stay in the stream as holes,
            # so every later position keeps its place (and resume stays exact).
            for _ in range(max(seen, offset), expected):
                yield position, None
                position += 1
            draw, offset = draw + 1, 0


def _take(
    decode: Callable[[dict[str, Any], int], dict[str, Any]],
    position: int,
    sample: dict[str, Any] | None,
    items: list[dict[str, Any]],
    skipped: Counter | None,
) -> bool:
    """Decode one sample into `items`, or count why not (`skipped=None`: do not count).

    Warnings the decoder attaches (`item["warnings"]`, e.g. "metadata_mismatch") are counted
    too; such a sample is still used. Returns whether the sample was taken.
    """
    if sample is None:
        if skipped is not None:
            skipped["missing"] += 1
        return False
    try:
        item = decode(sample, position)
    except Exception as err:  # a bad sample is counted and dropped, never a crash
        if skipped is not None:
            skipped[getattr(err, "reason", None) or type(err).__name__] += 1
            log.warning("skipping sample %s: %s", sample.get("__key__"), err)
        return False
    warnings = item.pop("warnings", ()) if isinstance(item, dict) else ()
    if skipped is not None:
        skipped.update(warnings)
    items.append(item)
    return True


def _take_distinct(
    decode: Callable[[dict[str, Any], int], dict[str, Any]],
    position: int,
    sample: dict[str, Any] | None,
    items: list[dict[str, Any]],
    keys: set[str],
    skipped: Counter | None,
) -> None:
    """`_take`, except that a key already in the batch is passed over (not a lost sample: a
    shard drawn twice in a row, or a stand-in that is already there)."""
    if sample is not None and sample.get("__key__") in keys:
        return
    if _take(decode, position, sample, items, skipped):
        keys.add(sample["__key__"])


def micro_batches(
    stream: SampleStream,
    decode: Callable[[dict[str, Any], int], dict[str, Any]],
    collate: Callable[[list[dict[str, Any]], int], Any],
    *,
    batch_size: int,
    start_batch: int,
    every: int = 1,
    phase: int = 0,
) -> Iterator[tuple[Any, dict[str, int]]]:
    """(micro-batch, skipped samples by reason) for `b = start_batch, ...` with
    `b - start_batch = phase (mod every)` (one DataLoader worker's share).

    `decode(sample, position)` turns a raw sample into tensors or raises: the sample is
    dropped and counted under the error's `reason` attribute or class name. A micro-batch
    always holds `batch_size` samples with distinct keys: dropped, missing or repeated ones
    are replaced from `stream.reserve(b)`. `collate(items, b)` makes the batch. The counts
    travel with the batch so they survive worker processes.
    """
    # Worker `phase` starts `phase` batches after `start_batch`: the DataLoader asks worker
    # 0 first, so counting phases from 0 (b % every) would swap batches on an odd resume.
    b = start_batch + phase
    reader = stream(b * batch_size)
    while True:
        items, skipped = fill_batch(stream, reader, decode, b, b * batch_size, batch_size)
        yield collate(items, b), dict(skipped)
        b += every


def fill_batch(
    stream: SampleStream,
    reader: Iterator[tuple[int, dict[str, Any] | None]],
    decode: Callable[[dict[str, Any], int], dict[str, Any]],
    b: int,
    first: int,
    batch_size: int,
) -> tuple[list[dict[str, Any]], Counter]:
    """The decoded items of micro-batch `b` (stream positions `first .. first + batch_size - 1`,
    read on from `reader`) and its skipped counts; see `micro_batches`."""
    items: list[dict[str, Any]] = []
    keys: set[str] = set()
    skipped: Counter = Counter()
    for position, sample in reader:
        if position >= first:  # positions before belong to other workers' batches
            _take_distinct(decode, position, sample, items, keys, skipped)
        if position == first + batch_size - 1:
            break
    if len(items) < batch_size:
        # After one pass over the data without enough distinct samples, the usable set is
        # smaller than a batch: repeats are then the only way to fill it.
        one_pass = sum(stream.shards.counts)
        for tries, (position, sample) in enumerate(stream.reserve(b)):
            distinct = keys if tries < one_pass else set()
            _take_distinct(decode, position, sample, items, distinct, None)
            if len(items) == batch_size:
                break
            if tries >= max(MAX_BAD_RUN, one_pass):
                raise RuntimeError(
                    f"micro-batch {b}: found {len(items)} of {batch_size} usable samples "
                    f"in {tries + 1} samples of the stream (skipped: {dict(skipped)}); "
                    "the shards are unusable"
                )
    skipped.update(stream.skipped)
    stream.skipped.clear()
    return items, skipped


class _BatchDataset(IterableDataset):
    def __init__(self, make: Callable[[int, int], Iterator[Any]]) -> None:
        self.make = make

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        every, phase = (1, 0) if info is None else (info.num_workers, info.id)
        return self.make(every, phase)


def batch_loader(make: Callable[[int, int], Iterator[Any]], workers: int) -> Iterator[Any]:
    """Run `make(every, phase)` in `workers` DataLoader processes (0: in this process).

    Worker `w` yields batches `start_batch + w, start_batch + w + workers, ...`, in order; the DataLoader's
    round-robin over workers then restores the global order exactly.
    """
    if workers <= 0:
        return make(1, 0)
    loader = DataLoader(_BatchDataset(make), batch_size=None, num_workers=workers)
    return iter(loader)
