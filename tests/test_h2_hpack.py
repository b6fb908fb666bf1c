"""proxycore's HPACK decoder and encoder (proxycore/h2/hpackcodec.py) against the ``hpack``
library's, their reference: the same fields, the same bytes, the same dynamic table, the same
exceptions (RFC 7541)."""

from __future__ import annotations

import random

import hpack
import pytest
from hpack import HeaderTuple, NeverIndexedHeaderTuple

from proxycore.h2.hpackcodec import Decoder, Encoder, decode_huffman, encode_huffman


def _pair() -> tuple[Decoder, hpack.Decoder]:
    return Decoder(), hpack.Decoder()


def _random_fields(rng: random.Random) -> list[tuple[bytes, bytes]]:
    names = [b":method", b":path", b"user-agent", b"cookie", b"x-a", b"accept", b"content-type"]
    out = []
    for _ in range(rng.randint(1, 12)):
        name = (
            rng.choice(names)
            if rng.random() < 0.7
            else bytes(
                rng.choice(b"abcdefghijklmnopqrstuvwxyz-") for _ in range(rng.randint(1, 20))
            )
        )
        value = bytes(rng.randrange(256) for _ in range(rng.randint(0, 60)))
        if rng.random() < 0.5:
            value = rng.choice([b"GET", b"/", b"/index.html", b"gzip, deflate", value[:5]])
        out.append((name, value))
    return out


def test_random_blocks_decode_as_hpack_decodes_them() -> None:
    rng = random.Random(7)
    enc = hpack.Encoder()
    enc.header_table_size = 512  # small: entries are evicted often
    ours, ref = _pair()
    for _ in range(400):
        fields = _random_fields(rng)
        headers = [
            NeverIndexedHeaderTuple(n, v) if rng.random() < 0.1 else HeaderTuple(n, v)
            for n, v in fields
        ]
        block = enc.encode(headers, huffman=rng.random() < 0.7)
        got, want = ours.decode(block, raw=True), ref.decode(block, raw=True)
        assert got == want
        assert [type(f) for f in got] == [type(f) for f in want]
        assert ours.header_table_size == ref.header_table_size


def test_plain_decoding_gives_the_same_fields_as_plain_tuples() -> None:
    """decode_plain (what the connection uses) keeps the dynamic table as decode does."""
    rng = random.Random(11)
    enc = hpack.Encoder()
    enc.header_table_size = 512
    plain, ref = _pair()
    for _ in range(200):
        fields = _random_fields(rng)
        block = enc.encode(
            [NeverIndexedHeaderTuple(n, v) if rng.random() < 0.1 else (n, v) for n, v in fields]
        )
        got = plain.decode_plain(block)
        assert got == [tuple(f) for f in ref.decode(block, raw=True)]
        assert all(type(f) is tuple for f in got)


def test_str_fields_without_raw() -> None:
    enc = hpack.Encoder()
    block = enc.encode([(":method", "GET"), ("x-name", "caf\u00e9")])
    assert (
        Decoder().decode(block)
        == hpack.Decoder().decode(block)
        == [
            (":method", "GET"),
            ("x-name", "caf\u00e9"),
        ]
    )


def test_huffman_strings_of_every_octet() -> None:
    rng = random.Random(3)
    reference = hpack.huffman.HuffmanEncoder(
        hpack.huffman_constants.REQUEST_CODES, hpack.huffman_constants.REQUEST_CODES_LENGTH
    )
    for _ in range(300):
        s = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
        coded = reference.encode(s)
        assert encode_huffman(s) == coded
        assert decode_huffman(coded) == s


def test_the_encoder_writes_what_hpack_writes() -> None:
    rng = random.Random(11)
    ours, ref = Encoder(), hpack.Encoder()
    dec = hpack.Decoder()
    dec.max_allowed_table_size = 1 << 16
    for _ in range(400):
        if rng.random() < 0.05:  # the peer's SETTINGS_HEADER_TABLE_SIZE changes
            size = rng.choice([0, 64, 256, 4096, 8192])
            ours.header_table_size = ref.header_table_size = size
        fields = _random_fields(rng)
        headers: list[object] = []
        for n, v in fields:
            kind = rng.random()
            if kind < 0.1:
                headers.append(NeverIndexedHeaderTuple(n, v))
            elif kind < 0.15:
                headers.append((n, v, True))
            elif kind < 0.3:
                headers.append((n.decode("latin-1"), v.decode("latin-1")))  # str: UTF-8
            else:
                headers.append(HeaderTuple(n, v))
        huffman = rng.random() < 0.8
        block = ours.encode(headers, huffman=huffman)
        assert block == ref.encode(headers, huffman=huffman)
        assert ours.header_table_size == ref.header_table_size
        dec.decode(block, raw=True)  # (and it decodes)
    assert Encoder().encode({"x-a": "1", ":status": "200"}) == hpack.Encoder().encode(
        {"x-a": "1", ":status": "200"}
    )


@pytest.mark.parametrize(
    ("block", "error"),
    [
        (b"\x80", hpack.InvalidTableIndexError),  # index 0
        (b"\xbf\x01", hpack.InvalidTableIndexError),  # index 64, empty dynamic table
        (b"\x40\x05ab", hpack.HPACKDecodingError),  # truncated name
        (b"\x40\x81", hpack.HPACKDecodingError),  # truncated Huffman name
        (b"\x82\x3f\xe1\x1f", hpack.HPACKDecodingError),  # size update after a field
        (b"\x3f\xe2\x1f", hpack.InvalidTableSizeError),  # 4097 > the 4096 advertised
        (b"\x7f", hpack.HPACKDecodingError),  # truncated integer
        (b"\x7f\xff\xff\xff\xff\xff\x7f", hpack.HPACKDecodingError),  # an integer too large
        (b"\x00\x81\xff\x00", hpack.HPACKDecodingError),  # Huffman padding of 8 one bits
        (b"\x00\x84\xff\xff\xff\xff\x00", hpack.HPACKDecodingError),  # EOS in a string
        (b"\x00\x81\x00\x00", hpack.HPACKDecodingError),  # padding not all ones
    ],
)
def test_malformed_blocks_raise_what_hpack_raises(block: bytes, error: type) -> None:
    for dec in _pair():
        with pytest.raises(error):
            dec.decode(block, raw=True)


def test_the_header_list_size_is_bounded() -> None:
    enc = hpack.Encoder()
    block = enc.encode([(b"x-big", b"v" * 200)] * 3)
    for dec in (Decoder(500), hpack.Decoder(500)):
        with pytest.raises(hpack.OversizedHeaderListError):
            dec.decode(block, raw=True)


def test_size_updates_evict_and_must_fit_what_was_advertised() -> None:
    enc = hpack.Encoder()
    first = enc.encode([(b"x-one", b"1" * 50), (b"x-two", b"2" * 50)])
    enc.header_table_size = 100  # the next block starts with a size update to 100
    second = enc.encode([(b"x-three", b"3")])
    ours, ref = _pair()
    for dec in (ours, ref):
        dec.decode(first, raw=True)
        assert dec.decode(second, raw=True) == [(b"x-three", b"3")]
        assert dec.header_table_size == 100
    # a peer that keeps a table larger than the size we now allow fails at the block's end
    for dec in (Decoder(), hpack.Decoder()):
        dec.max_allowed_table_size = 100
        with pytest.raises(hpack.InvalidTableSizeError):
            dec.decode(b"\x82", raw=True)


def test_h2_connections_decode_with_it() -> None:
    from proxycore.testing import Harness
    from tests.helpers import Simple, connect_id, sent
    from tests.test_h2_server import Client

    h = Harness(Simple())
    cl = Client(h)
    up = connect_id(cl.request(1, extra=[("x-long", "v" * 100)]))
    conn = h.engine.downstreams[cl.conn]
    assert isinstance(conn.h2.decoder, Decoder)  # type: ignore[attr-defined]
    assert isinstance(conn.h2.encoder, Encoder)  # type: ignore[attr-defined]
    head = sent(h.connected(up), up)
    assert b"x-long: " + b"v" * 100 in head  # (decoded by it, Huffman-coded by the client)
