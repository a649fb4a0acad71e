"""Every status code statelessd answers with, and what a client sees then."""
import base64
import json
import secrets
import socket
import subprocess
import threading
import time

import pytest

from conftest import (
    GUEST,
    REPO,
    base_config,
    free_port,
    require_script,
    statelessd_command,
    write_config,
)

WWW_AUTHENTICATE = 'Basic realm="statelessd"'

#: Passwords (right and wrong) sent in this module; none may be logged.
PASSWORDS_SENT = {"wrong-password"}


def sentinel_arrives_first(http, server, target, assert_message, auth=None):
    """Publish a sentinel and check it is the next message in the queue.

    A request that must not publish is followed by this: had it published,
    its message would arrive before the sentinel.
    """
    body = b"sentinel-" + secrets.token_hex(4).encode()
    resp = http.post(server.port, target.path(), [("body", body)],
                     auth=auth or target.auth)
    assert resp.status == 204, resp
    messages = target.consume(1, timeout=10)
    assert len(messages) == 1, "the sentinel message never arrived"
    assert messages[0].body == body, (
        "a rejected request published %r" % messages[0].body)
    assert_message(messages[0], body)


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
    sentinel_arrives_first(http, server, target, assert_message)


@pytest.mark.parametrize("field,value", [("priority", "abc"),
                                         ("headers", "[1,2]")])
def test_bad_field_in_multipart_is_400(http, server, target, assert_error,
                                       assert_message, field, value):
    resp = http.post(server.port, target.path(),
                     {"body": "must not arrive", field: value},
                     encoding="multipart")
    assert_error(resp, 400, [field])
    sentinel_arrives_first(http, server, target, assert_message)


def test_bad_hyphenated_alias_is_400(http, server, target, assert_error,
                                     assert_message):
    resp = http.post(server.port, target.path(),
                     {"body": "must not arrive", "delivery-mode": "9"})
    assert_error(resp, 400, [("delivery_mode", "delivery-mode")])
    sentinel_arrives_first(http, server, target, assert_message)


# --- 401 -------------------------------------------------------------------

MALFORMED_AUTH = {
    "missing": None,
    "scheme-only": "Basic",
    "not-base64": "Basic !!!not base64!!!",
    "no-colon": "Basic " + base64.b64encode(b"guestguest").decode(),
    "bearer": "Bearer abcdef",
    "empty": "",
}


@pytest.mark.parametrize("name", sorted(MALFORMED_AUTH))
def test_missing_or_malformed_auth_is_401(http, server, target, assert_error,
                                          assert_message, name):
    resp = http.post(server.port, target.path(), {"body": "must not arrive"},
                     auth=MALFORMED_AUTH[name])
    assert_error(resp, 401)
    assert resp.header("WWW-Authenticate") == WWW_AUTHENTICATE, resp
    sentinel_arrives_first(http, server, target, assert_message)


@pytest.mark.parametrize("auth", [("guest", "wrong-password"),
                                  ("guest", ""),
                                  ("no-such-user-x", "guest")],
                         ids=["wrong-password", "empty-password",
                              "unknown-user"])
def test_bad_credentials_are_401(http, server, target, assert_error,
                                 assert_message, auth):
    resp = http.post(server.port, target.path(), {"body": "must not arrive"},
                     auth=auth)
    assert_error(resp, 401)
    assert resp.header("WWW-Authenticate") == WWW_AUTHENTICATE, resp
    sentinel_arrives_first(http, server, target, assert_message)


@pytest.mark.parametrize("who", ["guest", "named"])
def test_wrong_password_never_publishes(http, server, request, assert_error,
                                        assert_message, named_vhost, who):
    if who == "guest":
        tgt = request.getfixturevalue("target")
    else:
        tgt = request.getfixturevalue("named_target")
    user, password = tgt.auth
    PASSWORDS_SENT.update({password, password + "x"})
    first = http.post(server.port, tgt.path(), {"body": "first"},
                      auth=(user, password))
    assert first.status == 204, first
    # The connection opened for the right password is still open now.
    wrong = http.post(server.port, tgt.path(), {"body": "WRONG"},
                      auth=(user, password + "x"))
    assert_error(wrong, 401)
    assert wrong.header("WWW-Authenticate") == WWW_AUTHENTICATE, wrong
    third = http.post(server.port, tgt.path(), {"body": "third"},
                      auth=(user, password))
    assert third.status == 204, third
    # Had the wrong-password request published, its message would be
    # second in the queue: messages on one route arrive in order.
    messages = tgt.consume(2, timeout=10)
    assert [m.body for m in messages] == [b"first", b"third"]


def test_password_rotation(http, server, broker, target, assert_error,
                           assert_message):
    user = "statelessd-rot-" + secrets.token_hex(6)
    old, new = "old-" + secrets.token_hex(8), "new-" + secrets.token_hex(8)
    PASSWORDS_SENT.update({old, new})
    broker.add_user(user, old)
    try:
        broker.set_permissions("/", user)
        resp = http.post(server.port, target.path(), {"body": "before"},
                         auth=(user, old))
        assert resp.status == 204, resp
        message = target.one()
        assert_message(message, b"before")

        broker.change_password(user, new)
        resp = http.post(server.port, target.path(),
                         {"body": "after", "user_id": user},
                         auth=(user, new))
        assert resp.status == 204, resp
        messages = target.consume(1)
        assert len(messages) == 1, "publish with the new password was lost"
        assert_message(messages[0], b"after", user_id=user)

        resp = http.post(server.port, target.path(), {"body": "stale"},
                         auth=(user, old))
        assert_error(resp, 401)
        sentinel_arrives_first(http, server, target, assert_message,
                               auth=(user, new))
    finally:
        broker.delete_user(user)


# --- 403 -------------------------------------------------------------------


def test_user_without_permission_on_vhost_is_403(
        http, server, named_target, noperm_user, named_vhost, assert_error,
        assert_message):
    PASSWORDS_SENT.add(noperm_user.password)
    resp = http.post(server.port, named_target.path(),
                     {"body": "must not arrive"},
                     auth=(noperm_user.user, noperm_user.password))
    assert_error(resp, 403, [named_vhost.vhost])
    sentinel_arrives_first(http, server, named_target, assert_message)


def test_named_user_on_slash_vhost_is_403(http, server, target, named_vhost,
                                          assert_error, assert_message):
    resp = http.post(server.port, target.path(), {"body": "must not arrive"},
                     auth=(named_vhost.user, named_vhost.password))
    assert_error(resp, 403)
    sentinel_arrives_first(http, server, target, assert_message)


def test_nonexistent_vhost_is_403(http, server, assert_error):
    vhost = "statelessd-missing-" + secrets.token_hex(6)
    resp = http.post(server.port, "/%s/amq.direct/rk" % vhost,
                     {"body": "nowhere"})
    assert_error(resp, 403, [vhost])


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
    sentinel_arrives_first(http, server, named_target, assert_message)


def test_burst_with_missing_exchanges_loses_nothing(http, server, target):
    missing = "statelessd.missing." + secrets.token_hex(6)
    threads_count, per_thread = 6, 30
    results = []
    lock = threading.Lock()
    failures = []

    def worker(index):
        conn = http.connect(server.port)
        try:
            for i in range(per_thread):
                if i % 3 == 1:
                    body = b"missing-%d-%d" % (index, i)
                    path = target.path(exchange=missing)
                else:
                    body = b"ok-%d-%d" % (index, i)
                    path = target.path()
                resp = http.post(server.port, path, [("body", body)],
                                 conn=conn)
                with lock:
                    results.append((body, path, resp.status))
        except Exception as error:  # noqa: BLE001 - reported below
            failures.append(repr(error))
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(n,))
               for n in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    assert len(results) == threads_count * per_thread
    wrong = [(body, status) for body, path, status in results
             if status != (404 if body.startswith(b"missing") else 204)]
    assert not wrong, "unexpected statuses: %r" % wrong[:10]
    expected = sorted(body for body, _, status in results if status == 204)
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
    sentinel_arrives_first(http, server, target, assert_message)


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
    require_script()
    config = base_config(ports)
    path = write_config(tmp_path, config)
    return subprocess.run(statelessd_command(path), cwd=str(REPO),
                          capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)


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
    require_script()
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
    config = base_config([free_port()])
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


def test_concurrent_wrong_passwords_never_publish(http, server, named_target,
                                                  named_vhost):
    """Right and wrong passwords for one user, interleaved from threads."""
    user, password = named_vhost.user, named_vhost.password
    PASSWORDS_SENT.update({password, password + "!"})
    results = []
    failures = []
    lock = threading.Lock()

    def worker(index):
        conn = http.connect(server.port)
        try:
            for i in range(20):
                good = (i + index) % 2 == 0
                body = b"%s-%d-%d" % (b"good" if good else b"BAD", index, i)
                auth = (user, password if good else password + "!")
                resp = http.post(server.port, named_target.path(),
                                 [("body", body)], auth=auth, conn=conn)
                with lock:
                    results.append((good, body, resp.status))
        except Exception as error:  # noqa: BLE001 - reported below
            failures.append(repr(error))
        finally:
            conn.close()

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    wrong = [(body, status) for good, body, status in results
             if status != (204 if good else 401)]
    assert not wrong, "unexpected statuses: %r" % wrong[:10]
    expected = sorted(body for good, body, _ in results if good)
    messages = named_target.consume(len(expected), timeout=20)
    extra = named_target.consume(1, timeout=1)
    assert not [m.body for m in messages + extra if m.body.startswith(b"BAD")]
    assert sorted(m.body for m in messages) == expected
    assert extra == []


def test_no_password_sent_in_this_module_reached_the_log(server, named_vhost):
    """Runs last here: every password the tests above sent, right or wrong,
    is absent from the log of the server they talked to (root at DEBUG)."""
    PASSWORDS_SENT.add(named_vhost.password)
    log = server.log()
    # "guest" is also a user name, so it may be logged as such.
    leaked = sorted(p for p in PASSWORDS_SENT - {"guest"} if p in log)
    assert not leaked, "passwords in the statelessd log: %r" % leaked
