"""The shuffle window of the resampled sample stream (`SampleStream(window=N)`): block
contents, mixing of shards written in class order, seeding, and exact resume."""

from __future__ import annotations

import itertools

import pytest
import webdataset as wds

from cinemamba.latents.stream import SampleStream, ShardList, micro_batches


@pytest.fixture
def class_shards(tmp_path):
    """4 shards of 6 samples, each shard one class (as `cinemamba shards --no-shuffle` writes
    a folder-per-class layout)."""
    urls = []
    for c in "abcd":
        path = tmp_path / f"{c}.tar"
        with open(path, "wb") as fh:
            writer = wds.TarWriter(fh, encoder=False, mtime=0.0)
            for i in range(6):
                writer.write({"__key__": f"{c}{i}", "txt": f"{c}{i}".encode()})
            writer.close()
        urls.append(str(path))
    return ShardList(tuple(urls), (6,) * 4)


def _keys(stream, start, n):
    return [(p, s["__key__"]) for p, s in itertools.islice(stream(start), n)]


def test_window_permutes_blocks_of_the_read_order(class_shards):
    plain = _keys(SampleStream(class_shards, 3, 0), 0, 48)
    mixed = _keys(SampleStream(class_shards, 3, 0, window=12), 0, 48)
    assert [p for p, _ in mixed] == list(range(48))  # positions keep their place
    for k in range(4):  # block k holds exactly the read order's samples of that block ...
        block = slice(12 * k, 12 * k + 12)
        assert sorted(s for _, s in mixed[block]) == sorted(s for _, s in plain[block])
    assert [s for _, s in mixed] != [s for _, s in plain]  # ... in another order
    # Read order keeps whole shards together: 6 consecutive samples of one class. Shuffled,
    # a batch of 6 from a block spanning two shards mixes classes.
    assert all(len({s[0] for _, s in plain[i : i + 6]}) == 1 for i in range(0, 48, 6))
    assert any(len({s[0] for _, s in mixed[i : i + 6]}) > 1 for i in range(0, 48, 6))


def test_window_is_seeded_and_resumes_exactly(class_shards):
    full = _keys(SampleStream(class_shards, 3, 0, window=12), 0, 60)
    assert _keys(SampleStream(class_shards, 3, 0, window=12), 0, 60) == full
    assert _keys(SampleStream(class_shards, 4, 0, window=12), 0, 60) != full
    for start in (1, 11, 12, 29, 47):  # mid-block and block starts
        assert _keys(SampleStream(class_shards, 3, 0, window=12), start, 60 - start) == full[start:]
    with pytest.raises(ValueError, match="shuffle window"):
        SampleStream(class_shards, 3, 0, window=-1)


def test_micro_batches_resume_with_a_window(class_shards):
    def decode(sample, position):
        return {"key": sample["__key__"]}

    def run(start, n):
        stream = SampleStream(class_shards, 5, 1, window=10)
        batches = micro_batches(stream, decode, lambda items, b: [i["key"] for i in items],
                                batch_size=4, start_batch=start)  # fmt: skip
        return [b for b, _ in itertools.islice(batches, n)]

    full = run(0, 9)
    assert run(5, 4) == full[5:]  # a resumed run sees the same batches
    assert any(len({k[0] for k in batch}) > 1 for batch in full)
