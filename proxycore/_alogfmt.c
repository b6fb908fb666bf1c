/* The access log's combined lines in C: proxycore/accesslog.py's _combined (the reference,
 * and the fallback where this module is not built) for a whole batch, in one pass and one
 * buffer, and the queue that holds a batch. tests/test_accesslog_c.py checks both give the
 * same text, byte for byte.
 *
 * combined_batch(entries, offset, clock_get, line) -> str | None
 *   entries    a list of AccessEntry (with retries, i.e. earlier attempts in ``tries``, a
 *              line is the reference's); one whose ``created`` is 0.0 is stamped at + offset
 *              first (as format_batch does). Their attributes are read through their
 *              type's descriptors directly (the getter a generic attribute lookup would
 *              find and call, found once per batch: a lookup per read costs ~150
 *              instructions, ten per line)
 *   clock_get  accesslog._clock.get: (second, local, iso, ' - - [local] "') for a time
 *   line       the reference for one entry (``_combined(e, "\n")``): called for an entry this
 *              code does not format itself (Basic auth to decode, a value of an unexpected
 *              type or range)
 * Returns the lines, each ending in a newline, or None if a piece is not ASCII (the caller
 * formats the batch with the reference then). No I/O here: the text is the caller's.
 *
 * Queue: an AccessBuffer's entries in order (accesslog.AccessBuffer, for combined lines).
 *   add(remote_addr, head, status, body_bytes_sent, request_time, at, uaddr, ustatus, uct,
 *       uht) -> length   the fields of a usual request's line (the engine's log_session:
 *              no entry object is built, read back and freed per request; the head is
 *              copied into the queue's buffer of heads); -1 and nothing
 *              queued for a value this code does not format itself (the caller puts an
 *              entry then)
 *   put(entry) -> length   an entry object (rejected heads, retries, cut exchanges)
 *   take() -> Queue        everything queued, in a new Queue (a writer takes a batch at once)
 *   combined(offset, clock_get, line, make) -> str | None   the lines, as combined_batch
 *              writes them for the same entries: make(...) (accesslog._entry) builds the
 *              entry of a slot of fields for the reference when it has to write that line
 *   entries(make) -> list  every entry as an object (a program routes the log, JSON)
 * While combined() or entries() reads a queue, changing it (their callbacks) raises
 * RuntimeError. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_LINE 2048 /* accesslog._MAX_LINE */
#define SCAN_LINES 6  /* accesslog._SCAN_LINES: past it, empty lines do not end the search */

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} buf_t;

static int grow(buf_t *b, Py_ssize_t more) {
    if (b->len + more <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 8192;
    while (cap < b->len + more) {
        if (cap > PY_SSIZE_T_MAX / 2) {
            PyErr_NoMemory();
            return -1;
        }
        cap *= 2;
    }
    char *p = PyMem_Realloc(b->p, (size_t)cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

/* callers reserve room first: these never grow the buffer. Short pieces (most of a line)
 * are copied with fixed-size moves, not a call to memcpy. */
static inline __attribute__((always_inline)) void put(buf_t *b, const char *s, Py_ssize_t n) {
    char *o = b->p + b->len;
    if (n >= 8 && n <= 16) {
        memcpy(o, s, 8);
        memcpy(o + n - 8, s + n - 8, 8);
    } else if (n >= 4 && n < 8) {
        memcpy(o, s, 4);
        memcpy(o + n - 4, s + n - 4, 4);
    } else if (n < 4) {
        for (Py_ssize_t k = 0; k < n; k++)
            o[k] = s[k];
    } else {
        memcpy(o, s, (size_t)n);
    }
    b->len += n;
}

#define PUTS(b, lit) put((b), (lit), (Py_ssize_t)(sizeof(lit) - 1))

/* "000" to "999" and ".000" to ".999" (filled at import): a number below 1000 and the
 * milliseconds of a time are copied, not divided out digit by digit */
static char digits3[1000][4], millis[1000][4];

static void fill_tables(void) {
    for (int i = 0; i < 1000; i++) {
        char d[3] = {(char)('0' + i / 100), (char)('0' + i / 10 % 10), (char)('0' + i % 10)};
        memcpy(digits3[i], d, 3);
        millis[i][0] = '.';
        memcpy(millis[i] + 1, d, 3);
    }
}

/* v in decimal, written in place (it may write up to 3 bytes past the number's end: callers
 * reserve room for a line and the pieces after it overwrite them) */
static inline void put_ll(buf_t *b, long long v) {
    char *o = b->p + b->len;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    if (v < 0)
        *o++ = '-';
    if (u < 1000) { /* a status, a small size: most numbers of a line */
        int skip = u >= 100 ? 0 : u >= 10 ? 1 : 2;
        memcpy(o, digits3[u] + skip, 3);
        b->len = o + 3 - skip - b->p;
        return;
    }
    int digits = 1;
    for (unsigned long long x = u; x >= 10; x /= 10)
        digits++;
    for (int k = digits - 1; k >= 0; k--) {
        o[k] = (char)('0' + u % 10);
        u /= 10;
    }
    b->len = o + digits - b->p;
}

/* accesslog._secs for a finite t below 1e15: seconds with millisecond resolution, "-" below 0.
 * The same double arithmetic as int(t * 1000.0 + 0.5) (truncation toward zero). */
static inline void put_secs(buf_t *b, double t) {
    if (t < 0.0) {
        b->p[b->len++] = '-';
        return;
    }
    long long ms = (long long)(t * 1000.0 + 0.5);
    if (ms < 1000)
        b->p[b->len++] = '0';
    else
        put_ll(b, ms / 1000);
    memcpy(b->p + b->len, millis[ms % 1000], 4);
    b->len += 4;
}

/* nginx's escaping (accesslog._escape for latin-1 text): '"', '\\' and bytes outside
 * printable ASCII become \xHH (upper-case hex). Needs 4 * n bytes of room. */
static void put_escaped(buf_t *b, const unsigned char *s, Py_ssize_t n) {
    static const char hex[] = "0123456789ABCDEF";
    char *o = b->p + b->len;
    for (Py_ssize_t k = 0; k < n; k++) {
        unsigned char c = s[k];
        if (c < 0x20 || c > 0x7E || c == '"' || c == '\\') {
            o[0] = '\\';
            o[1] = 'x';
            o[2] = hex[c >> 4];
            o[3] = hex[c & 15];
            o += 4;
        } else {
            *o++ = (char)c;
        }
    }
    b->len = o - b->p;
}

static Py_ssize_t find_crlf(const unsigned char *h, Py_ssize_t i, Py_ssize_t n) {
    while (i + 1 < n) {
        const unsigned char *cr = memchr(h + i, '\r', (size_t)(n - 1 - i));
        if (cr == NULL)
            return -1;
        i = cr - h;
        if (h[i + 1] == '\n')
            return i;
        i++;
    }
    return -1;
}

/* whether h[i:j] starts with name (lower case letters, '-' and ':') in any case */
static int named(const unsigned char *h, Py_ssize_t i, Py_ssize_t j, const char *name,
                 Py_ssize_t k) {
    if (j - i < k)
        return 0;
    for (Py_ssize_t m = 0; m < k; m++) {
        unsigned char ch = h[i + m], o = (unsigned char)name[m];
        if (ch != o && (o < 0x61 || ch != o - 0x20))
            return 0;
    }
    return 1;
}

/* no '"', '\\', HTAB or byte >= 0x80 in h[:n] (eight bytes per step) */
static int clean(const unsigned char *h, Py_ssize_t n) {
    const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
    Py_ssize_t k = 0;
    for (; k + 8 <= n; k += 8) {
        uint64_t w;
        memcpy(&w, h + k, 8);
        if (w & highs)
            return 0;
        /* a zero byte in w ^ (c * ones) is a byte equal to c (bytes are below 0x80 here) */
        uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\'), t = w ^ (ones * '\t');
        if (((q - ones) | (b - ones) | (t - ones)) & highs)
            return 0;
    }
    if (k < n && n >= 8) { /* the rest: the head's last eight bytes */
        uint64_t w;
        memcpy(&w, h + n - 8, 8);
        if (w & highs)
            return 0;
        uint64_t q = w ^ (ones * '"'), b = w ^ (ones * '\\'), t = w ^ (ones * '\t');
        return !(((q - ones) | (b - ones) | (t - ones)) & highs);
    }
    for (; k < n; k++) {
        unsigned char c = h[k];
        if (c == '"' || c == '\\' || c == '\t' || c >= 0x80)
            return 0;
    }
    return 1;
}

typedef struct {
    Py_ssize_t at, end; /* at < 0: absent */
} span_t;

static span_t trim(const unsigned char *h, Py_ssize_t i, Py_ssize_t j) {
    while (i < j && (h[i] == ' ' || h[i] == '\t'))
        i++;
    while (j > i && (h[j - 1] == ' ' || h[j - 1] == '\t'))
        j--;
    span_t s = {i, j};
    return s;
}

/* accesslog._head_fields on the head's bytes: the request line's length and the first
 * Authorization, Referer and User-Agent values. */
static Py_ssize_t head_fields(const unsigned char *h, Py_ssize_t n, span_t *auth, span_t *ref,
                              span_t *agent) {
    Py_ssize_t end = find_crlf(h, 0, n);
    if (end < 0)
        end = n;
    auth->at = ref->at = agent->at = -1;
    auth->end = ref->end = agent->end = -1;
    Py_ssize_t i = end + 2;
    int lines = 0;
    while (i < n) {
        if (lines < SCAN_LINES && h[i] == '\r' && i + 1 < n && h[i + 1] == '\n')
            break; /* the empty line */
        Py_ssize_t j = find_crlf(h, i, n);
        if (j < 0)
            j = n;
        unsigned char c = h[i] | 0x20;
        if (c == 'u') {
            if (agent->at < 0 && named(h, i, j, "user-agent:", 11))
                *agent = trim(h, i + 11, j);
        } else if (c == 'r') {
            if (ref->at < 0 && named(h, i, j, "referer:", 8))
                *ref = trim(h, i + 8, j);
        } else if (c == 'a' && auth->at < 0 && named(h, i, j, "authorization:", 14)) {
            *auth = trim(h, i + 14, j);
        }
        i = j + 2;
        lines++;
    }
    return end < MAX_LINE ? end : MAX_LINE;
}

/* an ASCII str's bytes, or NULL (not an exact str, or not ASCII) */
static const char *ascii(PyObject *o, Py_ssize_t *n) {
    if (!PyUnicode_CheckExact(o) || !PyUnicode_IS_ASCII(o))
        return NULL;
    *n = PyUnicode_GET_LENGTH(o);
    return (const char *)PyUnicode_1BYTE_DATA(o);
}

static int get_ll(PyObject *o, long long *v) {
    if (!PyLong_CheckExact(o))
        return 0;
#if PY_VERSION_HEX >= 0x030C0000
    if (PyUnstable_Long_IsCompact((PyLongObject *)o)) {
        *v = (long long)PyUnstable_Long_CompactValue((PyLongObject *)o);
        return 1;
    }
#else
    Py_ssize_t size = Py_SIZE(o); /* one digit or none: most numbers of a line */
    if (size >= -1 && size <= 1) {
        *v = size == 0 ? 0 : (long long)size * (long long)((PyLongObject *)o)->ob_digit[0];
        return 1;
    }
#endif
    int overflow;
    *v = PyLong_AsLongLongAndOverflow(o, &overflow);
    if (overflow || (*v == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return 0;
    }
    return 1;
}

/* a float this code formats as _secs does: finite and below 1e15 (NaN, inf and huge values go
 * to the reference, which raises or formats them as Python does) */
static int get_secs(PyObject *o, double *t) {
    if (!PyFloat_CheckExact(o))
        return 0;
    *t = PyFloat_AS_DOUBLE(o);
    return !isnan(*t) && *t < 1e15;
}

/* the attributes read, in this order */
enum {
    A_CREATED, A_AT, A_HEAD, A_PARSED, A_ADDR, A_STATUS, A_SENT, A_RT, A_TRIES, A_UADDR,
    A_USTATUS, A_UCT, A_UHT, A_CUT, NATTR
};
static const char *const attr_names[NATTR] = {
    "created", "at", "head", "parsed", "remote_addr", "status", "body_bytes_sent",
    "request_time", "tries", "uaddr", "ustatus", "uct", "uht", "cut",
};
static PyObject *attr_str[NATTR]; /* interned at import */

/* How to read the attributes of one type: its data descriptors (a compiled class's getset
 * descriptors, a slotted class's member descriptors) or, for anything else, the generic
 * lookup. */
typedef struct {
    PyTypeObject *type;
    PyObject *descr[NATTR]; /* owned; NULL: use PyObject_GetAttr */
} reader_t;

static void reader_clear(reader_t *r) {
    for (int k = 0; k < NATTR; k++)
        Py_CLEAR(r->descr[k]);
    r->type = NULL;
}

static void reader_for(reader_t *r, PyTypeObject *type) {
    reader_clear(r);
    r->type = type;
    if (type->tp_getattro != PyObject_GenericGetAttr || type->tp_setattro != PyObject_GenericSetAttr)
        return;
    for (int k = 0; k < NATTR; k++) {
        PyObject *d = _PyType_Lookup(type, attr_str[k]); /* borrowed */
        if (d != NULL &&
            ((Py_IS_TYPE(d, &PyGetSetDescr_Type) &&
              ((PyGetSetDescrObject *)d)->d_getset->get != NULL) ||
             Py_IS_TYPE(d, &PyMemberDescr_Type))) {
            Py_INCREF(d);
            r->descr[k] = d;
        }
    }
}

/* getattr(e, attr_names[k]), a new reference */
static PyObject *get(const reader_t *r, PyObject *e, int k) {
    PyObject *d = r->descr[k];
    if (d == NULL)
        return PyObject_GetAttr(e, attr_str[k]);
    if (Py_IS_TYPE(d, &PyMemberDescr_Type))
        return PyMember_GetOne((const char *)e, ((PyMemberDescrObject *)d)->d_member);
    PyGetSetDef *g = ((PyGetSetDescrObject *)d)->d_getset;
    return g->get(e, g->closure);
}

/* setattr(e, attr_names[k], v) */
static int set(const reader_t *r, PyObject *e, int k, PyObject *v) {
    PyObject *d = r->descr[k];
    if (d != NULL && Py_IS_TYPE(d, &PyMemberDescr_Type))
        return PyMember_SetOne((char *)e, ((PyMemberDescrObject *)d)->d_member, v);
    if (d != NULL && ((PyGetSetDescrObject *)d)->d_getset->set != NULL) {
        PyGetSetDef *g = ((PyGetSetDescrObject *)d)->d_getset;
        return g->set(e, v, g->closure);
    }
    return PyObject_SetAttr(e, attr_str[k], v);
}


typedef struct {
    PyObject *head, *parsed, *addr, *status, *sent, *rt, *tries, *uaddr, *ustatus, *uct, *uht,
        *cut;
} fields_t;

/* One line's values, as the formatter writes them. */
typedef struct {
    const unsigned char *h; /* the head as received */
    Py_ssize_t n;
    const char *addr; /* remote_addr, ASCII */
    Py_ssize_t addr_n;
    const char *ua; /* the upstream address, ASCII; NULL: nothing went upstream */
    Py_ssize_t ua_n;
    long long status, sent, us;
    double rt, ct, ht; /* finite, 0 <= rt < 1e15; ct and ht below 1e15 (below 0: absent) */
    int parsed, cut;
} rec_t;

/* r's line into b: 1, or 0 when the reference should write it (a Basic-auth user to decode),
 * -1 on an error. */
static int format_rec(buf_t *b, const rec_t *r, const char *start, Py_ssize_t start_n) {
    const unsigned char *h = r->h;
    Py_ssize_t n = r->n;
    span_t auth, ref, agent;
    Py_ssize_t req_n = head_fields(h, n, &auth, &ref, &agent);
    if (auth.at >= 0)
        return 0; /* the Basic-auth user (base64) is the reference's */
    Py_ssize_t room = start_n + r->addr_n + 4 * (req_n + 1) + 4 * (ref.end - ref.at) +
                      4 * (agent.end - agent.at) + r->ua_n + 200;
    if (grow(b, room) < 0)
        return -1;
    /* a parsed head holds no control character but HTAB (RFC 9112 §5.5): one look at the
     * whole head tells whether any field needs escaping, as the reference decides */
    int plain = r->parsed && clean(h, n);
    put(b, r->addr, r->addr_n);
    put(b, start, start_n);
    if (req_n == 0)
        PUTS(b, "-");
    else if (plain)
        put(b, (const char *)h, req_n);
    else
        put_escaped(b, h, req_n);
    PUTS(b, "\" ");
    put_ll(b, r->status);
    PUTS(b, " ");
    put_ll(b, r->sent);
    if (ref.at < 0) {
        PUTS(b, " \"-\" \"");
    } else {
        PUTS(b, " \"");
        if (plain)
            put(b, (const char *)h + ref.at, ref.end - ref.at);
        else
            put_escaped(b, h + ref.at, ref.end - ref.at);
        PUTS(b, "\" \"");
    }
    if (agent.at < 0)
        PUTS(b, "-");
    else if (plain)
        put(b, (const char *)h + agent.at, agent.end - agent.at);
    else
        put_escaped(b, h + agent.at, agent.end - agent.at);
    PUTS(b, "\" rt=");
    put_secs(b, r->rt);
    if (r->ua == NULL) {
        PUTS(b, " uaddr=- us=- uct=- uht=-");
    } else {
        PUTS(b, " uaddr=");
        put(b, r->ua, r->ua_n);
        PUTS(b, " us=");
        if (r->us == 0)
            PUTS(b, "-");
        else
            put_ll(b, r->us);
        PUTS(b, " uct=");
        put_secs(b, r->ct);
        PUTS(b, " uht=");
        put_secs(b, r->ht);
    }
    if (r->cut)
        PUTS(b, " cut=1");
    PUTS(b, "\n");
    return 1;
}

/* An entry object's line into b, from its attributes: 1, or 0 when the reference should
 * format it (a value of an unexpected type or range, retries, Basic auth), -1 on an error. */
static int format_one(buf_t *b, const fields_t *f, const char *start, Py_ssize_t start_n) {
    rec_t r;
    if (!PyBytes_CheckExact(f->head))
        return 0;
    r.h = (const unsigned char *)PyBytes_AS_STRING(f->head);
    r.n = PyBytes_GET_SIZE(f->head);
    r.addr = ascii(f->addr, &r.addr_n);
    if (r.addr == NULL || !get_ll(f->status, &r.status) || !get_ll(f->sent, &r.sent) ||
        !get_secs(f->rt, &r.rt))
        return 0;
    /* the upstream attempts: with retries (earlier attempts in `tries`) the reference
     * writes the line; else none (uaddr None) or one, in the entry's fields */
    if (!PyTuple_CheckExact(f->tries) || PyTuple_GET_SIZE(f->tries) != 0)
        return 0;
    r.ua = NULL;
    r.ua_n = 0;
    r.us = 0;
    r.ct = r.ht = 0.0;
    if (f->uaddr != Py_None &&
        ((r.ua = ascii(f->uaddr, &r.ua_n)) == NULL || !get_ll(f->ustatus, &r.us) ||
         !get_secs(f->uct, &r.ct) || !get_secs(f->uht, &r.ht)))
        return 0;
    r.parsed = PyObject_IsTrue(f->parsed);
    r.cut = PyObject_IsTrue(f->cut);
    if (r.parsed < 0 || r.cut < 0)
        return -1;
    return format_rec(b, &r, start, start_n);
}

static void fields_clear(fields_t *f) {
    Py_CLEAR(f->head);
    Py_CLEAR(f->parsed);
    Py_CLEAR(f->addr);
    Py_CLEAR(f->status);
    Py_CLEAR(f->sent);
    Py_CLEAR(f->rt);
    Py_CLEAR(f->tries);
    Py_CLEAR(f->uaddr);
    Py_CLEAR(f->ustatus);
    Py_CLEAR(f->uct);
    Py_CLEAR(f->uht);
    Py_CLEAR(f->cut);
}

/* e.created, stamped at + offset if it is 0.0 (-1.0 with an exception set on an error) */
static double created_of(const reader_t *r, PyObject *e, double offset) {
    PyObject *o = get(r, e, A_CREATED);
    if (o == NULL)
        return -1.0;
    double created = PyFloat_AsDouble(o);
    Py_DECREF(o);
    if (created != 0.0)
        return created;
    if ((o = get(r, e, A_AT)) == NULL)
        return -1.0;
    double at = PyFloat_AsDouble(o);
    Py_DECREF(o);
    if (at == -1.0 && PyErr_Occurred())
        return -1.0;
    created = at + offset;
    if ((o = PyFloat_FromDouble(created)) == NULL)
        return -1.0;
    int err = set(r, e, A_CREATED, o);
    Py_DECREF(o);
    return err < 0 ? -1.0 : created;
}

/* What a batch's lines share: the text, the writer's offset, the callbacks, the wall-clock
 * strings of the last second, the reader of the last entry type. */
typedef struct {
    buf_t b;
    double offset;
    PyObject *clock_get, *line; /* borrowed */
    PyObject *clock;            /* clock_get's tuple for `second` */
    long long second;
    reader_t r;
} batch_t;

static void batch_clear(batch_t *t) {
    reader_clear(&t->r);
    Py_CLEAR(t->clock);
    PyMem_Free(t->b.p);
    t->b.p = NULL;
}

/* The text before the request line of a line stamped `created` (' - - [local] "') in
 * *start, or NULL there when the reference should write the line (a time out of range, a
 * clock that does not answer as expected). -1 on an error, else 0. */
static int line_start(batch_t *t, double created, const char **start, Py_ssize_t *start_n) {
    *start = NULL;
    if (isnan(created) || !(created > -9e18 && created < 9e18))
        return 0;
    long long sec = (long long)created; /* int(created): toward zero */
    if (t->clock == NULL || sec != t->second) {
        PyObject *c = PyFloat_FromDouble(created);
        if (c == NULL)
            return -1;
        PyObject *tuple = PyObject_CallOneArg(t->clock_get, c);
        Py_DECREF(c);
        if (tuple == NULL)
            return -1;
        Py_XSETREF(t->clock, tuple);
        t->second = sec;
    }
    if (PyTuple_CheckExact(t->clock) && PyTuple_GET_SIZE(t->clock) == 4)
        *start = ascii(PyTuple_GET_ITEM(t->clock, 3), start_n);
    return 0;
}

/* The reference's line for e appended: 1, 0 if it is not ASCII (the caller formats the
 * batch with the reference then), -1 on an error. */
static int reference_line(batch_t *t, PyObject *e) {
    PyObject *text = PyObject_CallOneArg(t->line, e);
    if (text == NULL)
        return -1;
    Py_ssize_t n;
    const char *s = ascii(text, &n);
    int k = s == NULL ? 0 : grow(&t->b, n) < 0 ? -1 : 1;
    if (k > 0)
        put(&t->b, s, n);
    Py_DECREF(text);
    return k;
}

/* An entry object's line (the caller holds a reference to e): 1, 0 if the reference's line
 * is not ASCII, -1 on an error. */
static int entry_line(batch_t *t, PyObject *e) {
    if (Py_TYPE(e) != t->r.type)
        reader_for(&t->r, Py_TYPE(e));
    double created = created_of(&t->r, e, t->offset);
    if (created == -1.0 && PyErr_Occurred())
        return -1;
    const char *start;
    Py_ssize_t start_n = 0;
    if (line_start(t, created, &start, &start_n) < 0)
        return -1;
    if (start != NULL) {
        fields_t f = {NULL};
        const reader_t *r = &t->r;
        if ((f.head = get(r, e, A_HEAD)) == NULL || (f.parsed = get(r, e, A_PARSED)) == NULL ||
            (f.addr = get(r, e, A_ADDR)) == NULL || (f.status = get(r, e, A_STATUS)) == NULL ||
            (f.sent = get(r, e, A_SENT)) == NULL || (f.rt = get(r, e, A_RT)) == NULL ||
            (f.tries = get(r, e, A_TRIES)) == NULL || (f.uaddr = get(r, e, A_UADDR)) == NULL ||
            (f.ustatus = get(r, e, A_USTATUS)) == NULL || (f.uct = get(r, e, A_UCT)) == NULL ||
            (f.uht = get(r, e, A_UHT)) == NULL || (f.cut = get(r, e, A_CUT)) == NULL) {
            fields_clear(&f);
            return -1;
        }
        int done = format_one(&t->b, &f, start, start_n);
        fields_clear(&f);
        if (done != 0)
            return done;
    }
    return reference_line(t, e); /* the reference formats this one */
}

/* the batch's text as a str (ASCII) */
static PyObject *batch_text(batch_t *t) {
    PyObject *result = PyUnicode_New(t->b.len, 127);
    if (result != NULL && t->b.len)
        memcpy(PyUnicode_1BYTE_DATA(result), t->b.p, (size_t)t->b.len);
    return result;
}

static PyObject *combined_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "combined_batch(entries: list, offset: float, clock_get, line)");
        return NULL;
    }
    PyObject *entries = args[0];
    batch_t t = {{NULL, 0, 0}, 0.0, args[2], args[3], NULL, 0, {NULL, {NULL}}};
    t.offset = PyFloat_AsDouble(args[1]);
    if (t.offset == -1.0 && PyErr_Occurred())
        return NULL;
    if (grow(&t.b, 256 * PyList_GET_SIZE(entries)) < 0) /* (a usual line: ~150 bytes) */
        return NULL;
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(entries); i++) {
        PyObject *e = PyList_GET_ITEM(entries, i);
        Py_INCREF(e);
        int k = entry_line(&t, e);
        Py_DECREF(e);
        if (k < 0)
            goto out;
        if (k == 0) { /* not ASCII: the caller formats the batch */
            result = Py_None;
            Py_INCREF(result);
            goto out;
        }
    }
    result = batch_text(&t);
out:
    batch_clear(&t);
    return result;
}

/* ------------------------------------------------------------------------------------------
 * Queue: the entries of an AccessBuffer in order, each an entry object (put) or the fields
 * of a line (add: what the engine hands over for a usual request, so that no entry object
 * is built, read back and freed per request). */

typedef struct {
    PyObject *obj;          /* an entry object (put); NULL: the fields below (add) */
    PyObject *addr, *uaddr; /* ASCII str, ASCII str or NULL (no upstream) */
    Py_ssize_t head_at, head_n; /* the head: a copy in the queue's `heads` */
    long long status, sent, us;
    double rt, at, ct, ht;
} slot_t;

/* The heads are copied into one buffer, not kept as the engine's bytes objects: the session
 * frees its head as it does with the log off (its memory is reused by the next request),
 * and a batch's heads are read in one sweep. */
typedef struct {
    PyObject_HEAD
    slot_t *slots;
    Py_ssize_t len, cap;
    buf_t heads; /* the heads of the queued lines, back to back */
    Py_ssize_t max_bytes; /* heads past this many bytes: add() says "write now" (0: no cap) */
    int busy; /* combined() or entries() is reading it (their callbacks must not change it) */
} QueueObject;

static PyTypeObject QueueType;

static void slot_clear(slot_t *s) {
    Py_CLEAR(s->obj);
    Py_CLEAR(s->addr);
    Py_CLEAR(s->uaddr);
}

static int queue_idle(QueueObject *q) {
    if (q->busy) {
        PyErr_SetString(PyExc_RuntimeError, "access log queue changed while it was read");
        return 0;
    }
    return 1;
}

/* room for one more slot (and `head` more bytes of heads): its index, or -1 with an error */
static Py_ssize_t queue_slot(QueueObject *q, Py_ssize_t head) {
    if (!queue_idle(q))
        return -1;
    if (q->len == q->cap) {
        Py_ssize_t cap = q->cap ? q->cap * 2 : 64;
        if (cap > PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(slot_t)) {
            PyErr_NoMemory();
            return -1;
        }
        slot_t *p = PyMem_Realloc(q->slots, (size_t)cap * sizeof(slot_t));
        if (p == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        q->slots = p;
        q->cap = cap;
    }
    if (grow(&q->heads, head) < 0)
        return -1;
    return q->len++;
}

/* add(remote_addr, head, status, body_bytes_sent, request_time, at, uaddr, ustatus, uct, uht)
 * -> the queue's length (sys.maxsize once its heads hold max_bytes or more: a batch of large
 * heads is written before it has its number of lines), or -1 (nothing queued) when a value is
 * not one this code formats
 * itself (the caller queues an entry object instead): the fields of AccessEntry(remote_addr,
 * head, status, body_bytes_sent, request_time) logged at `at`, with one upstream attempt
 * (uaddr, ustatus, uct, uht) or none (uaddr None; the other three are ignored). */
static PyObject *queue_add(QueueObject *q, PyObject *const *a, Py_ssize_t nargs) {
    if (nargs != 10) {
        PyErr_SetString(PyExc_TypeError,
                        "add(remote_addr, head, status, body_bytes_sent, request_time, at, "
                        "uaddr, ustatus, uct, uht)");
        return NULL;
    }
    slot_t s;
    Py_ssize_t n;
    if (!PyBytes_CheckExact(a[1]) || ascii(a[0], &n) == NULL || !get_ll(a[2], &s.status) ||
        !get_ll(a[3], &s.sent) || !PyFloat_CheckExact(a[4]) || !PyFloat_CheckExact(a[5]))
        return PyLong_FromLong(-1);
    s.rt = PyFloat_AS_DOUBLE(a[4]);
    s.rt = s.rt > 0.0 ? s.rt : 0.0; /* AccessEntry's: below 0 and NaN are 0.0 */
    s.at = PyFloat_AS_DOUBLE(a[5]);
    if (!(s.rt < 1e15) || !isfinite(s.at))
        return PyLong_FromLong(-1);
    s.us = 0;
    s.ct = s.ht = -1.0;
    s.uaddr = NULL;
    if (a[6] != Py_None) {
        if (ascii(a[6], &n) == NULL || !get_ll(a[7], &s.us) || !get_secs(a[8], &s.ct) ||
            !get_secs(a[9], &s.ht))
            return PyLong_FromLong(-1);
        s.uaddr = a[6];
    }
    s.head_n = PyBytes_GET_SIZE(a[1]);
    Py_ssize_t i = queue_slot(q, s.head_n);
    if (i < 0)
        return NULL;
    s.head_at = q->heads.len;
    memcpy(q->heads.p + s.head_at, PyBytes_AS_STRING(a[1]), (size_t)s.head_n);
    q->heads.len += s.head_n;
    s.obj = NULL;
    s.addr = a[0];
    Py_INCREF(s.addr);
    Py_XINCREF(s.uaddr);
    q->slots[i] = s;
    if (q->max_bytes > 0 && q->heads.len >= q->max_bytes)
        return PyLong_FromSsize_t(PY_SSIZE_T_MAX);
    return PyLong_FromSsize_t(q->len);
}

/* put(entry) -> the queue's length: an entry object, queued as it is */
static PyObject *queue_put(QueueObject *q, PyObject *entry) {
    Py_ssize_t i = queue_slot(q, 0);
    if (i < 0)
        return NULL;
    slot_t *s = &q->slots[i];
    memset(s, 0, sizeof(*s));
    s->obj = entry;
    Py_INCREF(entry);
    return PyLong_FromSsize_t(q->len);
}

/* take() -> a new Queue with everything queued; this one is empty afterwards */
static PyObject *queue_take(QueueObject *q, PyObject *unused) {
    if (!queue_idle(q))
        return NULL;
    QueueObject *t = PyObject_GC_New(QueueObject, &QueueType);
    if (t == NULL)
        return NULL;
    t->slots = q->slots;
    t->len = q->len;
    t->cap = q->cap;
    t->heads = q->heads;
    t->max_bytes = q->max_bytes;
    t->busy = 0;
    q->slots = NULL;
    q->len = q->cap = 0;
    q->heads = (buf_t){NULL, 0, 0};
    PyObject_GC_Track(t);
    return (PyObject *)t;
}

/* make(remote_addr, head, status, ...) for the fields of slot i: the entry object */
static PyObject *make_entry(PyObject *make, const QueueObject *q, Py_ssize_t i) {
    const slot_t *s = &q->slots[i];
    PyObject *args[10] = {s->addr, PyBytes_FromStringAndSize(q->heads.p + s->head_at, s->head_n),
                          PyLong_FromLongLong(s->status), PyLong_FromLongLong(s->sent),
                          PyFloat_FromDouble(s->rt), PyFloat_FromDouble(s->at),
                          s->uaddr ? s->uaddr : Py_None, PyLong_FromLongLong(s->us),
                          PyFloat_FromDouble(s->ct), PyFloat_FromDouble(s->ht)};
    PyObject *e = NULL;
    int made[] = {1, 2, 3, 4, 5, 7, 8, 9};
    int ok = 1;
    for (int k = 0; k < 8; k++)
        ok = ok && args[made[k]] != NULL;
    if (ok)
        e = PyObject_Vectorcall(make, args, 10, NULL);
    for (int k = 0; k < 8; k++)
        Py_XDECREF(args[made[k]]);
    return e;
}

/* entries(make) -> list: every queued entry as an object, in order; the fields of a slot
 * made into one with make(remote_addr, head, status, body_bytes_sent, request_time, at,
 * uaddr, ustatus, uct, uht) once (the slot keeps the object) */
static PyObject *queue_entries(QueueObject *q, PyObject *make) {
    if (!queue_idle(q))
        return NULL;
    PyObject *list = PyList_New(q->len);
    if (list == NULL)
        return NULL;
    q->busy = 1;
    for (Py_ssize_t i = 0; i < q->len; i++) {
        slot_t *s = &q->slots[i];
        if (s->obj == NULL) {
            PyObject *e = make_entry(make, q, i); /* (busy: the slots stay where they are) */
            if (e == NULL) {
                q->busy = 0;
                Py_DECREF(list);
                return NULL;
            }
            Py_CLEAR(s->addr);
            Py_CLEAR(s->uaddr);
            s->obj = e;
        }
        Py_INCREF(s->obj);
        PyList_SET_ITEM(list, i, s->obj);
    }
    q->busy = 0;
    return list;
}

/* Slot i's line from its fields (stamped at + offset): 1, 0 if the reference's line is not
 * ASCII, -1 on an error. (The queue is busy: the callbacks cannot change it.) */
static int fields_line(batch_t *t, PyObject *make, const QueueObject *q, Py_ssize_t i) {
    const slot_t *s = &q->slots[i];
    const char *start;
    Py_ssize_t start_n = 0;
    int k = line_start(t, s->at + t->offset, &start, &start_n); /* -1, or 0 */
    if (k == 0 && start != NULL) {
        rec_t r;
        r.h = (const unsigned char *)q->heads.p + s->head_at;
        r.n = s->head_n;
        r.addr = (const char *)PyUnicode_1BYTE_DATA(s->addr);
        r.addr_n = PyUnicode_GET_LENGTH(s->addr);
        r.ua = s->uaddr ? (const char *)PyUnicode_1BYTE_DATA(s->uaddr) : NULL;
        r.ua_n = s->uaddr ? PyUnicode_GET_LENGTH(s->uaddr) : 0;
        r.status = s->status;
        r.sent = s->sent;
        r.us = s->us;
        r.rt = s->rt;
        r.ct = s->ct;
        r.ht = s->ht;
        r.parsed = 1;
        r.cut = 0;
        k = format_rec(&t->b, &r, start, start_n);
    }
    if (k == 0) { /* the reference's line, for the entry these fields make */
        PyObject *e = make_entry(make, q, i);
        k = e == NULL ? -1 : entry_line(t, e);
        Py_XDECREF(e);
    }
    return k;
}

/* combined(offset, clock_get, line, make) -> str | None: the queue's combined lines, as
 * combined_batch writes them for its entries (make: as for entries()) */
static PyObject *queue_combined(QueueObject *q, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "combined(offset: float, clock_get, line, make)");
        return NULL;
    }
    if (!queue_idle(q))
        return NULL;
    batch_t t = {{NULL, 0, 0}, 0.0, args[1], args[2], NULL, 0, {NULL, {NULL}}};
    PyObject *make = args[3];
    t.offset = PyFloat_AsDouble(args[0]);
    if (t.offset == -1.0 && PyErr_Occurred())
        return NULL;
    if (grow(&t.b, 256 * q->len) < 0) /* (a usual line: ~150 bytes) */
        return NULL;
    PyObject *result = NULL;
    q->busy = 1;
    for (Py_ssize_t i = 0; i < q->len; i++) {
        PyObject *e = q->slots[i].obj;
        int k;
        if (e != NULL) {
            Py_INCREF(e);
            k = entry_line(&t, e);
            Py_DECREF(e);
        } else {
            k = fields_line(&t, make, q, i);
        }
        if (k < 0)
            goto out;
        if (k == 0) { /* not ASCII: the caller formats the batch */
            result = Py_None;
            Py_INCREF(result);
            goto out;
        }
    }
    result = batch_text(&t);
out:
    q->busy = 0;
    batch_clear(&t);
    return result;
}

static Py_ssize_t queue_len(QueueObject *q) {
    return q->len;
}

static int queue_traverse(QueueObject *q, visitproc visit, void *arg) {
    for (Py_ssize_t i = 0; i < q->len; i++)
        Py_VISIT(q->slots[i].obj);
    return 0;
}

static int queue_clear(QueueObject *q) {
    slot_t *slots = q->slots;
    Py_ssize_t n = q->len;
    q->slots = NULL;
    q->len = q->cap = 0;
    for (Py_ssize_t i = 0; i < n; i++)
        slot_clear(&slots[i]);
    PyMem_Free(slots);
    PyMem_Free(q->heads.p);
    q->heads = (buf_t){NULL, 0, 0};
    return 0;
}

static void queue_dealloc(QueueObject *q) {
    PyObject_GC_UnTrack(q);
    queue_clear(q);
    Py_TYPE(q)->tp_free((PyObject *)q);
}

/* Queue(max_bytes=0): see add() */
static PyObject *queue_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"max_bytes", NULL};
    Py_ssize_t max_bytes = 0;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|n:Queue", kwlist, &max_bytes))
        return NULL;
    QueueObject *q = (QueueObject *)type->tp_alloc(type, 0);
    if (q != NULL) {
        q->slots = NULL;
        q->len = q->cap = 0;
        q->heads = (buf_t){NULL, 0, 0};
        q->max_bytes = max_bytes > 0 ? max_bytes : 0;
        q->busy = 0;
    }
    return (PyObject *)q;
}

static PyMethodDef queue_methods[] = {
    {"add", (PyCFunction)(void (*)(void))queue_add, METH_FASTCALL,
     "Queue a line's fields (-1: not queued, queue an entry object instead)."},
    {"put", (PyCFunction)queue_put, METH_O, "Queue an entry object."},
    {"take", (PyCFunction)queue_take, METH_NOARGS, "Everything queued, in a new Queue."},
    {"entries", (PyCFunction)queue_entries, METH_O, "The queued entries as objects."},
    {"combined", (PyCFunction)(void (*)(void))queue_combined, METH_FASTCALL,
     "The combined lines of the queued entries (None: format them in Python)."},
    {NULL, NULL, 0, NULL},
};

static PySequenceMethods queue_as_sequence = {
    .sq_length = (lenfunc)queue_len,
};

static PyTypeObject QueueType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "proxycore._alogfmt.Queue",
    .tp_basicsize = sizeof(QueueObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "An access buffer's entries in order: entry objects and lines' fields.",
    .tp_new = queue_new,
    .tp_dealloc = (destructor)queue_dealloc,
    .tp_traverse = (traverseproc)queue_traverse,
    .tp_clear = (inquiry)queue_clear,
    .tp_methods = queue_methods,
    .tp_as_sequence = &queue_as_sequence,
};

static PyMethodDef methods[] = {
    {"combined_batch", (PyCFunction)(void (*)(void))combined_batch, METH_FASTCALL,
     "The combined lines of a batch of access entries (None: format it in Python)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_alogfmt", "The access log's combined lines in C.", -1, methods,
};

PyMODINIT_FUNC PyInit__alogfmt(void) {
    for (int k = 0; k < NATTR; k++) {
        if (attr_str[k] == NULL && (attr_str[k] = PyUnicode_InternFromString(attr_names[k])) == NULL)
            return NULL;
    }
    fill_tables();
    if (PyType_Ready(&QueueType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    Py_INCREF(&QueueType);
    if (PyModule_AddObject(m, "Queue", (PyObject *)&QueueType) < 0) {
        Py_DECREF(&QueueType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
