"""Read what a W&B offline run recorded, straight from its run-<id>.wandb file.

The file is a LevelDB-style log (32 KiB blocks of checksummed chunks) of protobuf `Record`s.
"""

import json
import struct
from pathlib import Path

from wandb.proto import wandb_internal_pb2

BLOCK = 32 * 1024
HEADER = 7  # ":W&B" + 2-byte magic + version
FULL, LAST = 1, 4


def read_records(path: str | Path) -> list:
    raw = Path(path).read_bytes()
    assert raw[:4] == b":W&B", f"{path} is not a W&B run file"
    records, chunk, pos = [], b"", HEADER
    while pos + 7 <= len(raw):
        left = BLOCK - pos % BLOCK
        if left < 7:  # block trailer padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", raw[pos : pos + 7])
        pos += 7
        if kind == 0 and length == 0:
            pos += left - 7
            continue
        chunk += raw[pos : pos + length]
        pos += length
        if kind in (FULL, LAST):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            records.append(record)
            chunk = b""
    return records


def _items(items) -> dict:
    return {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in items}


def history(path) -> list[dict]:
    return [_items(r.history.item) for r in read_records(path) if r.WhichOneof("record_type") == "history"]


def config(path) -> dict:
    merged = {}
    for r in read_records(path):
        if r.WhichOneof("record_type") == "config":
            merged.update(_items(r.config.update))
    return merged
