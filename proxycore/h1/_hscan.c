/* proxycore.h1._hscan -- the HTTP/1.1 head scanner in C (the compiled build's fast path).

Theory of operation: pure functions over text that proxycore/h1/parse.py has already
decoded as latin-1 (so one character is one byte). They make exactly the decisions of the
Python reference functions next to them in parse.py -- _request_line_py, _status_line_py,
_scan_fields_py, _head_end_py and _valid_host_py -- and nothing more: no protocol semantics (duplicate Content-Length, Host rules, body framing)
live here; parse.py applies those to what these return. tests/test_h1_scan.py compiles this
file and checks it against the reference on generated inputs.

  request_line(text, line_end) -> (method, target, major, minor) | None
      `method SP request-target SP HTTP/d.d` over text[:line_end] (RFC 9112 §3; method is a
      token, RFC 9110 §9.1; the target is 1*(%x21-7E): any other form check is parse.py's).

  scan_fields(block) -> [(lower-case name, value), ...] | None
      None unless block is a sequence of `token ":" field-value CRLF` lines (RFC 9112 §5,
      RFC 9110 §5.5: no whitespace before the colon, no CTL other than HTAB in a value, no
      bare CR or LF, no obs-fold). Otherwise the fields that decide framing and connection
      handling, in order, with the value's surrounding SP/HTAB removed: Content-Length,
      Transfer-Encoding, Host, Connection, Expect, Upgrade, Keep-Alive, TE, Proxy-Connection,
      Proxy-Authenticate, Proxy-Authorization and X-Forwarded-*. When any field name holds
      an underscore, one more pair ends the list: ("_", "") (no field can put it there: "_" is
      no framing name), so parse.py learns it from the scan it does anyway.

  status_line(text, line_end) -> (major, minor, status, reason) | None
      `HTTP-version SP status-code [ SP reason-phrase ]` over text[:line_end] (RFC 9112 §4;
      the reason is empty when absent; version and range checks are parse.py's).

  head_end(buf, start) -> offset just past the first CRLFCRLF at or after start, or -1
      (buf is any bytes-like object; the limits that apply while waiting are parse.py's).

  valid_host(text) -> bool
      A Host value or authority: IP-literal or reg-name, then an optional ":" port (RFC 9112
      §3.2, RFC 3986 §3.2.2), exactly as parse.py's _HOST_RE.

No I/O, no global state beyond constant tables and interned name strings built at import. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <string.h>

static unsigned char is_tchar[256];   /* RFC 9110 §5.6.2 tchar */
static unsigned char is_name_run[256]; /* a tchar but "_": where a field name's scan pauses */
static unsigned char is_vchar[256];   /* HTAB, SP, VCHAR, obs-text: a field value's characters */
static unsigned char lower[256];
static unsigned char is_regname[256]; /* parse.py's _HOST_RE reg-name characters */

struct name {
    const char *text; /* lower case */
    Py_ssize_t len;
    PyObject *str;    /* interned */
};

static struct name names[] = {
    {"content-length", 14, NULL},
    {"transfer-encoding", 17, NULL},
    {"host", 4, NULL},
    {"connection", 10, NULL},
    {"expect", 6, NULL},
    {"upgrade", 7, NULL},
    {"keep-alive", 10, NULL},
    {"te", 2, NULL},
    {"proxy-connection", 16, NULL},
    {"proxy-authenticate", 18, NULL},
    {"proxy-authorization", 19, NULL},
};
#define N_NAMES ((int)(sizeof(names) / sizeof(names[0])))
#define XF "x-forwarded-"
#define XF_LEN 12

static PyObject *methods[8]; /* interned common methods, returned instead of fresh strings */
static const char *method_text[8] = {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"};

static int
same_lower(const Py_UCS1 *p, const char *lc, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (lower[p[i]] != (unsigned char)lc[i])
            return 0;
    }
    return 1;
}

static const Py_UCS1 *
latin1(PyObject *s, Py_ssize_t *n)
{
    if (!PyUnicode_Check(s)) {
        PyErr_SetString(PyExc_TypeError, "str expected");
        return NULL;
    }
#if PY_VERSION_HEX < 0x030C0000 /* a no-op, deprecated, from 3.12 on */
    if (PyUnicode_READY(s) < 0)
        return NULL;
#endif
    if (PyUnicode_KIND(s) != PyUnicode_1BYTE_KIND) {
        /* parse.py always passes latin-1-decoded text; anything else is a caller bug */
        PyErr_SetString(PyExc_TypeError, "latin-1 text expected");
        return NULL;
    }
    *n = PyUnicode_GET_LENGTH(s);
    return PyUnicode_1BYTE_DATA(s);
}

static PyObject *
substr(const Py_UCS1 *p, Py_ssize_t n)
{
    return PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, p, n);
}

/* The (text, line_end) arguments: text's characters and length, and *end = line_end; NULL
   with an exception set when they are not a latin-1 str and an int. */
static const Py_UCS1 *
line_args(PyObject *const *args, Py_ssize_t nargs, const char *usage, Py_ssize_t *n,
          Py_ssize_t *end)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, usage);
        return NULL;
    }
    const Py_UCS1 *s = latin1(args[0], n);
    if (s == NULL)
        return NULL;
    *end = PyLong_AsSsize_t(args[1]);
    if (*end == -1 && PyErr_Occurred())
        return NULL;
    return s;
}

/* A 4-tuple that steals the four references (NULL if any is NULL: an exception is set). */
static PyObject *
tuple4(PyObject *a, PyObject *b, PyObject *c, PyObject *d)
{
    PyObject *t = NULL;
    if (a != NULL && b != NULL && c != NULL && d != NULL && (t = PyTuple_New(4)) != NULL) {
        PyTuple_SET_ITEM(t, 0, a);
        PyTuple_SET_ITEM(t, 1, b);
        PyTuple_SET_ITEM(t, 2, c);
        PyTuple_SET_ITEM(t, 3, d);
        return t;
    }
    Py_XDECREF(a);
    Py_XDECREF(b);
    Py_XDECREF(c);
    Py_XDECREF(d);
    return NULL;
}

static PyObject *
request_line(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t n, end;
    const Py_UCS1 *s = line_args(args, nargs, "request_line(text, line_end)", &n, &end);
    if (s == NULL)
        return NULL;
    if (end < 0 || end > n)
        Py_RETURN_NONE;
    Py_ssize_t i = 0;
    while (i < end && is_tchar[s[i]])
        i++;
    Py_ssize_t method_len = i;
    if (method_len == 0 || i >= end || s[i] != ' ')
        Py_RETURN_NONE;
    Py_ssize_t target_start = ++i;
    while (i < end && s[i] >= 0x21 && s[i] <= 0x7e)
        i++;
    Py_ssize_t target_len = i - target_start;
    /* then exactly " HTTP/" DIGIT "." DIGIT up to line_end */
    if (target_len == 0 || end - i != 9 || memcmp(s + i, " HTTP/", 6) != 0 || s[i + 6] < '0' ||
        s[i + 6] > '9' || s[i + 7] != '.' || s[i + 8] < '0' || s[i + 8] > '9')
        Py_RETURN_NONE;

    PyObject *method = NULL;
    for (int k = 0; k < 8; k++) {
        if ((Py_ssize_t)strlen(method_text[k]) == method_len &&
            memcmp(s, method_text[k], method_len) == 0) {
            method = Py_NewRef(methods[k]);
            break;
        }
    }
    if (method == NULL && (method = substr(s, method_len)) == NULL)
        return NULL;
    return tuple4(method, substr(s + target_start, target_len), PyUnicode_FromOrdinal(s[i + 6]),
                  PyUnicode_FromOrdinal(s[i + 8]));
}

/* The interned lower-case name of a framing field, a new lower-case X-Forwarded-* name, or
   NULL (without an exception) when the field is not one of them. *err is set on failure. */
static PyObject *
framing_name(const Py_UCS1 *p, Py_ssize_t n, int *err)
{
    for (int k = 0; k < N_NAMES; k++) {
        if (names[k].len == n && same_lower(p, names[k].text, n))
            return Py_NewRef(names[k].str);
    }
    if (n >= XF_LEN && same_lower(p, XF, XF_LEN)) {
        PyObject *s = PyUnicode_New(n, 127); /* a token is ASCII */
        if (s == NULL) {
            *err = 1;
            return NULL;
        }
        Py_UCS1 *d = PyUnicode_1BYTE_DATA(s);
        for (Py_ssize_t i = 0; i < n; i++)
            d[i] = lower[p[i]];
        return s;
    }
    return NULL;
}

static PyObject *underscore_mark; /* ("_", ""): a field name holds an underscore */

/* A field name's scan (over is_name_run) stopped at s[pos]: if that is a "_", the rest of the
   name up to its ":", else -1. Out of line and cold, so that the usual scan, which never gets
   here, compiles to the same loop as without the underscore rule (measured: an instruction per
   name character more when the two loops share registers). */
#if defined(__GNUC__)
__attribute__((noinline, cold))
#endif
static Py_ssize_t
name_rest(const Py_UCS1 *s, Py_ssize_t pos, Py_ssize_t n)
{
    if (pos >= n || s[pos] != '_')
        return -1;
    while (pos < n && is_tchar[s[pos]])
        pos++;
    return pos < n && s[pos] == ':' ? pos : -1;
}

static PyObject *
scan_fields(PyObject *module, PyObject *block)
{
    Py_ssize_t n;
    const Py_UCS1 *s = latin1(block, &n);
    if (s == NULL)
        return NULL;
    PyObject *out = PyList_New(0);
    if (out == NULL)
        return NULL;
    Py_ssize_t pos = 0;
    int underscore = 0; /* a field name holds "_" */
    while (pos < n) {
        Py_ssize_t start = pos;
        while (pos < n && is_name_run[s[pos]])
            pos++;
        if (pos == start || pos >= n || s[pos] != ':') {
            /* Only here, off the usual path, is a "_" looked for (see name_rest). */
            if ((pos = name_rest(s, pos, n)) < 0)
                goto invalid;
            underscore = 1;
        }
        Py_ssize_t colon = pos++;
        while (pos < n && is_vchar[s[pos]])
            pos++;
        if (pos + 1 >= n || s[pos] != '\r' || s[pos + 1] != '\n')
            goto invalid;
        Py_ssize_t eol = pos;
        pos += 2;
        switch (s[start]) { /* the initials of the framing names */
        case 'c': case 'C': case 'e': case 'E': case 'h': case 'H': case 'k': case 'K':
        case 'p': case 'P': case 't': case 'T': case 'u': case 'U': case 'x': case 'X':
            break;
        default:
            continue;
        }
        int err = 0;
        PyObject *name = framing_name(s + start, colon - start, &err);
        if (name == NULL) {
            if (err)
                goto error;
            continue;
        }
        Py_ssize_t vs = colon + 1, ve = eol;
        while (vs < ve && (s[vs] == ' ' || s[vs] == '\t'))
            vs++;
        while (ve > vs && (s[ve - 1] == ' ' || s[ve - 1] == '\t'))
            ve--;
        PyObject *value = substr(s + vs, ve - vs);
        if (value == NULL) {
            Py_DECREF(name);
            goto error;
        }
        PyObject *pair = PyTuple_New(2);
        if (pair == NULL) {
            Py_DECREF(name);
            Py_DECREF(value);
            goto error;
        }
        PyTuple_SET_ITEM(pair, 0, name);
        PyTuple_SET_ITEM(pair, 1, value);
        int rc = PyList_Append(out, pair);
        Py_DECREF(pair);
        if (rc < 0)
            goto error;
    }
    if (underscore && PyList_Append(out, underscore_mark) < 0)
        goto error;
    return out;
invalid:
    Py_DECREF(out);
    Py_RETURN_NONE;
error:
    Py_DECREF(out);
    return NULL;
}

static PyObject *reason_ok; /* interned "OK", the reason almost every response carries */

static PyObject *
status_line(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    Py_ssize_t n, end;
    const Py_UCS1 *s = line_args(args, nargs, "status_line(text, line_end)", &n, &end);
    if (s == NULL)
        return NULL;
    if (end < 12 || end > n)
        Py_RETURN_NONE;
    /* "HTTP/" DIGIT "." DIGIT SP 3DIGIT [ SP reason-phrase ] */
    if (memcmp(s, "HTTP/", 5) != 0 || s[5] < '0' || s[5] > '9' || s[6] != '.' || s[7] < '0' ||
        s[7] > '9' || s[8] != ' ')
        Py_RETURN_NONE;
    for (int k = 9; k < 12; k++) {
        if (s[k] < '0' || s[k] > '9')
            Py_RETURN_NONE;
    }
    PyObject *reason;
    if (end == 12) {
        reason = PyUnicode_New(0, 0);
    }
    else {
        if (s[12] != ' ')
            Py_RETURN_NONE;
        for (Py_ssize_t i = 13; i < end; i++) {
            if (!is_vchar[s[i]])
                Py_RETURN_NONE;
        }
        if (end == 15 && s[13] == 'O' && s[14] == 'K')
            reason = Py_NewRef(reason_ok);
        else
            reason = substr(s + 13, end - 13);
    }
    if (reason == NULL)
        return NULL;
    long status = (s[9] - '0') * 100 + (s[10] - '0') * 10 + (s[11] - '0');
    return tuple4(PyUnicode_FromOrdinal(s[5]), PyUnicode_FromOrdinal(s[7]),
                  PyLong_FromLong(status), reason);
}

static PyObject *
head_end(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "head_end(buf, start)");
        return NULL;
    }
    Py_ssize_t start = PyLong_AsSsize_t(args[1]);
    if (start == -1 && PyErr_Occurred())
        return NULL;
    if (start < 0) {
        PyErr_SetString(PyExc_ValueError, "start must be >= 0");
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
        return NULL;
    Py_ssize_t found = -1;
    if (start < view.len) {
        const char *base = (const char *)view.buf;
        const char *hit = memmem(base + start, (size_t)(view.len - start), "\r\n\r\n", 4);
        if (hit != NULL)
            found = (hit - base) + 4;
    }
    PyBuffer_Release(&view);
    return PyLong_FromSsize_t(found);
}

static int
is_hex_or(Py_UCS1 c, char also1, char also2)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') ||
           c == (Py_UCS1)also1 || c == (Py_UCS1)also2;
}

static PyObject *
valid_host(PyObject *module, PyObject *text)
{
    Py_ssize_t n, i = 0;
    const Py_UCS1 *s = latin1(text, &n);
    if (s == NULL)
        return NULL;
    if (n > 0 && s[0] == '[') { /* IP-literal */
        i = 1;
        while (i < n && is_hex_or(s[i], ':', '.'))
            i++;
        if (i == 1 || i >= n || s[i] != ']')
            Py_RETURN_FALSE;
        i++;
    }
    else { /* reg-name / IPv4address: unreserved / pct-encoded / sub-delims, loosely */
        while (i < n && is_regname[s[i]])
            i++;
    }
    if (i < n) { /* [ ":" port ] */
        if (s[i] != ':')
            Py_RETURN_FALSE;
        for (i++; i < n; i++) {
            if (s[i] < '0' || s[i] > '9')
                Py_RETURN_FALSE;
        }
    }
    Py_RETURN_TRUE;
}

static PyMethodDef hscan_methods[] = {
    {"status_line", (PyCFunction)(void (*)(void))status_line, METH_FASTCALL,
     "status_line(text, line_end) -> (major, minor, status, reason) | None"},
    {"head_end", (PyCFunction)(void (*)(void))head_end, METH_FASTCALL,
     "head_end(buf, start) -> offset just past the first CRLFCRLF at or after start, or -1"},
    {"valid_host", (PyCFunction)valid_host, METH_O,
     "valid_host(text) -> whether text is a Host value / authority (parse.py's _HOST_RE)"},
    {"request_line", (PyCFunction)(void (*)(void))request_line, METH_FASTCALL,
     "request_line(text, line_end) -> (method, target, major, minor) | None"},
    {"scan_fields", (PyCFunction)scan_fields, METH_O,
     "scan_fields(block) -> [(lower-case name, value), ...] of the framing fields | None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef hscan_module = {
    PyModuleDef_HEAD_INIT, "_hscan", "HTTP/1.1 head scanner (see _hscan.c).", -1, hscan_methods,
};

PyMODINIT_FUNC
PyInit__hscan(void)
{
    const char *tchar_extra = "!#$%&'*+-.^_`|~";
    for (int c = 0; c < 256; c++) {
        is_tchar[c] = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                      (c != 0 && strchr(tchar_extra, c) != NULL);
        is_vchar[c] = c == '\t' || (c >= 0x20 && c <= 0x7e) || c >= 0x80;
        lower[c] = (c >= 'A' && c <= 'Z') ? (unsigned char)(c + 32) : (unsigned char)c;
        is_regname[c] = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                        (c != 0 && strchr("-._~!$&'()*+,;=%", c) != NULL);
    }
    memcpy(is_name_run, is_tchar, sizeof(is_tchar));
    is_name_run['_'] = 0;
    if (underscore_mark == NULL && (underscore_mark = Py_BuildValue("(ss)", "_", "")) == NULL)
        return NULL;
    for (int k = 0; k < N_NAMES; k++) {
        if (names[k].str == NULL) {
            names[k].str = PyUnicode_InternFromString(names[k].text);
            if (names[k].str == NULL)
                return NULL;
        }
    }
    if (reason_ok == NULL && (reason_ok = PyUnicode_InternFromString("OK")) == NULL)
        return NULL;
    for (int k = 0; k < 8; k++) {
        if (methods[k] == NULL) {
            methods[k] = PyUnicode_InternFromString(method_text[k]);
            if (methods[k] == NULL)
                return NULL;
        }
    }
    return PyModule_Create(&hscan_module);
}
