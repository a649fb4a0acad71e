"""Shared fixtures for the statelessd integration tests.

Every test talks to a real RabbitMQ broker and a real statelessd process.
Nothing is skipped: when the broker, rabbitmqctl, php or statelessd.py is
missing, the tests fail with a message that says what is missing.
"""
import base64
import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path
from types import SimpleNamespace

import pika
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "statelessd.py"

BROKER_HOST = os.environ.get("STATELESSD_TEST_BROKER_HOST", "127.0.0.1")
BROKER_PORT = int(os.environ.get("STATELESSD_TEST_BROKER_PORT", "5672"))
GUEST = ("guest", "guest")

#: Every AMQP basic property a consumed message carries.
PROPERTY_NAMES = (
    "app_id",
    "cluster_id",
    "content_encoding",
    "content_type",
    "correlation_id",
    "delivery_mode",
    "expiration",
    "headers",
    "message_id",
    "priority",
    "reply_to",
    "timestamp",
    "type",
    "user_id",
)

READY_TIMEOUT = 15.0
STOP_TIMEOUT = 15.0
HTTP_TIMEOUT = 30.0


def unique(prefix):
    return "%s%s" % (prefix, secrets.token_hex(6))


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_open(port, host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1.0)
        return sock.connect_ex((host, port)) == 0


def deep_merge(base, overrides):
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value
    return base


def basic_auth(user, password):
    if isinstance(user, str):
        user = user.encode("utf-8")
    if isinstance(password, str):
        password = password.encode("utf-8")
    return "Basic " + base64.b64encode(user + b":" + password).decode("ascii")


# ---------------------------------------------------------------------------
# HTTP
# ---------------------------------------------------------------------------


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
            return json.loads(self.body.decode("utf-8"))
        except ValueError as error:
            raise AssertionError(
                "HTTP %s body is not JSON (%s): %r"
                % (self.status, error, self.body[:500])
            )

    def __repr__(self):
        return "<HTTP %s %s headers=%r body=%r>" % (
            self.status,
            self.reason,
            dict(self.headers.items()),
            self.body[:500],
        )


def request(port, method, path, body=None, headers=None, timeout=30.0,
            host="127.0.0.1", source=None):
    """One request on a connection of its own; the Response."""
    connection = http.client.HTTPConnection(
        host, port, timeout=timeout,
        source_address=(source, 0) if source else None)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Response(response.status, response.reason, response.headers,
                        response.read())
    finally:
        connection.close()


def encode_multipart(fields, boundary=None):
    """multipart/form-data encoding of (name, value) pairs, written by hand.

    Values may be str (sent as UTF-8) or bytes (sent as they are).
    Returns (content_type, body).
    """
    values = [v if isinstance(v, bytes) else str(v).encode("utf-8")
              for _, v in fields]
    boundary = boundary or ("statelessd-boundary-" + secrets.token_hex(16))
    marker = b"--" + boundary.encode("ascii")
    for value in values:
        assert marker not in value, "boundary collides with a value"
    chunks = []
    for (name, _), value in zip(fields, values):
        chunks.append(marker + b"\r\n")
        chunks.append(
            b'Content-Disposition: form-data; name="'
            + name.encode("utf-8")
            + b'"\r\n\r\n'
        )
        chunks.append(value)
        chunks.append(b"\r\n")
    chunks.append(marker + b"--\r\n")
    return "multipart/form-data; boundary=" + boundary, b"".join(chunks)


def as_pairs(fields):
    if fields is None:
        return []
    if isinstance(fields, dict):
        return list(fields.items())
    return list(fields)


class Http:
    """Small http.client wrapper that talks to one statelessd port."""

    def connect(self, port, host="127.0.0.1"):
        return http.client.HTTPConnection(host, port, timeout=HTTP_TIMEOUT)

    def request(self, port, method, path, body=None, headers=None,
                auth=None, conn=None):
        """Send one request and return a Response.

        auth is a (user, password) tuple, a raw Authorization header value
        (str) or None for no Authorization header.
        """
        headers = dict(headers or {})
        if isinstance(auth, tuple):
            headers["Authorization"] = basic_auth(*auth)
        elif isinstance(auth, str):
            headers["Authorization"] = auth
        if body is None and method in ("POST", "PUT"):
            body = b""
        own = conn is None
        if own:
            conn = self.connect(port)
        try:
            conn.request(method, path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            return Response(resp.status, resp.reason, resp.msg, data)
        finally:
            if own:
                conn.close()

    def post(self, port, path, fields=None, auth=GUEST,
             encoding="urlencoded", headers=None, conn=None, boundary=None):
        """POST form fields.

        encoding: "urlencoded" (with its Content-Type), "bare" (urlencoded
        body without any Content-Type header) or "multipart".
        """
        headers = dict(headers or {})
        pairs = as_pairs(fields)
        if encoding == "multipart":
            content_type, body = encode_multipart(pairs, boundary)
            headers.setdefault("Content-Type", content_type)
        elif encoding in ("urlencoded", "bare"):
            body = urllib.parse.urlencode(pairs).encode("ascii")
            if encoding == "urlencoded":
                headers.setdefault(
                    "Content-Type", "application/x-www-form-urlencoded")
        else:
            raise ValueError("unknown encoding %r" % encoding)
        return self.request(port, "POST", path, body=body, headers=headers,
                            auth=auth, conn=conn)

    def get(self, port, path, auth=None, headers=None, conn=None):
        return self.request(port, "GET", path, headers=headers, auth=auth,
                            conn=conn)


@pytest.fixture(scope="session", name="http")
def http_fixture():
    return Http()


def publish_path(vhost, exchange, routing_key):
    return "/" + "/".join(
        urllib.parse.quote(part, safe="")
        for part in (vhost, exchange, routing_key))


# ---------------------------------------------------------------------------
# Broker administration
# ---------------------------------------------------------------------------


class Broker:
    """rabbitmqctl helpers; everything created is removed at session end."""

    def __init__(self, exe):
        self.exe = exe
        self.vhosts = []
        self.users = []

    def ctl(self, *args, check=True):
        proc = subprocess.run(
            [self.exe, "-q"] + list(args),
            capture_output=True, text=True, timeout=120,
            stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            pytest.fail("rabbitmqctl %s failed with status %s: %s %s"
                        % (args[0], proc.returncode, proc.stdout.strip(),
                           proc.stderr.strip()))
        return proc

    def add_vhost(self, name):
        self.ctl("add_vhost", name)
        self.vhosts.append(name)
        return name

    def delete_vhost(self, name):
        self.ctl("delete_vhost", name, check=False)
        if name in self.vhosts:
            self.vhosts.remove(name)

    def add_user(self, name, password):
        self.ctl("add_user", name, password)
        self.users.append(name)
        return name

    def delete_user(self, name):
        self.ctl("delete_user", name, check=False)
        if name in self.users:
            self.users.remove(name)

    def change_password(self, name, password):
        self.ctl("change_password", name, password)

    def set_permissions(self, vhost, user, configure=".*", write=".*",
                        read=".*"):
        self.ctl("set_permissions", "-p", vhost, user, configure, write, read)

    def cleanup(self):
        for user in list(self.users):
            self.delete_user(user)
        for vhost in list(self.vhosts):
            self.delete_vhost(vhost)


@pytest.fixture(scope="session")
def broker_reachable():
    """Fails (never skips) when no broker answers on BROKER_HOST:BROKER_PORT."""
    params = pika.ConnectionParameters(
        host=BROKER_HOST, port=BROKER_PORT, virtual_host="/",
        credentials=pika.PlainCredentials(*GUEST), heartbeat=0,
        connection_attempts=3, retry_delay=1, socket_timeout=5)
    try:
        conn = pika.BlockingConnection(params)
    except Exception as error:  # noqa: BLE001 - any failure means no broker
        pytest.fail(
            "RabbitMQ is not reachable at %s:%s as guest/guest (%s: %s); "
            "start it with `rabbitmq-server -detached`"
            % (BROKER_HOST, BROKER_PORT, type(error).__name__, error))
    conn.close()
    return True


@pytest.fixture(scope="session")
def broker(broker_reachable):
    exe = shutil.which("rabbitmqctl")
    if not exe:
        pytest.fail("rabbitmqctl is not on PATH; the statelessd tests use it "
                    "to create vhosts and users (run them as root)")
    admin = Broker(exe)
    yield admin
    admin.cleanup()


@pytest.fixture(scope="session")
def named_vhost(broker):
    """A vhost of its own (with a slash in its name) and a user for it."""
    info = SimpleNamespace(
        vhost=unique("statelessd-test/"),
        user=unique("statelessd-user-"),
        password="pw-" + secrets.token_hex(12),
    )
    broker.add_vhost(info.vhost)
    broker.add_user(info.user, info.password)
    broker.set_permissions(info.vhost, info.user)
    return info


@pytest.fixture(scope="session")
def noperm_user(broker):
    """A user that can log in but has no permission on any vhost."""
    info = SimpleNamespace(user=unique("statelessd-noperm-"),
                           password="np-" + secrets.token_hex(12))
    broker.add_user(info.user, info.password)
    return info


# ---------------------------------------------------------------------------
# AMQP side: exchanges, queues, consuming
# ---------------------------------------------------------------------------


class Message(SimpleNamespace):
    """exchange, routing_key, properties, body of one consumed message."""


class Amqp:
    """A blocking pika connection owned by the test process."""

    def __init__(self, vhost, user, password):
        self.vhost = vhost
        self.user = user
        self.password = password
        params = pika.ConnectionParameters(
            host=BROKER_HOST, port=BROKER_PORT, virtual_host=vhost,
            credentials=pika.PlainCredentials(user, password), heartbeat=0)
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
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - best effort cleanup
            pass


class Target:
    """A fresh direct exchange with an exclusive queue bound to it."""

    def __init__(self, amqp, routing_key="rk"):
        self.amqp = amqp
        self.vhost = amqp.vhost
        self.user = amqp.user
        self.password = amqp.password
        self.auth = (amqp.user, amqp.password)
        self.exchange = unique("statelessd.test.")
        self.routing_key = routing_key
        channel = amqp.channel
        channel.exchange_declare(self.exchange, exchange_type="direct",
                                 durable=False, auto_delete=False)
        self.queue = channel.queue_declare("", exclusive=True).method.queue
        self.bind(routing_key)

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
        assert messages, ("no message arrived in queue %s within %ss"
                          % (self.queue, timeout))
        return messages[0]

    def cleanup(self):
        try:
            self.amqp.channel.queue_delete(self.queue)
            self.amqp.channel.exchange_delete(self.exchange)
        except Exception:  # noqa: BLE001 - best effort cleanup
            pass


@pytest.fixture(scope="module")
def amqp_root(broker_reachable):
    amqp = Amqp("/", *GUEST)
    yield amqp
    amqp.close()


@pytest.fixture(scope="module")
def amqp_named(named_vhost):
    amqp = Amqp(named_vhost.vhost, named_vhost.user, named_vhost.password)
    yield amqp
    amqp.close()


@pytest.fixture
def target(amqp_root):
    """Exchange + exclusive queue (binding key "rk") on vhost "/"."""
    tgt = Target(amqp_root)
    yield tgt
    tgt.cleanup()


@pytest.fixture
def named_target(amqp_named):
    """Exchange + exclusive queue (binding key "rk") on the named vhost."""
    tgt = Target(amqp_named)
    yield tgt
    tgt.cleanup()


@pytest.fixture
def consume(amqp_root):
    """consume(queue, n, timeout) -> list of Message.

    queue is a queue name on vhost "/" (read as guest) or a Target.
    """
    def _consume(queue, n=1, timeout=10.0):
        if isinstance(queue, Target):
            return queue.consume(n, timeout)
        return amqp_root.consume(queue, n, timeout)
    return _consume


def check_message(message, body, exchange=None, routing_key=None,
                  **properties):
    """Compare the body bytes and EVERY basic property of a message.

    Properties not given are expected to be absent (None); an empty
    header table counts as absent headers.
    """
    unknown = set(properties) - set(PROPERTY_NAMES)
    assert not unknown, "unknown properties %s" % unknown
    assert message.body == body
    if exchange is not None:
        assert message.exchange == exchange
    if routing_key is not None:
        assert message.routing_key == routing_key
    actual = {name: getattr(message.properties, name)
              for name in PROPERTY_NAMES}
    if actual["headers"] == {} and properties.get("headers") is None:
        actual["headers"] = None
    expected = {name: properties.get(name) for name in PROPERTY_NAMES}
    assert actual == expected


def check_error(resp, status, mentions=()):
    """An error answer: status, JSON {"error", "reason"} naming something.

    mentions: each item is a string, or a tuple of alternatives, one of
    which the reason must contain.
    """
    assert resp.status == status, resp
    content_type = resp.header("Content-Type") or ""
    assert content_type.split(";")[0].strip() == "application/json", resp
    doc = resp.json()
    assert isinstance(doc, dict), resp
    assert isinstance(doc.get("error"), str) and doc["error"], resp
    assert isinstance(doc.get("reason"), str) and doc["reason"], resp
    for mention in mentions:
        options = mention if isinstance(mention, tuple) else (mention,)
        assert any(option in doc["reason"] for option in options), (
            "reason %r names none of %r" % (doc["reason"], options))
    return doc


@pytest.fixture(scope="session")
def assert_message():
    return check_message


@pytest.fixture(scope="session")
def assert_error():
    return check_error


# ---------------------------------------------------------------------------
# statelessd processes
# ---------------------------------------------------------------------------


def base_config(ports):
    return {
        "Application": {
            "rabbitmq": {
                "host": BROKER_HOST,
                "port": BROKER_PORT,
                "connect_timeout": 5,
                "max_queue_size": 10000,
            },
        },
        "HTTPServer": {
            "address": "127.0.0.1",
            "ports": list(ports),
            "no_keep_alive": False,
        },
        "Logging": {
            "version": 1,
            "formatters": {"plain": {
                "format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
            "handlers": {"console": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "stream": "ext://sys.stderr"}},
            "root": {"level": "DEBUG", "handlers": ["console"]},
        },
    }


def require_script():
    if not SCRIPT.is_file():
        pytest.fail("%s does not exist: there is no statelessd to test"
                    % SCRIPT)


def statelessd_command(config_path):
    return [sys.executable, str(SCRIPT), "-c", str(config_path), "-f"]


def write_config(directory, config):
    path = Path(directory) / ("statelessd-%s.yaml" % secrets.token_hex(4))
    path.write_text(yaml.safe_dump(config, default_flow_style=False))
    return path


class Statelessd:
    """One running statelessd master (and its children)."""

    def __init__(self, directory, ports, overrides=None):
        require_script()
        self.ports = list(ports)
        self.config = deep_merge(base_config(self.ports), overrides)
        self.config_path = write_config(directory, self.config)
        self.log_path = Path(directory) / (
            "statelessd-%s.log" % secrets.token_hex(4))
        self.process = None
        self.returncode = None

    @property
    def port(self):
        return self.ports[0]

    def log(self):
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines=60):
        return "\n".join(self.log().splitlines()[-lines:])

    def start(self):
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                statelessd_command(self.config_path), cwd=str(REPO),
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        deadline = time.monotonic() + READY_TIMEOUT
        pending = list(self.ports)
        while pending:
            if self.process.poll() is not None:
                pytest.fail("statelessd exited with status %s before it "
                            "answered GET /stats; log:\n%s"
                            % (self.process.returncode, self.log_tail()))
            port = pending[0]
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port,
                                                  timeout=2)
                conn.request("GET", "/stats")
                status = conn.getresponse().status
                conn.close()
            except OSError:
                status = None
            if status == 200:
                pending.pop(0)
                continue
            if time.monotonic() > deadline:
                self.kill()
                pytest.fail("statelessd did not answer GET /stats with 200 "
                            "on port %s within %ss (last status %s); log:\n%s"
                            % (port, READY_TIMEOUT, status, self.log_tail()))
            time.sleep(0.1)
        return self

    def terminate(self, timeout=STOP_TIMEOUT):
        """SIGTERM the master; returns its exit status (None: still ran)."""
        if self.process is None:
            return None
        if self.returncode is not None:
            return self.returncode
        try:
            self.process.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.returncode = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None
        return self.returncode

    def kill(self):
        """SIGKILL what is left of the process group this fixture started."""
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.process.wait(5)
        except subprocess.TimeoutExpired:
            pass

    def stop(self):
        status = self.terminate()
        deadline = time.monotonic() + 3.0
        leftovers = [port for port in self.ports if port_is_open(port)]
        while leftovers and time.monotonic() < deadline:
            time.sleep(0.1)
            leftovers = [port for port in leftovers if port_is_open(port)]
        self.kill()
        assert status is not None, (
            "statelessd did not exit within %ss of SIGTERM; log:\n%s"
            % (STOP_TIMEOUT, self.log_tail()))
        assert status == 0, ("statelessd exited with status %s after "
                             "SIGTERM; log:\n%s" % (status, self.log_tail()))
        assert not leftovers, ("ports %s still accept connections after the "
                               "master exited" % leftovers)


@pytest.fixture(scope="module")
def statelessd(tmp_path_factory, broker_reachable):
    """Factory: statelessd(ports=1, overrides=None) -> running Statelessd.

    ports is a count of free ports to pick, or a list of port numbers.
    overrides is a mapping deep merged into the configuration.  Every
    server is stopped with SIGTERM when the module ends and must exit with
    status 0.
    """
    directory = tmp_path_factory.mktemp("statelessd")
    servers = []

    def factory(ports=1, overrides=None):
        if isinstance(ports, int):
            ports = [free_port() for _ in range(ports)]
        server = Statelessd(directory, ports, overrides)
        servers.append(server)
        return server.start()

    yield factory
    errors = []
    for server in servers:
        try:
            server.stop()
        except AssertionError as error:
            errors.append(str(error))
    if errors:
        pytest.fail("\n\n".join(errors))


@pytest.fixture(scope="module")
def server(statelessd):
    """One statelessd with one port, shared by a test module."""
    return statelessd()
