"""/stats, the index page, multi-port servers, shutdown and secrecy."""
import base64
import secrets
import time

import pytest

from conftest import port_is_open

NUMBER = (int, float)


@pytest.fixture(scope="module")
def pair(statelessd):
    """One statelessd serving two ports (one child process per port)."""
    return statelessd(ports=2)


def stats(http, port):
    resp = http.get(port, "/stats")
    assert resp.status == 200, resp
    content_type = resp.header("Content-Type") or ""
    assert content_type.startswith("application/json"), resp
    return resp.json()


def counter(doc, name):
    return doc["requests"].get(name, 0)


def connection(doc, key):
    return doc["connections"].get(key)


def publishes(doc, key):
    entry = connection(doc, key)
    return 0 if entry is None else entry["publishes"]


def is_number(value):
    return isinstance(value, NUMBER) and not isinstance(value, bool)


def settle(http, port, predicate, timeout=5.0):
    """Poll /stats until predicate(doc) holds; return the last doc."""
    deadline = time.monotonic() + timeout
    while True:
        doc = stats(http, port)
        if predicate(doc) or time.monotonic() > deadline:
            return doc
        time.sleep(0.1)


def test_stats_layout(http, pair):
    for port in pair.ports:
        doc = stats(http, port)
        assert doc["port"] == port and isinstance(doc["port"], int)
        assert isinstance(doc["host"], str) and doc["host"]
        assert set(doc["page_faults"]) >= {"major", "minor"}
        assert set(doc["cpu_time"]) >= {"user", "system"}
        assert set(doc["block"]) >= {"input", "output"}
        for value in (doc["page_faults"]["major"], doc["page_faults"]["minor"],
                      doc["cpu_time"]["user"], doc["cpu_time"]["system"],
                      doc["block"]["input"], doc["block"]["output"],
                      doc["memory_usage"], doc["timestamp"],
                      doc["context_switches"], doc["swap_outs"],
                      doc["page_size"], doc["signals_received"]):
            assert is_number(value), doc
        assert doc["page_size"] > 0
        assert doc["memory_usage"] > 0
        assert abs(doc["timestamp"] - time.time()) < 300, doc["timestamp"]
        assert isinstance(doc["requests"], dict)
        assert isinstance(doc["requests"]["processing_time"], float), doc
        assert counter(doc, "method.GET") >= 1, doc["requests"]
        assert counter(doc, "response.200") >= 1, doc["requests"]
        assert isinstance(doc["connections"], dict)


def test_counts_follow_requests(http, pair, target, assert_message):
    port = pair.ports[0]
    before = stats(http, port)
    for i in range(5):
        resp = http.post(port, target.path(), {"body": "count-%d" % i})
        assert resp.status == 204, resp
    for _ in range(2):
        resp = http.post(port, target.path(), {"priority": "abc"})
        assert resp.status == 400, resp
    messages = target.consume(5)
    assert [m.body for m in messages] == [b"count-%d" % i for i in range(5)]

    after = settle(http, port, lambda d: (
        publishes(d, "/:guest") - publishes(before, "/:guest") >= 5
        and (connection(d, "/:guest") or {}).get("queue_size") == 0))
    assert counter(after, "response.204") - counter(before,
                                                    "response.204") == 5
    assert counter(after, "response.400") - counter(before,
                                                    "response.400") == 2
    assert counter(after, "method.POST") - counter(before, "method.POST") == 7
    assert publishes(after, "/:guest") - publishes(before, "/:guest") == 5
    assert after["requests"]["processing_time"] > 0

    entry = connection(after, "/:guest")
    assert entry["connected"] is True
    assert entry["queue_size"] == 0
    assert isinstance(entry["publishes"], int)
    assert entry["connections"]["opened"] >= 1
    assert entry["connections"]["opened"] >= entry["connections"]["closed"]
    assert entry["channels"]["opened"] >= 1
    assert entry["channels"]["opened"] >= entry["channels"]["closed"]
    for value in (entry["connections"]["closed"], entry["channels"]["closed"]):
        assert isinstance(value, int) and value >= 0


def test_stats_are_per_port(http, pair, named_target, named_vhost):
    first, second = pair.ports
    key = "%s:%s" % (named_vhost.vhost, named_vhost.user)
    auth = (named_vhost.user, named_vhost.password)
    before_first = stats(http, first)
    before_second = stats(http, second)
    for i in range(4):
        resp = http.post(first, named_target.path(), {"body": "p1-%d" % i},
                         auth=auth)
        assert resp.status == 204, resp
    assert len(named_target.consume(4)) == 4

    after_first = settle(http, first, lambda d: (
        publishes(d, key) - publishes(before_first, key) >= 4))
    after_second = stats(http, second)
    assert publishes(after_first, key) - publishes(before_first, key) == 4
    assert connection(after_first, key)["connected"] is True
    assert after_first["port"] == first and after_second["port"] == second

    entry = connection(after_second, key)
    assert entry is None or entry["publishes"] == 0, entry
    assert (counter(after_second, "response.204")
            == counter(before_second, "response.204"))
    assert (counter(after_second, "method.POST")
            == counter(before_second, "method.POST"))


def test_both_ports_publish(http, pair, target, assert_message):
    before = {port: stats(http, port) for port in pair.ports}
    for port in pair.ports:
        for i in range(3):
            resp = http.post(port, target.path(),
                             {"body": "port-%d-%d" % (port, i),
                              "app_id": str(port)})
            assert resp.status == 204, resp
    messages = target.consume(6)
    assert sorted(m.body for m in messages) == sorted(
        b"port-%d-%d" % (port, i) for port in pair.ports for i in range(3))
    for message in messages:
        port = int(message.body.split(b"-")[1])
        assert_message(message, message.body, app_id=str(port))
    for port in pair.ports:
        after = settle(http, port, lambda d, p=port: (
            publishes(d, "/:guest") - publishes(before[p], "/:guest") >= 3))
        assert (publishes(after, "/:guest")
                - publishes(before[port], "/:guest")) == 3
        assert (counter(after, "response.204")
                - counter(before[port], "response.204")) == 3


@pytest.mark.parametrize("which", [0, 1])
def test_index_page_is_html(http, pair, which):
    resp = http.get(pair.ports[which], "/")
    assert resp.status == 200, resp
    assert (resp.header("Content-Type") or "").startswith("text/html"), resp
    assert resp.body.strip(), resp


def test_passwords_never_leak(http, pair, broker, named_target, named_vhost,
                              noperm_user, target):
    port = pair.ports[0]
    user, password = named_vhost.user, named_vhost.password
    wrong = "wrong-" + secrets.token_hex(10)
    bodies = []

    def post(path, auth, fields=None, **kwargs):
        resp = http.post(port, path, fields or {"body": "secret-test"},
                         auth=auth, **kwargs)
        bodies.append(resp.body)
        return resp

    assert post(named_target.path(), (user, password)).status == 204
    assert post(named_target.path(), (user, wrong)).status == 401
    assert post(named_target.path(), (user, password),
                {"priority": "abc"}).status == 400
    assert post(named_target.path(exchange="statelessd.missing.x"),
                (user, password)).status == 404
    assert post(target.path(), (user, password)).status == 403
    assert post(named_target.path(), (noperm_user.user,
                                      noperm_user.password)).status == 403
    assert post(named_target.path(), (user, password),
                headers={"Content-Type": "text/plain"}).status == 204
    assert post(named_target.path(), (user, password),
                {"user_id": "someone-else"}).status == 400
    assert len(named_target.consume(2)) == 2

    stats_text = http.get(port, "/stats").body.decode("utf-8", "replace")
    time.sleep(0.5)  # let the log lines of these requests be written
    log = pair.log()

    secrets_seen = {
        "password": password,
        "wrong password": wrong,
        "no-permission password": noperm_user.password,
        "Authorization value": base64.b64encode(
            ("%s:%s" % (user, password)).encode()).decode(),
        "wrong Authorization value": base64.b64encode(
            ("%s:%s" % (user, wrong)).encode()).decode(),
    }
    for label, secret in secrets_seen.items():
        assert secret not in log, "%s appears in the log" % label
        assert secret not in stats_text, "%s appears in /stats" % label
        for body in bodies:
            assert secret.encode() not in body, (
                "%s appears in a response body: %r" % (label, body))


def test_log_is_written_at_debug_level(http, pair, target):
    """The Logging section is applied: requests leave lines in the log."""
    resp = http.post(pair.ports[0], target.path(), {"body": "logged"})
    assert resp.status == 204, resp
    target.one()
    time.sleep(0.5)
    assert pair.log().strip(), (
        "statelessd wrote nothing to stderr with the root logger at DEBUG")


def test_sigterm_stops_master_and_children(http, statelessd, target):
    server = statelessd(ports=2)
    for port in server.ports:
        resp = http.post(port, target.path(), {"body": "bye-%d" % port})
        assert resp.status == 204, resp
    assert len(target.consume(2)) == 2
    status = server.terminate()
    assert status == 0, "exit status %s after SIGTERM; log:\n%s" % (
        status, server.log_tail())
    deadline = time.monotonic() + 3
    while (any(port_is_open(p) for p in server.ports)
           and time.monotonic() < deadline):
        time.sleep(0.1)
    assert not [p for p in server.ports if port_is_open(p)], (
        "a child still serves after the master exited")
