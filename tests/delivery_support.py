"""What the delivery, cluster and alarm tests share: private RabbitMQ
nodes on their own ports, durable targets, consuming message ids back,
and load that records every answer."""
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid

import pika
import pytest

from conftest import GUEST, Http, free_port, unique


def require_rabbitmq_tools():
    for tool in ('rabbitmq-server', 'rabbitmqctl'):
        if not shutil.which(tool):
            pytest.fail('%s is not installed: the tests start RabbitMQ nodes'
                        ' of their own' % tool)


class PrivateBroker:
    """A RabbitMQ node of the tests' own, on free ports."""

    def __init__(self):
        self.name = 'statelessd-test-%s@localhost' % uuid.uuid4().hex[:8]
        self.port = free_port()
        self.directory = tempfile.mkdtemp(prefix='statelessd-rmq-')
        with open(os.path.join(self.directory, 'rabbitmq.conf'), 'w') as f:
            f.write('listeners.tcp.local = 127.0.0.1:%d\n' % self.port)
        rabbitmq = pwd.getpwnam('rabbitmq')
        os.chown(self.directory, rabbitmq.pw_uid, rabbitmq.pw_gid)
        os.chown(os.path.join(self.directory, 'rabbitmq.conf'),
                 rabbitmq.pw_uid, rabbitmq.pw_gid)
        self.env = dict(
            os.environ,
            RABBITMQ_NODENAME=self.name,
            RABBITMQ_CONFIG_FILE=os.path.join(self.directory, 'rabbitmq'),
            RABBITMQ_DIST_PORT=str(free_port()),
            RABBITMQ_MNESIA_BASE=os.path.join(self.directory, 'mnesia'),
            RABBITMQ_LOG_BASE=os.path.join(self.directory, 'log'),
            RABBITMQ_ENABLED_PLUGINS_FILE=os.path.join(self.directory,
                                                       'enabled_plugins'),
            RABBITMQ_PID_FILE=os.path.join(self.directory, 'pid'))

    def start(self):
        self.launch()
        self.await_started()

    def launch(self):
        """Start the node's Erlang VM without waiting for RabbitMQ in it."""
        subprocess.run(['rabbitmq-server', '-detached'], env=self.env,
                       check=True, stdin=subprocess.DEVNULL,
                       capture_output=True, timeout=60)

    def await_started(self):
        deadline = time.monotonic() + 90
        while True:
            result = subprocess.run(
                ['rabbitmqctl', '-q', '-n', self.name, 'await_startup',
                 '--timeout', '60'], capture_output=True, text=True,
                timeout=120, stdin=subprocess.DEVNULL)
            if result.returncode == 0:
                return
            if time.monotonic() > deadline:
                pytest.fail('the private RabbitMQ node did not start: %s\n%s'
                            % (result.stderr, self.log()))
            time.sleep(0.5)

    def log(self):
        logs = os.path.join(self.directory, 'log')
        if not os.path.isdir(logs):
            return '(no log)'
        return '\n'.join(open(os.path.join(logs, name), errors='replace')
                         .read()[-3000:] for name in os.listdir(logs))

    def ctl(self, *args):
        result = subprocess.run(['rabbitmqctl', '-q', '-n', self.name] +
                                list(args), capture_output=True, text=True,
                                timeout=120, stdin=subprocess.DEVNULL)
        assert result.returncode == 0, ('rabbitmqctl %s: %s %s' % (
            ' '.join(args), result.stdout, result.stderr))
        return result.stdout

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
        return subprocess.run(
            ['rabbitmqctl', '-q', '-n', self.name, 'status'],
            capture_output=True, timeout=120,
            stdin=subprocess.DEVNULL).returncode == 0

    def remove(self):
        subprocess.run(['rabbitmqctl', '-q', '-n', self.name, 'stop'],
                       capture_output=True, timeout=120,
                       stdin=subprocess.DEVNULL)
        shutil.rmtree(self.directory, ignore_errors=True)

    def channel(self):
        connection = pika.BlockingConnection(pika.ConnectionParameters(
            '127.0.0.1', self.port, credentials=pika.PlainCredentials(*GUEST),
            heartbeat=0))
        return connection.channel()


def durable_target(channel, name=None):
    """A durable exchange and queue, so an outage keeps what was acked."""
    name = name or unique('statelessd.delivery.')
    channel.exchange_declare(name, 'topic', durable=True)
    channel.queue_declare(name, durable=True)
    channel.queue_bind(name, name, '#')
    return name


def received_ids(channel, queue):
    ids = []
    while True:
        method, properties, _ = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return ids
        ids.append(properties.message_id)


def arrived_ids(channel, queue, expected, timeout):
    """The message_ids consumed until all of expected came, or timeout."""
    received = set()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not set(expected) <= received:
        received |= set(received_ids(channel, queue))
        time.sleep(0.3)
    return received


def wait_until(predicate, timeout, message):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    pytest.fail(message)


def stats(port):
    return Http().get(port, '/stats').json()


def drained(port):
    """True once every publisher of the port holds nothing unconfirmed."""
    connections = stats(port)['connections'].values()
    return all(c['queue_size'] == 0 and c['outbox'] == 0 and c['connected']
               for c in connections)


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
        http = Http()
        connection = http.connect(self.port)
        sequence = 0
        while self.running.is_set():
            message_id = '%s%d-%d' % (self.prefix, number, sequence)
            sequence += 1
            try:
                response = http.post(self.port, self.path,
                                     {'body': 'm' + message_id,
                                      'message_id': message_id,
                                      'delivery_mode': '2'},
                                     conn=connection)
                status = response.status
                if response.header('Connection') == 'close':
                    connection.close()
                    connection = http.connect(self.port)
            except OSError:
                status = 'error'
                connection.close()
                connection = http.connect(self.port)
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


def gateway(statelessd, broker, **rabbitmq):
    settings = {'host': '127.0.0.1', 'port': broker.port,
                'confirm_timeout': 3, 'connect_timeout': 3,
                'max_queue_size': 100000}
    settings.update(rabbitmq)
    return statelessd(1, {'Application': {'rabbitmq': settings}})
