"""Helpers for the hardening and hostile-input tests.

Every test drives a real statelessd process over real HTTP against the
real RabbitMQ on 127.0.0.1:5672.  Nothing is skipped: a missing tool
fails the test that needs it, saying what to install.
"""
import contextlib
import json
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pika
import yaml
from conftest import (basic_auth, deep_merge, free_port, port_is_open,
                      request)

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
SCRIPT = REPO / 'statelessd.py'
PYTHON = sys.executable
BROKER = ('127.0.0.1', 5672)


def unique(prefix):
    return '%s-%s' % (prefix, secrets.token_hex(5))


def require(tool, hint):
    """The path of a command-line tool, or a failure saying how to get it."""
    path = shutil.which(tool) or shutil.which(tool, path='/usr/sbin:/sbin')
    if path is None:
        raise AssertionError('%s is not installed: %s' % (tool, hint))
    return path


# -- the broker ---------------------------------------------------------------

def rabbitmqctl(*args, check=True):
    tool = require('rabbitmqctl', 'apt-get install rabbitmq-server')
    result = subprocess.run([tool, '-q'] + list(args), capture_output=True,
                            text=True, timeout=120)
    if check and result.returncode:
        raise AssertionError('rabbitmqctl %s failed: %s%s'
                             % (' '.join(args), result.stdout, result.stderr))
    return result.stdout


class BrokerAccount:
    """A vhost and a user of its own, removed again by delete()."""

    def __init__(self, prefix='hard'):
        self.vhost = unique(prefix)
        self.user = unique(prefix + '-user')
        self.password = 'pw-' + secrets.token_hex(8)
        rabbitmqctl('add_vhost', self.vhost)
        rabbitmqctl('add_user', self.user, self.password)
        rabbitmqctl('set_permissions', '-p', self.vhost, self.user,
                    '.*', '.*', '.*')

    @property
    def auth(self):
        return basic_auth(self.user, self.password)

    def change_password(self, password):
        rabbitmqctl('change_password', self.user, password)
        self.password = password

    def connection(self):
        return pika.BlockingConnection(pika.ConnectionParameters(
            host=BROKER[0], port=BROKER[1], virtual_host=self.vhost,
            credentials=pika.PlainCredentials(self.user, self.password),
            connection_attempts=5, retry_delay=1))

    def queue_bound_to(self, exchange='amq.topic', routing_key='#'):
        """Declare a queue bound to exchange; returns its name."""
        queue = unique('q')
        with contextlib.closing(self.connection()) as connection:
            channel = connection.channel()
            channel.queue_declare(queue)
            channel.queue_bind(queue, exchange, routing_key)
        return queue

    def drain(self, queue, expected, timeout=20.0):
        """Consume messages from queue until `expected` arrived or timeout:
        [(properties, body)]."""
        messages = []
        deadline = time.monotonic() + timeout
        with contextlib.closing(self.connection()) as connection:
            channel = connection.channel()
            while len(messages) < expected and time.monotonic() < deadline:
                method, properties, body = channel.basic_get(queue,
                                                             auto_ack=True)
                if method is None:
                    time.sleep(0.05)
                else:
                    messages.append((properties, body))
        return messages

    def delete(self):
        rabbitmqctl('delete_vhost', self.vhost, check=False)
        rabbitmqctl('delete_user', self.user, check=False)


def broker_connections(user):
    """How many connections RabbitMQ has open for user."""
    out = rabbitmqctl('list_connections', 'user')
    return sum(1 for line in out.splitlines() if line.strip() == user)


# -- statelessd ---------------------------------------------------------------

def base_config(ports):
    return {
        'Application': {'rabbitmq': {'host': BROKER[0], 'port': BROKER[1],
                                     'connect_timeout': 5}},
        'HTTPServer': {'address': '127.0.0.1', 'ports': ports},
        'Logging': {
            'version': 1,
            'disable_existing_loggers': False,
            'formatters': {'plain': {
                'format': '%(levelname)s %(process)d %(name)s: %(message)s'}},
            'handlers': {'console': {'class': 'logging.StreamHandler',
                                     'formatter': 'plain',
                                     'stream': 'ext://sys.stderr'}},
            'loggers': {'pika': {'level': 'WARNING'}},
            'root': {'level': 'INFO', 'handlers': ['console']},
        },
    }


class Statelessd:
    """A statelessd process with a configuration of its own."""

    def __init__(self, overrides=None, ports=1):
        self.ports = [free_port() for _ in range(ports)]
        self.port = self.ports[0]
        self.dir = Path(tempfile.mkdtemp(prefix='statelessd-hard-'))
        self.config = deep_merge(base_config(self.ports), overrides)
        self.config_path = self.dir / 'statelessd.yaml'
        self.config_path.write_text(yaml.safe_dump(self.config))
        self.log_path = self.dir / 'statelessd.log'
        self.process = None

    def start(self, wait=True):
        self.log = open(self.log_path, 'wb')
        self.process = subprocess.Popen(
            [PYTHON, str(SCRIPT), '-c', str(self.config_path), '-f'],
            cwd=str(REPO), stdout=self.log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError('statelessd exited with %s:\n%s'
                                     % (self.process.returncode,
                                        self.log_text()))
            if len(self.worker_pids()) == len(self.ports) and all(
                    port_is_open(port) for port in self.ports):
                return
            time.sleep(0.05)
        raise AssertionError('statelessd did not start:\n' + self.log_text())

    def worker_pids(self):
        return children(self.process.pid)

    def log_text(self):
        """Everything the process logged so far (or in all, once stopped)."""
        if self.log.closed:
            return self.output
        self.log.flush()
        return self.log_path.read_text(errors='replace')

    def stop(self):
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process is not None:
            self.log.close()
            self.output = self.log_path.read_text(errors='replace')
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def assert_clean_log(log):
    """Nothing escaped a request handler, no thread died, no worker died."""
    for sign in ('Unexpected error', 'Exception in thread', 'died:',
                 'failed to handle'):
        assert sign not in log, log[log.index(sign) - 2000:][:4000]


def children(pid):
    found = []
    for task in Path('/proc/%d/task' % pid).glob('*'):
        try:
            found.extend(int(p) for p in
                         (task / 'children').read_text().split())
        except OSError:
            pass
    return sorted(found)


def rss_kib(pid):
    for line in Path('/proc/%d/status' % pid).read_text().splitlines():
        if line.startswith('VmRSS:'):
            return int(line.split()[1])
    raise AssertionError('no VmRSS for %d' % pid)


def thread_count(pid):
    return len(list(Path('/proc/%d/task' % pid).glob('*')))


# -- HTTP ---------------------------------------------------------------------

def publish(port, account, exchange, routing_key, fields, query=''):
    body = urlencode(fields)
    return request(port, 'POST', '/%s/%s/%s%s' % (
        quote(account.vhost), quote(exchange), quote(routing_key), query),
        body, {'Authorization': account.auth,
               'Content-Type': 'application/x-www-form-urlencoded'})


def quote(text):
    import urllib.parse
    return urllib.parse.quote(text, safe='')


def urlencode(fields):
    """Percent-encode (name, bytes-or-str value) pairs byte-exact."""
    import urllib.parse
    return '&'.join('%s=%s' % (urllib.parse.quote_from_bytes(
        name.encode('utf-8') if isinstance(name, str) else name, safe=''),
        urllib.parse.quote_from_bytes(
            value.encode('utf-8') if isinstance(value, str) else value,
            safe='')) for name, value in fields).encode('ascii')


def multipart(fields, boundary=None):
    """multipart/form-data of (name, bytes value) pairs; (content type, body).
    """
    boundary = boundary or 'hard-' + secrets.token_hex(16)
    marker = b'--' + boundary.encode('ascii')
    parts = []
    for name, value in fields:
        value = value.encode('utf-8') if isinstance(value, str) else value
        assert marker not in value
        parts.append(marker + b'\r\nContent-Disposition: form-data; name="'
                     + name.encode('utf-8') + b'"\r\n\r\n' + value + b'\r\n')
    body = b''.join(parts) + marker + b'--\r\n'
    return 'multipart/form-data; boundary=' + boundary, body


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
        except socket.timeout:
            break
        except ConnectionResetError:
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


def assert_json_error(raw_or_response, statuses):
    """The answer is one of statuses, with a JSON error and reason."""
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


class CountingProxy:
    """A TCP forwarder to the broker that counts the connections made
    through it: how many times statelessd asked RabbitMQ for a login."""

    def __init__(self, target=BROKER):
        import threading
        self.target = target
        self.listener = socket.socket()
        self.listener.bind(('127.0.0.1', 0))
        self.listener.listen(128)
        self.port = self.listener.getsockname()[1]
        self.connections = 0
        self.threading = threading
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
                self.threading.Thread(target=self._pipe, args=(a, b),
                                      daemon=True).start()

    @staticmethod
    def _pipe(source, sink):
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                sink.sendall(data)
        except OSError:
            pass
        for sock in (source, sink):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def close(self):
        self.listener.close()


# -- TLS ----------------------------------------------------------------------

def openssl(*args, cwd):
    tool = require('openssl', 'apt-get install openssl (or make tls-proxy)')
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


STREAM_MODULE = '/usr/lib/nginx/modules/ngx_stream_module.so'


class TLSTerminator:
    """nginx's stream module: TLS on a port of its own, in front of the
    broker's plain AMQP port."""

    def __init__(self, directory, certificate):
        self.nginx = require('nginx', 'make tls-proxy (apt-get install nginx '
                                      'libnginx-mod-stream)')
        if not Path(STREAM_MODULE).exists():
            raise AssertionError('%s is missing: make tls-proxy (apt-get '
                                 'install libnginx-mod-stream)'
                                 % STREAM_MODULE)
        self.dir = directory
        self.port = free_port()
        (directory / 'nginx.conf').write_text('''
load_module %s;
daemon off;
master_process off;
pid %s/nginx.pid;
error_log %s/error.log info;
events { worker_connections 64; }
stream {
  server {
    listen 127.0.0.1:%d ssl;
    ssl_certificate %s;
    ssl_certificate_key %s;
    proxy_pass %s:%d;
  }
}
''' % (STREAM_MODULE, directory, directory, self.port, certificate[0],
       certificate[1], BROKER[0], BROKER[1]))
        self.process = subprocess.Popen(
            [self.nginx, '-p', str(directory), '-e',
             str(directory / 'error.log'), '-c',
             str(directory / 'nginx.conf')],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while not port_is_open(self.port):
            if self.process.poll() is not None or \
                    time.monotonic() > deadline:
                raise AssertionError('nginx did not start: %s'
                                     % self.process.stderr.read())
            time.sleep(0.05)

    def stop(self):
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
