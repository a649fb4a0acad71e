"""Raw bodies: a request whose Content-Type is not a form publishes its
body byte-exact, its properties named in the query string."""
import json
import os
import subprocess

import pytest

from support import GUEST


def post_raw(http, server, path, body, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    return http.request(server.port, "POST", path, body=body,
                        headers=headers, auth=GUEST)


@pytest.mark.parametrize("content_type", ["application/octet-stream",
                                          "application/json",
                                          "text/plain; charset=utf-8"])
def test_body_is_published_as_it_is(http, server, target, assert_message,
                                    content_type):
    body = bytes(range(256)) + b"\r\n&body=x%41+"
    resp = post_raw(http, server, target.path(), body, content_type)
    assert resp.status == 204, resp
    assert_message(target.one(), body, exchange=target.exchange,
                   routing_key="rk", content_type=content_type)


def test_properties_come_from_the_query(http, server, target,
                                        assert_message):
    query = ("?app_id=hooks&message_id=m%C3%A9-1&delivery_mode=2"
             "&priority=3&timestamp=1700000000&expire=60000&type=push"
             "&user_id=guest&correlation_id=c1&reply_to=r"
             "&content_encoding=gzip&headers[x-a]=1"
             "&headers=" + "%7B%22json%22%3A%7B%22n%22%3A2%7D%7D")
    body = b'{"event": "push"}'
    resp = post_raw(http, server, target.path() + query, body,
                    "application/json")
    assert resp.status == 204, resp
    assert_message(target.one(), body, app_id="hooks",
                   message_id="m\u00e9-1", delivery_mode=2, priority=3,
                   timestamp=1700000000, expiration="60000", type="push",
                   user_id="guest", correlation_id="c1", reply_to="r",
                   content_encoding="gzip", content_type="application/json",
                   headers={"x-a": "1", "json": {"n": 2}})


def test_query_content_type_wins(http, server, target, assert_message):
    resp = post_raw(http, server,
                    target.path() + "?content_type=application/x-protobuf",
                    b"\x08\x96\x01", "application/octet-stream")
    assert resp.status == 204, resp
    assert_message(target.one(), b"\x08\x96\x01",
                   content_type="application/x-protobuf")


def test_no_content_type_stays_a_form(http, server, target, assert_message):
    resp = post_raw(http, server, target.path(), b"body=form", None)
    assert resp.status == 204, resp
    assert_message(target.one(), b"form")


def test_confirm_and_mandatory_work(http, server, target, assert_error):
    resp = post_raw(http, server,
                    target.path("unbound") + "?confirm=1&mandatory=1",
                    b"lost", "text/plain")
    assert_error(resp, 422, ["unbound"])
    resp = post_raw(http, server, target.path() + "?confirm=1", b"kept",
                    "text/plain")
    assert resp.status == 204, resp
    assert target.one().body == b"kept"


@pytest.mark.parametrize("query, field", [
    ("?priority=256", "priority"),
    ("?delivery_mode=3", "delivery_mode"),
    ("?headers=%5B1%5D", "headers"),
    ("?user_id=someone-else", "user_id"),
    ("?app_id=%FF", "app_id"),
])
def test_bad_query_properties_are_400(http, server, target, assert_error,
                                      query, field):
    resp = post_raw(http, server, target.path() + query, b"never",
                    "application/octet-stream")
    assert_error(resp, 400, [field])
    assert target.consume(1, timeout=0.5) == []


def test_a_content_type_too_long_is_400(http, server, target, assert_error):
    resp = post_raw(http, server, target.path(), b"never",
                    "application/" + "x" * 250)
    assert_error(resp, 400, ["content_type"])


def test_curl_data_binary(server, target, assert_message, tmp_path):
    payload = os.urandom(70000)
    path = tmp_path / "file.bin"
    path.write_bytes(payload)
    proc = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
         "--data-binary", "@%s" % path,
         "-H", "Content-Type: application/octet-stream",
         "http://guest:guest@127.0.0.1:%d%s?message_id=file-1"
         % (server.port, target.path())],
        capture_output=True, text=True, timeout=30)
    assert (proc.returncode, proc.stdout) == (0, "204"), proc
    assert_message(target.one(), payload, message_id="file-1",
                   content_type="application/octet-stream")


def test_a_webhook_url_with_credentials(server, target, assert_message):
    event = json.dumps({"action": "opened", "number": 7}).encode()
    proc = subprocess.run(
        ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
         "--data-binary", "@-", "-H", "Content-Type: application/json",
         "http://guest:guest@127.0.0.1:%d%s?type=github.pull_request"
         "&delivery_mode=2" % (server.port, target.path())],
        input=event, capture_output=True, timeout=30)
    assert (proc.returncode, proc.stdout) == (0, b"204"), proc
    assert_message(target.one(), event, type="github.pull_request",
                   delivery_mode=2, content_type="application/json")
