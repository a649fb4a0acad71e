"""The helpers every statelessd test uses, each written once.

Every test drives a real statelessd process over real HTTP against the
real RabbitMQ on 127.0.0.1:5672 (or a private node of the tests' own).
Nothing is skipped: a missing tool fails the test that needs it, saying
what to install.  conftest.py turns these into fixtures; tests/soak.py
imports them directly.

Sections: small things, HTTP, checking answers and messages, RabbitMQ,
statelessd processes, load, nginx and TLS.
"""
import atexit
import base64
import contextlib
import http.client
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
from pathlib import Path
from types import SimpleNamespace

import pika
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / 'statelessd.py'
PYTHON = sys.executable
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

BROKER_HOST = os.environ.get('STATELESSD_TEST_BROKER_HOST', '127.0.0.1')
BROKER_PORT = int(os.environ.get('STATELESSD_TEST_BROKER_PORT', '5672'))
BROKER = (BROKER_HOST, BROKER_PORT)
GUEST = ('guest', 'guest')

#: Every AMQP basic property a consumed message carries.
PROPERTY_NAMES = (
    'app_id', 'cluster_id', 'content_encoding', 'content_type',
    'correlation_id', 'delivery_mode', 'expiration', 'headers', 'message_id',
    'priority', 'reply_to', 'timestamp', 'type', 'user_id',
)

READY_TIMEOUT = 20.0
STOP_TIMEOUT = 30.0
HTTP_TIMEOUT = 30.0


# -- small things -------------------------------------------------------------

def unique(prefix):
    """A name no other test (or earlier run) uses: prefix and random hex."""
    return '%s%s' % (prefix, secrets.token_hex(6))


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(('127.0.0.1', 0))
        return sock.getsockname()[1]


def port_is_open(port, host='127.0.0.1'):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def deep_merge(base, overrides):
    """base with overrides merged in, section by section (base changes)."""
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def settle(predicate, timeout=10.0, interval=0.1):
    """Poll predicate() until it returns something true; return that (or
    the last false value once timeout seconds passed)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_until(predicate, timeout, message):
    """settle(), failing the test with message when predicate never held."""
    if not settle(predicate, timeout, 0.2):
        pytest.fail(message)


def require_tool(name, hint=None):
    """The path of a command the test needs, or a failed test saying how to
    install it (hint; by default the make target and apt package)."""
    path = shutil.which(name) or shutil.which(name, path='/usr/sbin:/sbin')
    if path is None:
        pytest.fail('%s is not installed: %s' % (
            name, hint or 'run "make %s" as root, or apt-get install %s'
            % (name, name)))
    return path


def require_python(version):
    """The path of Python `version` ('3.8'), or a failed test.

    pyenv's build under ~/.pyenv/versions comes first, as in the Makefile,
    then pythonX.Y on PATH.
    """
    builds = sorted(Path.home().glob('.pyenv/versions/%s.[0-9]*/bin/python%s'
                                     % (version, version)))
    path = str(builds[-1]) if builds else shutil.which('python' + version)
    if path is None:
        pytest.fail('Python %s is not installed: "make pythons" says how to '
                    'get it' % version)
    return path


#: The modules, as setup.py declares them.
MODULES = re.search(r"py_modules=\[([^\]]*)\]",
                    (REPO / 'setup.py').read_text())[1].replace("'", '').split(', ')

#: The files make pyz reads.
PYZ_SOURCES = ('Makefile', 'setup.py', 'etc/pyz_main.py') + tuple(
    module + '.py' for module in MODULES)


def make_in_copy(target, sources, directory):
    """Run `make target` in `directory`, holding copies of `sources` (paths
    relative to the repository), so builds leave the checkout alone."""
    make = require_tool('make')
    for name in sources:
        copy = Path(directory) / name
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(str(REPO / name), str(copy))
    result = subprocess.run([make, target, 'PY=%s' % PYTHON],
                            cwd=str(directory), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return Path(directory) / 'dist'


# -- HTTP ---------------------------------------------------------------------

def basic_auth(user, password):
    """The Authorization header value for a Basic login (str or bytes)."""
    if isinstance(user, str):
        user = user.encode('utf-8')
    if isinstance(password, str):
        password = password.encode('utf-8')
    return 'Basic ' + base64.b64encode(user + b':' + password).decode('ascii')


def authorization(auth):
    """Headers for auth: a (user, password) pair, a ready header value, or
    None for no Authorization header at all."""
    if auth is None:
        return {}
    if isinstance(auth, tuple):
        return {'Authorization': basic_auth(*auth)}
    return {'Authorization': auth}


class Response:
    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    def header(self, name):
        return self.headers.get(name)

    def json(self):
        try:
            return json.loads(self.body.decode('utf-8'))
        except ValueError as error:
            raise AssertionError('HTTP %s body is not JSON (%s): %r'
                                 % (self.status, error, self.body[:500]))

    def __repr__(self):
        return '<HTTP %s %s headers=%r body=%r>' % (
            self.status, self.reason, dict(self.headers.items()),
            self.body[:500])


def round_trip(connection, method, path, body=None, headers=None):
    """One request on an open http.client connection; the Response."""
    connection.request(method, path, body=body, headers=headers or {})
    response = connection.getresponse()
    return Response(response.status, response.reason, response.msg,
                    response.read())


def request(port, method, path, body=None, headers=None, timeout=HTTP_TIMEOUT,
            host='127.0.0.1', source=None):
    """One request on a connection of its own; the Response."""
    connection = http.client.HTTPConnection(
        host, port, timeout=timeout,
        source_address=(source, 0) if source else None)
    with contextlib.closing(connection):
        return round_trip(connection, method, path, body, headers)


def get(port, path, **kwargs):
    return request(port, 'GET', path, **kwargs)


def quote(text):
    """One path segment, every reserved character percent-encoded."""
    return urllib.parse.quote(text, safe='')


def publish_path(vhost, exchange_name, routing_key):
    return '/' + '/'.join(quote(part)
                          for part in (vhost, exchange_name, routing_key))


def urlencode(fields):
    """Percent-encode (name, bytes-or-str value) pairs byte-exact (no '+')."""
    def encode(text):
        return urllib.parse.quote_from_bytes(
            text.encode('utf-8') if isinstance(text, str) else text, safe='')
    return '&'.join('%s=%s' % (encode(name), encode(value))
                    for name, value in fields).encode('ascii')


def publish(port, path, fields, auth=GUEST, headers=None, **kwargs):
    """POST one urlencoded message; the Response.

    fields is the message body (str or bytes) or (name, value) pairs; auth
    is what authorization() takes.
    """
    if isinstance(fields, (str, bytes)):
        fields = [('body', fields)]
    all_headers = {'Content-Type': 'application/x-www-form-urlencoded'}
    all_headers.update(authorization(auth))
    all_headers.update(headers or {})
    return request(port, 'POST', path, urlencode(fields), all_headers,
                   **kwargs)


def encode_multipart(fields, boundary=None):
    """multipart/form-data encoding of (name, value) pairs, written by hand.

    Values may be str (sent as UTF-8) or bytes (sent as they are).
    Returns (content_type, body).
    """
    values = [v if isinstance(v, bytes) else str(v).encode('utf-8')
              for _, v in fields]
    boundary = boundary or ('statelessd-boundary-' + secrets.token_hex(16))
    marker = b'--' + boundary.encode('ascii')
    chunks = []
    for (name, _), value in zip(fields, values):
        assert marker not in value, 'boundary collides with a value'
        chunks.append(marker + b'\r\nContent-Disposition: form-data; name="'
                      + name.encode('utf-8') + b'"\r\n\r\n' + value + b'\r\n')
    chunks.append(marker + b'--\r\n')
    return 'multipart/form-data; boundary=' + boundary, b''.join(chunks)


def as_pairs(fields):
    if fields is None:
        return []
    if isinstance(fields, dict):
        return list(fields.items())
    return list(fields)


class Http:
    """Requests to statelessd ports, on a connection of their own or on one
    the test keeps open (conn)."""

    def connect(self, port, host='127.0.0.1'):
        return http.client.HTTPConnection(host, port, timeout=HTTP_TIMEOUT)

    def request(self, port, method, path, body=None, headers=None,
                auth=None, conn=None):
        """Send one request and return a Response; auth as authorization()
        takes it."""
        headers = dict(headers or {})
        headers.update(authorization(auth))
        if body is None and method in ('POST', 'PUT'):
            body = b''
        if conn is not None:
            return round_trip(conn, method, path, body, headers)
        with contextlib.closing(self.connect(port)) as own:
            return round_trip(own, method, path, body, headers)

    def post(self, port, path, fields=None, auth=GUEST,
             encoding='urlencoded', headers=None, conn=None, boundary=None):
        """POST form fields.

        encoding: "urlencoded" (with its Content-Type), "bare" (urlencoded
        body without any Content-Type header) or "multipart".
        """
        headers = dict(headers or {})
        pairs = as_pairs(fields)
        if encoding == 'multipart':
            content_type, body = encode_multipart(pairs, boundary)
            headers.setdefault('Content-Type', content_type)
        elif encoding in ('urlencoded', 'bare'):
            body = urllib.parse.urlencode(pairs).encode('ascii')
            if encoding == 'urlencoded':
                headers.setdefault(
                    'Content-Type', 'application/x-www-form-urlencoded')
        else:
            raise ValueError('unknown encoding %r' % encoding)
        return self.request(port, 'POST', path, body=body, headers=headers,
                            auth=auth, conn=conn)

    def get(self, port, path, auth=None, headers=None, conn=None):
        return self.request(port, 'GET', path, headers=headers, auth=auth,
                            conn=conn)


def post_from_threads(http_client, port, requests_of, threads):
    """Every thread at once posts the (path, body, auth) that
    requests_of(its index) yields, on a keep-alive connection of its own;
    [(path, body, status)].  An exception in a thread fails the test."""
    results, failures = [], []
    lock = threading.Lock()

    def post(index):
        try:
            with contextlib.closing(http_client.connect(port)) as conn:
                for path, body, auth in requests_of(index):
                    resp = http_client.post(port, path, [('body', body)],
                                            auth=auth, conn=conn)
                    with lock:
                        results.append((path, body, resp.status))
        except Exception as error:  # noqa: BLE001 - reported below
            failures.append(repr(error))

    workers = [threading.Thread(target=post, args=(n,))
               for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert not failures, failures
    return results


def raw_exchange(port, data, timeout=10.0, shutdown=True):
    """Send raw bytes, return everything the server answers until it closes
    (or timeout)."""
    with socket.create_connection(('127.0.0.1', port), timeout=timeout) as s:
        try:
            s.sendall(data)
            if shutdown:
                s.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        return read_all(s, timeout)


def read_all(sock, timeout):
    chunks = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except (socket.timeout, ConnectionResetError):
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b''.join(chunks)


def parse_responses(raw):
    """[(status, headers dict, body)] of HTTP/1.1 responses in raw bytes."""
    responses = []
    while raw:
        head, sep, rest = raw.partition(b'\r\n\r\n')
        if not sep:
            raise AssertionError('incomplete response: %r' % raw[:300])
        lines = head.decode('latin-1').split('\r\n')
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(':')
            headers[name.strip().lower()] = value.strip()
        length = int(headers.get('content-length', '0'))
        responses.append((status, headers, rest[:length]))
        raw = rest[length:]
    return responses


# -- checking answers and messages --------------------------------------------

def assert_json_error(raw_or_response, statuses):
    """The answer (raw bytes or a Response) is one of statuses, with a JSON
    error and reason; (status, document)."""
    if isinstance(raw_or_response, bytes):
        answers = parse_responses(raw_or_response)
        assert answers, 'no answer at all'
        status, headers, body = answers[0]
    else:
        status, body = raw_or_response.status, raw_or_response.body
    statuses = (statuses,) if isinstance(statuses, int) else statuses
    assert status in statuses, (status, body[:300])
    document = json.loads(body.decode('utf-8'))
    assert document.get('reason'), document
    assert 'Traceback' not in document['reason']
    return status, document


def check_error(resp, status, mentions=()):
    """An error answer: status, JSON {"error", "reason"} naming something.

    mentions: each item is a string, or a tuple of alternatives, one of
    which the reason must contain.
    """
    assert resp.status == status, resp
    content_type = resp.header('Content-Type') or ''
    assert content_type.split(';')[0].strip() == 'application/json', resp
    doc = resp.json()
    assert isinstance(doc, dict), resp
    assert isinstance(doc.get('error'), str) and doc['error'], resp
    assert isinstance(doc.get('reason'), str) and doc['reason'], resp
    for mention in mentions:
        options = mention if isinstance(mention, tuple) else (mention,)
        assert any(option in doc['reason'] for option in options), (
            'reason %r names none of %r' % (doc['reason'], options))
    return doc


def check_message(message, body, exchange=None, routing_key=None,
                  **properties):
    """Compare the body bytes and EVERY basic property of a message.

    Properties not given are expected to be absent (None); an empty
    header table counts as absent headers.
    """
    unknown = set(properties) - set(PROPERTY_NAMES)
    assert not unknown, 'unknown properties %s' % unknown
    assert message.body == body
    if exchange is not None:
        assert message.exchange == exchange
    if routing_key is not None:
        assert message.routing_key == routing_key
    actual = {name: getattr(message.properties, name)
              for name in PROPERTY_NAMES}
    if actual['headers'] == {} and properties.get('headers') is None:
        actual['headers'] = None
    expected = {name: properties.get(name) for name in PROPERTY_NAMES}
    assert actual == expected


def sentinel_arrives_first(http_client, port, target, auth=None):
    """Publish a sentinel and check it is the next message in the queue.

    A request that must not publish is followed by this: had it published,
    its message would arrive before the sentinel.
    """
    body = b'sentinel-' + secrets.token_hex(4).encode()
    resp = http_client.post(port, target.path(), [('body', body)],
                            auth=auth or target.auth)
    assert resp.status == 204, resp
    messages = target.consume(1, timeout=10)
    assert len(messages) == 1, 'the sentinel message never arrived'
    assert messages[0].body == body, (
        'a rejected request published %r' % messages[0].body)
    check_message(messages[0], body)


def assert_clean_log(log):
    """Nothing escaped a request handler, no thread died, no worker died."""
    for sign in ('Unexpected error', 'Exception in thread', 'died:',
                 'failed to handle'):
        assert sign not in log, log[log.index(sign) - 2000:][:4000]


# -- RabbitMQ -----------------------------------------------------------------

def rabbitmqctl(*args, node=None, check=True):
    """rabbitmqctl's output, for the machine's broker or a private node.

    A failure fails the test, unless check is false: then it is None.
    """
    tool = require_tool('rabbitmqctl', 'apt-get install rabbitmq-server')
    result = subprocess.run(
        [tool, '-q'] + (['-n', node] if node else []) + list(args),
        capture_output=True, text=True, timeout=120,
        stdin=subprocess.DEVNULL)
    if result.returncode == 0:
        return result.stdout
    if check:
        pytest.fail('rabbitmqctl %s failed with status %s: %s %s'
                    % (' '.join(args), result.returncode,
                       result.stdout.strip(), result.stderr.strip()))
    return None


def broker_connections(user):
    """How many connections RabbitMQ has open for user."""
    out = rabbitmqctl('list_connections', 'user')
    return sum(1 for line in out.splitlines() if line.strip() == user)


def require_broker():
    """Fails (never skips) when no broker answers on BROKER."""
    try:
        Amqp('/', *GUEST).close()
    except Exception as error:  # noqa: BLE001 - any failure means no broker
        pytest.fail(
            'RabbitMQ is not reachable at %s:%s as guest/guest (%s: %s); '
            'start it with `rabbitmq-server -detached`'
            % (BROKER_HOST, BROKER_PORT, type(error).__name__, error))


class Broker:
    """Vhosts and users made with rabbitmqctl; cleanup() removes them all."""

    def __init__(self):
        self.vhosts = []
        self.users = []

    def add_vhost(self, name):
        return self._made(self.vhosts, 'add_vhost', name)

    def add_user(self, name, password):
        return self._made(self.users, 'add_user', name, password)

    def delete_vhost(self, name):
        self._removed(self.vhosts, 'delete_vhost', name)

    def delete_user(self, name):
        self._removed(self.users, 'delete_user', name)

    @staticmethod
    def _made(kept, command, name, *args):
        rabbitmqctl(command, name, *args)
        kept.append(name)
        return name

    @staticmethod
    def _removed(kept, command, name):
        rabbitmqctl(command, name, check=False)
        if name in kept:
            kept.remove(name)

    def change_password(self, name, password):
        rabbitmqctl('change_password', name, password)

    def set_permissions(self, vhost, user, configure='.*', write='.*',
                        read='.*'):
        rabbitmqctl('set_permissions', '-p', vhost, user, configure, write,
                    read)

    def account(self, vhost_prefix, user_prefix):
        """A new vhost and a user with every permission on it."""
        password = 'pw-' + secrets.token_hex(12)
        info = SimpleNamespace(
            vhost=self.add_vhost(unique(vhost_prefix)),
            user=self.add_user(unique(user_prefix), password),
            password=password)
        self.set_permissions(info.vhost, info.user)
        return info

    def cleanup(self):
        for user in list(self.users):
            self.delete_user(user)
        for vhost in list(self.vhosts):
            self.delete_vhost(vhost)


class BrokerAccount:
    """A vhost and a user of its own with every permission on it, removed
    again by delete() or at the end of a with block."""

    def __init__(self, prefix='account'):
        self.broker = Broker()
        info = self.broker.account(prefix + '-', prefix + '-user-')
        self.vhost, self.user, self.password = (info.vhost, info.user,
                                                info.password)

    @property
    def auth(self):
        """The Authorization header value of this account's login."""
        return basic_auth(self.user, self.password)

    def path(self, exchange_name, routing_key):
        return publish_path(self.vhost, exchange_name, routing_key)

    def publish(self, port, body, routing_key='k', exchange_name='amq.topic',
                query=''):
        """POST body as this account to exchange_name; the Response."""
        return publish(port, self.path(exchange_name, routing_key) + query,
                       body, self.auth)

    def change_password(self, password):
        self.broker.change_password(self.user, password)
        self.password = password

    def connection(self):
        return pika.BlockingConnection(pika.ConnectionParameters(
            host=BROKER_HOST, port=BROKER_PORT, virtual_host=self.vhost,
            credentials=pika.PlainCredentials(self.user, self.password),
            connection_attempts=5, retry_delay=1))

    def queue_bound_to(self, exchange_name='amq.topic', routing_key='#'):
        """Declare a queue bound to exchange_name; returns its name."""
        queue = unique('q-')
        with contextlib.closing(self.connection()) as connection:
            channel = connection.channel()
            channel.queue_declare(queue)
            channel.queue_bind(queue, exchange_name, routing_key)
        return queue

    def drain(self, queue, expected, timeout=20.0):
        """Consume messages from queue until `expected` arrived or timeout:
        [(properties, body)]."""
        amqp = Amqp(self.vhost, self.user, self.password)
        try:
            return [(message.properties, message.body)
                    for message in amqp.consume(queue, expected, timeout)]
        finally:
            amqp.close()

    def delete(self):
        self.broker.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.delete()


class Message(SimpleNamespace):
    """exchange, routing_key, properties, body of one consumed message."""


class Amqp:
    """A blocking pika connection owned by the test process."""

    def __init__(self, vhost, user, password, port=BROKER_PORT):
        self.vhost = vhost
        self.user = user
        self.password = password
        params = pika.ConnectionParameters(
            host=BROKER_HOST, port=port, virtual_host=vhost,
            credentials=pika.PlainCredentials(user, password), heartbeat=0,
            connection_attempts=3, retry_delay=1, socket_timeout=5)
        self.conn = pika.BlockingConnection(params)
        self._channel = self.conn.channel()

    @property
    def channel(self):
        if self._channel is None or self._channel.is_closed:
            self._channel = self.conn.channel()
        return self._channel

    def consume(self, queue, n=1, timeout=10.0):
        """basic_get until n messages arrived or timeout seconds passed."""
        messages = []
        deadline = time.monotonic() + timeout
        while len(messages) < n:
            method, properties, body = self.channel.basic_get(
                queue, auto_ack=True)
            if method is None:
                if time.monotonic() >= deadline:
                    break
                self.conn.sleep(0.02)
                continue
            messages.append(Message(exchange=method.exchange,
                                    routing_key=method.routing_key,
                                    properties=properties, body=body))
        return messages

    def close(self):
        with contextlib.suppress(Exception):
            self.conn.close()


class Target:
    """A fresh exchange with an exclusive queue bound to it (by default a
    direct exchange and the binding key "rk")."""

    def __init__(self, amqp, routing_key='rk', exchange_type='direct',
                 binding=None):
        self.amqp = amqp
        self.vhost = amqp.vhost
        self.user = amqp.user
        self.password = amqp.password
        self.auth = (amqp.user, amqp.password)
        self.exchange = unique('statelessd.test.')
        self.routing_key = routing_key
        channel = amqp.channel
        channel.exchange_declare(self.exchange, exchange_type=exchange_type,
                                 durable=False, auto_delete=False)
        self.queue = channel.queue_declare('', exclusive=True).method.queue
        self.bind(binding or routing_key)

    def bind(self, routing_key):
        self.amqp.channel.queue_bind(self.queue, self.exchange,
                                     routing_key=routing_key)

    def path(self, routing_key=None, exchange=None, vhost=None):
        return publish_path(
            self.vhost if vhost is None else vhost,
            self.exchange if exchange is None else exchange,
            self.routing_key if routing_key is None else routing_key)

    def consume(self, n=1, timeout=10.0):
        return self.amqp.consume(self.queue, n, timeout)

    def one(self, timeout=10.0):
        """The next message; fails when none arrives within timeout."""
        messages = self.consume(1, timeout)
        assert messages, ('no message arrived in queue %s within %ss'
                          % (self.queue, timeout))
        return messages[0]

    def take(self, count, timeout=15.0):
        """The bodies of exactly `count` messages, in queue order."""
        bodies = [m.body for m in self.consume(count, timeout)]
        assert len(bodies) == count, ('consumed %d of %d messages: %r'
                                      % (len(bodies), count, bodies))
        return bodies

    def cleanup(self):
        with contextlib.suppress(Exception):
            self.amqp.channel.queue_delete(self.queue)
            self.amqp.channel.exchange_delete(self.exchange)


@contextlib.contextmanager
def sink(vhost='/', auth=GUEST):
    """A topic exchange of its own whose queue takes every routing key, on a
    connection of its own; removed afterwards."""
    amqp = Amqp(vhost, *auth)
    try:
        box = Target(amqp, exchange_type='topic', binding='#')
        try:
            yield box
        finally:
            box.cleanup()
    finally:
        amqp.close()


def durable_target(channel, name=None):
    """A durable exchange and queue, so an outage keeps what was acked."""
    name = name or unique('statelessd.delivery.')
    channel.exchange_declare(name, 'topic', durable=True)
    channel.queue_declare(name, durable=True)
    channel.queue_bind(name, name, '#')
    return name


def received_ids(channel, queue):
    """The message_ids of everything in queue now, consumed."""
    ids = []
    while True:
        method, properties, _ = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return ids
        ids.append(properties.message_id)


def arrived_ids(channel, queue, expected, timeout):
    """The message_ids consumed until all of expected came, or timeout."""
    received = set()

    def complete():
        received.update(received_ids(channel, queue))
        return set(expected) <= received
    settle(complete, timeout, 0.3)
    return received


class PrivateBroker:
    """A RabbitMQ node of the tests' own, on free ports."""

    def __init__(self):
        for tool in ('rabbitmq-server', 'rabbitmqctl'):
            require_tool(tool, 'the tests start RabbitMQ nodes of their own '
                               '(apt-get install rabbitmq-server)')
        self.name = 'statelessd-test-%s@localhost' % uuid.uuid4().hex[:8]
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix='statelessd-rmq-')
        config = os.path.join(self.directory, 'rabbitmq.conf')
        with open(config, 'w') as handle:
            handle.write('listeners.tcp.local = 127.0.0.1:%d\n' % self.port)
        rabbitmq = pwd.getpwnam('rabbitmq')
        for path in (self.directory, config):
            os.chown(path, rabbitmq.pw_uid, rabbitmq.pw_gid)

        def here(name):
            return os.path.join(self.directory, name)
        self.env = dict(
            os.environ,
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_CONFIG_FILE=here('rabbitmq'),
            RABBITMQ_DIST_PORT=str(free_port()),
            RABBITMQ_MNESIA_BASE=here('mnesia'),
            RABBITMQ_LOG_BASE=here('log'),
            RABBITMQ_ENABLED_PLUGINS_FILE=here('enabled_plugins'),
            RABBITMQ_PID_FILE=here('pid'))

    def start(self):
        self.launch()
        self.await_started()

    def launch(self):
        """Start the node's Erlang VM without waiting for RabbitMQ in it."""
        subprocess.run(['rabbitmq-server', '-detached'], env=self.env,
                       check=True, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60)

    def await_started(self):
        started = settle(lambda: self.ctl('await_startup', '--timeout', '60',
                                          check=False) is not None,
                         timeout=90, interval=0.5)
        if not started:
            pytest.fail('the private RabbitMQ node did not start:\n%s'
                        % self.log())

    def log(self):
        logs = os.path.join(self.directory, 'log')
        if not os.path.isdir(logs):
            return '(no log)'
        return '\n'.join(open(os.path.join(logs, name), errors='replace')
                         .read()[-3000:] for name in os.listdir(logs))

    def ctl(self, *args, check=True):
        return rabbitmqctl(*args, node=self.name, check=check)

    def stop_app(self):
        self.ctl('stop_app')

    def start_app(self):
        self.ctl('start_app')
        self.ctl('await_startup', '--timeout', '90')

    def kill(self):
        """kill -9 of the node's Erlang VM."""
        with open(self.env['RABBITMQ_PID_FILE']) as handle:
            os.kill(int(handle.read()), signal.SIGKILL)

    def is_running(self):
        return self.ctl('status', check=False) is not None

    def remove(self):
        self.ctl('stop', check=False)
        shutil.rmtree(self.directory, ignore_errors=True)

    def channel(self):
        return Amqp('/', *GUEST, port=self.port).channel


class CountingProxy:
    """A TCP forwarder to the broker that counts the connections made
    through it: how many times statelessd asked RabbitMQ for a login."""

    def __init__(self, target=BROKER):
        self.target = target
        self.listener = socket.socket()
        self.listener.bind(('127.0.0.1', 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b),
                                 daemon=True).start()

    @staticmethod
    def _pipe(source, sink_socket):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink_socket.sendall(data)
        except OSError:
            pass
        for sock in (source, sink_socket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self):
        self.listener.close()


# -- statelessd processes -----------------------------------------------------

def statelessd_config(ports, overrides=None):
    """A configuration for the local broker on ports, logging everything but
    pika's chatter to stderr, with overrides deep merged in."""
    document = {
        'Application': {'rabbitmq': {'host': BROKER_HOST, 'port': BROKER_PORT,
                                     'connect_timeout': 5}},
        'HTTPServer': {'address': '127.0.0.1', 'ports': list(ports)},
        'Logging': {
            'version': 1,
            'disable_existing_loggers': False,
            'formatters': {'plain': {
                'format': '%(asctime)s %(levelname)s %(process)d '
                          '%(name)s: %(message)s'}},
            'handlers': {'console': {'class': 'logging.StreamHandler',
                                     'formatter': 'plain',
                                     'stream': 'ext://sys.stderr'}},
            'loggers': {'pika': {'level': 'WARNING'}},
            'root': {'level': 'DEBUG', 'handlers': ['console']}},
    }
    return deep_merge(document, overrides)


def write_config(directory, document):
    path = Path(directory) / ('statelessd-%s.yaml' % secrets.token_hex(4))
    path.write_text(yaml.safe_dump(document, default_flow_style=False))
    return path


def statelessd_command(config_path):
    """The command line of a foreground statelessd; fails the test when
    there is no statelessd.py to run."""
    if not SCRIPT.is_file():
        pytest.fail('%s does not exist: there is no statelessd to test'
                    % SCRIPT)
    return [PYTHON, str(SCRIPT), '-c', str(config_path), '-f']


def children(pid):
    """The live child processes of pid, sorted."""
    found = []
    for task in Path('/proc/%d/task' % pid).glob('*'):
        with contextlib.suppress(OSError):
            found.extend(int(p) for p in
                         (task / 'children').read_text().split())
    return sorted(found)


def process_status(pid):
    """/proc/<pid>/status as {field: value}."""
    with open('/proc/%d/status' % pid) as handle:
        return dict(line.rstrip('\n').split(':\t', 1) for line in handle
                    if ':\t' in line)


def rss_kib(pid):
    return int(process_status(pid)['VmRSS'].split()[0])


def thread_count(pid):
    return len(list(Path('/proc/%d/task' % pid).glob('*')))


class Statelessd:
    """One statelessd master (and its workers) with a configuration of its
    own on free ports; a context manager that starts it and insists on a
    clean exit after SIGTERM.

    ports is a count of free ports to pick, or the list of ports to serve
    (those config_path names, when it is given).  directory holds the
    configuration and the log: when not given, a temporary one of its own,
    removed when the tests end, so the log outlives the process.
    command replaces `python statelessd.py` (a pyz, an installed binary).
    """

    def __init__(self, overrides=None, ports=1, directory=None, command=None,
                 config_path=None):
        if isinstance(ports, int):
            ports = [free_port() for _ in range(ports)]
        self.ports = list(ports)
        if directory is None:
            directory = tempfile.mkdtemp(prefix='statelessd-test-')
            atexit.register(shutil.rmtree, directory, True)
        self.directory = Path(directory)
        self.config = statelessd_config(self.ports, overrides)
        self.config_path = config_path or write_config(self.directory,
                                                       self.config)
        self.log_path = self.directory / ('statelessd-%s.log'
                                          % secrets.token_hex(4))
        self.command = command
        self.process = None

    @property
    def port(self):
        return self.ports[0]

    def start(self, wait=True):
        command = statelessd_command(self.config_path)
        if self.command:
            command = self.command + command[2:]
        with open(str(self.log_path), 'wb') as log:
            self.process = subprocess.Popen(
                command, cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self):
        """Until every port answers HTTP; fails the test when the master
        exits first or READY_TIMEOUT passes."""
        deadline = time.monotonic() + READY_TIMEOUT
        for port in self.ports:
            while not self.answers(port):
                if self.process.poll() is not None:
                    pytest.fail('statelessd exited with status %s before it '
                                'answered; log:\n%s'
                                % (self.process.returncode, self.log_tail()))
                if time.monotonic() > deadline:
                    self.kill()
                    pytest.fail('statelessd did not answer on port %s within '
                                '%ss; log:\n%s'
                                % (port, READY_TIMEOUT, self.log_tail()))
                time.sleep(0.05)

    @staticmethod
    def answers(port):
        try:
            get(port, '/stats', timeout=2)
        except (OSError, http.client.HTTPException):
            return False
        return True

    def log(self):
        return self.log_path.read_text(errors='replace')

    def log_tail(self, lines=60):
        return '\n'.join(self.log().splitlines()[-lines:])

    def children(self):
        """The worker processes alive now."""
        return children(self.process.pid)

    def worker_pids(self):
        """{port: pid} of the workers, from their "serving port" lines."""
        return {int(port): int(pid) for pid, port in re.findall(
            r'Worker (\d+) serving port (\d+)', self.log())}

    def terminate(self):
        """SIGTERM the master; its exit status (None: it did not exit)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            return None

    def kill(self):
        """SIGKILL what is left of the process group this started."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)

    def halt(self):
        """SIGTERM, then SIGKILL for anything left; the master's status."""
        try:
            return self.terminate()
        finally:
            self.kill()

    def stop(self):
        """halt(), insisting on exit status 0 and no port left open."""
        status = self.terminate()
        leftovers = settle(lambda: [port for port in self.ports
                                    if port_is_open(port)] or None,
                           timeout=3.0) if status is not None else None
        self.kill()
        assert status is not None, (
            'statelessd did not exit within %ss of SIGTERM; log:\n%s'
            % (STOP_TIMEOUT, self.log_tail()))
        assert status == 0, ('statelessd exited with status %s after '
                             'SIGTERM; log:\n%s' % (status, self.log_tail()))
        assert not leftovers, ('ports %s still accept connections after the '
                               'master exited' % leftovers)

    def __enter__(self):
        return self.start()

    def __exit__(self, kind, error, traceback):
        if kind is None:
            self.stop()
        else:
            self.halt()


def stats(port):
    return Http().get(port, '/stats').json()


def drained(port):
    """True once every publisher of the port holds nothing unconfirmed."""
    connections = stats(port)['connections'].values()
    return all(c['queue_size'] == 0 and c['outbox'] == 0 and c['connected']
               for c in connections)


def gateway(statelessd, broker, **rabbitmq):
    """A one-port statelessd (from the statelessd fixture) publishing to a
    private node, with short timeouts and room for a long outage."""
    settings = {'host': '127.0.0.1', 'port': broker.port,
                'confirm_timeout': 3, 'connect_timeout': 3,
                'max_queue_size': 100000}
    settings.update(rabbitmq)
    return statelessd(1, {'Application': {'rabbitmq': settings}})


# -- load ---------------------------------------------------------------------

class Load:
    """Threads posting numbered messages until stopped; records answers."""

    def __init__(self, port, path, threads=4, pause=0.005, prefix=''):
        self.port, self.path, self.pause = port, path, pause
        self.prefix = prefix
        self.statuses = {}
        self.lock = threading.Lock()
        self.running = threading.Event()
        self.threads = [threading.Thread(target=self.post, args=(n,))
                        for n in range(threads)]

    def post(self, number):
        http_client = Http()
        connection = http_client.connect(self.port)
        sequence = 0
        while self.running.is_set():
            message_id = '%s%d-%d' % (self.prefix, number, sequence)
            sequence += 1
            try:
                response = http_client.post(
                    self.port, self.path,
                    {'body': 'm' + message_id, 'message_id': message_id,
                     'delivery_mode': '2'}, conn=connection)
                status = response.status
                if response.header('Connection') == 'close':
                    connection.close()
                    connection = http_client.connect(self.port)
            except OSError:
                status = 'error'
                connection.close()
                connection = http_client.connect(self.port)
            with self.lock:
                self.statuses[message_id] = status
            time.sleep(self.pause)

    def __enter__(self):
        self.running.set()
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.running.clear()
        for thread in self.threads:
            thread.join(60)

    def accepted(self):
        return {m for m, status in self.statuses.items() if status == 204}

    def count(self, status):
        return sum(1 for s in self.statuses.values() if s == status)


# -- nginx and TLS ------------------------------------------------------------

NGINX_CONF = REPO / 'etc' / 'nginx.conf'
STREAM_MODULE = '/usr/lib/nginx/modules/ngx_stream_module.so'


def render(template, directory, listen, ports, workers=None):
    """etc/nginx.conf with our ports, and logs and buffers in directory;
    workers, when given, replaces worker_processes."""
    servers = ''.join('        server 127.0.0.1:%d;\n' % port
                      for port in ports)
    text, count = re.subn(r'(?m)^        server 127\.0\.0\.1:\d+;\n', '',
                          template)
    assert count >= 1, 'etc/nginx.conf has no upstream server lines'
    text = text.replace('    upstream statelessd {\n',
                        '    upstream statelessd {\n' + servers, 1)
    text, count = re.subn(r'(?m)^        listen 80;$',
                          '        listen 127.0.0.1:%d;' % listen, text)
    assert count == 1, 'etc/nginx.conf has no "listen 80;"'
    paths = ''.join('    %s %s;\n' % (directive, directory / name)
                    for directive, name in (
                        ('access_log', 'access.log'),
                        ('client_body_temp_path', 'body'),
                        ('proxy_temp_path', 'proxy'),
                        ('fastcgi_temp_path', 'fastcgi'),
                        ('uwsgi_temp_path', 'uwsgi'),
                        ('scgi_temp_path', 'scgi')))
    if workers is not None:
        text, count = re.subn(r'(?m)^worker_processes \w+;$',
                              'worker_processes %d;' % workers, text)
        assert count == 1, 'etc/nginx.conf has no worker_processes line'
    return text.replace('http {\n', 'http {\n' + paths, 1)


@contextlib.contextmanager
def nginx_process(directory, conf, ready):
    """nginx running conf with its prefix and error log in directory, until
    the block ends; fails the test when ready() does not hold soon."""
    binary = require_tool('nginx', 'make nginx (apt-get install nginx)')
    error_log = directory / 'error.log'
    process = subprocess.Popen(
        [binary, '-c', str(conf), '-p', str(directory), '-e', str(error_log),
         '-g', 'daemon off; pid %s;' % (directory / 'nginx.pid')],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)

    def started():
        if process.poll() is not None:
            pytest.fail('nginx exited with %s: %s\n%s' % (
                process.returncode, process.stdout.read().decode(),
                error_log.read_text() if error_log.exists() else ''))
        return ready()
    try:
        assert settle(started, timeout=15), 'nginx did not answer'
        yield process
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def nginx(ports, workers=None):
    """nginx running etc/nginx.conf on a free port in front of ports; yields
    the port.

    Its files live in a directory of their own: nginx workers run as an
    unprivileged user and cannot reach into pytest's private tmp_path.
    """
    with tempfile.TemporaryDirectory(prefix='statelessd-nginx-') as name:
        directory = Path(name)
        directory.chmod(0o755)
        listen = free_port()
        conf = directory / 'nginx.conf'
        conf.write_text(render(NGINX_CONF.read_text(), directory, listen,
                               ports, workers))
        with nginx_process(directory, conf, lambda: answers_health(listen)):
            yield listen


def answers_health(port):
    try:
        return get(port, '/health', timeout=2).status == 200
    except OSError:
        return False


def openssl(*args, cwd):
    tool = require_tool('openssl', 'apt-get install openssl (or make '
                                   'tls-proxy)')
    result = subprocess.run([tool] + list(args), cwd=str(cwd),
                            capture_output=True, text=True, timeout=60)
    if result.returncode:
        raise AssertionError('openssl %s failed: %s'
                             % (' '.join(args), result.stderr))


def make_ca(directory, name):
    """A self-signed CA: (certificate path, key path)."""
    openssl('req', '-x509', '-newkey', 'ec', '-pkeyopt',
            'ec_paramgen_curve:prime256v1', '-nodes', '-days', '2',
            '-subj', '/CN=%s' % name, '-keyout', name + '.key',
            '-out', name + '.crt', cwd=directory)
    return directory / (name + '.crt'), directory / (name + '.key')


def make_server_certificate(directory, ca, names=('localhost',),
                            addresses=('127.0.0.1',)):
    """A server certificate signed by ca: (certificate path, key path)."""
    san = ','.join(['DNS:' + n for n in names] +
                   ['IP:' + a for a in addresses])
    (directory / 'san.cnf').write_text('subjectAltName=%s\n' % san)
    openssl('req', '-newkey', 'ec', '-pkeyopt',
            'ec_paramgen_curve:prime256v1', '-nodes', '-subj',
            '/CN=%s' % names[0], '-keyout', 'server.key', '-out',
            'server.csr', cwd=directory)
    openssl('x509', '-req', '-in', 'server.csr', '-CA', str(ca[0]),
            '-CAkey', str(ca[1]), '-CAcreateserial', '-days', '2',
            '-extfile', 'san.cnf', '-out', 'server.crt', cwd=directory)
    return directory / 'server.crt', directory / 'server.key'


TLS_TERMINATOR_CONF = '''
load_module %(module)s;
events { worker_connections 64; }
stream {
  server {
    listen 127.0.0.1:%(port)d ssl;
    ssl_certificate %(certificate)s;
    ssl_certificate_key %(key)s;
    proxy_pass %(host)s:%(broker_port)d;
  }
}
'''


@contextlib.contextmanager
def tls_terminator(directory, certificate):
    """nginx's stream module: TLS on a port of its own in front of the
    broker's plain AMQP port; yields that port."""
    if not Path(STREAM_MODULE).exists():
        pytest.fail('%s is missing: make tls-proxy (apt-get install '
                    'libnginx-mod-stream)' % STREAM_MODULE)
    port = free_port()
    conf = directory / 'nginx.conf'
    conf.write_text(TLS_TERMINATOR_CONF % {
        'module': STREAM_MODULE, 'port': port, 'certificate': certificate[0],
        'key': certificate[1], 'host': BROKER_HOST,
        'broker_port': BROKER_PORT})
    with nginx_process(directory, conf, lambda: port_is_open(port)):
        yield port
