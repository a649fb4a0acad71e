"""Helpers for the operations tests (tests/test_ops_*.py).

Every test drives a real statelessd process over real HTTP against the
real RabbitMQ on 127.0.0.1:5672, and creates (and removes) its own
exchanges, queues, vhosts and users.  A tool the tests need and cannot
find fails the test with a message naming what to install: nothing is
ever skipped.
"""
import contextlib
import functools
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

import pika
import pytest
import yaml
from conftest import basic_auth, deep_merge, free_port
from conftest import request as shared_request

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / 'statelessd.py'
PYTHON = sys.executable
BROKER = ('127.0.0.1', 5672)
GUEST = ('guest', 'guest')
READY_TIMEOUT = 20.0


def unique(prefix):
    return '%s%s' % (prefix, secrets.token_hex(5))


def require_tool(name, package=None):
    """The path of a command the test needs, or a failed test."""
    path = shutil.which(name) or shutil.which(name, path='/usr/sbin:/sbin')
    if path is None:
        pytest.fail('%s is not installed: run "make %s" as root, or '
                    'apt-get install %s' % (name, name, package or name))
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


#: The files make pyz reads.
PYZ_SOURCES = ('Makefile', 'setup.py', 'statelessd.py', 'statelessd_amqp.py',
               'statelessd_stats.py', 'etc/pyz_main.py')


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


def config(ports, overrides=None):
    """A statelessd configuration for the local broker, logging to stderr."""
    document = {
        'Application': {'rabbitmq': {'host': BROKER[0], 'port': BROKER[1],
                                     'connect_timeout': 3,
                                     'shutdown_timeout': 3}},
        'HTTPServer': {'address': '127.0.0.1', 'ports': list(ports)},
        'Logging': {
            'version': 1,
            'formatters': {'plain': {
                'format': '%(asctime)s %(levelname)s %(process)d '
                          '%(name)s: %(message)s'}},
            'handlers': {'console': {'class': 'logging.StreamHandler',
                                     'formatter': 'plain',
                                     'stream': 'ext://sys.stderr'}},
            'loggers': {'pika': {'level': 'WARNING'}},
            'root': {'level': 'INFO', 'handlers': ['console']}},
    }
    return deep_merge(document, overrides)


def write_config(directory, document):
    path = Path(directory) / ('statelessd-%s.yaml' % secrets.token_hex(4))
    path.write_text(yaml.safe_dump(document, default_flow_style=False))
    return path


# -- HTTP ----------------------------------------------------------------------

#: The operations tests give statelessd 15 s to answer, unless they say.
request = functools.partial(shared_request, timeout=15.0)


def get(port, path, **kwargs):
    return request(port, 'GET', path, **kwargs)


def publish_path(vhost, exchange, routing_key):
    return '/' + '/'.join(urllib.parse.quote(part, safe='')
                          for part in (vhost, exchange, routing_key))


def publish(port, path, body, auth=GUEST, headers=None, **kwargs):
    """POST one message; returns the Response."""
    fields = urllib.parse.urlencode({'body': body})
    all_headers = {'Authorization': basic_auth(*auth),
                   'Content-Type': 'application/x-www-form-urlencoded'}
    all_headers.update(headers or {})
    return request(port, 'POST', path, fields, all_headers, **kwargs)


# -- statelessd ------------------------------------------------------------------

class Gateway:
    """A statelessd master started from a configuration document, or from
    a configuration file of its own (config_path) serving `ports`."""

    def __init__(self, directory, ports, overrides=None, command=None,
                 config_path=None):
        self.directory = Path(directory)
        self.ports = list(ports)
        self.document = config(self.ports, overrides)
        self.config_path = config_path or write_config(directory,
                                                       self.document)
        self.log_path = self.directory / ('statelessd-%s.log'
                                          % secrets.token_hex(4))
        self.command = command or [PYTHON, str(SCRIPT)]
        self.process = None

    def start(self, wait=True):
        with open(self.log_path, 'wb') as log:
            self.process = subprocess.Popen(
                self.command + ['-c', str(self.config_path), '-f'],
                cwd=str(REPO), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, start_new_session=True)
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self):
        deadline = time.monotonic() + READY_TIMEOUT
        for port in self.ports:
            while True:
                if self.process.poll() is not None:
                    pytest.fail('statelessd exited with %s; log:\n%s'
                                % (self.process.returncode, self.log()))
                try:
                    if get(port, '/stats', timeout=2).status == 200:
                        break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail('statelessd port %d did not answer within '
                                '%ss; log:\n%s' % (port, READY_TIMEOUT,
                                                   self.log()))
                time.sleep(0.1)

    def log(self):
        return self.log_path.read_text(errors='replace')

    def worker_pids(self):
        """{port: pid} of the workers, from their "serving port" lines."""
        return {int(port): int(pid) for pid, port in re.findall(
            r'Worker (\d+) serving port (\d+)', self.log())}

    def stop(self):
        """SIGTERM, and insist on a clean exit."""
        if self.process is None or self.process.poll() is not None:
            return self.process and self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(30)
        finally:
            self.kill()

    def kill(self):
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(5)


@contextlib.contextmanager
def running(directory, ports=1, overrides=None, command=None,
            config_path=None):
    """A started statelessd, stopped afterwards.

    ports is a count of free ports to pick, or the list of ports that
    config_path names.
    """
    if isinstance(ports, int):
        ports = [free_port() for _ in range(ports)]
    gateway = Gateway(directory, ports, overrides, command, config_path)
    try:
        yield gateway.start()
        status = gateway.stop()
        assert status == 0, ('statelessd exited with %s after SIGTERM; '
                             'log:\n%s' % (status, gateway.log()))
    finally:
        gateway.kill()


def settle(predicate, timeout=10.0, interval=0.1):
    """Poll predicate() until it returns something true; return that."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


# -- RabbitMQ --------------------------------------------------------------------

def rabbitmqctl(*args):
    tool = require_tool('rabbitmqctl', 'rabbitmq-server')
    result = subprocess.run([tool] + list(args), capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, ('rabbitmqctl %s failed: %s%s'
                                    % (' '.join(args), result.stdout,
                                       result.stderr))
    return result.stdout


class Sink:
    """An exchange of its own and a queue bound to it with '#'.

    Messages published through statelessd to path() end up in the queue;
    take() consumes them back with pika.
    """

    def __init__(self, vhost='/', auth=GUEST):
        self.vhost = vhost
        self.exchange = unique('ops-x-')
        self.queue = unique('ops-q-')
        self.connection = pika.BlockingConnection(pika.ConnectionParameters(
            host=BROKER[0], port=BROKER[1], virtual_host=vhost,
            credentials=pika.PlainCredentials(*auth)))
        self.channel = self.connection.channel()
        self.channel.exchange_declare(self.exchange, 'topic')
        self.channel.queue_declare(self.queue)
        self.channel.queue_bind(self.queue, self.exchange, '#')

    def path(self, routing_key='rk'):
        return publish_path(self.vhost, self.exchange, routing_key)

    def take(self, count, timeout=15.0):
        """The bodies of `count` messages, in queue order."""
        bodies = []
        deadline = time.monotonic() + timeout
        while len(bodies) < count and time.monotonic() < deadline:
            method, _, body = self.channel.basic_get(self.queue,
                                                     auto_ack=True)
            if method is None:
                self.connection.sleep(0.05)
            else:
                bodies.append(body)
        assert len(bodies) == count, ('consumed %d of %d messages: %r'
                                      % (len(bodies), count, bodies))
        return bodies

    def close(self):
        with contextlib.suppress(Exception):
            self.channel.queue_delete(self.queue)
        with contextlib.suppress(Exception):
            self.channel.exchange_delete(self.exchange)
        with contextlib.suppress(Exception):
            self.connection.close()


@contextlib.contextmanager
def sink(vhost='/', auth=GUEST):
    box = Sink(vhost, auth)
    try:
        yield box
    finally:
        box.close()


# -- nginx ---------------------------------------------------------------------

NGINX_CONF = REPO / 'etc' / 'nginx.conf'


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
def nginx(ports, workers=None):
    """nginx on a free port in front of ports; yields the port.

    Its files live in a directory of their own: nginx workers run as an
    unprivileged user and cannot reach into pytest's private tmp_path.
    """
    binary = require_tool('nginx')
    with tempfile.TemporaryDirectory(prefix='statelessd-nginx-') as name:
        directory = Path(name)
        directory.chmod(0o755)
        with serving(binary, directory, ports, workers) as listen:
            yield listen


@contextlib.contextmanager
def serving(binary, directory, ports, workers):
    listen = free_port()
    conf = directory / 'nginx.conf'
    conf.write_text(render(NGINX_CONF.read_text(), directory, listen, ports,
                           workers))
    error_log = directory / 'error.log'
    process = subprocess.Popen(
        [binary, '-c', str(conf), '-p', str(directory), '-e', str(error_log),
         '-g', 'daemon off; pid %s;' % (directory / 'nginx.pid')],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        def answering():
            if process.poll() is not None:
                pytest.fail('nginx exited with %s: %s\n%s' % (
                    process.returncode, process.stdout.read().decode(),
                    error_log.read_text() if error_log.exists() else ''))
            try:
                return get(listen, '/health', timeout=2).status == 200
            except OSError:
                return False
        assert settle(answering, timeout=15), 'nginx did not answer'
        yield listen
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
