"""The exchange's states and the one table of the transitions between them.

Theory of operation: an exchange (:class:`proxycore.session.Session`) is always in exactly one
*state* of the table below, and its request body, which an early answer keeps running beside
the response (RFC 9112 §9.5), in one state of a second, smaller table. A state changes only
through an *event*, looked up in the table in the manner of h11's ``_events.py`` /
``_state.py``: ``(state, event) → next state``. An event the table does not list for the
current state is a bug in the core, never a client's or an origin's doing (those arrive as
protocol errors long before): :func:`exchange_next` / :func:`body_next` raise
:class:`ExchangeStateError` and record it in :data:`VIOLATIONS`, which the test suites check
after every test, so a wrong transition fails loudly there; in a running proxy it costs the one
exchange (the phase-error path answers 500, or the engine's containment closes the
connection) and the log says which transition it was.

The states are ``Final`` ints (mypyc compiles them to constants; an ``IntEnum`` would be an
object per comparison) and the table is flattened into a tuple indexed by
``state * events + event`` holding 0 where there is no row (no transition enters an initial
state), which the session reads inline on its hot path: a checked transition costs a multiply,
an add, one load and a truth test, and no call.

The exchange, in the order a proxied request takes it::

    REQUEST_PHASES → CHOOSING_PEER → (CONNECTING →) SENDING → AWAITING_HEAD
      → RESPONSE_PHASES → STREAMING → ENDING → LOGGING → DONE

with the side roads: UPSTREAM_FAILED (fail_to_connect / error_while_proxy decide on a retry,
back to CHOOSING_PEER), FAILING (fail_to_proxy decides the error response), ANSWERED (a
response made by the proxy itself: ``Session.respond``, an error page), LOGGED (the logging
phase returned before the rest of an early-answered request body was skipped). TUNNEL is
reserved for the WebSocket / CONNECT work (a 101 or a 2xx to CONNECT turns the exchange into a
two-way byte relay); nothing enters it yet.

The README's "The exchange's states" section is generated from this table
(:func:`table_markdown`, ``python scripts/gen_state_table.py``); ``tests/test_exchange_states.py``
checks that it is current, that the table is well formed, and that the transitions a set of
exchanges takes are rows of it.
"""

from __future__ import annotations

from typing import Final, NoReturn

__all__ = [
    "BODY_EVENT_NAMES",
    "BODY_NEXT",
    "BODY_STATE_NAMES",
    "BODY_TABLE",
    "EXCHANGE_EVENT_NAMES",
    "EXCHANGE_NEXT",
    "EXCHANGE_STATE_NAMES",
    "EXCHANGE_TABLE",
    "NO_ROW",
    "RESERVED",
    "VIOLATIONS",
    "ExchangeStateError",
    "body_next",
    "exchange_allows",
    "exchange_next",
    "flatten",
    "refuse_body",
    "refuse_exchange",
    "table_markdown",
]

# ---------------------------------------------------------------------- the exchange's states
REQUEST_PHASES: Final = 0
CHOOSING_PEER: Final = 1
CONNECTING: Final = 2
SENDING: Final = 3
AWAITING_HEAD: Final = 4
UPSTREAM_FAILED: Final = 5
FAILING: Final = 6
RESPONSE_PHASES: Final = 7
STREAMING: Final = 8
ENDING: Final = 9
ANSWERED: Final = 10
TUNNEL: Final = 11
LOGGING: Final = 12
LOGGED: Final = 13
DONE: Final = 14
# (the order matters to the session's range tests: RESPONSE_PHASES..ENDING have an upstream
# response head; LOGGING and after, the exchange has finished)

EXCHANGE_STATE_NAMES: Final = (
    "REQUEST_PHASES",
    "CHOOSING_PEER",
    "CONNECTING",
    "SENDING",
    "AWAITING_HEAD",
    "UPSTREAM_FAILED",
    "FAILING",
    "RESPONSE_PHASES",
    "STREAMING",
    "ENDING",
    "ANSWERED",
    "TUNNEL",
    "LOGGING",
    "LOGGED",
    "DONE",
)
_EXCHANGE_STATE_DOCS: Final = (
    "the request phases run: new_ctx, early_request_filter, request_filter, proxy_upstream_filter",
    "upstream_peer runs (again after a retry)",
    "a new upstream connection is being opened (the connect timer runs)",
    "an upstream connection is in hand: connected_to_upstream, upstream_request_filter, the "
    "request head and body go out",
    "the request went as far as it goes (whole, or the origin stopped taking it): waiting for "
    "the response head (1xx are relayed)",
    "the upstream failed before a response started: fail_to_connect or error_while_proxy "
    "decide whether to retry",
    "fail_to_proxy decides the error response",
    "the final response head arrived: upstream_response_filter, response_filter",
    "the client has the response head; the body is relayed through the body filters",
    "the origin's whole response arrived; its last pieces and trailers go out",
    "the proxy answered by itself (respond(), an error response)",
    "reserved: a two-way byte relay after a 101 or a 2xx to CONNECT (not entered yet)",
    "the exchange ended: access log, metrics, the logging phase",
    "the logging phase returned while the request body is still being skipped",
    "the client stream has the connection back (next request, or close)",
)

# ---------------------------------------------------------------------- the exchange's events
PICK_PEER: Final = 0
CONNECT: Final = 1
CONNECTED: Final = 2
REQUEST_SENT: Final = 3
HEAD_RECEIVED: Final = 4
HEAD_SENT: Final = 5
BODY_RECEIVED: Final = 6
UPGRADED: Final = 7
UPSTREAM_ERROR: Final = 8
RETRY: Final = 9
FAIL: Final = 10
RESPOND: Final = 11
FINISH: Final = 12
LOGGING_DONE: Final = 13
HAND_BACK: Final = 14

EXCHANGE_EVENT_NAMES: Final = (
    "PICK_PEER",
    "CONNECT",
    "CONNECTED",
    "REQUEST_SENT",
    "HEAD_RECEIVED",
    "HEAD_SENT",
    "BODY_RECEIVED",
    "UPGRADED",
    "UPSTREAM_ERROR",
    "RETRY",
    "FAIL",
    "RESPOND",
    "FINISH",
    "LOGGING_DONE",
    "HAND_BACK",
)
_EXCHANGE_EVENT_DOCS: Final = (
    "the request phases let it through: upstream_peer is asked",
    "no pooled connection: a new one is opened",
    "an upstream connection is ready (pooled, or just connected)",
    "the request is sent as far as it goes (its end written, or the origin stopped reading)",
    "the final response head arrived",
    "the response head went to the client",
    "the response body ended",
    "reserved: the origin accepted an upgrade (101) or a CONNECT",
    "the upstream failed (connect, reset, timeout, invalid response) before a response started",
    "fail_to_connect / error_while_proxy asked for a retry",
    "the exchange fails before a response started (fail_to_proxy runs)",
    "a response made by the proxy goes out (Session.respond)",
    "the exchange ends: completed, cut short, or the client left",
    "the logging phase returned, with the request body still to skip",
    "the exchange gives the client connection back",
)

# Every state before LOGGING but the ones a response has started in can still answer locally,
# fail, or end (the client leaves, the shutdown cuts it).
_ANSWERABLE: Final = {RESPOND: ANSWERED, FAIL: FAILING, FINISH: LOGGING}

# (state, event) -> next state: h11's EVENT_TRIGGERED_TRANSITIONS, for one exchange.
EXCHANGE_TABLE: Final[dict[int, dict[int, int]]] = {
    REQUEST_PHASES: {PICK_PEER: CHOOSING_PEER, **_ANSWERABLE},
    CHOOSING_PEER: {CONNECT: CONNECTING, CONNECTED: SENDING, **_ANSWERABLE},
    # (no phase runs while connecting: nothing can FAIL; an HTTP/2 request body that breaks
    # its declared length is answered, RESPOND)
    CONNECTING: {
        CONNECTED: SENDING,
        UPSTREAM_ERROR: UPSTREAM_FAILED,
        RESPOND: ANSWERED,
        FINISH: LOGGING,
    },
    SENDING: {
        REQUEST_SENT: AWAITING_HEAD,
        HEAD_RECEIVED: RESPONSE_PHASES,  # an early answer (RFC 9112 §9.5)
        UPSTREAM_ERROR: UPSTREAM_FAILED,
        **_ANSWERABLE,
    },
    AWAITING_HEAD: {
        REQUEST_SENT: AWAITING_HEAD,  # the origin stopped reading after the last byte went
        HEAD_RECEIVED: RESPONSE_PHASES,
        UPGRADED: TUNNEL,
        UPSTREAM_ERROR: UPSTREAM_FAILED,
        **_ANSWERABLE,
    },
    UPSTREAM_FAILED: {RETRY: CHOOSING_PEER, **_ANSWERABLE},
    FAILING: {RESPOND: ANSWERED, FINISH: LOGGING},
    # (with an early answer the request body is still going: REQUEST_SENT keeps the state)
    RESPONSE_PHASES: {
        HEAD_SENT: STREAMING,
        REQUEST_SENT: RESPONSE_PHASES,
        UPSTREAM_ERROR: UPSTREAM_FAILED,
        **_ANSWERABLE,
    },
    STREAMING: {BODY_RECEIVED: ENDING, REQUEST_SENT: STREAMING, FINISH: LOGGING},
    ENDING: {REQUEST_SENT: ENDING, FINISH: LOGGING},
    ANSWERED: {FINISH: LOGGING},
    TUNNEL: {FINISH: LOGGING},
    LOGGING: {HAND_BACK: DONE, LOGGING_DONE: LOGGED},
    LOGGED: {HAND_BACK: DONE},
    DONE: {},
}
# Rows no code takes yet (the WebSocket / CONNECT work will).
RESERVED: Final = frozenset({(AWAITING_HEAD, UPGRADED), (TUNNEL, FINISH)})

# ---------------------------------------------------------------------- the request body
UNREAD: Final = 0
FORWARDING: Final = 1
HELD: Final = 2
SKIPPING: Final = 3
READ: Final = 4

BODY_STATE_NAMES: Final = ("UNREAD", "FORWARDING", "HELD", "SKIPPING", "READ")
_BODY_STATE_DOCS: Final = (
    "a body is expected and the upstream request head has not gone out yet",
    "the client stream hands body pieces to the upstream request",
    "forwarding stopped (the origin stopped reading, a failure, the client left; a retry "
    "forwards it again from the retry buffer)",
    "the response is complete without the whole body: the rest is read and dropped, so the "
    "connection can carry the next request",
    "the whole body was read (or there was none)",
)

FORWARD: Final = 0
STOP: Final = 1
SKIP: Final = 2
END: Final = 3

BODY_EVENT_NAMES: Final = ("FORWARD", "STOP", "SKIP", "END")
_BODY_EVENT_DOCS: Final = (
    "the upstream request head went out: the body follows it",
    "forwarding stops (the origin stopped reading, a failure, the client left, a retry)",
    "the response is complete: skip the rest",
    "the body's last piece arrived (forwarded, or skipped)",
)

BODY_TABLE: Final[dict[int, dict[int, int]]] = {
    UNREAD: {FORWARD: FORWARDING, SKIP: SKIPPING},
    FORWARDING: {END: READ, STOP: HELD, SKIP: SKIPPING},
    HELD: {FORWARD: FORWARDING, SKIP: SKIPPING},
    SKIPPING: {END: READ},
    READ: {},
}

# ---------------------------------------------------------------------- checking

# What the flattened tables hold where there is no row: the initial states, which no
# transition enters (a test checks it), so "no row" is a false value and a transition written
# out is ``T[state * N + event] or refuse(state, event)``.
NO_ROW: Final = 0
N_EXCHANGE_EVENTS: Final = 15
N_BODY_EVENTS: Final = 4
N_EXCHANGE_STATES: Final = 15
N_BODY_STATES: Final = 5

# What the test suites check after every test: the transitions the table refused, in words.
VIOLATIONS: Final[list[str]] = []


class ExchangeStateError(Exception):
    """An event the transition table does not allow in the current state: a bug in the core."""


def flatten(table: dict[int, dict[int, int]], n_states: int, n_events: int) -> tuple[int, ...]:
    """``table`` ({state: {event: next}}) as one tuple indexed by state * n_events + event,
    NO_ROW where there is no row (also the HTTP/2 stream states', proxycore.h2.connection)."""
    flat = [NO_ROW] * (n_states * n_events)
    for state, row in table.items():
        for event, nxt in row.items():
            flat[state * n_events + event] = nxt
    return tuple(flat)


# The tables flattened: the next state is EXCHANGE_NEXT[state * N_EXCHANGE_EVENTS + event]
# (NO_ROW: none). The session reads them inline (Session._go: a call less per transition).
EXCHANGE_NEXT: Final = flatten(EXCHANGE_TABLE, N_EXCHANGE_STATES, N_EXCHANGE_EVENTS)
BODY_NEXT: Final = flatten(BODY_TABLE, N_BODY_STATES, N_BODY_EVENTS)


def exchange_next(state: int, event: int) -> int:
    """The exchange's state after ``event`` in ``state``; ExchangeStateError if the table has
    no such row."""
    return EXCHANGE_NEXT[state * N_EXCHANGE_EVENTS + event] or refuse_exchange(state, event)


def exchange_allows(state: int, event: int) -> bool:
    """Whether the table has a row for ``event`` in ``state`` (for a public call to refuse
    politely what the table would refuse as a bug)."""
    return EXCHANGE_NEXT[state * N_EXCHANGE_EVENTS + event] != NO_ROW


def body_next(state: int, event: int) -> int:
    """The request body's state after ``event`` in ``state``; ExchangeStateError if none."""
    return BODY_NEXT[state * N_BODY_EVENTS + event] or refuse_body(state, event)


def refuse_exchange(state: int, event: int) -> NoReturn:
    """Raise (and record) the exchange's ``event`` in ``state``, which the table refuses."""
    _refuse("exchange", EXCHANGE_STATE_NAMES[state], EXCHANGE_EVENT_NAMES[event])


def refuse_body(state: int, event: int) -> NoReturn:
    """Raise (and record) the request body's ``event`` in ``state``."""
    _refuse("request body", BODY_STATE_NAMES[state], BODY_EVENT_NAMES[event])


def _refuse(machine: str, state: str, event: str) -> NoReturn:
    words = f"the {machine} cannot take {event} in {state} (no such row in the table)"
    VIOLATIONS.append(words)
    raise ExchangeStateError(words)


# ---------------------------------------------------------------------- documentation


def _rows(
    table: dict[int, dict[int, int]],
    states: tuple[str, ...],
    state_docs: tuple[str, ...],
    events: tuple[str, ...],
    reserved: frozenset[tuple[int, int]],
) -> list[str]:
    lines = ["| state | what is happening | event → next state |", "|---|---|---|"]
    for state, row in table.items():
        moves = ", ".join(
            f"`{events[ev]}` → `{states[nxt]}`" + (" (reserved)" if (state, ev) in reserved else "")
            for ev, nxt in row.items()
        )
        lines.append(f"| `{states[state]}` | {state_docs[state]} | {moves or '(final)'} |")
    return lines


def _events(names: tuple[str, ...], docs: tuple[str, ...]) -> list[str]:
    return [f"- `{n}`: {d}" for n, d in zip(names, docs, strict=True)]


def table_markdown() -> str:
    """The README's rendering of both tables and their events (generated, never hand-drawn)."""
    out = ["The exchange:", ""]
    out += _rows(
        EXCHANGE_TABLE, EXCHANGE_STATE_NAMES, _EXCHANGE_STATE_DOCS, EXCHANGE_EVENT_NAMES, RESERVED
    )
    out += ["", "Its events:", ""]
    out += [
        f"- `{n}`: {d}" for n, d in zip(EXCHANGE_EVENT_NAMES, _EXCHANGE_EVENT_DOCS, strict=True)
    ]
    out += ["", "The request body (beside the exchange; it starts `READ` when there is none):", ""]
    out += _rows(BODY_TABLE, BODY_STATE_NAMES, _BODY_STATE_DOCS, BODY_EVENT_NAMES, frozenset())
    out += ["", "Its events:", ""]
    out += _events(BODY_EVENT_NAMES, _BODY_EVENT_DOCS)
    return "\n".join(out) + "\n"
