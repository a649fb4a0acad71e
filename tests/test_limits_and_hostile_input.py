"""HTTPServer limits: body size, headers, request and idle timeouts, and
connections per worker, each answered with its status and a JSON reason.
"""
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest

import hardening_support as support
import statelessd

AUTH = support.basic_auth('nobody', 'nothing').encode()


@pytest.fixture(scope='module')
def server():
    with support.Statelessd({'HTTPServer': {
            'max_body_size': 100000, 'max_header_count': 20,
            'max_header_size': 2048, 'request_timeout': 1.5,
            'socket_timeout': 1.0, 'max_connections': 8}}) as instance:
        yield instance


def post_head(length, extra=b''):
    return (b'POST /v/amq.topic/k HTTP/1.1\r\nHost: x\r\nAuthorization: '
            + AUTH + b'\r\nContent-Type: application/x-www-form-urlencoded'
            b'\r\nContent-Length: ' + length + b'\r\n' + extra + b'\r\n')


def test_oversized_body_is_413_before_any_of_it_is_read(server):
    started = time.monotonic()
    answer = support.raw_exchange(server.port, post_head(b'50000000'),
                                  shutdown=False, timeout=5)
    support.assert_json_error(answer, 413)
    assert time.monotonic() - started < 1.0


def test_expect_100_continue_is_refused_with_413(server):
    answer = support.raw_exchange(
        server.port, post_head(b'50000000', b'Expect: 100-continue\r\n'),
        shutdown=False, timeout=5)
    assert b'100 Continue' not in answer
    support.assert_json_error(answer, 413)


def test_client_sending_an_oversized_body_reads_the_413(server):
    response = support.request(server.port, 'POST', '/v/amq.topic/k',
                               b'body=' + b'x' * 3000000,
                               {'Authorization': AUTH.decode()})
    support.assert_json_error(response, 413)


def test_oversized_chunked_body_is_413(server):
    chunk = b'%x\r\n%s\r\n' % (60000, b'x' * 60000)
    request = (b'POST /v/amq.topic/k HTTP/1.1\r\nAuthorization: ' + AUTH +
               b'\r\nTransfer-Encoding: chunked\r\n\r\n' + chunk * 3 +
               b'0\r\n\r\n')
    support.assert_json_error(support.raw_exchange(server.port, request),
                              413)


@pytest.mark.parametrize('length', [b'-1', b'abc', b'1e3', b'\xb2', b'0x10',
                                    b'+5', b'\xd9\xa1'])
def test_bad_content_length_is_400(server, length):
    answer = support.raw_exchange(server.port, post_head(length))
    status, document = support.assert_json_error(answer, 400)
    assert 'Content-Length' in document['reason']


def test_conflicting_content_lengths_are_400(server):
    answer = support.raw_exchange(server.port, post_head(
        b'5', b'Content-Length: 6\r\n') + b'body=x')
    support.assert_json_error(answer, 400)


def test_header_count_over_the_limit_is_431(server):
    headers = b''.join(b'X-H%d: v\r\n' % i for i in range(21))
    answer = support.raw_exchange(
        server.port, b'GET /stats HTTP/1.1\r\n' + headers + b'\r\n')
    support.assert_json_error(answer, 431)
    headers = b''.join(b'X-H%d: v\r\n' % i for i in range(20))
    answer = support.raw_exchange(
        server.port, b'GET /stats HTTP/1.1\r\n' + headers + b'\r\n')
    assert support.parse_responses(answer)[0][0] == 200


def test_stdlib_header_cap_is_431_json_by_default():
    with support.Statelessd() as instance:
        headers = b''.join(b'X-H%d: v\r\n' % i for i in range(150))
        answer = support.raw_exchange(
            instance.port, b'GET /stats HTTP/1.1\r\n' + headers + b'\r\n')
        support.assert_json_error(answer, 431)


def test_header_size_over_the_limit_is_431(server):
    answer = support.raw_exchange(
        server.port, b'GET /stats HTTP/1.1\r\nX-Big: ' + b'v' * 3000 +
        b'\r\n\r\n')
    support.assert_json_error(answer, 431)


def test_request_line_over_64k_is_414(server):
    answer = support.raw_exchange(
        server.port, b'GET /' + b'a' * 70000 + b' HTTP/1.1\r\n\r\n')
    support.assert_json_error(answer, 414)


def slow_client(port, data, interval):
    """Send data a byte at a time; return (answer, seconds taken)."""
    started = time.monotonic()
    with socket.create_connection(('127.0.0.1', port), timeout=10) as sock:
        try:
            for byte in data:
                sock.sendall(bytes([byte]))
                time.sleep(interval)
        except OSError:
            pass
        answer = support.read_all(sock, 5)
    return answer, time.monotonic() - started


def test_slowloris_headers_are_cut_off_with_408(server):
    data = b'GET /stats HTTP/1.1\r\n' + b'X-Slow: ' + b'a' * 200
    answer, seconds = slow_client(server.port, data, 0.1)
    support.assert_json_error(answer, 408)
    assert seconds < 4, seconds


def test_slow_body_is_cut_off_with_408(server):
    head = post_head(b'1000')
    with socket.create_connection(('127.0.0.1', server.port),
                                  timeout=10) as sock:
        sock.sendall(head)
        started = time.monotonic()
        try:
            for _ in range(100):
                sock.sendall(b'x')
                time.sleep(0.1)
        except OSError:
            pass
        answer = support.read_all(sock, 5)
    support.assert_json_error(answer, 408)
    assert time.monotonic() - started < 4


def test_idle_keep_alive_connection_is_closed_after_socket_timeout(server):
    with socket.create_connection(('127.0.0.1', server.port),
                                  timeout=10) as sock:
        sock.sendall(b'GET /stats HTTP/1.1\r\n\r\n')
        started = time.monotonic()
        answer = support.read_all(sock, 5)
        assert support.parse_responses(answer)[0][0] == 200
        assert 0.8 < time.monotonic() - started < 3


def test_slow_clients_hold_no_thread_for_long(server):
    pid = server.worker_pids()[0]
    time.sleep(0.5)  # connection threads of earlier tests end when idle
    before = support.thread_count(pid)
    clients = [threading.Thread(target=slow_client, args=(
        server.port, b'GET /stats HTTP/1.1\r\nX: ' + b'a' * 100, 0.05))
        for _ in range(6)]
    for client in clients:
        client.start()
    time.sleep(0.5)
    assert support.thread_count(pid) >= before + 6
    for client in clients:
        client.join()
    time.sleep(0.5)
    assert support.thread_count(pid) <= before


def test_connections_beyond_max_connections_get_503(server):
    idle = [socket.create_connection(('127.0.0.1', server.port))
            for _ in range(8)]
    try:
        time.sleep(0.2)
        started = time.monotonic()
        response = support.request(server.port, 'GET', '/stats', timeout=5)
        assert time.monotonic() - started < 1.0
        support.assert_json_error(response, 503)
        assert response.headers['Retry-After']
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.3)
    assert support.request(server.port, 'GET', '/stats').status == 200


@pytest.mark.parametrize('server_section, message', [
    ({'max_connections': 0}, 'max_connections'),
    ({'max_header_count': 101}, 'max_header_count'),
    ({'max_header_size': 'big'}, 'max_header_size'),
    ({'request_timeout': -1}, 'request_timeout'),
    ({'stats_allow': ['10.0.0.1/8']}, 'stats_allow[0]'),
    ({'stats_allow': '127.0.0.1'}, 'stats_allow'),
    ({'trusted_proxies': ['nonsense']}, 'trusted_proxies[0]'),
])
def test_bad_limit_settings_are_configuration_errors(server_section,
                                                     message):
    with pytest.raises(statelessd.ConfigError, match=message.replace(
            '[', r'\[').replace(']', r'\]')):
        statelessd.Config({'HTTPServer': server_section})


def test_limit_defaults():
    config = statelessd.Config({})
    assert config.max_body_size == 10485760
    assert config.max_header_count == 100
    assert config.max_header_size == 32768
    assert config.request_timeout == 60.0
    assert config.socket_timeout == 75.0
    assert config.max_connections == 500
    assert config.max_publishers == 1000
    assert config.login_failure_ttl == 5.0


@pytest.fixture(scope='module')
def large_file_server():
    """Serves a 32 MiB static file: far more than a socket takes at once."""
    static = Path(tempfile.mkdtemp(prefix='statelessd-static-'))
    content = os.urandom(32 * 1024 * 1024)
    (static / 'large.bin').write_bytes(content)
    with support.Statelessd({
            'Application': {'paths': {'static': str(static)}},
            'HTTPServer': {'socket_timeout': 1.0}}) as instance:
        yield instance, content
    shutil.rmtree(static)


def response_body(answer):
    head, _, body = answer.partition(b'\r\n\r\n')
    assert head.startswith(b'HTTP/1.1 200 '), head[:200]
    return head, body


def test_a_response_larger_than_the_socket_buffer_arrives_whole(
        large_file_server):
    server, content = large_file_server
    with socket.create_connection(('127.0.0.1', server.port),
                                  timeout=10) as sock:
        sock.sendall(b'GET /static/large.bin HTTP/1.1\r\nHost: x\r\n'
                     b'Connection: close\r\n\r\n')
        time.sleep(0.3)   # the first send fills the buffers, the rest waits
        head, body = response_body(support.read_all(sock, 10))
    assert b'Content-Length: %d' % len(content) in head
    assert body == content


def test_a_client_that_stops_reading_is_cut_off_after_socket_timeout(
        large_file_server):
    server, content = large_file_server
    pid = server.worker_pids()[0]
    time.sleep(0.5)   # connection threads of earlier tests end when idle
    before = support.thread_count(pid)
    with socket.create_connection(('127.0.0.1', server.port),
                                  timeout=10) as sock:
        sock.sendall(b'GET /static/large.bin HTTP/1.1\r\nHost: x\r\n\r\n')
        time.sleep(0.5)
        assert support.thread_count(pid) == before + 1
        time.sleep(2.5)   # socket_timeout is 1 s
        assert support.thread_count(pid) <= before
        _, body = response_body(support.read_all(sock, 10))
    assert len(body) < len(content)
    assert content.startswith(body)
