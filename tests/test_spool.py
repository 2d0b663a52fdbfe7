"""framework/spool.py with real files: order, acknowledgement, segment deletion, size limits and
recovery after a crash that tore the last record."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest

from framework.spool import HEADER, Spool, SpoolError, SpoolFull


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
        f.write(HEADER.pack(100, 0, 0) + b"only part of it")
    with caplog.at_level(logging.WARNING):
        recovered = Spool(tmp_path)
        recovered.open()
    assert "torn or corrupt record" in caplog.text
    assert drain(recovered) == [b"complete-1", b"complete-2"]


def test_corrupt_checksum_truncates_from_the_bad_record(tmp_path, caplog):
    spool = Spool(tmp_path)
    spool.open()
    spool.append([b"good", b"flipped"])
    spool.close()
    segment = next(tmp_path.glob("*.seg"))
    data = bytearray(segment.read_bytes())
    data[-1] ^= 0xFF
    segment.write_bytes(bytes(data))
    recovered = Spool(tmp_path)
    recovered.open()
    assert drain(recovered) == [b"good"]


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
        from framework.spool import Spool
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
