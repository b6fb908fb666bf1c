/* The access log's combined lines in C: proxycore/accesslog.py's _combined (the reference,
 * and the fallback where this module is not built) for a whole batch, in one pass and one
 * buffer. tests/test_accesslog_c.py checks both give the same text, byte for byte.
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
 * formats the batch with the reference then). No I/O here: the text is the caller's. */

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

/* v in decimal, written in place */
static inline void put_ll(buf_t *b, long long v) {
    char *o = b->p + b->len;
    unsigned long long u = v < 0 ? 0ULL - (unsigned long long)v : (unsigned long long)v;
    if (v < 0)
        *o++ = '-';
    if (u < 1000) { /* a status, a small size: most numbers of a line */
        if (u >= 100)
            *o++ = (char)('0' + u / 100);
        if (u >= 10)
            *o++ = (char)('0' + u / 10 % 10);
        *o++ = (char)('0' + u % 10);
        b->len = o - b->p;
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
    char *o = b->p + b->len;
    int frac = (int)(ms % 1000);
    o[0] = '.';
    o[1] = (char)('0' + frac / 100);
    o[2] = (char)('0' + frac / 10 % 10);
    o[3] = (char)('0' + frac % 10);
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

/* One entry's line into b, or 0 when the reference should format it, -1 on an error. */
static int format_one(buf_t *b, const fields_t *f, const char *start, Py_ssize_t start_n) {
    if (!PyBytes_CheckExact(f->head))
        return 0;
    const unsigned char *h = (const unsigned char *)PyBytes_AS_STRING(f->head);
    Py_ssize_t n = PyBytes_GET_SIZE(f->head);
    Py_ssize_t addr_n;
    const char *addr = ascii(f->addr, &addr_n);
    long long status, sent;
    double rt;
    if (addr == NULL || !get_ll(f->status, &status) || !get_ll(f->sent, &sent) ||
        !get_secs(f->rt, &rt))
        return 0;
    /* the upstream attempts: with retries (earlier attempts in `tries`) the reference
     * writes the line; else none (uaddr None) or one, in the entry's fields */
    if (!PyTuple_CheckExact(f->tries) || PyTuple_GET_SIZE(f->tries) != 0)
        return 0;
    int up = f->uaddr != Py_None;
    Py_ssize_t ua_n = 0;
    const char *ua = NULL;
    long long us = 0;
    double ct = 0.0, ht = 0.0;
    if (up && ((ua = ascii(f->uaddr, &ua_n)) == NULL || !get_ll(f->ustatus, &us) ||
               !get_secs(f->uct, &ct) || !get_secs(f->uht, &ht)))
        return 0;
    int parsed = PyObject_IsTrue(f->parsed);
    int cut = PyObject_IsTrue(f->cut);
    if (parsed < 0 || cut < 0)
        return -1;
    span_t auth, ref, agent;
    Py_ssize_t req_n = head_fields(h, n, &auth, &ref, &agent);
    if (auth.at >= 0)
        return 0; /* the Basic-auth user (base64) is the reference's */
    Py_ssize_t room = start_n + addr_n + 4 * (req_n + 1) + 4 * (ref.end - ref.at) +
                      4 * (agent.end - agent.at) + ua_n + 200;
    if (grow(b, room) < 0)
        return -1;
    /* a parsed head holds no control character but HTAB (RFC 9112 §5.5): one look at the
     * whole head tells whether any field needs escaping, as the reference decides */
    int plain = parsed && clean(h, n);
    put(b, addr, addr_n);
    put(b, start, start_n);
    if (req_n == 0)
        PUTS(b, "-");
    else if (plain)
        put(b, (const char *)h, req_n);
    else
        put_escaped(b, h, req_n);
    PUTS(b, "\" ");
    put_ll(b, status);
    PUTS(b, " ");
    put_ll(b, sent);
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
    put_secs(b, rt);
    if (!up) {
        PUTS(b, " uaddr=- us=- uct=- uht=-");
    } else {
        PUTS(b, " uaddr=");
        put(b, ua, ua_n);
        PUTS(b, " us=");
        if (us == 0)
            PUTS(b, "-");
        else
            put_ll(b, us);
        PUTS(b, " uct=");
        put_secs(b, ct);
        PUTS(b, " uht=");
        put_secs(b, ht);
    }
    if (cut)
        PUTS(b, " cut=1");
    PUTS(b, "\n");
    return 1;
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

static PyObject *combined_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyList_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError,
                        "combined_batch(entries: list, offset: float, clock_get, line)");
        return NULL;
    }
    PyObject *entries = args[0], *clock_get = args[2], *line = args[3];
    double offset = PyFloat_AsDouble(args[1]);
    if (offset == -1.0 && PyErr_Occurred())
        return NULL;
    buf_t b = {NULL, 0, 0};
    if (grow(&b, 256 * PyList_GET_SIZE(entries)) < 0) /* (a usual line: ~150 bytes) */
        return NULL;
    PyObject *clock = NULL; /* the clock's tuple for `second` */
    long long second = 0;
    PyObject *result = NULL;
    reader_t r = {NULL, {NULL}};
    fields_t f = {NULL};
    PyObject *e = NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(entries); i++) {
        e = PyList_GET_ITEM(entries, i);
        Py_INCREF(e);
        if (Py_TYPE(e) != r.type)
            reader_for(&r, Py_TYPE(e));
        double created = created_of(&r, e, offset);
        if (created == -1.0 && PyErr_Occurred())
            goto out;
        int done = 0;
        const char *start = NULL;
        Py_ssize_t start_n = 0;
        if (!isnan(created) && created > -9e18 && created < 9e18) {
            long long sec = (long long)created; /* int(created): toward zero */
            if (clock == NULL || sec != second) {
                PyObject *c = PyFloat_FromDouble(created);
                if (c == NULL)
                    goto out;
                PyObject *t = PyObject_CallOneArg(clock_get, c);
                Py_DECREF(c);
                if (t == NULL)
                    goto out;
                Py_XSETREF(clock, t);
                second = sec;
            }
            if (PyTuple_CheckExact(clock) && PyTuple_GET_SIZE(clock) == 4)
                start = ascii(PyTuple_GET_ITEM(clock, 3), &start_n);
        }
        if (start != NULL) {
            if ((f.head = get(&r, e, A_HEAD)) == NULL ||
                (f.parsed = get(&r, e, A_PARSED)) == NULL ||
                (f.addr = get(&r, e, A_ADDR)) == NULL ||
                (f.status = get(&r, e, A_STATUS)) == NULL ||
                (f.sent = get(&r, e, A_SENT)) == NULL || (f.rt = get(&r, e, A_RT)) == NULL ||
                (f.tries = get(&r, e, A_TRIES)) == NULL ||
                (f.uaddr = get(&r, e, A_UADDR)) == NULL ||
                (f.ustatus = get(&r, e, A_USTATUS)) == NULL ||
                (f.uct = get(&r, e, A_UCT)) == NULL || (f.uht = get(&r, e, A_UHT)) == NULL ||
                (f.cut = get(&r, e, A_CUT)) == NULL)
                goto out;
            done = format_one(&b, &f, start, start_n);
            fields_clear(&f);
            if (done < 0)
                goto out;
        }
        if (!done) { /* the reference formats this one */
            PyObject *text = PyObject_CallOneArg(line, e);
            if (text == NULL)
                goto out;
            Py_ssize_t n;
            const char *s = ascii(text, &n);
            if (s == NULL) { /* not ASCII (or not a str): the caller formats the batch */
                Py_DECREF(text);
                result = Py_None;
                Py_INCREF(result);
                goto out;
            }
            if (grow(&b, n) < 0) {
                Py_DECREF(text);
                goto out;
            }
            put(&b, s, n);
            Py_DECREF(text);
        }
        Py_CLEAR(e);
    }
    result = PyUnicode_New(b.len, 127);
    if (result != NULL && b.len)
        memcpy(PyUnicode_1BYTE_DATA(result), b.p, (size_t)b.len);
out:
    fields_clear(&f);
    Py_XDECREF(e);
    reader_clear(&r);
    Py_XDECREF(clock);
    PyMem_Free(b.p);
    return result;
}

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
    return PyModule_Create(&module);
}
