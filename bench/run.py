#!/usr/bin/env python3
"""statelessd benchmark (`make bench`).

It keeps its own small copies of the process and HTTP helpers that the
tests share in tests/support.py, because the benchmark must run with the
standard library and pika alone, without pytest.

Starts everything it needs, measures side by side on this machine and prints
a Markdown table with ratios and the targets; the same report goes to
bench/results.md.  Rows:

 1. statelessd fire-and-forget, one port, wrk 2 threads x 16 keep-alive
    connections posting a small form-encoded message
 2. the same with ?confirm=1
 3. RabbitMQ's management HTTP API (POST /api/exchanges/.../publish), same load
 4. a raw pika BlockingConnection basic_publish loop: one Python publisher's
    ceiling, no HTTP
 5. PHP: a new curl handle per message through statelessd, against PHP
    opening an AMQP connection per message (php-amqp)
 6. nginx in front of several statelessd ports, against row 1
 7. latencies (wrk --latency), non-2xx counts, and each statelessd worker's
    RSS with idle vhost/user publishers
 8. batches of BATCH_SIZE messages in one request, as a form batch
    (fire-and-forget) and as a JSON array to statelessd's management API
    endpoint (confirmed), in messages per second, against the raw pika loop
    and fire-and-forget single messages
 9. statelessd's management API endpoint against RabbitMQ's own, same
    message, same load
10. the message as a raw text/plain body against the same message as a form
11. fire-and-forget with MANY_CONNECTIONS keep-alive connections, the pool
    nginx keeps over several ports in production, against row 1
12. the Node.js peer of bench/node (http.createServer and amqplib, one
    channel, no per-user logins), fire-and-forget and with ?confirm=1,
    on the same URL, form and load as rows 1 and 2

Environment: BENCH_SECONDS (per row, default 10), BENCH_ROUNDS (default 1:
run all rows that many times in turn and report each row's median round, for
a machine that is not quiet), BENCH_PHP_PROCESSES
(default 2), BENCH_NGINX_PORTS (default "2,4"), BENCH_IDLE_PUBLISHERS
(default 100), BENCH_PROFILE=1 (a further fire-and-forget pass under
py-spy, reported as where the worker's time goes; needs py-spy).

Everything started is stopped and every user, exchange and queue created is
deleted on the way out, failures and SIGTERM included.  Missing tools (wrk,
php-cli, php-curl, php-amqp, nginx) are installed with apt-get when run as
root; otherwise the rows needing them are skipped, as are the Node.js rows
when `make bench` could not install bench/node with npm.  The rabbitmq_management
plugin is enabled when RabbitMQ does not serve it yet (and left enabled).

Exit status: 0 when every target passed, 1 when one failed or could not be
measured, 2 when the benchmark could not run.

Runs with the standard library and pika only.
"""
import base64
import collections
import contextlib
import ctypes
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pika

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
RESULTS = os.path.join(BENCH, 'results.md')
#: The line in bench/results.md after which the notes written by hand (the
#: scaling runs, the soak, profiles) start: a new report keeps them.
NOTES_MARKER = '<!-- Notes below are kept when make bench rewrites the report above. -->\n'


def env_int(name, default, minimum=1):
    value = os.environ.get(name, '')
    if not value.strip():
        return default
    try:
        return max(minimum, int(round(float(value))))
    except ValueError:
        raise SystemExit('bench: %s must be a number, not %r' % (name, value))


SECONDS = env_int('BENCH_SECONDS', 10)
PHP_PROCESSES = env_int('BENCH_PHP_PROCESSES', 2)
IDLE_PUBLISHERS = env_int('BENCH_IDLE_PUBLISHERS', 100, minimum=0)
NGINX_PORTS = sorted({int(n) for n in re.findall(
    r'\d+', os.environ.get('BENCH_NGINX_PORTS', '2,4')) if int(n) > 0})
ROUNDS = env_int('BENCH_ROUNDS', 1)
PROFILE = os.environ.get('BENCH_PROFILE', '') not in ('', '0', 'false', 'no')

THREADS = 2
CONNECTIONS = 16
AMQP_HOST = '127.0.0.1'
AMQP_PORT = 5672
MANAGEMENT_PORT = 15672
GUEST = ('guest', 'guest')
PREFIX = 'statelessd-bench'
ROUTING_KEY = 'x'
#: The benchmark message: 64 bytes of text/plain.
PAYLOAD = 'statelessd benchmark message, 64 bytes of text/plain payload....'
QUEUE_MAX_LENGTH = 10000
#: Messages in one batch request.
BATCH_SIZE = 100
#: Connections of the many-clients row: nginx's pool over several ports.
MANY_CONNECTIONS = 256
APT_PACKAGES = ('wrk', 'php-cli', 'php-curl', 'php-amqp', 'nginx')


#: The benchmark message in the management API's shape.
API_MESSAGE = {'properties': {'content_type': 'text/plain'},
               'routing_key': ROUTING_KEY, 'payload': PAYLOAD,
               'payload_encoding': 'string'}


class BenchError(Exception):
    """The benchmark cannot go on."""


class Skipped(Exception):
    """A row cannot be measured here (a tool is missing)."""


def log(message):
    print('bench: ' + message, file=sys.stderr, flush=True)


def basic_auth(user, password):
    return base64.b64encode(('%s:%s' % (user, password)).encode()).decode()


# -- processes ---------------------------------------------------------------

def die_with_parent():
    """In a child: get SIGTERM when the benchmark dies, even by SIGKILL."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)
    except Exception:
        pass


def spawn(args, **kwargs):
    return subprocess.Popen(args, start_new_session=True,
                            preexec_fn=die_with_parent,
                            stdin=subprocess.DEVNULL, **kwargs)


def stop_process(process, sig=signal.SIGTERM, timeout=20):
    """Stop a process started by spawn() and anything left in its group."""
    if process.poll() is None:
        try:
            os.kill(process.pid, sig)
            process.wait(timeout)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            log('pid %d did not stop within %ds, killing it'
                % (process.pid, timeout))
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        pass


def port_open(port, host='127.0.0.1'):
    try:
        socket.create_connection((host, port), 1).close()
        return True
    except OSError:
        return False


def wait_for_port(port, process, timeout=15):
    """Wait until process listens on port; BenchError if it exits."""
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if process.poll() is not None:
            error = process.stderr.read()
            raise BenchError('%s exited: %s' % (
                os.path.basename(process.args[0]),
                error.decode() if isinstance(error, bytes) else error))
        if time.monotonic() > deadline:
            raise BenchError('%s did not listen on %d'
                             % (os.path.basename(process.args[0]), port))
        time.sleep(0.05)


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def proc_status(pid):
    """/proc/<pid>/status as a dict of str."""
    fields = {}
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            key, _, value = line.partition(':')
            fields[key] = value.strip()
    return fields


def rss_kib(pid):
    return int(proc_status(pid)['VmRSS'].split()[0])


def cpu_seconds(pid):
    """User plus system CPU seconds of a process (all its threads)."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            fields = f.read().rpartition(')')[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def pid_listening(port):
    """The pid of the process holding the socket listening on port."""
    inodes = listening_inodes({port})
    for name in os.listdir('/proc'):
        if name.isdigit() and socket_inodes(int(name)) & set(inodes):
            return int(name)
    return None


def children(pid):
    try:
        with open('/proc/%d/task/%d/children' % (pid, pid)) as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def listening_inodes(ports):
    """{socket inode: port} for the sockets listening on these ports."""
    inodes = {}
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        try:
            lines = open(table).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            parts = line.split()
            port = int(parts[1].rsplit(':', 1)[1], 16)
            if parts[3] == '0A' and port in ports:
                inodes[parts[9]] = port
    return inodes


def socket_inodes(pid):
    inodes = set()
    try:
        names = os.listdir('/proc/%d/fd' % pid)
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink('/proc/%d/fd/%s' % (pid, name))
        except OSError:
            continue
        if target.startswith('socket:['):
            inodes.add(target[8:-1])
    return inodes


# -- set-up: tools, management plugin ---------------------------------------

def php_has(check):
    php = shutil.which('php')
    if not php:
        return False
    return subprocess.run([php, '-r', 'exit(%s ? 0 : 1);' % check],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          stdin=subprocess.DEVNULL).returncode == 0


def nginx_binary():
    return shutil.which('nginx') or next(
        (p for p in ('/usr/sbin/nginx', '/usr/local/sbin/nginx')
         if os.access(p, os.X_OK)), None)


def missing_packages():
    missing = []
    if not shutil.which('wrk'):
        missing.append('wrk')
    if not shutil.which('php'):
        missing.append('php-cli')
    if not php_has('function_exists("curl_init")'):
        missing.append('php-curl')
    if not php_has('class_exists("AMQPConnection")'):
        missing.append('php-amqp')
    if not nginx_binary():
        missing.append('nginx')
    return missing


def install_packages():
    """apt-get install what is missing when root; say what stays missing."""
    missing = missing_packages()
    if not missing:
        return []
    if os.geteuid() != 0 or not shutil.which('apt-get'):
        log('missing %s (apt-get install %s as root); the rows needing them '
            'are skipped' % (', '.join(missing), ' '.join(missing)))
        return missing
    log('installing %s' % ' '.join(missing))
    # Installing nginx must not start the distribution's nginx service.
    policy = '/usr/sbin/policy-rc.d'
    own_policy = not os.path.exists(policy)
    if own_policy:
        with open(policy, 'w') as f:
            f.write('#!/bin/sh\nexit 101\n')
        os.chmod(policy, 0o755)
    try:
        env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
        quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                     env=env)
        subprocess.run(['apt-get', 'update', '-q'], **quiet)
        result = subprocess.run(['apt-get', 'install', '-y', '-q'] + missing,
                                **quiet)
        if result.returncode:
            log('apt-get install %s failed (exit %d)'
                % (' '.join(missing), result.returncode))
    finally:
        if own_policy:
            os.unlink(policy)
    still = missing_packages()
    if still:
        log('still missing %s; the rows needing them are skipped'
            % ', '.join(still))
    return still


class Management:
    """RabbitMQ's management HTTP API as guest."""

    def __init__(self, port=MANAGEMENT_PORT):
        self.port = port
        self.auth = 'Basic ' + basic_auth(*GUEST)

    def request(self, method, path, document=None, ok=(200, 201, 204)):
        connection = http.client.HTTPConnection('127.0.0.1', self.port,
                                                timeout=30)
        try:
            body = None if document is None else json.dumps(document)
            headers = {'Authorization': self.auth,
                       'Content-Type': 'application/json'}
            connection.request(method, path, body, headers)
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        if response.status not in ok:
            raise BenchError('management API %s %s: %d %s'
                             % (method, path, response.status, data[:200]))
        return json.loads(data) if data else None

    def ensure(self):
        """Enable the plugin if needed and wait for the API to answer."""
        if not port_open(self.port):
            if not shutil.which('rabbitmq-plugins'):
                raise BenchError('RabbitMQ does not serve its management API '
                                 'on port %d and rabbitmq-plugins is not '
                                 'installed' % self.port)
            log('enabling rabbitmq_management')
            result = subprocess.run(
                ['rabbitmq-plugins', 'enable', 'rabbitmq_management'],
                capture_output=True, text=True, stdin=subprocess.DEVNULL,
                timeout=120)
            if result.returncode:
                raise BenchError('rabbitmq-plugins enable rabbitmq_management '
                                 'failed: %s' % (result.stderr or
                                                 result.stdout).strip())
        deadline = time.monotonic() + 120
        while True:
            try:
                return self.request('GET', '/api/overview')
            except (OSError, BenchError, http.client.HTTPException) as error:
                if time.monotonic() > deadline:
                    raise BenchError('the management API on port %d did not '
                                     'answer: %s' % (self.port, error))
            time.sleep(0.5)


def user_path(name):
    return urllib.parse.quote(name, safe='')


def remove_stale_users(management):
    """Delete benchmark users left by a run that was killed."""
    for user in management.request('GET', '/api/users'):
        match = re.match(r'%s-(\d+)-\d+$' % PREFIX, user['name'])
        if match and not os.path.exists('/proc/%s' % match.group(1)):
            management.request('DELETE', '/api/users/' +
                               user_path(user['name']), ok=(204, 404))


# -- the broker objects --------------------------------------------------------

class Broker:
    """A fanout exchange bound to a bounded queue, both gone with us.

    The queue is exclusive to this connection and the exchange auto-deletes
    with its last binding, so even a killed benchmark leaves neither behind.
    """

    def __init__(self):
        self.name = '%s-%d' % (PREFIX, os.getpid())
        parameters = pika.ConnectionParameters(
            AMQP_HOST, AMQP_PORT, '/', pika.PlainCredentials(*GUEST),
            heartbeat=0)
        self.connection = pika.BlockingConnection(parameters)
        channel = self.connection.channel()
        channel.exchange_declare(self.name, 'fanout', auto_delete=True)
        channel.queue_declare(self.name, exclusive=True, arguments={
            'x-max-length': QUEUE_MAX_LENGTH})
        channel.queue_bind(self.name, self.name)
        self.channel = channel

    def close(self):
        try:
            self.channel.queue_delete(self.name)
            self.channel.exchange_delete(self.name)
            self.connection.close()
        except Exception as error:
            log('removing %s: %s' % (self.name, error))


# -- statelessd -----------------------------------------------------------------

class Statelessd:
    """statelessd.py -f with one worker per port, WARNING logging; server
    holds HTTPServer settings to add."""

    def __init__(self, directory, ports, server=None):
        self.ports = ports
        self.config = os.path.join(directory, 'statelessd.yaml')
        config = {
            'Daemon': {'pidfile': None},
            'Application': {'rabbitmq': {
                'host': AMQP_HOST, 'port': AMQP_PORT,
                'confirm_timeout': 10, 'max_queue_size': 10000,
                'shutdown_timeout': 5}},
            'HTTPServer': dict(server or {}, address='127.0.0.1',
                               ports=ports),
            'Logging': {
                'version': 1,
                'formatters': {'plain': {
                    'format': '%(levelname)s %(process)d %(name)s: '
                              '%(message)s'}},
                'handlers': {'console': {'class': 'logging.StreamHandler',
                                         'formatter': 'plain'}},
                'root': {'level': 'WARNING', 'handlers': ['console']}}}
        with open(self.config, 'w') as f:
            json.dump(config, f, indent=2)   # JSON is YAML
        self.log_path = os.path.join(directory, 'statelessd.log')
        self.log_file = open(self.log_path, 'w')
        self.process = spawn([sys.executable, 'statelessd.py', '-c',
                              self.config, '-f'], cwd=ROOT,
                             stdout=self.log_file, stderr=subprocess.STDOUT)
        self.workers = {}
        self.client_gone = 0

    def log_tail(self):
        with open(self.log_path, errors='replace') as f:
            return f.read()[-2000:]

    def wait_ready(self, timeout=30):
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while True:
                if self.process.poll() is not None:
                    raise BenchError('statelessd exited with %s:\n%s'
                                     % (self.process.returncode,
                                        self.log_tail()))
                try:
                    self.stats(port)
                    break
                except (OSError, http.client.HTTPException, ValueError):
                    if time.monotonic() > deadline:
                        raise BenchError('statelessd did not answer on port '
                                         '%d:\n%s' % (port, self.log_tail()))
                    time.sleep(0.1)
        self.find_workers()

    def find_workers(self):
        """{port: worker pid}: a worker holds only its own listening socket."""
        inodes = listening_inodes(set(self.ports))
        self.workers = {}
        for pid in children(self.process.pid):
            ports = {inodes[i] for i in socket_inodes(pid) if i in inodes}
            if len(ports) == 1:
                self.workers[ports.pop()] = pid
        if sorted(self.workers) != sorted(self.ports):
            raise BenchError('cannot tell statelessd worker pids: %r'
                             % self.workers)
        return self.workers

    def stats(self, port):
        connection = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
        try:
            connection.request('GET', '/stats')
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        if response.status != 200:
            raise BenchError('GET /stats on %d: %d' % (port, response.status))
        return json.loads(data)

    def publisher(self, port, key='/:guest'):
        return self.stats(port)['connections'].get(key, {})

    def totals(self, ports):
        published = 0
        for port in ports:
            published += self.publisher(port).get('publishes', 0)
        return published

    def drain(self, ports, timeout=60):
        """Wait until the guest publishers hold nothing; return the seconds."""
        start = time.monotonic()
        while True:
            held = 0
            for port in ports:
                publisher = self.publisher(port)
                held += (publisher.get('queue_size', 0) +
                         publisher.get('outbox', 0))
            if not held:
                return time.monotonic() - start
            if time.monotonic() - start > timeout:
                raise BenchError('statelessd still holds %d messages after '
                                 '%ds' % (held, timeout))
            time.sleep(0.05)

    def stop(self):
        stop_process(self.process)
        self.log_file.close()
        with open(self.log_path, errors='replace') as f:
            records = re.split(r'(?m)^(?=(?:DEBUG|INFO|WARNING|ERROR|CRITICAL)'
                               r' \d+ )', f.read())
        errors = [r for r in records if r.startswith(('ERROR', 'CRITICAL'))]
        # wrk stopping at the end of a row closes connections with requests
        # in flight: their answers meet a closed socket.
        gone = [r for r in errors if re.search(
            r'(BrokenPipeError|ConnectionResetError)[^\n]*\n', r)]
        others = [r for r in errors if r not in gone]
        if gone:
            self.client_gone = len(gone)
            log('statelessd logged %d tracebacks for clients that closed the '
                'connection before the answer (load generators stopping)'
                % len(gone))
        if others:
            log('statelessd logged %d other errors; the first:\n%s'
                % (len(others), others[0][:3000]))


def post(port, path, form, user=GUEST[0], password=GUEST[1]):
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
    try:
        connection.request('POST', path, urllib.parse.urlencode(form), {
            'Authorization': 'Basic ' + basic_auth(user, password),
            'Content-Type': 'application/x-www-form-urlencoded'})
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


# -- nginx -------------------------------------------------------------------

def render_nginx(prefix, port, upstream_ports):
    """nginx.conf for a pool of statelessd ports.

    The deployment configuration etc/nginx.conf is used when the repository
    has one (its listen and upstream servers replaced, its files moved to the
    prefix); otherwise bench/nginx.conf.
    """
    servers = ''.join('        server 127.0.0.1:%d max_fails=0;\n' % p
                      for p in upstream_ports)
    deployed = os.path.join(ROOT, 'etc', 'nginx.conf')
    template = os.path.join(BENCH, 'nginx.conf')
    if not os.path.exists(deployed):
        with open(template) as f:
            text = f.read()
        return (text.replace('@PREFIX@', prefix).replace('@PORT@', str(port))
                .replace('@SERVERS@\n', servers))
    with open(deployed) as f:
        text = f.read()
    text = re.sub(r'(?m)^\s*#.*\n', '', text)

    def upstream(match):
        body = re.sub(r'(?m)^\s*server\s[^;]*;[ \t]*\n?', '', match.group(2))
        return match.group(1) + '\n' + servers + body

    text = re.sub(r'(upstream\s+[\w.-]+\s*\{)([^}]*)', upstream, text)
    text = re.sub(r'(?m)^(\s*)listen\s[^;]*;',
                  r'\g<1>listen 127.0.0.1:%d;' % port, text)
    text = re.sub(r'(?m)^\s*(access_log|error_log|pid|daemon|user|'
                  r'master_process|worker_processes|include)\s[^;]*;[ \t]*\n',
                  '', text)
    temp = ''.join('    %s_temp_path %s/%s;\n' % (kind, prefix, kind)
                   for kind in ('client_body', 'proxy', 'fastcgi', 'uwsgi',
                                'scgi'))
    if re.search(r'(?m)^\s*http\s*\{', text):
        text = re.sub(r'(?m)^(\s*http\s*\{)', r'\1\n    access_log off;\n' +
                      temp.replace('\\', r'\\'), text, count=1)
        text = re.sub(r'(?m)^\s*events\s*\{[^}]*\}\s*\n', '', text)
    else:
        text = 'http {\n    access_log off;\n%s%s\n}\n' % (temp, text)
    return ('daemon off;\nmaster_process on;\nworker_processes auto;\n'
            'pid %s/nginx.pid;\nerror_log %s/error.log warn;\n'
            'events {\n    worker_connections 1024;\n}\n' % (prefix, prefix)
            + text)


class Nginx:
    def __init__(self, directory, upstream_ports):
        self.prefix = tempfile.mkdtemp(prefix='nginx-%d-' % len(upstream_ports),
                                       dir=directory)
        os.chmod(directory, 0o755)
        os.chmod(self.prefix, 0o755)
        self.port = free_port()
        self.conf = os.path.join(self.prefix, 'nginx.conf')
        with open(self.conf, 'w') as f:
            f.write(render_nginx(self.prefix, self.port, upstream_ports))
        self.source = ('etc/nginx.conf' if os.path.exists(
            os.path.join(ROOT, 'etc', 'nginx.conf')) else 'bench/nginx.conf')
        binary = nginx_binary()
        check = subprocess.run([binary, '-t', '-q', '-p', self.prefix,
                                '-e', 'stderr', '-c', self.conf],
                               capture_output=True, text=True,
                               stdin=subprocess.DEVNULL)
        if check.returncode:
            raise BenchError('nginx rejects %s: %s' % (self.conf,
                                                      check.stderr.strip()))
        self.process = spawn([binary, '-p', self.prefix, '-e', 'stderr',
                              '-c', self.conf], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
        wait_for_port(self.port, self.process)

    def stop(self):
        stop_process(self.process, signal.SIGQUIT)


# -- load generators --------------------------------------------------------------

Row = collections.namedtuple('Row', 'key name rate unit p50 p99 non2xx errors '
                                    'notes statelessd_cpu broker_cpu p999',
                             defaults=(None, None, None))

UNITS = {'us': 0.001, 'ms': 1.0, 's': 1000.0, 'm': 60000.0}


def wrk(url, script, body, seconds=None, threads=THREADS,
        connections=CONNECTIONS):
    """Run wrk; return a dict of its figures."""
    process = start_wrk(url, script, body, seconds, threads, connections)
    return wrk_figures(process, seconds or SECONDS)


def start_wrk(url, script, body, seconds=None, threads=THREADS,
              connections=CONNECTIONS):
    seconds = seconds or SECONDS
    env = dict(os.environ, BENCH_BODY=body, BENCH_AUTH=basic_auth(*GUEST),
               BENCH_DIR=BENCH)
    args = ['wrk', '-t%d' % threads, '-c%d' % connections, '-d%ds' % seconds,
            '--timeout', '10s', '--latency', '-s',
            os.path.join(BENCH, script), url]
    return spawn(args, env=env, stdout=subprocess.PIPE,
                 stderr=subprocess.PIPE, text=True)


def wrk_figures(process, seconds):
    """Wait for a wrk started by start_wrk; return a dict of its figures."""
    try:
        out, err = process.communicate(timeout=seconds + 60)
    finally:
        stop_process(process)
    if process.returncode:
        raise BenchError('wrk failed (exit %s): %s' % (process.returncode,
                                                       err.strip()))
    figures = {'output': out}
    match = re.search(r'Requests/sec:\s+([\d.]+)', out)
    if not match:
        raise BenchError('cannot read wrk output:\n' + out + err)
    figures['rate'] = float(match.group(1))
    match = re.search(r'(\d+) requests in', out)
    figures['requests'] = int(match.group(1)) if match else 0
    for percent in ('50', '99'):
        match = re.search(r'(?m)^\s+%s%%\s+([\d.]+)(us|ms|s|m)\s*$' % percent,
                          out)
        figures['p' + percent] = (float(match.group(1)) *
                                  UNITS[match.group(2)] if match else None)
    match = re.search(r'(?m)^p99\.9 (\d+)$', out)
    figures['p99.9'] = int(match.group(1)) / 1000.0 if match else None
    match = re.search(r'Non-2xx or 3xx responses:\s+(\d+)', out)
    figures['non2xx'] = int(match.group(1)) if match else 0
    match = re.search(r'Socket errors: connect (\d+), read (\d+), write (\d+),'
                      r' timeout (\d+)', out)
    figures['errors'] = sum(map(int, match.groups())) if match else 0
    return figures


def percentile(values, percent):
    if not values:
        return None
    ordered = sorted(values)
    index = min(len(ordered) - 1,
                max(0, int(round(percent / 100.0 * len(ordered))) - 1))
    return ordered[index]


def run_clients(commands, seconds):
    """Run client processes side by side; sum the JSON they print."""
    processes = [spawn(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       text=True) for args in commands]
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=seconds + 60)
            if process.returncode:
                raise BenchError('%s failed (exit %s): %s'
                                 % (os.path.basename(process.args[1]),
                                    process.returncode, err.strip()[-500:]))
            results.append(json.loads(out))
    finally:
        for process in processes:
            stop_process(process)
    latencies = [v for r in results for v in r.get('latencies_ms', [])]
    codes = collections.Counter()
    for r in results:
        codes.update(r.get('codes') or {})
    return {'rate': sum(r['ok'] / r['seconds'] for r in results),
            'ok': sum(r['ok'] for r in results),
            'failed': sum(r['failed'] for r in results),
            'codes': dict(codes),
            'p50': percentile(latencies, 50),
            'p99': percentile(latencies, 99)}


# -- the benchmark ------------------------------------------------------------------

class Bench:
    def __init__(self, stack, directory):
        self.stack = stack
        self.directory = directory
        self.rows = {}
        self.rounds = {}
        self.failures = {}
        self.skipped = {}
        self.rss = []
        self.profile = None
        self.users = []
        self.info = {}

    # helpers
    def measure(self, key, function):
        """Run one row; a row that fails is reported, the others still run."""
        pids = list(self.statelessd.find_workers().values())
        cpu = [cpu_seconds(pid) for pid in pids + [self.broker_pid]]
        start = time.monotonic()
        try:
            row = function()
        except Skipped as reason:
            self.skipped[key] = str(reason)
            log('%s: skipped (%s)' % (key, reason))
            return None
        except BenchError as error:
            self.failures[key] = str(error)
            log('%s: FAILED: %s' % (key, error))
            return None
        wall = time.monotonic() - start
        used = [cpu_seconds(pid) - before
                for pid, before in zip(pids + [self.broker_pid], cpu)]
        row = row._replace(statelessd_cpu=100 * sum(used[:-1]) / wall,
                           broker_cpu=100 * used[-1] / wall)
        self.rounds.setdefault(key, []).append(row)
        log('%-28s %10.0f %s  p50 %s  p99 %s  non-2xx %s  errors %s%s'
            % (row.name, row.rate, row.unit, fmt_ms(row.p50), fmt_ms(row.p99),
               fmt_count(row.non2xx), row.errors,
               '  (%s)' % row.notes if row.notes else ''))
        return row

    def need(self, *tools):
        missing = [t for t in tools if t in self.missing]
        if missing:
            raise Skipped('needs ' + ', '.join(missing))

    def run(self):
        self.missing = install_packages()
        self.management = Management()
        overview = self.management.ensure()
        self.broker_pid = pid_listening(AMQP_PORT) or 0
        self.info['rabbitmq'] = overview.get('rabbitmq_version', '?')
        remove_stale_users(self.management)
        self.stack.callback(self.delete_users)
        self.broker = Broker()
        self.stack.callback(self.broker.close)
        self.form = urllib.parse.urlencode({'body': PAYLOAD,
                                            'content_type': 'text/plain'})
        self.path = '/%%2f/%s/%s' % (urllib.parse.quote(self.broker.name),
                                     ROUTING_KEY)

        ports = [free_port() for _ in range(max([1] + NGINX_PORTS))]
        self.statelessd = Statelessd(self.directory, ports)
        self.stack.callback(self.statelessd.stop)
        self.statelessd.wait_ready()
        for port in ports:       # open the publishers, check the exchange
            status = post(port, self.path, {'body': PAYLOAD,
                                            'content_type': 'text/plain'})
            if status != 204:
                raise BenchError('statelessd answered %d to the first '
                                 'message on port %d:\n%s'
                                 % (status, port, self.statelessd.log_tail()))
        self.port = ports[0]

        for round_ in range(ROUNDS):
            if ROUNDS > 1:
                log('round %d of %d' % (round_ + 1, ROUNDS))
            self.measure('ff', self.fire_and_forget)
            self.measure('confirm', self.confirm)
            self.measure('management', self.management_api)
            self.measure('pika', self.pika_loop)
            self.measure('batch-form', self.form_batches)
            self.measure('batch-json', self.json_batches)
            self.measure('api', self.statelessd_api)
            self.measure('raw', self.raw_bodies)
            self.measure('ff-256', self.many_clients)
            self.measure('node-ff', lambda: self.node_peer('node-ff', ''))
            self.measure('node-confirm',
                         lambda: self.node_peer('node-confirm', '?confirm=1'))
            self.measure('php-statelessd', self.php_statelessd)
            self.measure('php-amqp', self.php_amqp)
            for count in NGINX_PORTS:
                self.measure('nginx-%d' % count,
                             lambda count=count: self.behind_nginx(count))
        for key, rows in self.rounds.items():   # the median round of each row
            if key in self.failures:    # a round failed: report the failure
                continue
            rows.sort(key=lambda row: row.rate)
            self.rows[key] = rows[(len(rows) - 1) // 2]._replace(
                non2xx=None if rows[0].non2xx is None
                else sum(r.non2xx for r in rows),
                errors=sum(r.errors for r in rows))
        try:
            self.idle_publishers()
        except BenchError as error:
            self.failures['rss'] = str(error)
            log('RSS: FAILED: %s' % error)
        if PROFILE:
            try:
                self.profile = self.profile_worker()
            except (BenchError, Skipped) as error:
                log('profile: %s' % error)

    def statelessd_row(self, key, name, query='', ports=None, url=None,
                       notes='', script='statelessd.lua', body=None,
                       messages=1, connections=CONNECTIONS):
        """A wrk row against statelessd; messages is how many messages each
        request carries, and a row of batches is reported in msg/s."""
        self.need('wrk')
        ports = ports or [self.port]
        before = self.statelessd.totals(ports)
        figures = wrk(url or 'http://127.0.0.1:%d%s%s'
                      % (self.port, self.path, query),
                      script, self.form if body is None else body,
                      connections=connections)
        drained = self.statelessd.drain(ports)
        published = self.statelessd.totals(ports) - before
        answered = (figures['requests'] - figures['non2xx']) * messages
        if published < answered:
            raise BenchError('statelessd answered 2xx for %d messages but '
                             'published only %d' % (answered, published))
        if drained > 0.5:
            notes = (notes + '; ' if notes else '') + (
                'queue drained %.1f s after the run' % drained)
        return Row(key, name, figures['rate'] * messages,
                   'msg/s' if messages > 1 else 'req/s', figures['p50'],
                   figures['p99'], figures['non2xx'], figures['errors'], notes,
                   p999=figures['p99.9'])

    # rows
    def fire_and_forget(self):
        return self.statelessd_row('ff', 'statelessd fire-and-forget')

    def confirm(self):
        return self.statelessd_row('confirm', 'statelessd ?confirm=1',
                                   '?confirm=1')

    def many_clients(self):
        return self.statelessd_row(
            'ff-256', 'statelessd fire-and-forget, %d connections'
            % MANY_CONNECTIONS, connections=MANY_CONNECTIONS,
            notes='an nginx pool of several ports in production')

    def node_peer(self, key, query):
        """The Node.js gateway of bench/node on the same URL and form."""
        self.need('wrk')
        if not os.path.isdir(os.path.join(BENCH, 'node', 'node_modules')):
            raise Skipped('needs bench/node installed (make bench runs npm)')
        port = free_port()
        process = spawn(['node', os.path.join(BENCH, 'node', 'server.js'),
                         str(port), 'amqp://%s:%s@%s:%d' % (GUEST + (
                             AMQP_HOST, AMQP_PORT))],
                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                        text=True)
        try:
            wait_for_port(port, process)
            figures = wrk('http://127.0.0.1:%d%s%s' % (port, self.path, query),
                          'statelessd.lua', self.form)
        finally:
            stop_process(process)
        return Row(key, 'Node.js peer%s' % (' ' + query if query else ''),
                   figures['rate'], 'req/s', figures['p50'], figures['p99'],
                   figures['non2xx'], figures['errors'],
                   'http.createServer + amqplib, one channel',
                   p999=figures['p99.9'])

    def management_api(self):
        self.need('wrk')
        figures = wrk(self.api_url(MANAGEMENT_PORT), 'management.lua',
                      json.dumps(API_MESSAGE))
        return Row('management', 'management API publish', figures['rate'],
                   'req/s', figures['p50'], figures['p99'], figures['non2xx'],
                   figures['errors'], '')

    def api_url(self, port):
        return 'http://127.0.0.1:%d/api/exchanges/%%2f/%s/publish' % (
            port, urllib.parse.quote(self.broker.name))

    def form_batches(self):
        body = urllib.parse.urlencode([
            ('messages[%d][%s]' % (index, name), value)
            for index in range(BATCH_SIZE)
            for name, value in (('body', PAYLOAD),
                                ('content_type', 'text/plain'))])
        return self.statelessd_row(
            'batch-form', 'statelessd form batches', body=body,
            messages=BATCH_SIZE,
            notes='%d messages a request, fire-and-forget' % BATCH_SIZE)

    def json_batches(self):
        return self.statelessd_row(
            'batch-json', 'statelessd JSON batches',
            url=self.api_url(self.port), script='management.lua',
            body=json.dumps([API_MESSAGE] * BATCH_SIZE), messages=BATCH_SIZE,
            notes='%d messages a request, confirmed' % BATCH_SIZE)

    def statelessd_api(self):
        return self.statelessd_row(
            'api', 'statelessd management API endpoint',
            url=self.api_url(self.port), script='management.lua',
            body=json.dumps(API_MESSAGE), notes='mandatory, confirmed')

    def raw_bodies(self):
        return self.statelessd_row('raw', 'statelessd raw body',
                                   script='raw.lua', body=PAYLOAD,
                                   notes='fire-and-forget, text/plain')

    def pika_loop(self):
        results = run_clients([[sys.executable,
                                os.path.join(BENCH, 'pika_publish.py'),
                                AMQP_HOST, str(AMQP_PORT), GUEST[0], GUEST[1],
                                self.broker.name, ROUTING_KEY, PAYLOAD,
                                str(SECONDS)]], SECONDS)
        return Row('pika', 'raw pika publish loop', results['rate'], 'msg/s',
                   None, None, None, results['failed'],
                   '1 process, no HTTP, no confirms')

    def php_statelessd(self):
        self.need('php-cli', 'php-curl')
        url = 'http://127.0.0.1:%d%s' % (self.port, self.path)
        before = self.statelessd.totals([self.port])
        results = run_clients([['php', os.path.join(BENCH, 'php_curl.php'),
                                url, '%s:%s' % GUEST, PAYLOAD, str(SECONDS)]]
                              * PHP_PROCESSES, SECONDS)
        self.statelessd.drain([self.port])
        published = self.statelessd.totals([self.port]) - before
        if published < results['ok']:
            raise BenchError('PHP had %d messages answered 204 but statelessd '
                             'published %d' % (results['ok'], published))
        notes = '%d processes, new curl handle per message' % PHP_PROCESSES
        if results['codes']:
            notes += '; statuses %s' % results['codes']
        return Row('php-statelessd', 'PHP curl -> statelessd',
                   results['rate'], 'msg/s', results['p50'], results['p99'],
                   results['failed'], 0, notes)

    def php_amqp(self):
        self.need('php-cli', 'php-amqp')
        results = run_clients([['php', os.path.join(BENCH, 'php_amqp.php'),
                                AMQP_HOST, str(AMQP_PORT), GUEST[0], GUEST[1],
                                self.broker.name, ROUTING_KEY, PAYLOAD,
                                str(SECONDS)]] * PHP_PROCESSES, SECONDS)
        notes = '%d processes, AMQP connection per message' % PHP_PROCESSES
        if results['codes']:
            notes += '; errors %s' % results['codes']
        return Row('php-amqp', 'PHP php-amqp connect/publish',
                   results['rate'], 'msg/s', results['p50'], results['p99'],
                   None, results['failed'], notes)

    def behind_nginx(self, count):
        self.need('nginx', 'wrk')
        ports = self.statelessd.ports[:count]
        nginx = Nginx(self.directory, ports)
        try:
            status = post(nginx.port, self.path, {'body': PAYLOAD})
            if status != 204:
                raise BenchError('nginx answered %d' % status)
            return self.statelessd_row(
                'nginx-%d' % count, 'nginx -> %d statelessd ports' % count,
                ports=ports, url='http://127.0.0.1:%d%s' % (nginx.port,
                                                           self.path),
                notes='fire-and-forget; %s' % nginx.source)
        finally:
            nginx.stop()

    # memory
    def idle_publishers(self):
        workers = self.statelessd.find_workers()
        before = {port: rss_kib(pid) for port, pid in workers.items()}
        threads_before = {port: int(proc_status(pid)['Threads'])
                          for port, pid in workers.items()}
        password = 'bench-%s' % base64.b32encode(os.urandom(10)).decode()
        write = '^%s-' % re.escape(PREFIX)

        def create(index):
            name = '%s-%d-%d' % (PREFIX, os.getpid(), index)
            self.users.append(name)
            self.management.request('PUT', '/api/users/' + user_path(name),
                                    {'password': password, 'tags': ''})
            self.management.request(
                'PUT', '/api/permissions/%2f/' + user_path(name),
                {'configure': '^$', 'write': write, 'read': '^$'})
            return name

        def publish(job):
            port, name = job
            return post(port, self.path, {'body': PAYLOAD}, name, password)

        log('creating %d users, publishing once per user and port'
            % IDLE_PUBLISHERS)
        with ThreadPoolExecutor(8) as pool:
            names = list(pool.map(create, range(IDLE_PUBLISHERS)))
            statuses = collections.Counter(pool.map(
                publish, [(p, n) for p in workers for n in names]))
        if set(statuses) - {204}:
            raise BenchError('publishing as the idle users: %s'
                             % dict(statuses))
        time.sleep(1)
        for port, pid in sorted(workers.items()):
            connections = self.statelessd.stats(port)['connections']
            after = rss_kib(pid)
            self.rss.append({
                'port': port, 'pid': pid, 'before': before[port],
                'after': after, 'publishers': len(connections),
                'threads_before': threads_before[port],
                'threads': int(proc_status(pid)['Threads'])})
        master = self.statelessd.process.pid
        self.info['master_rss'] = rss_kib(master)

    def delete_users(self):
        for name in self.users:
            try:
                self.management.request('DELETE',
                                        '/api/users/' + user_path(name),
                                        ok=(204, 404))
            except (OSError, BenchError, http.client.HTTPException) as error:
                log('deleting user %s: %s' % (name, error))
        self.users = []

    # profile
    def profile_worker(self):
        """A further fire-and-forget pass with py-spy sampling the worker.

        Only samples of the thread holding the GIL count (--gil): with 16
        request threads most threads wait for the GIL most of the time.
        """
        RATE = 200
        self.need('wrk')
        pyspy = shutil.which('py-spy') or os.path.join(
            os.path.dirname(sys.executable), 'py-spy')
        if not os.access(pyspy, os.X_OK):
            raise Skipped('py-spy is not installed (pip install py-spy)')
        pid = self.statelessd.find_workers()[self.port]
        raw = os.path.join(self.directory, 'profile.txt')
        record = spawn([pyspy, 'record', '--nonblocking', '--gil',
                        '--threads', '--format', 'raw', '-r', str(RATE),
                        '-d', str(SECONDS),
                        '-o', raw, '-p', str(pid)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        try:
            time.sleep(0.5)
            wrk('http://127.0.0.1:%d%s' % (self.port, self.path),
                'statelessd.lua', self.form)
            record.wait(SECONDS + 30)
        finally:
            stop_process(record, signal.SIGINT)
        if not os.path.exists(raw):
            raise BenchError('py-spy wrote no profile: %s'
                             % record.stderr.read().decode()[-500:])
        summary = summarize_profile(raw)
        summary['gil'] = summary['total'] / float(RATE * SECONDS)
        return summary


def summarize_profile(path):
    """Own and inclusive sample shares per function, and per thread kind."""
    own = collections.Counter()
    inclusive = collections.Counter()
    threads = collections.Counter()
    total = 0
    with open(path) as f:
        for line in f:
            stack, _, count = line.rstrip('\n').rpartition(' ')
            if not stack or not count.isdigit():
                continue
            count = int(count)
            frames = stack.split(';')
            total += count
            thread = frames[0]
            functions = [frame_name(frame) for frame in frames[1:]]
            threads[thread_kind(thread, functions)] += count
            if functions:
                own[functions[-1]] += count
            for name in set(functions):
                inclusive[name] += count
    return {'total': total, 'own': own.most_common(15),
            'inclusive': inclusive.most_common(25),
            'threads': threads.most_common()}


def frame_name(frame):
    """'send (socket.py:123)' -> 'socket.py:send'."""
    match = re.match(r'(.*) \((.*?)(?::\d+)?\)$', frame.strip())
    if not match:
        return frame.strip()
    return '%s:%s' % (os.path.basename(match.group(2)), match.group(1))


def thread_kind(thread, functions):
    text = ' '.join(functions)
    if 'process_request_thread' in text or 'handle_one_request' in text:
        return 'HTTP request threads'
    if 'serve_forever' in text:
        return 'accept loop'
    if 'statelessd_amqp' in text:
        return 'publisher threads'
    name = thread.partition(': ')[2] or thread
    return 'other: %s' % re.sub(r'-\d+', '', name).strip()


# -- the report ---------------------------------------------------------------------

def fmt_ms(value):
    if value is None:
        return '—'
    if value >= 100:
        return '%.0f ms' % value
    return '%.2f ms' % value


def fmt_cpu(value):
    return '—' if value is None else '%.0f%%' % value


def fmt_count(value):
    return '—' if value is None else str(value)


def ratio(a, b):
    if a is None or b is None or not b.rate:
        return None
    return a.rate / b.rate


ROW_ORDER = ['ff', 'confirm', 'management', 'pika', 'php-statelessd',
             'php-amqp', 'batch-form', 'batch-json', 'api', 'raw', 'ff-256',
             'node-ff', 'node-confirm']
BASELINE = {'ff': ('management', 'management API'),
            'confirm': ('management', 'management API'),
            'php-statelessd': ('php-amqp', 'PHP connection per message'),
            'batch-form': ('pika', 'raw pika loop'),
            'batch-json': ('pika', 'raw pika loop'),
            'api': ('management', 'management API'),
            'raw': ('ff', 'form fire-and-forget'),
            'ff-256': ('ff', 'fire-and-forget, %d connections' % CONNECTIONS),
            'node-ff': ('ff', 'statelessd fire-and-forget'),
            'node-confirm': ('node-ff', 'its fire-and-forget'),
            }


def targets(bench):
    rows = bench.rows
    checks = [
        ('fire-and-forget ≥ 6× management API', 'ff', 'management', 6.0),
        ('fire-and-forget ≥ 0.4× raw pika loop', 'ff', 'pika', 0.4),
        ('confirm ≥ 3× management API', 'confirm', 'management', 3.0),
        ('PHP through statelessd ≥ 4× PHP connection-per-message',
         'php-statelessd', 'php-amqp', 4.0),
        ('form batches ≥ 1.5× raw pika loop', 'batch-form', 'pika', 1.5),
        ('JSON batches ≥ 1.5× raw pika loop', 'batch-json', 'pika', 1.5),
        ('management API endpoint ≥ 4× management API', 'api',
         'management', 4.0),
        ('raw body ≥ 0.9× form fire-and-forget', 'raw', 'ff', 0.9),
        ('confirm ≥ 0.75× fire-and-forget', 'confirm', 'ff', 0.75),
        ('%d connections ≥ 0.8× %d connections' % (MANY_CONNECTIONS,
                                                   CONNECTIONS),
         'ff-256', 'ff', 0.8),
    ]
    lines = []
    for label, a, b, goal in checks:
        value = ratio(rows.get(a), rows.get(b))
        if value is None:
            lines.append((label, 'not measured', False))
        else:
            lines.append((label, '%.2f×' % value, value >= goal))
    for label, key, most in (('fire-and-forget p99 ≤ 5 ms', 'ff', 5.0),
                             ('confirm p99 < 10 ms', 'confirm', 10.0),
                             ('%d connections p99 ≤ 50 ms' % MANY_CONNECTIONS,
                              'ff-256', 50.0)):
        p99 = rows[key].p99 if key in rows else None
        if p99 is None:
            lines.append((label, 'not measured', False))
        else:
            lines.append((label, fmt_ms(p99), p99 <= most))
    statelessd_rows = [k for k in ['ff', 'confirm', 'php-statelessd',
                                   'batch-form', 'batch-json', 'api', 'raw',
                                   'ff-256'] +
                       ['nginx-%d' % n for n in NGINX_PORTS]]
    measured = [rows[k] for k in statelessd_rows if k in rows]
    bad = ['%s: %d non-2xx, %d socket errors' % (r.name, r.non2xx, r.errors)
           for r in measured if r.non2xx or r.errors]
    unmeasured = [k for k in statelessd_rows if k not in rows]
    if bad or unmeasured:
        detail = '; '.join(bad + ['%s not measured' % k for k in unmeasured])
        lines.append(('zero non-2xx in every statelessd row', detail, False))
    else:
        lines.append(('zero non-2xx in every statelessd row',
                      '0 in %d rows' % len(measured), True))
    return lines


def report(bench, started):
    rows = bench.rows
    out = []
    out.append('| # | row | req/s or msg/s | p50 | p99 | p99.9 | non-2xx '
               '| errors | statelessd CPU | RabbitMQ CPU | ratio | notes |')
    out.append('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|')
    number = {'ff': '1', 'confirm': '2', 'management': '3', 'pika': '4',
              'php-statelessd': '5a', 'php-amqp': '5b', 'batch-form': '8a',
              'batch-json': '8b', 'api': '9', 'raw': '10', 'ff-256': '11',
              'node-ff': '12a', 'node-confirm': '12b'}
    keys = ROW_ORDER + ['nginx-%d' % n for n in NGINX_PORTS]
    for key in keys:
        label = number.get(key, '6')
        if key not in rows:
            why = bench.skipped.get(key) or bench.failures.get(key) or '?'
            kind = 'skipped' if key in bench.skipped else 'FAILED'
            out.append('| %s | %s | %s: %s | | | | | | | | | |'
                       % (label, key, kind, why.replace('|', '/')
                          .replace('\n', ' ')[:200]))
            continue
        row = rows[key]
        if key.startswith('nginx-'):
            value, base = ratio(row, rows.get('ff')), 'fire-and-forget, 1 port'
        elif key == 'management' or key == 'php-amqp':
            value, base = 1.0, 'baseline'
        elif key == 'pika':
            value = ratio(rows.get('ff'), row)
            base = 'fire-and-forget ÷ this'
        else:
            other, base = BASELINE[key][:2]
            value = ratio(row, rows.get(other))
        if key.startswith('batch-') and value is not None \
                and rows.get('ff'):
            base += '; %.2f× fire-and-forget single messages' % ratio(
                row, rows['ff'])
        if base == 'baseline':
            ratio_text = 'baseline'
        elif value is None:
            ratio_text = '—'
        else:
            ratio_text = '%.2f× %s' % (value, base)
        out.append('| %s | %s | %.0f %s | %s | %s | %s | %s | %d | %s | %s '
                   '| %s | %s |'
                   % (label, row.name, row.rate, row.unit, fmt_ms(row.p50),
                      fmt_ms(row.p99), fmt_ms(row.p999),
                      fmt_count(row.non2xx), row.errors,
                      fmt_cpu(row.statelessd_cpu), fmt_cpu(row.broker_cpu),
                      ratio_text, row.notes))
    table = '\n'.join(out)

    target_lines = ['- %s: %s — **%s**' % (label, value,
                                            'PASS' if ok else 'FAIL')
                    for label, value, ok in targets(bench)]

    rss = []
    if bench.rss:
        rss.append('| worker port | pid | RSS, guest only | RSS with %d idle '
                   'publishers | per publisher | publishers | threads |'
                   % IDLE_PUBLISHERS)
        rss.append('|---:|---:|---:|---:|---:|---:|---:|')
        for w in bench.rss:
            per = ((w['after'] - w['before']) / IDLE_PUBLISHERS
                   if IDLE_PUBLISHERS else 0)
            rss.append('| %d | %d | %.1f MiB | %.1f MiB | %.0f KiB | %d | %d '
                       '→ %d |' % (w['port'], w['pid'], w['before'] / 1024,
                                   w['after'] / 1024, per, w['publishers'],
                                   w['threads_before'], w['threads']))
        rss.append('')
        rss.append('Master process RSS: %.1f MiB.'
                   % (bench.info.get('master_rss', 0) / 1024))
    elif 'rss' in bench.failures:
        rss.append('RSS not measured: ' + bench.failures['rss'])

    profile = []
    if bench.profile and bench.profile['total']:
        total = bench.profile['total']
        profile.append(
            'A further fire-and-forget pass with py-spy sampling the worker '
            '(`py-spy record --gil --nonblocking`): %d samples of the thread '
            'holding the GIL, which was held in about %.0f%% of the sampling '
            'instants.' % (total, 100 * bench.profile['gil']))
        profile.append('')
        profile.append('| thread kind | share |')
        profile.append('|---|---:|')
        for name, count in bench.profile['threads']:
            profile.append('| %s | %.1f%% |' % (name, 100.0 * count / total))
        profile.append('')
        profile.append('| function (own time) | share |')
        profile.append('|---|---:|')
        for name, count in bench.profile['own']:
            profile.append('| `%s` | %.1f%% |' % (name, 100.0 * count / total))
        profile.append('')
        profile.append('| function (inclusive) | share |')
        profile.append('|---|---:|')
        for name, count in bench.profile['inclusive']:
            profile.append('| `%s` | %.1f%% |' % (name, 100.0 * count / total))

    machine = machine_info(bench, started)
    text = ['# statelessd benchmark', '', machine, '', table, '',
            '## Targets', ''] + target_lines
    if rss:
        text += ['', '## Worker memory', ''] + rss
    if profile:
        text += ['', '## Where a worker spends its time', ''] + profile
    text += ['', '## Method', '', METHOD.strip() % BATCH_SIZE]
    return '\n'.join(text) + '\n', table, target_lines, rss


METHOD = """
Each row runs for the stated seconds, one after another, on the same
machine. HTTP rows use wrk with 2 threads and 16 keep-alive connections
(`--latency`); statelessd and the management API receive the same 64-byte
text/plain message (form-encoded for statelessd, JSON for the management
API) for a fanout exchange bound to a queue capped with `x-max-length`.
After each statelessd row the benchmark waits until the worker holds
nothing (queue and unconfirmed outbox empty) and checks that it published
at least as many messages as it answered 204. The pika row is one process
publishing in a loop without confirms; the PHP rows run several PHP CLI
processes side by side, each looping for the stated seconds: a new curl
handle (and TCP connection) per message to one statelessd port, or a new
php-amqp connection per message straight to RabbitMQ. The nginx rows put
nginx, running etc/nginx.conf, in front of the first N ports of the same
statelessd. The batch rows post %d messages a request (a
urlencoded messages[i][field] form, fire-and-forget, or a JSON array to
statelessd's management API endpoint, confirmed) and are reported in
messages per second; statelessd's management API endpoint and the raw body
(text/plain) rows send the same message as rows 3 and 1. Worker memory is VmRSS from /proc after each worker
has opened one publisher per benchmark user (created through the
management API, deleted afterwards). The CPU columns are the CPU time the
statelessd workers and the RabbitMQ node used during the row, in percent of
one core (100%% is one core busy throughout).
"""


def write_results(text):
    notes = ''
    if os.path.exists(RESULTS):
        with open(RESULTS) as f:
            notes = f.read().partition(NOTES_MARKER)[2]
    with open(RESULTS, 'w') as f:
        f.write(text.rstrip('\n') + '\n\n' + NOTES_MARKER + notes)


def machine_info(bench, started):
    cpu = '?'
    try:
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'):
                cpu = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    try:
        revision = subprocess.run(['git', 'describe', '--always', '--dirty'],
                                  cwd=ROOT, capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL).stdout.strip()
    except OSError:
        revision = ''
    load = os.getloadavg()
    return '\n'.join([
        '- date: %s' % started.strftime('%Y-%m-%d %H:%M:%S %Z').strip(),
        '- machine: %d CPUs (`nproc`), %s; Linux %s' % (
            os.cpu_count(), cpu, platform.release()),
        '- load average when the benchmark started: %.2f %.2f %.2f'
        % bench.info.get('load', load),
        '- statelessd %s, Python %s, RabbitMQ %s' % (
            revision or '?', platform.python_version(),
            bench.info.get('rabbitmq', '?')),
        '- %d s per row%s; wrk -t%d -c%d; %d PHP processes'
        % (SECONDS, '' if ROUNDS == 1 else
           ', median of %d rounds (non-2xx and errors summed)' % ROUNDS,
           THREADS, CONNECTIONS, PHP_PROCESSES)])


def main():
    started = datetime.datetime.now().astimezone()

    def terminate(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    signal.signal(signal.SIGHUP, terminate)
    directory = tempfile.mkdtemp(prefix='statelessd-bench-')
    status = 0
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, directory, True)
        bench = Bench(stack, directory)
        bench.info['load'] = os.getloadavg()
        try:
            bench.run()
        except BenchError as error:
            log('cannot run the benchmark: %s' % error)
            status = 2
        except (pika.exceptions.AMQPError, OSError) as error:
            log('cannot run the benchmark: %s: %s'
                % (type(error).__name__, error))
            status = 2
    if status:
        return status
    text, table, target_lines, rss = report(bench, started)
    write_results(text)
    print()
    print(table)
    print()
    print('\n'.join(target_lines))
    if rss:
        print()
        print('\n'.join(rss))
    print()
    print('Written to %s' % os.path.relpath(RESULTS))
    return 0 if all(ok for _, _, ok in targets(bench)) else 1


if __name__ == '__main__':
    sys.exit(main())
