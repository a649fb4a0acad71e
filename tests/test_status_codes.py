"""Every status code statelessd answers with, and what a client sees then."""
import json
import secrets
import socket
import subprocess
import time

import pytest

from support import (GUEST, REPO, free_port, post_from_threads,
                     sentinel_arrives_first, statelessd_command,
                     statelessd_config, write_config)

# --- 400 -------------------------------------------------------------------

BAD_FIELDS = [
    ("priority", "abc", ["priority"]),
    ("priority", "256", ["priority"]),
    ("priority", "-1", ["priority"]),
    ("delivery_mode", "7", [("delivery_mode", "delivery-mode")]),
    ("delivery_mode", "0", [("delivery_mode", "delivery-mode")]),
    ("delivery_mode", "persistent", [("delivery_mode", "delivery-mode")]),
    ("headers", "[1,2]", ["headers"]),
    ("headers", "{not json", ["headers"]),
    ("headers", '"a string"', ["headers"]),
    ("timestamp", "abc", ["timestamp"]),
    ("expire", "-1", [("expire", "expiration")]),
    ("expire", "soon", [("expire", "expiration")]),
    ("expiration", "-1", ["expiration"]),
    ("message_id", "m" * 256, [("message_id", "message-id")]),
    ("message_id", "\u00e9" * 128, [("message_id", "message-id")]),
    ("type", "t" * 256, ["type"]),
    ("app_id", "a" * 256, [("app_id", "app-id")]),
    ("correlation_id", "c" * 300, [("correlation_id", "correlation-id")]),
    ("user_id", "someone-else", [("user_id", "user-id")]),
]


@pytest.mark.parametrize(
    "field,value,mentions", BAD_FIELDS,
    ids=["%s=%s" % (f, v[:12]) for f, v, _ in BAD_FIELDS])
def test_bad_field_value_is_400_naming_the_field(
        http, server, target, assert_error, assert_message, field, value,
        mentions):
    resp = http.post(server.port, target.path(),
                     {"body": "must not arrive", field: value})
    assert_error(resp, 400, mentions)
    sentinel_arrives_first(http, server.port, target)


@pytest.mark.parametrize("field,value", [("priority", "abc"),
                                         ("headers", "[1,2]")])
def test_bad_field_in_multipart_is_400(http, server, target, assert_error,
                                       assert_message, field, value):
    resp = http.post(server.port, target.path(),
                     {"body": "must not arrive", field: value},
                     encoding="multipart")
    assert_error(resp, 400, [field])
    sentinel_arrives_first(http, server.port, target)


def test_bad_hyphenated_alias_is_400(http, server, target, assert_error,
                                     assert_message):
    resp = http.post(server.port, target.path(),
                     {"body": "must not arrive", "delivery-mode": "9"})
    assert_error(resp, 400, [("delivery_mode", "delivery-mode")])
    sentinel_arrives_first(http, server.port, target)


# --- 404 -------------------------------------------------------------------


def test_missing_exchange_is_404_and_next_publish_arrives(
        http, server, target, assert_error, assert_message):
    missing = "statelessd.missing." + secrets.token_hex(6)
    resp = http.post(server.port, target.path(exchange=missing),
                     {"body": "lost"})
    assert_error(resp, 404, [missing])
    resp = http.post(server.port, target.path(), {"body": "right after"})
    assert resp.status == 204, resp
    messages = target.consume(1)
    assert len(messages) == 1, "the publish after a 404 never arrived"
    assert_message(messages[0], b"right after")
    # And again on one keep-alive connection, back to back.
    conn = http.connect(server.port)
    try:
        for i in range(3):
            resp = http.post(server.port, target.path(exchange=missing),
                             {"body": "lost"}, conn=conn)
            assert_error(resp, 404, [missing])
            resp = http.post(server.port, target.path(),
                             {"body": "after-%d" % i}, conn=conn)
            assert resp.status == 204, resp
    finally:
        conn.close()
    assert [m.body for m in target.consume(3)] == [
        b"after-0", b"after-1", b"after-2"]


def test_missing_exchange_in_named_vhost_is_404(http, server, named_target,
                                                 assert_error,
                                                 assert_message):
    missing = "statelessd.missing." + secrets.token_hex(6)
    resp = http.post(server.port, named_target.path(exchange=missing),
                     {"body": "lost"}, auth=named_target.auth)
    assert_error(resp, 404, [missing])
    sentinel_arrives_first(http, server.port, named_target)


def test_burst_with_missing_exchanges_loses_nothing(http, server, target):
    missing = "statelessd.missing." + secrets.token_hex(6)
    threads_count, per_thread = 6, 30

    def requests_of(index):
        for i in range(per_thread):
            if i % 3 == 1:
                yield (target.path(exchange=missing),
                       b"missing-%d-%d" % (index, i), GUEST)
            else:
                yield target.path(), b"ok-%d-%d" % (index, i), GUEST

    results = post_from_threads(http, server.port, requests_of,
                                threads_count)
    assert len(results) == threads_count * per_thread
    wrong = [(body, status) for _, body, status in results
             if status != (404 if body.startswith(b"missing") else 204)]
    assert not wrong, "unexpected statuses: %r" % wrong[:10]
    expected = sorted(body for _, body, status in results if status == 204)
    messages = target.consume(len(expected), timeout=20)
    assert sorted(m.body for m in messages) == expected
    assert target.consume(1, timeout=1) == [], "a message arrived twice"


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("path", ["/only/two", "/nope", "/nope/"])
def test_unknown_path_is_404(http, server, assert_error, method, path):
    resp = http.request(server.port, method, path, auth=GUEST)
    assert_error(resp, 404)


# --- 405 -------------------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
def test_other_methods_on_publish_path_are_405(http, server, target,
                                               assert_error, assert_message,
                                               method):
    resp = http.request(server.port, method, target.path(),
                        body=b"body=nope" if method in ("PUT", "PATCH")
                        else None,
                        headers={"Content-Type":
                                 "application/x-www-form-urlencoded"},
                        auth=GUEST)
    assert_error(resp, 405)
    assert (resp.header("Allow") or "").replace(" ", "") == "POST", resp
    sentinel_arrives_first(http, server.port, target)


# --- Content-Type --------------------------------------------------------


def test_content_type_parameters_are_accepted(http, server, target,
                                              assert_message):
    resp = http.request(
        server.port, "POST", target.path(), body=b"body=charset",
        headers={"Content-Type":
                 "application/x-www-form-urlencoded; charset=UTF-8"},
        auth=GUEST)
    assert resp.status == 204, resp
    message = target.one()
    assert_message(message, b"charset")


# --- error bodies ---------------------------------------------------------


def test_error_body_is_json_with_error_and_reason(http, server, target):
    resp = http.post(server.port, target.path(), {"priority": "abc"})
    assert resp.status == 400
    assert resp.header("Content-Type").startswith("application/json")
    doc = json.loads(resp.body)
    assert set(doc) >= {"error", "reason"}
    assert "priority" in doc["reason"]


# --- 503 -------------------------------------------------------------------


@pytest.fixture(scope="module")
def unreachable_server(statelessd):
    """statelessd pointed at a port where no broker listens."""
    return statelessd(overrides={"Application": {"rabbitmq": {
        "port": free_port(), "connect_timeout": 2}}})


def test_unreachable_broker_is_503_with_retry_after(http, unreachable_server,
                                                    assert_error):
    for _ in range(2):
        started = time.monotonic()
        resp = http.post(unreachable_server.port, "/%2f/amq.direct/rk",
                         {"body": "nowhere"})
        elapsed = time.monotonic() - started
        assert_error(resp, 503)
        # connect_timeout is 2 s: the client is not kept waiting for long.
        assert elapsed < 7, "503 took %.1fs" % elapsed
        retry_after = resp.header("Retry-After")
        assert retry_after is not None, resp
        assert retry_after.strip().isdigit(), resp


def test_unreachable_broker_still_serves_stats(http, unreachable_server):
    resp = http.post(unreachable_server.port, "/%2f/amq.direct/rk",
                     {"body": "nowhere"})
    assert resp.status == 503, resp
    resp = http.get(unreachable_server.port, "/stats")
    assert resp.status == 200, resp
    entry = resp.json()["connections"].get("/:guest")
    assert entry is None or entry["connected"] is False, entry
    assert entry is None or entry["publishes"] == 0, entry


# --- bad configuration -----------------------------------------------------


def run_with_ports(tmp_path, ports):
    return run_config_file(write_config(tmp_path, statelessd_config(ports)))


@pytest.mark.parametrize("bad", ["abc", 70000, -1])
def test_bad_port_exits_2_naming_the_key(tmp_path, bad):
    proc = run_with_ports(tmp_path, [bad])
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "HTTPServer.ports[0]" in lines[0], proc.stderr
    assert repr(bad) in lines[0] or str(bad) in lines[0], proc.stderr
    assert proc.stdout == "", proc.stdout


def run_config_file(path):
    return subprocess.run(statelessd_command(path), cwd=str(REPO),
                          capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


def assert_one_line_exit_2(proc, *mentions):
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for mention in mentions:
        assert mention in lines[0], proc.stderr


@pytest.mark.parametrize("key,value", [
    ("port", "abc"),
    ("connect_timeout", "soon"),
    ("max_queue_size", "lots"),
])
def test_bad_rabbitmq_setting_exits_2_naming_the_key(tmp_path, key, value):
    config = statelessd_config([free_port()])
    config["Application"]["rabbitmq"][key] = value
    proc = run_config_file(write_config(tmp_path, config))
    assert_one_line_exit_2(proc, "Application.rabbitmq.%s" % key)


def test_missing_config_file_exits_2(tmp_path):
    path = tmp_path / "does-not-exist.yaml"
    proc = run_config_file(path)
    assert_one_line_exit_2(proc, str(path))


def test_unparsable_config_file_exits_2(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("HTTPServer: {ports: [1, 2\n  : : :\n")
    proc = run_config_file(path)
    assert_one_line_exit_2(proc)


def test_bad_config_fails_before_binding(tmp_path):
    # A listener the test holds on the first port: were statelessd to bind
    # before checking the second port, it would trip over this one.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        held.listen(1)
        held_port = held.getsockname()[1]
        proc = run_with_ports(tmp_path, [held_port, "abc"])
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "HTTPServer.ports[1]" in lines[0], proc.stderr
    assert "in use" not in proc.stderr.lower()


def test_bad_config_with_free_port_binds_nothing(tmp_path):
    port = free_port()
    proc = run_with_ports(tmp_path, ["abc", port])
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    assert "HTTPServer.ports[0]" in proc.stderr
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert sock.connect_ex(("127.0.0.1", port)) != 0, (
            "something still listens on %s" % port)
