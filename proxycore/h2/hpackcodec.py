"""HTTP/2 field blocks (HPACK, RFC 7541), compiled: the decoder and the encoder of a client
connection (:mod:`proxycore.h2.connection`), in place of the ``hpack`` library's.

Theory of operation: :class:`Decoder` has the interface ``h2`` expects of ``hpack.Decoder``
(``decode(data, raw)``, ``max_header_list_size``, ``max_allowed_table_size``,
``header_table_size``), returns the same ``HeaderTuple`` / ``NeverIndexedHeaderTuple`` values
and raises the same ``hpack`` exceptions (COMPRESSION_ERROR, or ENHANCE_YOUR_CALM for a
list past its size, :mod:`proxycore.h2.connection`). :class:`Encoder` has
``hpack.Encoder``'s (``encode(headers, huffman)``, ``header_table_size``) and writes the same
bytes: every field with incremental indexing (never indexed when the tuple says so, §7.1.3),
an exact match in the static or dynamic table as an index, a name match as an indexed name
(the static table's first, else the newest dynamic entry's), strings Huffman-coded when asked,
and the table size updates a new SETTINGS_HEADER_TABLE_SIZE asks for at the start of the next
block (§4.2, §6.3: the smallest size set since the last block if below the final one, then
the final one; where ``hpack`` 4.0 loses a size set twice, or set back after a smaller one,
this encoder signals it). ``hpack``'s decoder and encoder stay the references they are tested
against (``tests/test_h2_hpack.py``: random blocks, dynamic-table evictions, size updates and
malformed blocks, through both, byte for byte).

The representations (RFC 7541 §6): an indexed field (§6.1), a literal with incremental
indexing (§6.2.1), without indexing (§6.2.2), never indexed (§6.2.3), a dynamic table size
update (§6.3, only at the start of a block, §4.2, and never above the size we advertised);
integers with an N-bit prefix (§5.1, at most 2^32); string literals, raw or Huffman-coded
(§5.2). Huffman codes (Appendix B, the ``hpack`` library's table of them) are decoded a
nibble at a time through a table built once at import: for each state of the code tree and
each 4-bit input, the next state and the symbol completed, if any; a string is valid only if
it ends at the root or in fewer than 8 padding bits that are all ones, and never contains EOS
(§5.2). The dynamic table (§4) keeps entries newest last and evicts the oldest while the sum
of their sizes (name + value + 32 each) is over the current maximum.
"""

from __future__ import annotations

from typing import Any, Final

from hpack import (
    HeaderTuple,
    HPACKDecodingError,
    InvalidTableIndexError,
    InvalidTableSizeError,
    NeverIndexedHeaderTuple,
    OversizedHeaderListError,
)
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hpack.table import HeaderTable

__all__ = ["Decoder", "Encoder"]

_STATIC: Final[list[tuple[bytes, bytes]]] = list(HeaderTable.STATIC_TABLE)  # RFC 7541 App. A
_N_STATIC: Final = 61
_DEFAULT_TABLE_SIZE: Final = 4096
_DEFAULT_MAX_HEADER_LIST_SIZE: Final = 1 << 16
_MAX_INT: Final = 1 << 32  # larger integers are refused (no field needs them)

# ---------------------------------------------------------------------- Huffman (§5.2)


def _huffman_tables() -> tuple[list[int], list[int], list[bool]]:
    """The code tree's nibble table: for state s (an internal node) and nibble v,
    ``nxt[s * 16 + v]`` is the state after the four bits (-1: EOS was decoded, an error) and
    ``sym[s * 16 + v]`` the symbol completed on the way (-1: none; a code is at least five
    bits long, so at most one); ``accept[s]``: a string may end in state s (the root, or
    fewer than eight one bits into the tree)."""
    left: list[int] = [-1]
    right: list[int] = [-1]
    leaf: list[int] = [-1]  # the symbol of a leaf node, -1 for internal nodes
    for symbol in range(257):
        code, length = REQUEST_CODES[symbol], REQUEST_CODES_LENGTH[symbol]
        node = 0
        for i in range(length - 1, -1, -1):
            branch = right if (code >> i) & 1 else left
            nxt = branch[node]
            if nxt < 0:
                nxt = len(leaf)
                left.append(-1)
                right.append(-1)
                leaf.append(-1)
                branch[node] = nxt
            node = nxt
        leaf[node] = symbol
    internal = [n for n in range(len(leaf)) if leaf[n] < 0]
    state_of = {n: i for i, n in enumerate(internal)}
    accept = [False] * len(internal)
    node, depth = 0, 0
    while leaf[node] < 0 and depth < 8:  # all ones from the root: valid padding
        accept[state_of[node]] = True
        node, depth = right[node], depth + 1
    nxt_table = [0] * (len(internal) * 16)
    sym_table = [-1] * (len(internal) * 16)
    for s, start in enumerate(internal):
        for v in range(16):
            node, out = start, -1
            for i in range(3, -1, -1):
                node = right[node] if (v >> i) & 1 else left[node]
                if leaf[node] >= 0:
                    if leaf[node] == 256:
                        node = -1
                        break
                    out = leaf[node]
                    node = 0
            nxt_table[s * 16 + v] = state_of[node] if node >= 0 else -1
            sym_table[s * 16 + v] = out
    return nxt_table, sym_table, accept


_H_NEXT, _H_SYM, _H_ACCEPT = _huffman_tables()
_H_CODES: Final[list[int]] = list(REQUEST_CODES)
_H_LENGTHS: Final[list[int]] = list(REQUEST_CODES_LENGTH)


def encode_huffman(data: bytes) -> bytes:
    """``data`` Huffman-coded (RFC 7541 §5.2), padded to an octet with the ones EOS starts
    with."""
    out = bytearray()
    codes, lengths = _H_CODES, _H_LENGTHS
    acc = 0
    bits = 0
    for byte in data:
        acc = (acc << lengths[byte]) | codes[byte]
        bits += lengths[byte]
        while bits >= 8:
            bits -= 8
            out.append((acc >> bits) & 0xFF)
        acc &= (1 << bits) - 1
    if bits:
        out.append(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) & 0xFF)
    return bytes(out)


def decode_huffman(data: bytes) -> bytes:
    """A Huffman-coded string literal's octets (RFC 7541 §5.2); HPACKDecodingError if it is
    not a valid code (EOS inside, or padding that is not a prefix of EOS of under 8 bits)."""
    out = bytearray()
    nxt, sym = _H_NEXT, _H_SYM
    state = 0
    for byte in data:
        k = state * 16 + (byte >> 4)
        state = nxt[k]
        if state < 0:
            raise HPACKDecodingError("Huffman-coded string contains EOS")
        if sym[k] >= 0:
            out.append(sym[k])
        k = state * 16 + (byte & 15)
        state = nxt[k]
        if state < 0:
            raise HPACKDecodingError("Huffman-coded string contains EOS")
        if sym[k] >= 0:
            out.append(sym[k])
    if not _H_ACCEPT[state]:
        raise HPACKDecodingError("Huffman-coded string has invalid padding")
    return bytes(out)


# ---------------------------------------------------------------------- the decoder


class _Table:
    """A dynamic table (§4): entries newest last, evicted oldest first while the sum of their
    sizes (name + value + 32 each, §4.1) is over the current maximum (§4.2-4.4)."""

    def __init__(self) -> None:
        self._entries: list[tuple[bytes, bytes]] = []
        self._size = 0
        self._max_size = _DEFAULT_TABLE_SIZE

    def _evict(self) -> None:
        entries = self._entries
        while self._size > self._max_size and entries:
            name, value = entries.pop(0)
            self._size -= len(name) + len(value) + 32

    def _add(self, name: bytes, value: bytes) -> None:
        size = len(name) + len(value) + 32
        if size > self._max_size:  # §4.4: an entry larger than the table empties it
            self._entries.clear()
            self._size = 0
            return
        self._entries.append((name, value))
        self._size += size
        self._evict()


class Decoder(_Table):
    """An HPACK decoder with ``hpack.Decoder``'s interface (see the module docstring)."""

    def __init__(self, max_header_list_size: int = _DEFAULT_MAX_HEADER_LIST_SIZE) -> None:
        super().__init__()
        self.max_header_list_size = max_header_list_size
        # the most recent SETTINGS_HEADER_TABLE_SIZE we sent and had acknowledged
        self.max_allowed_table_size = _DEFAULT_TABLE_SIZE

    @property
    def header_table_size(self) -> int:
        return self._max_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        self._max_size = value
        self._evict()

    def _get(self, index: int) -> tuple[bytes, bytes]:
        if 0 < index <= _N_STATIC:
            return _STATIC[index - 1]
        entries = self._entries
        k = index - _N_STATIC
        if index > 0 and k <= len(entries):
            return entries[len(entries) - k]
        raise InvalidTableIndexError(f"Invalid table index {index}")

    def decode(self, data: bytes, raw: bool = False) -> list[HeaderTuple]:
        """The field block ``data`` as a list of (name, value) tuples: bytes with ``raw``,
        else str (UTF-8); ``hpack``'s ``HeaderTuple`` / ``NeverIndexedHeaderTuple``."""
        fields: list[HeaderTuple] = self._decode(data, False)
        if raw:
            return fields
        try:
            return [
                NeverIndexedHeaderTuple(f[0].decode("utf-8"), f[1].decode("utf-8"))
                if isinstance(f, NeverIndexedHeaderTuple)
                else HeaderTuple(f[0].decode("utf-8"), f[1].decode("utf-8"))
                for f in fields
            ]
        except UnicodeDecodeError as err:
            raise HPACKDecodingError("Unable to decode headers as UTF-8") from err

    def decode_plain(self, data: bytes) -> list[tuple[bytes, bytes]]:
        """The field block ``data`` as plain (name, value) tuples of bytes (what the
        connection hands on: whether a field was never indexed matters only to re-encoding
        it, §7.1.3, and a request's fields go upstream as HTTP/1.1)."""
        return self._decode(data, True)

    def _decode(self, data: bytes, plain: bool) -> list[Any]:
        fields: list[Any] = []
        field: Any
        n = len(data)
        i = 0
        inflated = 0
        while i < n:
            b = data[i]
            never = False
            if b & 0x80:  # §6.1 indexed
                index, i = _integer(data, i, 7)
                name, value = self._get(index)
            elif b & 0x40:  # §6.2.1 literal with incremental indexing
                index, i = _integer(data, i, 6)
                name, value, i = self._literal(data, i, index)
                self._add(name, value)
            elif b & 0x20:  # §6.3 dynamic table size update
                if fields:
                    raise HPACKDecodingError("Table size update not at the start of the block")
                size, i = _integer(data, i, 5)
                if size > self.max_allowed_table_size:
                    raise InvalidTableSizeError("Encoder exceeded max allowable table size")
                self.header_table_size = size
                continue
            else:  # §6.2.2 without indexing, §6.2.3 never indexed
                never = bool(b & 0x10)
                index, i = _integer(data, i, 4)
                name, value, i = self._literal(data, i, index)
            # (statements, not a conditional expression: mypyc would unbox that to a tuple)
            if plain:
                field = (name, value)
            elif never:
                field = NeverIndexedHeaderTuple(name, value)
            else:
                field = HeaderTuple(name, value)
            fields.append(field)
            inflated += len(name) + len(value) + 32
            if inflated > self.max_header_list_size:
                raise OversizedHeaderListError(
                    f"A header list larger than {self.max_header_list_size} has been received"
                )
        if self._max_size > self.max_allowed_table_size:
            raise InvalidTableSizeError("Encoder did not shrink table size to within the max")
        return fields

    def _literal(self, data: bytes, i: int, index: int) -> tuple[bytes, bytes, int]:
        """A literal field's name (indexed when ``index``, else the string at ``i``) and
        value, and the offset past them."""
        if index:
            name = self._get(index)[0]
        else:
            name, i = _string(data, i)
        value, i = _string(data, i)
        return name, value, i


def _integer(data: bytes, i: int, prefix: int) -> tuple[int, int]:
    """The integer with a ``prefix``-bit prefix at ``data[i]`` (§5.1), and the offset past
    it."""
    mask = (1 << prefix) - 1
    value = data[i] & mask
    i += 1
    if value < mask:
        return value, i
    shift = 0
    n = len(data)
    while True:
        if i >= n:
            raise HPACKDecodingError("Truncated integer in header block")
        b = data[i]
        i += 1
        value += (b & 0x7F) << shift
        if value > _MAX_INT:
            raise HPACKDecodingError("Integer in header block too large")
        if not b & 0x80:
            return value, i
        shift += 7


def _string(data: bytes, i: int) -> tuple[bytes, int]:
    """The string literal at ``data[i]`` (§5.2) and the offset past it."""
    if i >= len(data):
        raise HPACKDecodingError("Truncated header block")
    huffman = data[i] & 0x80
    length, i = _integer(data, i, 7)
    end = i + length
    if end > len(data):
        raise HPACKDecodingError("Truncated header block")
    s = data[i:end]
    return (decode_huffman(s) if huffman else s), end


# ---------------------------------------------------------------------- the encoder

# name -> (its first index in the static table, {value: index}) (RFC 7541 Appendix A)
_STATIC_NAMES: Final[dict[bytes, tuple[int, dict[bytes, int]]]] = {}
for _i, (_name, _value) in enumerate(_STATIC, 1):
    _STATIC_NAMES.setdefault(_name, (_i, {}))[1].setdefault(_value, _i)


class Encoder(_Table):
    """An HPACK encoder with ``hpack.Encoder``'s interface and output (see the module
    docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._signalled = self._max_size  # the size the decoder knows
        self._low = -1  # the smallest size set since the last block (-1: none set)

    @property
    def header_table_size(self) -> int:
        return self._max_size

    @header_table_size.setter
    def header_table_size(self, value: int) -> None:
        value = int(value)
        if self._low < 0 or value < self._low:
            self._low = value
        self._max_size = value
        self._evict()  # (a size of 0 or less empties the table)

    def encode(self, headers: Any, huffman: bool = True) -> bytes:
        """The field block for ``headers``: an iterable of (name, value) tuples (bytes or
        str; a ``NeverIndexedHeaderTuple``, or a third item True, is never indexed) or a
        dict (pseudo-fields first)."""
        out = bytearray()
        low = self._low
        if low >= 0:
            # RFC 7541 §4.2: the smallest size since the last block, if below the final one,
            # then the final one, if the decoder does not know it (at most two updates; the
            # same size set again, or after a smaller one, is not lost: hpack 4.0 drops it)
            final = self._max_size
            if low < final:
                _put_integer(out, low, 5, 0x20)
            if low < final or final != self._signalled:
                _put_integer(out, final, 5, 0x20)
            self._signalled = final
            self._low = -1
        items: Any = headers  # (tuples of two or three items: not one tuple type)
        if isinstance(headers, dict):
            items = sorted(headers.items(), key=lambda kv: not _to_bytes(kv[0]).startswith(b":"))
        for header in items:
            if isinstance(header, HeaderTuple):
                sensitive = not header.indexable
            else:
                sensitive = len(header) > 2 and bool(header[2])
            self._field(out, _to_bytes(header[0]), _to_bytes(header[1]), sensitive, huffman)
        return bytes(out)

    def _field(
        self, out: bytearray, name: bytes, value: bytes, sensitive: bool, huffman: bool
    ) -> None:
        name_index = 0
        static = _STATIC_NAMES.get(name)
        if static is not None:
            exact = static[1].get(value)
            if exact is not None:
                _put_integer(out, exact, 7, 0x80)  # §6.1
                return
            name_index = static[0]
        entries = self._entries
        last = len(entries) - 1
        for k in range(last, -1, -1):
            n, v = entries[k]
            if n == name:
                if v == value:
                    _put_integer(out, _N_STATIC + 1 + last - k, 7, 0x80)
                    return
                if not name_index:
                    name_index = _N_STATIC + 1 + last - k
        if name_index:
            if sensitive:
                _put_integer(out, name_index, 4, 0x10)  # §6.2.3
            else:
                _put_integer(out, name_index, 6, 0x40)  # §6.2.1
        else:
            out.append(0x10 if sensitive else 0x40)
            _put_string(out, name, huffman)
        _put_string(out, value, huffman)
        if not sensitive:
            self._add(name, value)


def _to_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    text: str = value if isinstance(value, str) else str(value)
    return text.encode("utf-8")


def _put_integer(out: bytearray, value: int, prefix: int, flags: int) -> None:
    """``value`` with a ``prefix``-bit prefix (§5.1), the first octet or-ed with ``flags``."""
    mask = (1 << prefix) - 1
    if value < mask:
        out.append(flags | value)
        return
    out.append(flags | mask)
    value -= mask
    while value >= 128:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _put_string(out: bytearray, s: bytes, huffman: bool) -> None:
    if huffman:
        s = encode_huffman(s)
        _put_integer(out, len(s), 7, 0x80)
    else:
        _put_integer(out, len(s), 7, 0)
    out += s
