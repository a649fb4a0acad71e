"""Hostile input against a real statelessd and RabbitMQ, all at once.

Malformed requests, slow clients, oversized bodies, connection bursts and
floods of unknown users and wrong passwords run side by side, while a
client publishes valid messages throughout.  Afterwards: every valid
publish was answered 204 and its message arrived, nothing was answered
500, 502 or 504, the worker never died, memory, threads and broker
connections stayed bounded, and no password was written anywhere.
"""
import concurrent.futures
import http.client
import json
import socket
import threading
import time

import hardening_support as support

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


def test_hostile_clients_hurt_no_one(tmp_path):
    account = support.BrokerAccount('hostile')
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
        workers = server.worker_pids()
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
        assert server.worker_pids() == workers
    finally:
        server.stop()
        account.delete()
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
    support.assert_clean_log(server.output)
    assert not [password for password in ghost_passwords + [account.password]
                if password in server.output]
