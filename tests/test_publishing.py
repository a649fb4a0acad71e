"""Publishing through statelessd: every field, both encodings, exact bodies.

Each message is consumed back from RabbitMQ and its body bytes and every
basic property are compared with what the HTTP client sent.
"""
import json
import os
import secrets
import threading
import urllib.parse

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

ENCODINGS = ["urlencoded", "bare", "multipart"]

HEADERS_DOC = {
    "x-string": "value",
    "x-unicode": "caf\u00e9 \u2603",
    "x-int": 42,
    "x-negative": -7,
    "x-big": 2 ** 40,
    "x-true": True,
    "x-false": False,
    "x-nested": {"a": "b", "n": 1},
    "x-list": [1, "two", {"three": 3}],
}


def publish_ok(http, server, target, fields, routing_key=None,
               encoding="urlencoded", auth=None):
    resp = http.post(server.port, target.path(routing_key), fields,
                     auth=auth or target.auth, encoding=encoding)
    assert resp.status == 204, resp
    assert resp.body == b"", resp
    return resp


def consume_one(target):
    return target.one()


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_body_only_has_no_properties(http, server, target, assert_message,
                                     encoding):
    publish_ok(http, server, target, {"body": "hello"}, encoding=encoding)
    assert_message(consume_one(target), b"hello", exchange=target.exchange,
                   routing_key="rk")


def test_literal_lowercase_2f_is_vhost_slash(http, server, target,
                                             assert_message):
    resp = http.post(server.port, "/%%2f/%s/rk" % target.exchange,
                     {"body": "slash vhost"})
    assert resp.status == 204, resp
    assert_message(consume_one(target), b"slash vhost",
                   exchange=target.exchange, routing_key="rk")


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_every_field(http, server, target, assert_message, encoding):
    fields = [
        ("body", '{"order": 1}'),
        ("app_id", "billing"),
        ("content_encoding", "identity"),
        ("content_type", "application/json"),
        ("correlation_id", "corr-1"),
        ("delivery_mode", "2"),
        ("expire", "600000"),
        ("headers", json.dumps(HEADERS_DOC)),
        ("message_id", "msg-1"),
        ("priority", "7"),
        ("reply_to", "replies"),
        ("timestamp", "1700000000"),
        ("type", "order.created"),
        ("user_id", "guest"),
    ]
    publish_ok(http, server, target, fields, encoding=encoding)
    assert_message(
        consume_one(target), b'{"order": 1}', exchange=target.exchange,
        routing_key="rk", app_id="billing", content_encoding="identity",
        content_type="application/json", correlation_id="corr-1",
        delivery_mode=2, expiration="600000", headers=HEADERS_DOC,
        message_id="msg-1", priority=7, reply_to="replies",
        timestamp=1700000000, type="order.created", user_id="guest")


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_hyphenated_aliases(http, server, target, assert_message, encoding):
    fields = [
        ("body", "aliases"),
        ("app-id", "app"),
        ("content-encoding", "gzip"),
        ("content-type", "text/plain"),
        ("correlation-id", "c-9"),
        ("delivery-mode", "1"),
        ("message-id", "m-9"),
        ("reply-to", "rq"),
        ("user-id", "guest"),
    ]
    publish_ok(http, server, target, fields, encoding=encoding)
    assert_message(
        consume_one(target), b"aliases", app_id="app",
        content_encoding="gzip", content_type="text/plain",
        correlation_id="c-9", delivery_mode=1, message_id="m-9",
        reply_to="rq", user_id="guest")


@pytest.mark.parametrize("name", ["expire", "expiration"])
@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_expire_and_expiration(http, server, target, assert_message, name,
                               encoding):
    publish_ok(http, server, target, {"body": "ttl", name: "900000"},
               encoding=encoding)
    assert_message(consume_one(target), b"ttl", expiration="900000")


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_headers_php_style(http, server, target, assert_message, encoding):
    fields = [("body", "php"), ("headers[x-a]", "1"),
              ("headers[x-b]", "two"), ("headers[x-c d]", "caf\u00e9")]
    publish_ok(http, server, target, fields, encoding=encoding)
    assert_message(consume_one(target), b"php",
                   headers={"x-a": "1", "x-b": "two", "x-c d": "caf\u00e9"})


def test_headers_php_style_from_encoded_brackets(http, server, target,
                                                 assert_message):
    # What PHP's http_build_query sends: the brackets percent-encoded.
    raw = b"body=q&headers%5Bx-a%5D=1&headers%5Bx-b%5D=two"
    resp = http.request(
        server.port, "POST", target.path(), body=raw, auth=target.auth,
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 204, resp
    assert_message(consume_one(target), b"q",
                   headers={"x-a": "1", "x-b": "two"})


def test_empty_json_headers(http, server, target, assert_message):
    publish_ok(http, server, target, {"body": "e", "headers": "{}"})
    assert_message(consume_one(target), b"e")


BINARY_BODIES = {
    "all-bytes": bytes(range(256)),
    "crlf-and-boundary-lookalike":
        b"\r\n\r\n--\r\nline one\r\n--not-the-boundary\r\n\r\n",
    "trailing-newlines": b"ends with newlines\n\n",
    "trailing-crlf": b"ends with crlf\r\n",
    "leading-and-trailing-space": b"  spaced  ",
    "nul-only": b"\x00",
    "latin1-and-invalid-utf8": b"\xe9t\xe9 \xc3\x28 \xff\xfe",
    "plus-and-percent": b"a+b=c&d%20e%",
    "large": os.urandom(256 * 1024),
}


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("name", sorted(BINARY_BODIES))
def test_binary_body_is_byte_exact(http, server, target, assert_message,
                                   encoding, name):
    body = BINARY_BODIES[name]
    publish_ok(http, server, target, [("body", body)], encoding=encoding)
    assert_message(consume_one(target), body)


def test_percent_encoded_binary_body(http, server, target, assert_message):
    resp = http.request(
        server.port, "POST", target.path(), body=b"body=%00%FF%C3%A9",
        auth=target.auth,
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 204, resp
    assert_message(consume_one(target), b"\x00\xff\xc3\xa9")


def test_plus_in_urlencoded_body_is_a_space(http, server, target,
                                            assert_message):
    resp = http.request(
        server.port, "POST", target.path(), body=b"body=a+b%2Bc",
        auth=target.auth,
        headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert resp.status == 204, resp
    assert_message(consume_one(target), b"a b+c")


def test_utf8_field_values(http, server, target, assert_message):
    fields = {"body": "\u00fcber \u2603", "type": "t\u00ffpe",
              "correlation_id": "\u0438\u0434-1"}
    publish_ok(http, server, target, fields, encoding="multipart")
    assert_message(consume_one(target), "\u00fcber \u2603".encode("utf-8"),
                   type="t\u00ffpe", correlation_id="\u0438\u0434-1")


@given(body=st.binary(max_size=2048),
       encoding=st.sampled_from(["urlencoded", "multipart"]))
@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_any_body_round_trips(http, server, target, assert_message, body,
                              encoding):
    publish_ok(http, server, target, [("body", body)], encoding=encoding)
    assert_message(consume_one(target), body)


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_empty_body_field(http, server, target, assert_message, encoding):
    publish_ok(http, server, target, [("body", ""), ("type", "empty")],
               encoding=encoding)
    assert_message(consume_one(target), b"", type="empty")


def test_missing_body_field_is_empty_body(http, server, target,
                                          assert_message):
    publish_ok(http, server, target, [("type", "no-body")])
    assert_message(consume_one(target), b"", type="no-body")


def test_no_request_body_at_all(http, server, target, assert_message):
    resp = http.request(server.port, "POST", target.path(), body=b"",
                        auth=target.auth)
    assert resp.status == 204, resp
    assert_message(consume_one(target), b"")


def test_unknown_fields_are_ignored(http, server, target, assert_message):
    publish_ok(http, server, target,
               {"body": "x", "colour": "blue", "cluster_id": "c"})
    assert_message(consume_one(target), b"x")


def test_property_limits_are_accepted(http, server, target, assert_message):
    long_id = "m" * 255
    publish_ok(http, server, target,
               {"body": "edge", "priority": "255", "message_id": long_id,
                "timestamp": "0", "expire": "86400000"})
    assert_message(consume_one(target), b"edge", priority=255,
                   message_id=long_id, timestamp=0, expiration="86400000")
    publish_ok(http, server, target, {"body": "low", "priority": "0"})
    assert_message(consume_one(target), b"low", priority=0)


def test_default_exchange_delivers_to_queue(http, server, target, consume,
                                            assert_message):
    path = "/%2f//" + urllib.parse.quote(target.queue, safe="")
    resp = http.post(server.port, path, {"body": "direct to queue"})
    assert resp.status == 204, resp
    messages = consume(target.queue, 1, 10)
    assert len(messages) == 1, "nothing arrived in %s" % target.queue
    assert_message(messages[0], b"direct to queue", exchange="",
                   routing_key=target.queue)


def test_empty_routing_key(http, server, target, assert_message):
    target.bind("")
    resp = http.post(server.port, "/%%2f/%s/" % target.exchange,
                     {"body": "no key"})
    assert resp.status == 204, resp
    assert_message(consume_one(target), b"no key", exchange=target.exchange,
                   routing_key="")


def test_routing_key_with_dots_and_encoded_slash(http, server, target,
                                                 assert_message):
    target.bind("orders.eu/west.created")
    path = "/%%2F/%s/orders.eu%%2Fwest.created" % target.exchange
    resp = http.post(server.port, path, {"body": "routed"})
    assert resp.status == 204, resp
    assert_message(consume_one(target), b"routed", exchange=target.exchange,
                   routing_key="orders.eu/west.created")


def test_percent_encoded_routing_key_characters(http, server, target,
                                                assert_message):
    key = "caf\u00e9 key#1"
    target.bind(key)
    resp = http.post(server.port, target.path(key), {"body": "enc"})
    assert resp.status == 204, resp
    assert_message(consume_one(target), b"enc", routing_key=key)


def test_named_vhost_with_its_own_user(http, server, named_target,
                                       named_vhost, assert_message):
    assert "/" in named_vhost.vhost  # so the vhost segment must be decoded
    fields = {"body": "named", "user_id": named_vhost.user,
              "app_id": "named-app", "delivery_mode": "2"}
    resp = http.post(server.port, named_target.path(), fields,
                     auth=(named_vhost.user, named_vhost.password),
                     encoding="multipart")
    assert resp.status == 204, resp
    assert_message(consume_one(named_target), b"named",
                   exchange=named_target.exchange, routing_key="rk",
                   user_id=named_vhost.user, app_id="named-app",
                   delivery_mode=2)


def test_named_vhost_and_slash_vhost_side_by_side(http, server, target,
                                                  named_target, named_vhost,
                                                  assert_message):
    for i in range(3):
        publish_ok(http, server, target, {"body": "root-%d" % i})
        publish_ok(http, server, named_target, {"body": "named-%d" % i},
                   auth=(named_vhost.user, named_vhost.password))
    root = target.consume(3)
    named = named_target.consume(3)
    assert [m.body for m in root] == [b"root-0", b"root-1", b"root-2"]
    assert [m.body for m in named] == [b"named-0", b"named-1", b"named-2"]
    for message in root + named:
        assert_message(message, message.body)


def test_keep_alive_connection_publishes_in_order(http, server, target,
                                                  assert_message):
    conn = http.connect(server.port)
    try:
        for i in range(10):
            encoding = "multipart" if i % 2 else "urlencoded"
            resp = http.post(server.port, target.path(),
                             {"body": "ka-%d" % i}, conn=conn,
                             encoding=encoding)
            assert resp.status == 204, resp
    finally:
        conn.close()
    messages = target.consume(10)
    assert [m.body for m in messages] == [
        b"ka-%d" % i for i in range(10)]


def test_many_messages_arrive_once(http, server, target):
    bodies = [secrets.token_bytes(16) for _ in range(50)]
    conn = http.connect(server.port)
    try:
        for body in bodies:
            resp = http.post(server.port, target.path(), [("body", body)],
                             conn=conn)
            assert resp.status == 204, resp
    finally:
        conn.close()
    messages = target.consume(50, timeout=20)
    assert [m.body for m in messages] == bodies
    assert target.consume(1, timeout=0.5) == []


def test_concurrent_users_and_vhosts(http, server, target, named_target,
                                     named_vhost):
    """Threads publishing as guest on "/" and as the named user at once."""
    failures = []
    statuses = []

    def worker(tgt, auth, tag):
        conn = http.connect(server.port)
        try:
            for i in range(25):
                resp = http.post(server.port, tgt.path(),
                                 [("body", b"%s-%d" % (tag, i))], auth=auth,
                                 conn=conn)
                statuses.append(resp.status)
        except Exception as error:  # noqa: BLE001 - reported below
            failures.append(repr(error))
        finally:
            conn.close()

    named_auth = (named_vhost.user, named_vhost.password)
    threads = [
        threading.Thread(target=worker, args=(target, target.auth, b"g1")),
        threading.Thread(target=worker, args=(target, target.auth, b"g2")),
        threading.Thread(target=worker, args=(named_target, named_auth,
                                              b"n1")),
        threading.Thread(target=worker, args=(named_target, named_auth,
                                              b"n2")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not failures, failures
    assert statuses == [204] * 100
    root = [m.body for m in target.consume(50, timeout=20)]
    named = [m.body for m in named_target.consume(50, timeout=20)]
    for tag, bodies in ((b"g1", root), (b"g2", root), (b"n1", named),
                        (b"n2", named)):
        # Each thread's messages arrive, once, in the order it sent them.
        assert [b for b in bodies if b.startswith(tag + b"-")] == [
            b"%s-%d" % (tag, i) for i in range(25)]
    assert len(root) == 50 and len(named) == 50
