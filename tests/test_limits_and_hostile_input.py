"""Limits and hostile input against a real statelessd and RabbitMQ.

HTTPServer limits (body size, headers, request and idle timeouts,
connections per worker) are each answered with their status and a JSON
reason; any request Hypothesis makes up gets a status; and hostile clients
all at once hurt no one else.
"""
import concurrent.futures
import http.client
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import statelessd
import support

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
    pid = server.children()[0]
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
    pid = server.children()[0]
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


# ----------------------------------------------------------------------------
# Hypothesis-driven requests against a real statelessd and RabbitMQ:
# whatever arrives is answered with a status and, for errors, a JSON reason;
# valid messages arrive byte-exact.
# ----------------------------------------------------------------------------


FUZZ_SETTINGS = settings(max_examples=150, deadline=None,
                         suppress_health_check=list(HealthCheck))
#: What statelessd may answer to anything at all: never 500, 502 or 504.
ANY_ANSWER = set(range(200, 500)) | {501, 503, 505}


@pytest.fixture(scope='module')
def fuzzed_server(shared_account):
    with support.Statelessd({'HTTPServer': {'request_timeout': 2,
                                            'max_body_size': 4096}}) \
            as instance:
        instance.workers_at_start = instance.children()
        yield instance
        assert instance.children() == instance.workers_at_start
    support.assert_clean_log(instance.log())


def token(alphabet=st.characters(min_codepoint=0, max_codepoint=255)):
    return st.text(alphabet, max_size=30).map(
        lambda t: t.encode('latin-1'))


def path_strategy(account):
    segment = st.one_of(st.just(account.vhost.encode()),
                        st.just(b'amq.topic'), token(),
                        st.binary(max_size=20), st.just(b'%ff'),
                        st.just(b'a' * 300))
    return st.one_of(
        st.lists(segment, min_size=1, max_size=5).map(
            lambda parts: b'/' + b'/'.join(parts)),
        st.sampled_from([b'/', b'/stats', b'*', b'', b'http://x/y/z/w']),
        st.binary(max_size=60))


HEADER_NAMES = st.one_of(st.sampled_from([
    b'Authorization', b'Content-Type', b'Content-Length',
    b'Transfer-Encoding', b'Expect', b'Connection', b'X-Real-IP']),
    token())


def header_value(account):
    return st.one_of(
        st.just(support.basic_auth(account.user, account.password).encode()),
        st.sampled_from([b'Basic', b'Basic !!', b'Basic \xe9', b'chunked',
                         b'100-continue', b'-1', b'99999999999', b'\xb2',
                         b'multipart/form-data; boundary=b',
                         b'application/x-www-form-urlencoded', b'close']),
        token(), st.binary(max_size=40))


@st.composite
def raw_requests(draw, account):
    method = draw(st.one_of(st.sampled_from([b'GET', b'POST', b'HEAD',
                                             b'PUT', b'OPTIONS']), token()))
    path = draw(path_strategy(account))
    version = draw(st.sampled_from([b'HTTP/1.1', b'HTTP/1.0', b'HTTP/2.0',
                                    b'', b'HTTP/x', b'HTTP/1.1 extra']))
    headers = draw(st.lists(st.tuples(HEADER_NAMES, header_value(account)),
                            max_size=8))
    body = draw(st.one_of(st.binary(max_size=300),
                          st.just(b'body=hello&priority=\xb2'),
                          st.just(b'--b\r\nContent-Disposition: form-data; '
                                  b'name="body"\r\n\r\nx\r\n--b--\r\n')))
    if draw(st.booleans()):
        headers.append((b'Content-Length', b'%d' % len(body)))
    line = b' '.join(part for part in (method, path, version) if part)
    return (line + b'\r\n' + b''.join(name + b': ' + value + b'\r\n'
                                      for name, value in headers)
            + b'\r\n' + body)


def test_any_request_gets_a_status_and_json_errors(fuzzed_server,
                                                   shared_account):
    @FUZZ_SETTINGS
    @given(raw_requests(shared_account))
    def check(data):
        raw = support.raw_exchange(fuzzed_server.port, data, timeout=10)
        assert raw.startswith(b'HTTP/1.1 '), (data, raw[:200])
        status, headers, body = support.parse_responses(
            raw.split(b'HTTP/1.1 100 Continue\r\n\r\n')[-1])[0]
        assert status in ANY_ANSWER, (data, status, body)
        if status >= 400 and data.split(b' ')[0] != b'HEAD':
            document = json.loads(body)
            assert document['reason'], document
    check()


PROPERTY_TEXT = st.text(st.characters(blacklist_categories=('Cs', 'Cc')),
                        max_size=30)


def test_valid_messages_arrive_byte_exact(fuzzed_server, shared_account):
    queue = shared_account.queue_bound_to('amq.topic', 'hypo.#')

    @settings(max_examples=40, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(body=st.binary(max_size=3000), message_id=PROPERTY_TEXT,
           headers=st.dictionaries(PROPERTY_TEXT, PROPERTY_TEXT, max_size=3),
           multipart=st.booleans())
    def check(body, message_id, headers, multipart):
        fields = [('body', body), ('message_id', message_id),
                  ('headers', json.dumps(headers))]
        if multipart:
            content_type, raw = support.encode_multipart(fields)
        else:
            content_type, raw = ('application/x-www-form-urlencoded',
                                 support.urlencode(fields))
        if len(raw) > 4096:
            return
        response = support.request(
            fuzzed_server.port, 'POST', '/%s/amq.topic/hypo.key?confirm=1'
            % support.quote(shared_account.vhost), raw,
            {'Authorization': shared_account.auth,
             'Content-Type': content_type})
        assert response.status == 204, response
        [(properties, received)] = shared_account.drain(queue, 1)
        assert received == body
        assert properties.message_id == message_id
        assert {k: (v.decode() if isinstance(v, bytes) else v)
                for k, v in (properties.headers or {}).items()} == headers
    check()


# ----------------------------------------------------------------------------
# Hostile input against a real statelessd and RabbitMQ, all at once.
#
# Malformed requests, slow clients, oversized bodies, connection bursts and
# floods of unknown users and wrong passwords run side by side, while a
# client publishes valid messages throughout.  Afterwards: every valid
# publish was answered 204 and its message arrived, nothing was answered
# 500, 502 or 504, the worker never died, memory, threads and broker
# connections stayed bounded, and no password was written anywhere.
# ----------------------------------------------------------------------------


#: Statuses hostile input may get: client errors, 501 for an unknown
#: method, 503 for a limit reached, 505 for HTTP/2 spoken to HTTP/1.1.
ACCEPTABLE = set(range(400, 500)) | {501, 503, 505}
ATTACK_SECONDS = 15

MALFORMED = [
    b'GARBAGE\r\n\r\n',
    b'\x00\x01\x02\x03\r\n\r\n',
    b'GET\r\n\r\n',
    b'GET / HTTP/1.1 extra words\r\n\r\n',
    b'GET /stats HTTP/2.0\r\n\r\n',
    b'GET /stats HTTP/1.x\r\n\r\n',
    b'BREW /pot HTTP/1.1\r\n\r\n',
    b'GET /' + b'a' * 70000 + b' HTTP/1.1\r\n\r\n',
    b'GET /stats HTTP/1.1\r\n' + b'X: y\r\n' * 150 + b'\r\n',
    b'GET /stats HTTP/1.1\r\nX: ' + b'y' * 70000 + b'\r\n\r\n',
    b'POST /%ff%fe/amq.topic/k HTTP/1.1\r\nContent-Length: 0\r\n\r\n',
    b'POST /v/%0a/k HTTP/1.1\r\nContent-Length: 0\r\n\r\n',
    b'POST /v/amq.topic/' + b'k' * 300 + b' HTTP/1.1\r\n\r\n',
]


#: The management API's publish path, after /api/exchanges/<vhost>.
API_PATH = '/amq.topic/publish'


def post(vhost, auth, extra_headers=b'', body=b'body=x',
         path='/amq.topic/hostile'):
    if path == API_PATH:
        vhost = 'api/exchanges/' + vhost
    return (b'POST /' + vhost.encode() + path.encode() + b' HTTP/1.1\r\n'
            b'Authorization: ' + auth.encode() + b'\r\n' + extra_headers +
            b'Content-Length: %d\r\n\r\n' % len(body) + body)


def malformed_with_auth(account):
    auth = account.auth
    return [
        post(account.vhost, 'Basic !!!notbase64'),
        post(account.vhost, 'Basic ' + 'w6k='),
        post(account.vhost, support.basic_auth('nocolon', '')[:-4]),
        post(account.vhost, auth, body=b'body=%zz&priority=\xb2'),
        post(account.vhost, auth, body=b'headers=%7B%22a%22%3A1e999999%7D'),
        post(account.vhost, auth, body=b'headers=' + b'%5B' * 3000),
        post(account.vhost, auth, body=b'user_id=someone-else'),
        post(account.vhost, auth, b'Content-Type: multipart/form-data; '
             b'boundary=zz\r\n', body=b'--zz\r\nContent-Disposition: '
             b'form-data; name="body"\r\n\r\ntruncated'),
        post(account.vhost, auth, b'Content-Type: multipart/form-data\r\n'),
        post(account.vhost, auth, b'Content-Type: text/plain\r\n',
             path='/amq.topic/hostile?priority=999'),
        post(account.vhost, auth, body=b'messages[x][body]=a'),
        post(account.vhost, auth, body=b'messages[0][body]=a&'
             b'messages[2][body]=c'),
        post(account.vhost, auth, body=b'&'.join(
            b'messages[%d][priority]=1' % i for i in range(2000))),
        post(account.vhost, auth, path=API_PATH, body=b'"not an object"'),
        post(account.vhost, auth, path=API_PATH, body=b'[' * 100000),
        post(account.vhost, auth, path=API_PATH,
             body=b'[' + b'{},' * 5000 + b'{}]'),
        post(account.vhost, auth, path=API_PATH,
             body=b'{"routing_key": "k", "payload": "!!",'
                  b' "payload_encoding": "base64"}'),
        post(account.vhost, auth, b'Transfer-Encoding: chunked\r\n',
             body=b'-5\r\nabc'),
        post(account.vhost, auth, b'Transfer-Encoding: gzip\r\n'),
        (b'POST /' + account.vhost.encode() + b'/amq.topic/k HTTP/1.1\r\n'
         b'Authorization: ' + auth.encode() + b'\r\n'
         b'Content-Length: -1\r\n\r\n'),
        (b'POST /' + account.vhost.encode() + b'/amq.topic/k HTTP/1.1\r\n'
         b'Authorization: ' + auth.encode() + b'\r\n'
         b'Content-Length: 10\r\n\r\nshort'),
    ]


class Outcomes:
    """What the attackers saw, collected across threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.statuses = {}
        self.bad = []

    def note(self, kind, status, detail=b''):
        with self.lock:
            self.statuses.setdefault(kind, {}).setdefault(status, 0)
            self.statuses[kind][status] += 1
            if status not in ACCEPTABLE:
                self.bad.append((kind, status, detail[:300]))


def answer_status(raw):
    """The status of a raw answer (after any 100 Continue), or None."""
    raw = raw.split(b'HTTP/1.1 100 Continue\r\n\r\n')[-1]
    if not raw:
        return None, b''
    [(status, _, body)] = support.parse_responses(raw)[:1]
    if status >= 400:
        json.loads(body)
    return status, body


class ValidPublisher(threading.Thread):
    """Publishes numbered messages over a keep-alive connection."""

    def __init__(self, port, account):
        super().__init__(daemon=True)
        self.port = port
        self.account = account
        self.sent = 0
        self.failures = []
        self.stop = threading.Event()

    def run(self):
        connection = None
        while not self.stop.is_set():
            if connection is None:
                connection = http.client.HTTPConnection('127.0.0.1',
                                                        self.port, timeout=30)
            confirm = '?confirm=1' if self.sent % 2 else ''
            body = support.urlencode([('body', 'valid-%d' % self.sent)])
            try:
                connection.request(
                    'POST', '/%s/amq.topic/valid.%d%s' % (
                        support.quote(self.account.vhost), self.sent,
                        confirm), body,
                    {'Authorization': self.account.auth, 'Content-Type':
                     'application/x-www-form-urlencoded'})
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as error:
                self.failures.append(('connection', repr(error)))
                connection.close()
                connection = None
                continue
            if response.status == 204:
                self.sent += 1
            else:
                self.failures.append((response.status, self.sent))
            if response.will_close:
                connection.close()
                connection = None
            time.sleep(0.01)
        if connection is not None:
            connection.close()


def until(deadline, action):
    while time.monotonic() < deadline:
        action()


def test_hostile_clients_hurt_no_one(account):
    outcomes = Outcomes()
    ghost_passwords = ['ghost-secret-%d' % n for n in range(100)]
    config = {
        'Application': {'rabbitmq': {'max_publishers': 20,
                                     'login_failure_ttl': 5}},
        'HTTPServer': {'request_timeout': 2, 'socket_timeout': 3,
                       'max_connections': 100, 'max_body_size': 1048576},
    }
    server = support.Statelessd(config)
    try:
        queue = account.queue_bound_to('amq.topic', 'valid.#')
        server.start()
        workers = server.children()
        worker = workers[0]
        publisher = ValidPublisher(server.port, account)
        publisher.start()
        time.sleep(1.0)
        rss_before = support.rss_kib(worker)
        threads_before = support.thread_count(worker)
        deadline = time.monotonic() + ATTACK_SECONDS
        raw_attacks = MALFORMED + malformed_with_auth(account)

        def malformed():
            for data in raw_attacks:
                status, body = answer_status(
                    support.raw_exchange(server.port, data, timeout=10))
                outcomes.note('malformed', status, data[:80] + b' ' + body)

        def slow_client():
            with socket.create_connection(('127.0.0.1', server.port),
                                          timeout=10) as sock:
                try:
                    for byte in b'POST /x/y/z HTTP/1.1\r\nX: ' + b'a' * 400:
                        sock.sendall(bytes([byte]))
                        time.sleep(0.05)
                except OSError:
                    pass
                status, _ = answer_status(support.read_all(sock, 5))
                outcomes.note('slow', status)

        def oversized():
            data = post(account.vhost, account.auth, body=b'') \
                .replace(b'Content-Length: 0', b'Content-Length: 50000000')
            status, _ = answer_status(support.raw_exchange(
                server.port, data + b'x' * 100000, timeout=10))
            outcomes.note('oversized', status)
            try:
                response = support.request(
                    server.port, 'POST', '/%s/amq.topic/k' % account.vhost,
                    b'body=' + b'x' * 2000000,
                    {'Authorization': account.auth})
                outcomes.note('oversized', response.status)
            except OSError as error:
                outcomes.note('oversized', 'reset', repr(error).encode())

        def unknown_users():
            n = int(time.monotonic() * 1000) % len(ghost_passwords)
            response = support.request(
                server.port, 'POST', '/%s/amq.topic/k'
                % support.quote(account.vhost), b'body=x',
                {'Authorization': support.basic_auth(
                    'ghost-%d' % n, ghost_passwords[n])})
            outcomes.note('unknown-user', response.status)
            response = support.request(
                server.port, 'POST', '/%s/amq.topic/k'
                % support.quote(account.vhost), b'body=x',
                {'Authorization': support.basic_auth(
                    account.user, ghost_passwords[n])})
            outcomes.note('wrong-password', response.status)

        def burst():
            """Once, halfway through: more connections than allowed."""
            time.sleep(max(0.0, deadline - time.monotonic()) / 2)
            socks = []
            try:
                for _ in range(150):
                    socks.append(socket.create_connection(
                        ('127.0.0.1', server.port), timeout=10))
                time.sleep(0.5)
                refused = 0
                for sock in socks:
                    sock.setblocking(False)
                    try:
                        if sock.recv(4096).startswith(b'HTTP/1.1 503'):
                            refused += 1
                    except OSError:
                        pass
                outcomes.note('burst', 503 if refused else 'none refused')
            finally:
                for sock in socks:
                    sock.close()
            time.sleep(max(0.0, deadline - time.monotonic()))

        attackers = ([malformed] * 2 + [slow_client] * 10 + [oversized] * 2
                     + [unknown_users] * 6 + [burst])
        with concurrent.futures.ThreadPoolExecutor(len(attackers)) as pool:
            futures = [pool.submit(until, deadline, attack)
                       for attack in attackers]
            for future in futures:
                future.result()
        time.sleep(2.5)
        publisher.stop.set()
        publisher.join(30)
        rss_after = support.rss_kib(worker)
        threads_after = support.thread_count(worker)
        connections = support.broker_connections(account.user)
        arrived = account.drain(queue, publisher.sent, timeout=30)
        stats = support.request(server.port, 'GET', '/stats').json()
        print('hostile: %s; valid publishes %d, arrived %d; RSS %d -> %d '
              'KiB; threads %d -> %d; broker connections for the user %d'
              % (outcomes.statuses, publisher.sent, len(arrived), rss_before,
                 rss_after, threads_before, threads_after, connections))
        assert server.children() == workers
    finally:
        server.halt()
    assert outcomes.bad == []
    # During the burst, anyone may be told 503.
    assert set(outcomes.statuses['slow']) <= {408, 503}
    assert outcomes.statuses['slow'].get(408)
    assert set(outcomes.statuses['oversized']) <= {413, 503}
    assert outcomes.statuses['oversized'].get(413)
    assert outcomes.statuses['burst'] == {503: 1}
    assert set(outcomes.statuses['unknown-user']) <= {401, 503}
    assert set(outcomes.statuses['wrong-password']) <= {401, 503}
    assert outcomes.statuses['wrong-password'].get(401)
    assert publisher.failures == []
    assert publisher.sent > 100
    bodies = sorted(int(body.split(b'-')[1]) for _, body in arrived)
    assert bodies == list(range(publisher.sent))
    assert rss_after - rss_before < 30 * 1024
    assert threads_after <= threads_before + 2
    assert connections == 1
    assert not any(key.startswith(account.vhost + ':ghost')
                   for key in stats['connections'])
    support.assert_clean_log(server.log())
    assert not [password for password in ghost_passwords + [account.password]
                if password in server.log()]
