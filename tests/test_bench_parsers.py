"""bench/harness/'s parsers on recorded output, no network: wrk's report (latency units us/ms/s,
the "Non-2xx or 3xx" and "Socket errors" lines), the TLS server-flight classifier (bytes recorded
from a real handshake through ssl memory BIOs) and the targets evaluation (PASS/FAIL) on a results
document in bench/run.py's JSON shape.

The wrk outputs were recorded from wrk 4 against a small ThreadingHTTPServer on 127.0.0.1 (a 200
path, a 404 path and a path that sleeps 1.2 s, the last with --timeout 1s for the timeouts)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))

from harness.report import summarize
from harness.targets import evaluate_targets
from harness.tlsprobe import classify_server_flight
from harness.wrk import parse_wrk

WRK_OK = "Running 1s test @ http://127.0.0.1:18731/\n  1 threads and 10 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency    42.80ms    7.07ms  54.65ms   94.93%\n    Req/Sec   136.70     20.05   173.00     80.00%\n  Latency Distribution\n     50%   43.85ms\n     75%   44.46ms\n     90%   46.01ms\n     99%   49.40ms\n  138 requests in 1.01s, 16.28KB read\nRequests/sec:    136.53\nTransfer/sec:     16.11KB\n"

WRK_404 = "Running 1s test @ http://127.0.0.1:18731/missing\n  1 threads and 10 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency    42.52ms    6.72ms  51.25ms   95.03%\n    Req/Sec   161.50     20.17   191.00     50.00%\n  Latency Distribution\n     50%   43.74ms\n     75%   44.02ms\n     90%   44.60ms\n     99%   49.03ms\n  161 requests in 1.00s, 20.15KB read\n  Non-2xx or 3xx responses: 161\nRequests/sec:    160.67\nTransfer/sec:     20.10KB\n"

WRK_SECONDS = "Running 3s test @ http://127.0.0.1:18731/slow\n  1 threads and 2 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.22s    24.37ms   1.24s   100.00%\n    Req/Sec     1.00      0.00     1.00    100.00%\n  Latency Distribution\n     50%    1.24s \n     75%    1.24s \n     90%    1.24s \n     99%    1.24s \n  4 requests in 3.02s, 464.00B read\nRequests/sec:      1.33\nTransfer/sec:     153.76B\n"

WRK_TIMEOUTS = "Running 3s test @ http://127.0.0.1:18731/slow\n  1 threads and 4 connections\n  Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     0.00us    0.00us   0.00us    -nan%\n    Req/Sec     8.00     10.44    20.00     66.67%\n  Latency Distribution\n     50%    0.00us\n     75%    0.00us\n     90%    0.00us\n     99%    0.00us\n  8 requests in 3.02s, 0.91KB read\n  Socket errors: connect 0, read 0, write 0, timeout 8\nRequests/sec:      2.65\nTransfer/sec:     306.95B\n"

# 925 bytes recorded
TLS13_FULL = bytes.fromhex(
    "160303007a02000076030314f409f0983e13bb80d99926bc13a07c1b9ed63b2cee7d1a34a49aa8aae332d52088d02b7cb6d21a15840e28019b23fd971827d05742fe3260bd54c32d3bb637a1130200002e002b0002030400330024001d002029e8848c17ecf59c1cc57504837ad54d9d5a191e25bef651e388368a425969241403030001011703030017c4e8f2ed0bc42175e9f41aebe532455e9f2f39911472e11703030249e9be807473ea5ec5589a2498e2997f6b613df71625c23d32bdc879b20b0aa633c9268e5d6a4792f98035181aeb6c014a468c12f300299c3d01265da54ff8efdccb3da1922a50385afa4d420bbab9aaedaa7a0548a54c5608e84e01b1b00bfc03737b8543c42b006150824885159f7b977209e7e8d44f4b350ea7bbf16a491b9e4e1ca567297c8ce8fa1d336b9ff9853de735a00a2bdbe28af93d9e449508f0eb75f22d4aed72f28bc046db42edc9459839b9618b21770dd467b72a1685a28d289e926496a7a13f3fd79c62bdbaa91b94b84b03dd4fcfb573be6352750a70ddaf3d82efaa5326ae42b709c39839da77a92d472139130ed51d03d45bdb41b34eaeaa3d1696bea1d50336f8c6cce8737e305195d4993dcf726e86144eb684fbf6958b526737430ea902b0149850fe86755d6984d888ec6f40eff72c422c9cad953ba6dbf804c2cdf89dc01b06b432e691db4f7b46c6a2a2e6325fb36debdc68ade5db87d16b67a6626f41735821eefac2c80aa13a0964c1c44946dd88df0a5d00a5cdb8016cecc4e24613aa2fcc8b452291c92361cbb4c0f2a5822ad2c1367505414e52c98b5b355de10f1e2e662bca1b8f4cb450993381efcdb5cc4a8cf52c6248b23cb6f8bd0bedf2b05d601d9db33de6fe57160f1d8d9b21c5690aba05646e63ced3a80252929fab09604865c4589de6ea9ff71d4c4ad435b3448962e0910aba1bde72f1e3a0f331e9b927de7f433d8c11f1427baf9ec8918ac18e446f57216904bfc1b5f1b8ad7c0ec828fa05a4f1d7f6ea6a9eeda3e4f6f807c6689dc19466c9b36911957a540765170303005fb1813f76ea984c4b55dd18792ee1c53a5c62b7c3abd046cd8ea6182403d1d6495815f3032e50fcbf3c4ab1646d7fd97d6d913cadd3ffbb0a6adf8077e286327c2dd207936fa7817db5250e21359a8f02b56867b8231cf3243c2cc2f1d4c4d51703030045153a4f6b1e53dd23d5abcb8ae21e5bec82c93a6f9284cea316ef50fb273d668f18f4a715e22ff5a40cec8e0a84fd36f9b15f8196b1dd7a9a23f3013179d8613045c78dd4f4"
)
# 769 bytes recorded
TLS12_FULL = bytes.fromhex(
    "16030300410200003d03039156117da3192ebbe571c75deaafd1402268badfa6f1f1efd6eeb21f30ae285e00c02c000015ff01000100000b000403000102002300000017000016030302350b00023100022e00022b30820227308201cea00302010202147282bd5004ed2176bf00c8b189e0aabf4b1dd67a300a06082a8648ce3d040302304031173015060355040a0c0e74727573746d652076312e322e3131253023060355040b0c1c54657374696e6720434120236e3059326d71756c4f32456a775a4f433020170d3030303130313030303030305a180f33303030303130313030303030305a304231173015060355040a0c0e74727573746d652076312e322e3131273025060355040b0c1e54657374696e67206365727420234f74587a65744f5f714e796d4f6f6c483059301306072a8648ce3d020106082a8648ce3d03010703420004510aa3c8226d21b7d02bedb0f22e2005be1ccd6804e2734968d1ca991f1de80513b21732c882ddf274e92b0343c3b439cc7b9eac91bc60abf3543bbc1949a5e2a381a130819e301d0603551d0e04160414bb578d5b67ea5ea9e52d76b53a9de06a9551c07d300c0603551d130101ff04023000301f0603551d2304183016801430ab9a9975dad2c627eb8be50ed8f9e6886737ec30120603551d110101ff0408300687047f000001300e0603551d0f0101ff0404030205a0302a0603551d250101ff0420301e06082b0601050507030206082b0601050507030106082b06010505070303300a06082a8648ce3d0403020347003044022100e275b5ffae2b0a5c26286cf80946d98f1bfffb928cd2ed5fbdf40abef09421bf021f749a4b304a40a93d7095b856ef29961f65c4141295ab37fab6b96d9e6b771116030300730c00006f03001d205f486e65278103dc2c1dfb72c505c9e03fdc3989bcc66e050922dc297f21ac7a040300473045022100987671f886dd0c759b442e67c70a302b5d69c0846a5400f162f06a49737d8a7a02201b0766d1480fa6de044722fbdeee63dca98be4f9fdea48ce778584197af3aba616030300040e000000"
)


def test_wrk_ok_milliseconds() -> None:
    r = parse_wrk(WRK_OK)
    assert r["rps"] == 136.53
    assert r["requests"] == 138
    assert (r["p50_ms"], r["p75_ms"], r["p90_ms"], r["p99_ms"]) == (43.85, 44.46, 46.01, 49.4)
    assert r["bytes_per_response"] == round(16.28 * 1024 / 138, 1)
    assert r["error_count"] == 0


def test_wrk_non_2xx_counted() -> None:
    r = parse_wrk(WRK_404)
    assert r["errors"]["non_2xx_3xx"] == 161
    assert r["error_count"] == 161


def test_wrk_seconds_and_trailing_space() -> None:
    r = parse_wrk(WRK_SECONDS)
    assert r["p50_ms"] == 1240.0 and r["p99_ms"] == 1240.0
    assert r["rps"] == 1.33 and r["requests"] == 4


def test_wrk_socket_errors_and_microseconds() -> None:
    r = parse_wrk(WRK_TIMEOUTS)
    assert r["errors"] == {"connect": 0, "read": 0, "write": 0, "timeout": 8, "non_2xx_3xx": 0}
    assert r["error_count"] == 8
    assert r["p50_ms"] == 0.0


def test_wrk_unparseable_raises() -> None:
    with pytest.raises(RuntimeError, match="could not parse wrk output"):
        parse_wrk("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_tls13_full_handshake() -> None:
    assert classify_server_flight(TLS13_FULL) == {
        "version": "TLSv1.3",
        "cipher": "TLS_AES_256_GCM_SHA384",
        "group": "x25519",
        "kind": "full",
    }


def test_tls13_resumed_when_pre_shared_key_present() -> None:
    # The recorded ServerHello with a pre_shared_key extension (41, selected identity 0) added.
    rec, hs = TLS13_FULL[:5], TLS13_FULL[5 : 5 + int.from_bytes(TLS13_FULL[3:5], "big")]
    body = hs[4:]
    j = 34 + 1 + body[34] + 3
    ext_len = int.from_bytes(body[j : j + 2], "big")
    psk = b"\x00\x29\x00\x02\x00\x00"
    body = body[:j] + (ext_len + len(psk)).to_bytes(2, "big") + body[j + 2 :] + psk
    hs = hs[:1] + len(body).to_bytes(3, "big") + body
    flight = rec[:3] + len(hs).to_bytes(2, "big") + hs
    assert classify_server_flight(flight)["kind"] == "resumed"


def test_tls12_full_and_partial() -> None:
    assert classify_server_flight(TLS12_FULL) == {
        "version": "TLSv1.2",
        "cipher": "ECDHE-ECDSA-AES256-GCM-SHA384",
        "kind": "full",
    }
    assert classify_server_flight(TLS12_FULL[:100]) is None  # needs more bytes
    assert classify_server_flight(TLS13_FULL[:3]) is None


def test_tls_alert() -> None:
    assert classify_server_flight(bytes.fromhex("15030300020228")) == {"kind": "alert"}


def _row(name: str, rps: float | None = None, c1_ms: float = 0.1, idle: float | None = None):
    wrk = {"rps": rps, "p50_ms": 1.0, "p99_ms": 2.0, "error_count": 0}
    row: dict = {"name": name, "scenario_errors": {}}
    if rps is not None:
        row["small"] = {
            "c50": wrk,
            "c1": {**wrk, "p50_ms": c1_ms},
            "cpu": {"proxy_pct": 99.0, "bg_pct": 0.0},
        }
    if idle is not None:
        row["idle"] = {"kib_per_conn": idle, "opened": 500, "wanted": 500}
    return row


def _verdicts(rows: list[dict]) -> dict[str, tuple[float | None, str]]:
    summarize(rows)
    return {t["what"]: (t["value"], t["verdict"]) for t in evaluate_targets(rows)}


def test_targets_on_a_results_document() -> None:
    rows = [
        _row("direct", 80000, c1_ms=0.05),
        _row("nginx", 70000),
        _row("aiohttp", 10000),
        _row("proxycore-uvloop", 60000, c1_ms=0.08, idle=3.4),
        _row("proxycore-uvloop-accesslog", 57000),
        _row("proxycore-asyncio", 50000),
        _row("proxycore-trio", 20000, idle=16.3),
    ]
    v = _verdicts(rows)
    assert v["proxycore-uvloop req/s vs nginx"] == (0.857, "PASS")
    assert v["proxycore-uvloop req/s vs aiohttp"] == (6.0, "PASS")
    assert v["proxycore-uvloop added p50 @c1"][1] == "PASS"
    assert v["proxycore-uvloop-accesslog req/s vs proxycore-uvloop"] == (0.95, "PASS")
    assert v["proxycore-trio req/s vs proxycore-asyncio"] == (0.4, "FAIL")
    assert v["proxycore-trio idle RSS per conn"] == (16.3, "FAIL")
    assert v["proxycore-uvloop idle RSS per conn"] == (3.4, "PASS")
    assert v["proxycore-gevent req/s vs aiohttp"] == (None, "n/a")  # row not run


def test_targets_access_log_too_slow_and_skipped() -> None:
    rows = [_row("proxycore-uvloop", 60000), _row("proxycore-uvloop-accesslog", 50000)]
    assert _verdicts(rows)["proxycore-uvloop-accesslog req/s vs proxycore-uvloop"] == (
        0.833,
        "FAIL",
    )
    # the target is 0.95x (at most 5 % of req/s): 0.93x fails
    rows = [_row("proxycore-uvloop", 60000), _row("proxycore-uvloop-accesslog", 55800)]
    assert _verdicts(rows)["proxycore-uvloop-accesslog req/s vs proxycore-uvloop"] == (
        0.93,
        "FAIL",
    )
    skipped = {"name": "proxycore-uvloop-accesslog", "skipped": True, "error": "no --access-log"}
    v = _verdicts([_row("proxycore-uvloop", 60000), skipped])
    assert v["proxycore-uvloop-accesslog req/s vs proxycore-uvloop"] == (None, "n/a")


def test_targets_idle_http2_memory_per_backend() -> None:
    """The h2 scenario's idle-connection measurement (bench/h2_idle.py) is a target per
    proxycore row: <= 32 KiB per idle HTTP/2 connection (issue 32)."""
    from harness.report import _brief

    idle = {"conns": 2000, "setup_s": 3.1, "rss_before_kib": 30000, "rss_with_kib": 74000}
    rows = [_row("proxycore-uvloop"), _row("proxycore-trio"), _row("proxycore-gevent")]
    rows[0]["h2"] = {"idle": {**idle, "kib_per_conn": 22.0}}
    rows[1]["h2"] = {"idle": {**idle, "kib_per_conn": 33.5}}
    rows[2]["h2"] = {"idle": {"error": "OSError: refused"}, "error": "idle HTTP/2 connections"}
    v = _verdicts(rows)
    assert v["proxycore-uvloop idle RSS per HTTP/2 conn"] == (22.0, "PASS")
    assert v["proxycore-trio idle RSS per HTTP/2 conn"] == (33.5, "FAIL")
    assert "proxycore-gevent idle RSS per HTTP/2 conn" not in v
    assert "2000 idle h2 conns" in _brief("h2", rows[0]["h2"]) and "22.0 KiB/conn" in _brief(
        "h2", rows[0]["h2"]
    )


def test_targets_admin_listener_costs_at_most_3_percent() -> None:
    rows = [_row("proxycore-uvloop", 60000), _row("proxycore-uvloop-admin", 58500)]
    assert _verdicts(rows)["proxycore-uvloop-admin req/s vs proxycore-uvloop"] == (0.975, "PASS")
    rows = [_row("proxycore-uvloop", 60000), _row("proxycore-uvloop-admin", 57600)]
    assert _verdicts(rows)["proxycore-uvloop-admin req/s vs proxycore-uvloop"] == (0.96, "FAIL")
