"""The PHP examples in tests/php/ publish through statelessd with curl."""
import json
import os
import secrets
import shutil
import subprocess
from pathlib import Path

import pytest

PHP_DIR = Path(__file__).resolve().parent / "php"
ARRAY_SCRIPT = PHP_DIR / "publisher_array.php"
QUERY_SCRIPT = PHP_DIR / "publisher_query.php"


@pytest.fixture(scope="module")
def php():
    exe = shutil.which("php")
    if not exe:
        pytest.fail("php is not installed; install php-cli and php-curl "
                    "(apt-get install -y php-cli php-curl)")
    check = subprocess.run(
        [exe, "-r", "exit(function_exists('curl_init') ? 0 : 3);"],
        capture_output=True, text=True, timeout=30)
    if check.returncode != 0:
        pytest.fail("php has no curl extension; install php-curl (%s)"
                    % check.stderr.strip())
    return exe


def run_php(php, script, args=(), env=None):
    environment = dict(os.environ)
    environment.update(env or {})
    return subprocess.run([php, str(script)] + [str(a) for a in args],
                          capture_output=True, text=True, timeout=60,
                          env=environment, stdin=subprocess.DEVNULL)


def url(server, path):
    return "http://127.0.0.1:%d%s" % (server.port, path)


def test_array_publisher(php, server, target, assert_message):
    body = '{"hello": "%s"}' % secrets.token_hex(4)
    proc = run_php(php, ARRAY_SCRIPT, [url(server, target.path()), "guest",
                                       "guest", body, 1700000000])
    assert (proc.returncode, proc.stdout.strip()) == (0, "204"), proc
    message = target.one()
    assert_message(message, body.encode(), exchange=target.exchange,
                   routing_key="rk", app_id="php-example",
                   content_type="application/json", timestamp=1700000000,
                   type="example.event", user_id="guest")


def test_array_publisher_settings_from_environment(php, server, named_target,
                                                   named_vhost,
                                                   assert_message):
    env = {
        "STATELESSD_URL": url(server, named_target.path()),
        "STATELESSD_USER": named_vhost.user,
        "STATELESSD_PASSWORD": named_vhost.password,
        "STATELESSD_BODY": "from the environment",
        "STATELESSD_TIMESTAMP": "1600000000",
    }
    proc = run_php(php, ARRAY_SCRIPT, env=env)
    assert (proc.returncode, proc.stdout.strip()) == (0, "204"), proc
    message = named_target.one()
    assert_message(message, b"from the environment", app_id="php-example",
                   content_type="application/json", timestamp=1600000000,
                   type="example.event", user_id=named_vhost.user)


def test_array_publisher_large_body(php, server, target, assert_message):
    # Large enough for curl to ask for "Expect: 100-continue" first.
    body = ("0123456789abcdef" * 6000) + "\n"
    proc = run_php(php, ARRAY_SCRIPT, [url(server, target.path()), "guest",
                                       "guest", body, 1700000001])
    assert (proc.returncode, proc.stdout.strip()) == (0, "204"), proc
    message = target.one()
    assert_message(message, body.encode(), app_id="php-example",
                   content_type="application/json", timestamp=1700000001,
                   type="example.event", user_id="guest")


def test_array_publisher_wrong_password(php, server, target, http,
                                        assert_message):
    proc = run_php(php, ARRAY_SCRIPT, [url(server, target.path()), "guest",
                                       "not-the-password", "nope", 1])
    assert (proc.returncode, proc.stdout.strip()) == (1, "401"), proc
    resp = http.post(server.port, target.path(), {"body": "sentinel"})
    assert resp.status == 204, resp
    message = target.one()
    assert_message(message, b"sentinel")


def test_query_publisher_headers_table(php, server, target, assert_message):
    body = "query " + secrets.token_hex(4)
    proc = run_php(php, QUERY_SCRIPT, [url(server, target.path()), "guest",
                                       "guest", body])
    assert (proc.returncode, proc.stdout.strip()) == (0, "204"), proc
    message = target.one()
    assert_message(message, body.encode(), exchange=target.exchange,
                   routing_key="rk", content_type="text/plain",
                   delivery_mode=2, message_id="php-query-1",
                   headers={"x-a": "1", "x-b": "two"})


def test_query_publisher_to_default_exchange(php, server, target,
                                             assert_message):
    path = "/%2f//" + target.queue
    proc = run_php(php, QUERY_SCRIPT, [url(server, path), "guest", "guest",
                                       "straight to the queue"])
    assert (proc.returncode, proc.stdout.strip()) == (0, "204"), proc
    message = target.one()
    assert_message(message, b"straight to the queue", exchange="",
                   routing_key=target.queue, content_type="text/plain",
                   delivery_mode=2, message_id="php-query-1",
                   headers={"x-a": "1", "x-b": "two"})


def test_batch_publisher(php, server, target, assert_message):
    target.bind("odd")
    proc = run_php(php, PHP_DIR / "publisher_batch.php",
                   [url(server, target.path() + "?confirm=1"), "guest",
                    "guest", 20])
    assert proc.returncode == 0, proc
    status, _, answer = proc.stdout.strip().partition(" ")
    assert status == "200", proc
    assert json.loads(answer) == {"published": 20,
                                  "results": [{"status": 204}] * 20}
    messages = target.consume(20)
    assert [m.body for m in messages] == [b"message %d" % i
                                          for i in range(20)]
    for i, message in enumerate(messages):
        assert_message(message, b"message %d" % i,
                       routing_key="odd" if i % 2 else "rk",
                       message_id="php-batch-%d" % i,
                       headers={"x-seq": str(i)})
