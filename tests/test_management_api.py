"""The management API's publish endpoint, POST
/api/exchanges/<vhost>/<exchange>/publish, driven by the management
plugin's own rabbitmqadmin, by curl --json and by hand."""
import base64
import json
import os
import shutil
import subprocess
import urllib.parse

import pytest

from support import GUEST


def api_path(vhost, exchange):
    return "/api/exchanges/%s/%s/publish" % (
        urllib.parse.quote(vhost, safe=""), urllib.parse.quote(exchange,
                                                               safe=""))


def post_json(http, server, path, document, auth=GUEST, headers=None):
    body = document if isinstance(document, bytes) else \
        json.dumps(document).encode()
    return http.request(server.port, "POST", path, body=body,
                        headers=headers or {}, auth=auth)


@pytest.fixture(scope="module")
def rabbitmqadmin():
    exe = shutil.which("rabbitmqadmin")
    if not exe:
        pytest.fail("rabbitmqadmin is not installed: it comes with "
                    "rabbitmq-server, or from the management plugin at "
                    "http://127.0.0.1:15672/cli/rabbitmqadmin")
    return exe


def run_admin(rabbitmqadmin, server, args, payload=None):
    return subprocess.run(
        [rabbitmqadmin, "-H", "127.0.0.1", "-P", str(server.port),
         "-u", "guest", "-p", "guest"] + args,
        input=payload, capture_output=True, timeout=30)


def test_rabbitmqadmin_publish(rabbitmqadmin, server, target,
                               assert_message):
    proc = run_admin(rabbitmqadmin, server, [
        "publish", "exchange=" + target.exchange, "routing_key=rk",
        "payload=hello caf\u00e9",
        'properties={"app_id": "admin", "delivery_mode": 2, '
        '"headers": {"x-n": 1}}'])
    assert proc.returncode == 0, proc
    assert b"Message published" in proc.stdout, proc
    assert b"NOT routed" not in proc.stdout, proc
    assert_message(target.one(), "hello caf\u00e9".encode(),
                   exchange=target.exchange, routing_key="rk",
                   app_id="admin", delivery_mode=2, headers={"x-n": 1})


def test_rabbitmqadmin_payload_from_stdin_is_base64(rabbitmqadmin, server,
                                                    target, assert_message):
    # rabbitmqadmin reads standard input as text, so the payload is text.
    payload = ("line %s caf\u00e9\r\n" % os.urandom(8).hex()).encode() * 50
    proc = run_admin(rabbitmqadmin, server, [
        "publish", "exchange=" + target.exchange, "routing_key=rk"],
        payload=payload)
    assert proc.returncode == 0, proc
    assert_message(target.one(), payload)


def test_rabbitmqadmin_unrouted(rabbitmqadmin, server, target):
    proc = run_admin(rabbitmqadmin, server, [
        "publish", "exchange=" + target.exchange, "routing_key=nobody",
        "payload=x"])
    assert proc.returncode == 0, proc
    assert b"NOT routed" in proc.stdout, proc


def test_rabbitmqadmin_default_exchange(rabbitmqadmin, server, target,
                                        assert_message):
    proc = run_admin(rabbitmqadmin, server, [
        "publish", "routing_key=" + target.queue, "payload=direct"])
    assert proc.returncode == 0, proc
    assert b"NOT routed" not in proc.stdout, proc
    assert_message(target.one(), b"direct", exchange="",
                   routing_key=target.queue)


def test_curl_json(server, target, assert_message):
    document = {"properties": {"content_type": "application/json",
                               "message_id": "curl-1", "priority": 4,
                               "timestamp": 1700000000,
                               "expiration": "60000"},
                "routing_key": "rk", "payload": '{"n": 1}',
                "payload_encoding": "string"}
    proc = subprocess.run(
        ["curl", "-sS", "-u", "guest:guest", "--json", json.dumps(document),
         "http://127.0.0.1:%d%s" % (server.port,
                                    api_path("/", target.exchange))],
        capture_output=True, timeout=30)
    assert proc.returncode == 0, proc
    assert json.loads(proc.stdout) == {"routed": True}, proc
    assert_message(target.one(), b'{"n": 1}', content_type="application/json",
                   message_id="curl-1", priority=4, timestamp=1700000000,
                   expiration="60000")


def test_no_content_type_and_defaults(http, server, target, assert_message):
    resp = post_json(http, server, api_path("/", target.exchange),
                     {"routing_key": "rk", "payload": "bare"})
    assert (resp.status, resp.json()) == (200, {"routed": True}), resp
    assert_message(target.one(), b"bare")


def test_every_property(http, server, target, assert_message):
    properties = {"app_id": "a", "content_encoding": "gzip",
                  "content_type": "text/plain", "correlation_id": "c",
                  "delivery_mode": 1, "expiration": 5000,
                  "headers": {"x-s": "v", "x-f": 1.5, "x-l": [1, "two"],
                              "x-t": True},
                  "message_id": "m", "priority": 9, "reply_to": "r",
                  "timestamp": 1, "type": "t", "user_id": "guest"}
    resp = post_json(http, server, api_path("/", target.exchange),
                     {"routing_key": "rk", "payload": "ZXZlcnk=",
                      "payload_encoding": "base64",
                      "properties": properties})
    assert (resp.status, resp.json()) == (200, {"routed": True}), resp
    message = target.one()
    headers = message.properties.headers
    assert float(headers.pop("x-f")) == 1.5
    properties["headers"].pop("x-f")
    assert headers == properties["headers"]
    properties.pop("headers")
    properties["expiration"] = "5000"
    assert_message(message, b"every", headers=headers, **properties)


def test_named_vhost(http, server, named_target, named_vhost,
                     assert_message):
    resp = post_json(http, server,
                     api_path(named_vhost.vhost, named_target.exchange),
                     {"routing_key": "rk", "payload": "named"},
                     auth=(named_vhost.user, named_vhost.password))
    assert (resp.status, resp.json()) == (200, {"routed": True}), resp
    assert_message(named_target.one(), b"named")


@pytest.mark.parametrize("document, field", [
    ({"payload": "x"}, "routing_key"),
    ({"routing_key": "rk"}, "payload"),
    ({"routing_key": "rk", "payload": 5}, "payload"),
    ({"routing_key": "rk", "payload": "x", "payload_encoding": "hex"},
     "payload_encoding"),
    ({"routing_key": "rk", "payload": "!!!", "payload_encoding": "base64"},
     "payload"),
    ({"routing_key": "rk", "payload": "x", "properties": []}, "properties"),
    ({"routing_key": "rk", "payload": "x",
      "properties": {"priority": 256}}, "properties.priority"),
    ({"routing_key": "rk", "payload": "x",
      "properties": {"delivery_mode": "2x"}}, "properties.delivery_mode"),
    ({"routing_key": "rk", "payload": "x",
      "properties": {"timestamp": True}}, "properties.timestamp"),
    ({"routing_key": "rk", "payload": "x",
      "properties": {"headers": "x-a=1"}}, "properties.headers"),
    ({"routing_key": "rk", "payload": "x",
      "properties": {"app_id": 1}}, "properties.app_id"),
    ({"routing_key": "rk", "payload": "x",
      "properties": {"colour": "red"}}, "properties.colour"),
    ({"routing_key": "rk", "payload": "x",
      "properties": {"user_id": "other"}}, "properties.user_id"),
    ({"routing_key": "r" * 256, "payload": "x"}, "routing_key"),
])
def test_bad_fields_are_400(http, server, target, assert_error, document,
                            field):
    resp = post_json(http, server, api_path("/", target.exchange), document)
    assert_error(resp, 400, ["field " + field])
    assert resp.header("Connection") == "close", resp
    assert target.consume(1, timeout=0.3) == []


@pytest.mark.parametrize("body, mention", [
    (b"not json", "JSON"),
    (b'"a string"', "object"),
    (b"42", "object"),
    (b"[" * 100000 + b"]" * 100000, "nested"),
    (b'{"routing_key": "rk", "payload": "\\ud800"}', "surrogate"),
    (b'{"routing_key": "rk", "payload": "x", "properties": '
     b'{"headers": {"x": NaN}}}', "NaN"),
    (b"\xff\xfe", "UTF-8"),
])
def test_bad_json_is_400(http, server, target, assert_error, body, mention):
    resp = post_json(http, server, api_path("/", target.exchange), body)
    assert_error(resp, 400, [mention])
    assert target.consume(1, timeout=0.3) == []


def test_missing_exchange_is_404(http, server, assert_error):
    resp = post_json(http, server, api_path("/", "statelessd.missing.x"),
                     {"routing_key": "rk", "payload": "x"})
    assert_error(resp, 404, ["statelessd.missing.x"])


def test_no_credentials_is_401_with_challenge(http, server, target,
                                              assert_error):
    resp = post_json(http, server, api_path("/", target.exchange),
                     {"routing_key": "rk", "payload": "x"}, auth=None)
    assert_error(resp, 401)
    assert resp.header("WWW-Authenticate"), resp


def test_no_permission_is_403(http, server, target, noperm_user,
                              assert_error):
    resp = post_json(http, server, api_path("/", target.exchange),
                     {"routing_key": "rk", "payload": "x"},
                     auth=(noperm_user.user, noperm_user.password))
    assert_error(resp, 403)


def test_get_is_405(http, server, target, assert_error):
    resp = http.request(server.port, "GET", api_path("/", target.exchange),
                        auth=GUEST)
    assert_error(resp, 405)
    assert resp.header("Allow") == "POST", resp


def test_base64_payload_is_byte_exact(http, server, target, assert_message):
    payload = bytes(range(256)) * 4
    resp = post_json(http, server, api_path("/", target.exchange),
                     {"routing_key": "rk", "payload_encoding": "base64",
                      "payload": base64.b64encode(payload).decode()})
    assert resp.status == 200, resp
    assert_message(target.one(), payload)
