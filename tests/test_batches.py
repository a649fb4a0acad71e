"""Batches: many messages in one request, as a JSON array to the management
API's endpoint or as messages[i][field] form fields on the original path."""
import json

import pytest

from support import GUEST


def api_path(target, exchange=None):
    return "/api/exchanges/%%2F/%s/publish" % (exchange or target.exchange)


def post_json(http, port, path, document):
    return http.request(port, "POST", path, body=json.dumps(document),
                        auth=GUEST)


def form_batch(messages):
    """messages[i][field] pairs, as PHP's http_build_query names them."""
    pairs = []
    for index, message in enumerate(messages):
        for name, value in message.items():
            pairs.append(("messages[%d][%s]" % (index, name), value))
    return pairs


def test_json_batch_in_order_with_routing_keys(http, server, target,
                                               assert_message):
    target.bind("other")
    document = [{"routing_key": "other" if i % 3 == 0 else "rk",
                 "payload": "json %d" % i,
                 "properties": {"message_id": "j%d" % i}}
                for i in range(100)]
    document[50]["routing_key"] = "nobody"
    resp = post_json(http, server.port, api_path(target), document)
    assert resp.status == 200, resp
    assert resp.json() == [{"routed": i != 50} for i in range(100)]
    messages = target.consume(99)
    expected = [i for i in range(100) if i != 50]
    assert [m.body for m in messages] == [b"json %d" % i for i in expected]
    for i, message in zip(expected, messages):
        assert_message(message, b"json %d" % i, message_id="j%d" % i,
                       routing_key="other" if i % 3 == 0 else "rk")


def test_form_batch_fire_and_forget(http, server, target, assert_message):
    messages = [{"body": "form %d" % i, "priority": str(i % 10),
                 "headers[x-i]": str(i)} for i in range(100)]
    resp = http.post(server.port, target.path(), form_batch(messages))
    assert (resp.status, resp.json()) == (200, {"published": 100}), resp
    consumed = target.consume(100)
    assert [m.body for m in consumed] == [b"form %d" % i for i in range(100)]
    for i, message in enumerate(consumed):
        assert_message(message, b"form %d" % i, priority=i % 10,
                       headers={"x-i": str(i)}, routing_key="rk")


@pytest.mark.parametrize("encoding", ["urlencoded", "multipart"])
def test_form_batch_confirm_answers_each(http, server, target, encoding):
    messages = [{"body": "c%d" % i} for i in range(3)]
    resp = http.post(server.port, target.path() + "?confirm=1",
                     form_batch(messages), encoding=encoding)
    assert resp.status == 200, resp
    assert resp.json() == {"published": 3, "results": [{"status": 204}] * 3}
    assert [m.body for m in target.consume(3)] == [b"c0", b"c1", b"c2"]


def test_form_batch_failure_answers_first_status_and_each_result(
        http, server, target, assert_error):
    messages = [{"body": "a"}, {"body": "b", "routing_key": "nobody"},
                {"body": "c"}]
    resp = http.post(server.port, target.path() + "?confirm=1&mandatory=1",
                     form_batch(messages))
    doc = assert_error(resp, 422, ["messages[1]", "nobody"])
    assert doc["published"] == 2
    assert [r["status"] for r in doc["results"]] == [204, 422, 204]
    assert "nobody" in doc["results"][1]["reason"]
    assert resp.header("Connection") == "close", resp
    # Not a transaction: the others were published.
    assert [m.body for m in target.consume(2)] == [b"a", b"c"]


def test_json_batch_to_missing_exchange(http, server, assert_error):
    resp = post_json(http, server.port,
                     "/api/exchanges/%2F/statelessd.missing.x/publish",
                     [{"routing_key": "rk", "payload": "x"}] * 2)
    doc = assert_error(resp, 404, ["messages[0]"])
    assert [r["status"] for r in doc["results"]] == [404, 404]


def test_one_bad_json_message_publishes_nothing(http, server, target,
                                                assert_error):
    document = [{"routing_key": "rk", "payload": "ok"} for _ in range(5)]
    document[3]["properties"] = {"priority": 300}
    resp = post_json(http, server.port, api_path(target), document)
    assert_error(resp, 400, ["messages[3].properties.priority"])
    assert target.consume(1, timeout=0.5) == []


@pytest.mark.parametrize("item", ["a string", 5, None, [1]])
def test_json_batch_items_must_be_objects(http, server, target,
                                          assert_error, item):
    resp = post_json(http, server.port, api_path(target),
                     [{"routing_key": "rk", "payload": "ok"}, item])
    assert_error(resp, 400, ["messages[1]", "object"])
    assert target.consume(1, timeout=0.3) == []


def test_one_bad_form_message_publishes_nothing(http, server, target,
                                                assert_error):
    messages = [{"body": "ok"} for _ in range(5)]
    messages[3]["priority"] = "high"
    resp = http.post(server.port, target.path(), form_batch(messages))
    assert_error(resp, 400, ["messages[3].priority"])
    assert target.consume(1, timeout=0.5) == []


@pytest.mark.parametrize("pairs, mention", [
    ([("messages[x][body]", "a")], "messages[x][body]"),
    ([("messages[0][body]", "a"), ("messages[2][body]", "c")],
     "messages[1]"),
    ([("messages[1][body]", "b")], "messages[0]"),
    ([("messages[0][body]", "a"), ("body", "top")], "body"),
    ([("messages[0]", "a")], "messages[0]"),
    ([("messages[0][routing_key]", "r" * 256)], "messages[0].routing_key"),
])
def test_bad_form_batch_shapes_are_400(http, server, target, assert_error,
                                       pairs, mention):
    resp = http.post(server.port, target.path(), pairs)
    assert_error(resp, 400, [mention])
    assert target.consume(1, timeout=0.3) == []


def test_empty_json_batch_is_400(http, server, target, assert_error):
    assert_error(post_json(http, server.port, api_path(target), []), 400,
                 ["no messages"])


@pytest.fixture(scope="module")
def small(statelessd):
    """Batches of at most 5 messages, queues of at most 8."""
    return statelessd(overrides={
        "HTTPServer": {"max_batch_size": 5},
        "Application": {"rabbitmq": {"max_queue_size": 8}}})


def test_batch_over_max_batch_size_is_413(http, small, target, assert_error):
    resp = post_json(http, small.port, api_path(target),
                     [{"routing_key": "rk", "payload": "x"}] * 6)
    assert_error(resp, 413, ["max_batch_size", "5"])
    resp = http.post(small.port, target.path(),
                     form_batch([{"body": "x"}] * 6))
    assert_error(resp, 413, ["max_batch_size", "5"])
    assert target.consume(1, timeout=0.3) == []


def test_huge_json_array_is_413(http, small, target, assert_error):
    resp = http.request(small.port, "POST", api_path(target),
                        body=b"[" + b",".join([b"{}"] * 200000) + b"]",
                        auth=GUEST)
    assert_error(resp, 413, ["max_batch_size"])


def test_batch_beyond_queue_room_is_503(http, statelessd, target,
                                        assert_error):
    server = statelessd(overrides={
        "Application": {"rabbitmq": {"max_queue_size": 3}}})
    resp = http.post(server.port, target.path(),
                     form_batch([{"body": "x%d" % i} for i in range(4)]))
    assert_error(resp, 503, ["limit of 3"])
    assert resp.header("Retry-After"), resp
    assert target.consume(1, timeout=0.5) == []
    resp = http.post(server.port, target.path(),
                     form_batch([{"body": "x%d" % i} for i in range(3)]))
    assert (resp.status, resp.json()) == (200, {"published": 3}), resp
    assert len(target.consume(3)) == 3


def test_stats_count_messages_per_publisher(http, statelessd, target):
    server = statelessd()
    resp = http.post(server.port, target.path() + "?confirm=1",
                     form_batch([{"body": "s"}] * 7))
    assert resp.status == 200, resp
    resp = http.post(server.port, target.path(), {"body": "one more"})
    assert resp.status == 204, resp
    assert len(target.consume(8)) == 8
    stats = http.get(server.port, "/stats").json()
    counters = stats["connections"]["/:guest"]
    assert (counters["publishes"], counters["confirmed"]) == (8, 8)
    assert stats["requests"]["messages"] == 8
    assert stats["requests"]["method.POST"] == 2
    metrics = http.get(server.port, "/metrics").body.decode()
    assert 'statelessd_http_messages_total{port="%d"} 8' % server.port \
        in metrics, metrics
