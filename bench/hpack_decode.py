"""CPU per response header block: providers/h2/headers.py against ``hpack.Decoder``.

    python bench/hpack_decode.py [--rounds 7]

The blocks are what APNs answers (``:status`` 200 and a fresh ``apns-id``, sometimes
``apns-unique-id``), encoded by ``hpack.Encoder`` with the dynamic table off, as the
client asks for. Both decoders read ``:status`` and ``content-length`` as the codec does.
Prints the median of the rounds (alternating, in one process) and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import hpack

from fanout.providers.h2.headers import Headers, decode_block


def apns_blocks(count: int, unique_id: bool) -> list[bytes]:
    encoder = hpack.Encoder()
    encoder.header_table_size = 0
    blocks = []
    for _ in range(count):
        fields = [(":status", "200"), ("apns-id", str(uuid.uuid4()).upper())]
        if unique_id:
            fields.append(("apns-unique-id", str(uuid.uuid4())))
        blocks.append(encoder.encode(fields))
    return blocks


def with_hpack(blocks: list[bytes]) -> None:
    decoder = hpack.Decoder()
    for block in blocks:
        headers = {}
        for name, value in decoder.decode(block, raw=True):
            headers[name.decode("latin-1")] = value.decode(errors="replace")
        headers.get("content-length")


def with_ours(blocks: list[bytes]) -> None:
    for block in blocks:
        headers = Headers()
        for name, value in decode_block(block):
            if name == b":status":
                value.decode()
            else:
                headers.add(name.decode("latin-1"), value)
        headers.get("content-length")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--blocks", type=int, default=20_000)
    args = parser.parse_args()
    for unique_id in (False, True):
        blocks = apns_blocks(args.blocks, unique_id)
        costs: dict[str, list[float]] = {"hpack": [], "ours": []}
        for _ in range(args.rounds):
            for name, decode in (("hpack", with_hpack), ("ours", with_ours)):
                started = time.process_time()
                decode(blocks)
                costs[name].append((time.process_time() - started) / len(blocks) * 1e6)
        hpack_us, ours_us = (statistics.median(costs[n]) for n in ("hpack", "ours"))
        label = ":status, apns-id" + (", apns-unique-id" if unique_id else "")
        print(
            f"{label:<34} hpack {hpack_us:5.1f} µs  ours {ours_us:5.1f} µs  "
            f"ratio {hpack_us / ours_us:4.1f}x"
        )


if __name__ == "__main__":
    main()
