"""framework/spool.py with real files: order, acknowledgement, segment deletion, size limits,
recovery after a crash that tore the last record, resynchronisation after corruption in the
middle (every intact record kept, the lost ones counted), and old-format segments."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest
import zlib
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tickwire.framework.spool import LEGACY_HEADER, RECORD_HEADER, RECORD_MAGIC, SEGMENT_HEADER, Spool, SpoolError, SpoolFull


def drain(spool: Spool, batch: int = 3) -> list[bytes]:
    out = []
    while True:
        records, position = spool.read(batch)
        if not records:
            return out
        out.extend(records)
        spool.ack(position)


def test_records_replay_in_order_across_segments_and_acknowledged_segments_are_deleted(tmp_path):
    spool = Spool(tmp_path, segment_bytes=200, max_bytes=10_000)
    spool.open()
    payloads = [f"record-{i:03d}".encode() for i in range(40)]
    for start in range(0, 40, 7):
        spool.append(payloads[start:start + 7])
    assert len(list(tmp_path.glob("*.seg"))) > 3
    assert spool.pending_records() == 40
    assert drain(spool) == payloads
    assert spool.pending_records() == 0
    assert spool.pending_bytes() == 0
    assert list(tmp_path.glob("*.seg")) == []  # an empty spool takes no disk


def test_unacknowledged_reads_come_back_after_rewind_and_after_reopen(tmp_path):
    spool = Spool(tmp_path)
    spool.open()
    spool.append([b"a", b"b", b"c", b"d"])
    records, position = spool.read(2)
    spool.ack(position)
    assert records == [b"a", b"b"]
    assert spool.read(10)[0] == [b"c", b"d"]
    spool.rewind()  # delivery failed
    assert spool.read(10)[0] == [b"c", b"d"]
    spool.close()

    reopened = Spool(tmp_path)
    reopened.open()
    assert reopened.pending_records() == 2
    assert drain(reopened) == [b"c", b"d"]


def test_appending_after_the_spool_emptied_continues_in_order(tmp_path):
    spool = Spool(tmp_path)
    spool.open()
    spool.append([b"1", b"2"])
    assert drain(spool) == [b"1", b"2"]
    spool.append([b"3"])
    spool.close()
    reopened = Spool(tmp_path)
    reopened.open()
    assert drain(reopened) == [b"3"]


def test_torn_last_record_is_dropped_and_logged(tmp_path, caplog):
    spool = Spool(tmp_path)
    spool.open()
    spool.append([b"complete-1", b"complete-2"])
    spool.close()
    segment = next(tmp_path.glob("*.seg"))
    with open(segment, "ab") as f:  # what a SIGKILL between two write() calls leaves
        f.write(RECORD_HEADER.pack(RECORD_MAGIC, 100, 0, 0) + b"only part of it")
    size_before = segment.stat().st_size
    with caplog.at_level(logging.WARNING):
        recovered = Spool(tmp_path)
        recovered.open()
    assert "damaged bytes at the end" in caplog.text and "1 record(s) lost" in caplog.text
    assert recovered.lost_records == 1 and recovered.lost_bytes == RECORD_HEADER.size + len(b"only part of it")
    assert drain(recovered) == [b"complete-1", b"complete-2"]
    assert size_before - RECORD_HEADER.size - len(b"only part of it") == len(SEGMENT_HEADER) + 2 * RECORD_HEADER.size + 20


def test_a_torn_tail_of_a_big_spool_loses_only_the_torn_record(tmp_path):
    spool = Spool(tmp_path)
    spool.open()
    payloads = numbered(3000)
    spool.append(payloads)
    spool.close()
    segment = next(tmp_path.glob("*.seg"))
    with open(segment, "r+b") as f:  # the last record's write was cut short
        f.truncate(segment.stat().st_size - 7)
    recovered = Spool(tmp_path)
    recovered.open()
    assert drain(recovered, batch=500) == payloads[:-1]
    assert recovered.lost_records == 1


def numbered(n: int) -> list[bytes]:
    return [f'{{"trade_id":{i},"price":"{i}.10000000"}}'.encode() for i in range(n)]


def test_a_corrupt_byte_in_the_middle_costs_only_its_record(tmp_path, caplog):
    """Regression: recovery used to truncate at the first bad record, dropping the ~1,100
    intact records after it under a "torn record at the end" warning."""
    spool = Spool(tmp_path)
    spool.open()
    payloads = numbered(3000)
    for start in range(0, 3000, 1000):
        spool.append(payloads[start:start + 1000])
    spool.close()
    segment = next(tmp_path.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    middle = len(data) // 2
    data[middle] ^= 0x5A
    segment.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        recovered = Spool(tmp_path)
        recovered.open()
    assert recovered.pending_records() == 2999
    replayed = drain(recovered, batch=700)
    assert len(replayed) == 2999 and set(replayed) < set(payloads)
    assert replayed == [p for p in payloads if p in set(replayed)], "order kept"
    assert recovered.lost_records == 1
    assert "corrupt record at offset" in caplog.text and "1 record(s) lost" in caplog.text
    assert "at the end" not in caplog.text


def test_a_corrupt_length_field_resynchronises_on_the_next_record(tmp_path):
    spool = Spool(tmp_path)
    spool.open()
    payloads = numbered(3000)
    spool.append(payloads)
    spool.close()
    segment = next(tmp_path.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    frame = RECORD_HEADER.size + len(payloads[0])  # records 0-9 have the same size
    length_field = len(SEGMENT_HEADER) + 5 * frame + 4  # record 5's length
    data[length_field:length_field + 4] = b"\x00\xff\xff\xff"
    segment.write_bytes(bytes(data))
    recovered = Spool(tmp_path)
    recovered.open()
    assert drain(recovered, batch=1000) == payloads[:5] + payloads[6:]
    assert recovered.lost_records == 1


def test_a_spool_reopened_after_partial_acks_still_skips_the_damage(tmp_path):
    """The damaged bytes stay on disk (offsets do not move); a reopen skips them again and the
    acknowledged position still points at a record."""
    spool = Spool(tmp_path)
    spool.open()
    payloads = numbered(100)
    spool.append(payloads)
    spool.close()
    segment = next(tmp_path.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    data[len(SEGMENT_HEADER) + 50 * (RECORD_HEADER.size + len(payloads[50])) + RECORD_HEADER.size + 3] ^= 1  # record 50's payload
    segment.write_bytes(bytes(data))
    first = Spool(tmp_path)
    first.open()
    records, position = first.read(40)
    first.ack(position)
    assert records == payloads[:40]
    first.close()
    second = Spool(tmp_path)
    second.open()
    assert second.pending_records() == 59
    assert drain(second, batch=7) == payloads[40:50] + payloads[51:]


def legacy_segment(payloads: list[bytes]) -> bytes:
    """A segment as spools before record markers wrote it."""
    out = []
    for payload in payloads:
        stamp = 1_700_000_000_000
        crc = zlib.crc32(payload, zlib.crc32(stamp.to_bytes(8, "big")))
        out.append(LEGACY_HEADER.pack(len(payload), crc, stamp) + payload)
    return b"".join(out)


def test_old_format_segments_are_still_replayed_and_new_records_follow_them(tmp_path):
    payloads = numbered(50)
    (tmp_path / "00000000000000000001.seg").write_bytes(legacy_segment(payloads[:30]))
    (tmp_path / "acked").write_text("1 0\n")
    spool = Spool(tmp_path)
    spool.open()
    assert spool.pending_records() == 30
    assert spool.oldest_written_at() == 1_700_000_000
    spool.append(payloads[30:])  # goes to a new-format segment
    assert sorted(p.name for p in tmp_path.glob("*.seg")) == ["00000000000000000001.seg", "00000000000000000002.seg"]
    assert (tmp_path / "00000000000000000002.seg").read_bytes().startswith(SEGMENT_HEADER)
    spool.close()
    reopened = Spool(tmp_path)
    reopened.open()
    assert drain(reopened, batch=8) == payloads


def test_a_bad_record_in_an_old_format_segment_truncates_and_says_so(tmp_path, caplog):
    payloads = numbered(30)
    data = bytearray(legacy_segment(payloads))
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "00000000000000000001.seg").write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING):
        spool = Spool(tmp_path)
        spool.open()
    kept = drain(spool)
    assert kept == payloads[:len(kept)] and 0 < len(kept) < 30
    assert "old format" in caplog.text and "cannot resynchronise" in caplog.text
    assert spool.lost_records >= 1


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=300), min_size=1, max_size=120),
    damage=st.lists(st.tuples(st.floats(min_value=0, max_value=1, exclude_max=True), st.integers(min_value=1, max_value=255)),
                    min_size=1, max_size=6),
    cut=st.one_of(st.none(), st.integers(min_value=1, max_value=200)),
)
def test_random_corruption_keeps_every_record_it_did_not_touch(tmp_path_factory, sizes, damage, cut):
    """Flip bytes anywhere (and maybe tear the tail): every record whose bytes were not
    touched is replayed, in order; nothing is invented; the lost count covers the rest."""
    directory = tmp_path_factory.mktemp("spool")
    payloads = [bytes([i % 251]) * size + i.to_bytes(4, "big") for i, size in enumerate(sizes)]
    spool = Spool(directory)
    spool.open()
    spool.append(payloads)
    spool.close()
    segment = next(directory.glob("*.seg"))
    original = segment.read_bytes()
    data = bytearray(original)
    spans, offset = [], len(SEGMENT_HEADER)  # each record's byte range
    for payload in payloads:
        spans.append((offset, offset + RECORD_HEADER.size + len(payload)))
        offset = spans[-1][1]
    for where, xor in damage:
        data[len(SEGMENT_HEADER) + int(where * (len(data) - len(SEGMENT_HEADER)))] ^= xor
    if cut is not None:
        del data[len(data) - min(cut, len(data) - len(SEGMENT_HEADER)):]
    touched = {i for i, (start, end) in enumerate(spans) if end > len(data) or data[start:end] != original[start:end]}
    # records of which damaged bytes are left in the file (a record cut off entirely leaves no trace)
    traces = {i for i in touched if spans[i][0] < len(data)}
    segment.write_bytes(bytes(data))
    recovered = Spool(directory)
    recovered.open()
    replayed = drain(recovered, batch=17)
    intact = [p for i, p in enumerate(payloads) if i not in touched]
    assert replayed == intact
    if traces:
        assert 1 <= recovered.lost_records <= len(traces)
    else:
        assert recovered.lost_records == 0


def test_block_policy_refuses_when_full(tmp_path):
    spool = Spool(tmp_path, max_bytes=200, segment_bytes=100, on_full="block")
    spool.open()
    spool.append([b"x" * 40, b"y" * 40])
    with pytest.raises(SpoolFull):
        spool.append([b"z" * 100])
    records, position = spool.read(10)
    spool.ack(position)
    spool.append([b"z" * 100])  # room again once replayed


def test_drop_oldest_policy_drops_whole_old_segments_and_counts_them(tmp_path):
    spool = Spool(tmp_path, max_bytes=300, segment_bytes=100, on_full="drop_oldest")
    spool.open()
    dropped = 0
    for i in range(20):
        dropped += spool.append([f"{i:02d}".ljust(30).encode()])
    kept = drain(spool, batch=100)
    assert dropped > 0
    assert dropped + len(kept) == 20
    assert [int(r[:2]) for r in kept] == list(range(20 - len(kept), 20))  # newest kept, in order


def test_bad_settings_are_refused(tmp_path):
    with pytest.raises(SpoolError, match="fsync"):
        Spool(tmp_path, fsync="sometimes")
    with pytest.raises(SpoolError, match="on_full"):
        Spool(tmp_path, on_full="panic")


def test_records_survive_a_sigkilled_writer(tmp_path):
    """A real process appends in a loop and is SIGKILLed: every record it reported as appended
    is recovered, in order, and nothing but whole records."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {os.getcwd()!r})
        from tickwire.framework.spool import Spool
        spool = Spool({str(tmp_path)!r}, segment_bytes=4096, fsync="never")
        spool.open()
        i = 0
        while True:
            spool.append([f"{{i}}-{{'x' * (i % 50)}}".encode()])
            print(i, flush=True)
            i += 1
    """)
    writer = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    confirmed = -1
    for line in writer.stdout:
        confirmed = int(line)
        if confirmed >= 2000:
            break
    writer.kill()
    writer.wait()
    spool = Spool(tmp_path)
    spool.open()
    indices = [int(r.split(b"-")[0]) for r in drain(spool, batch=500)]
    assert indices == list(range(len(indices)))
    assert len(indices) >= confirmed + 1
