"""Running statelessd in production: daemon mode, the pid file, dropping
privileges, logging, the systemd unit, behind nginx, as one .pyz file, as a
Debian package, and with TLS to the broker.
"""
import configparser
import contextlib
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import pytest

import statelessd
from support import (MODULES, NGINX_CONF, PYTHON, PYZ_SOURCES, REPO, SCRIPT,
                     Statelessd, assert_json_error, free_port, get, make_ca, make_in_copy,
                     make_server_certificate, nginx, process_status, publish,
                     request, require_python, require_tool, settle, sink,
                     statelessd_config, tls_terminator, write_config)


def file_logging(path, level='INFO'):
    """A Logging section writing to a file: a daemon's stderr is
    /dev/null."""
    return {'version': 1,
            'formatters': {'plain': {'format': '%(levelname)s %(process)d '
                                               '%(name)s: %(message)s'}},
            'handlers': {'file': {'class': 'logging.FileHandler',
                                  'filename': str(path),
                                  'formatter': 'plain'}},
            'root': {'level': level, 'handlers': ['file']}}


def start_daemon(config_path):
    return subprocess.run([PYTHON, str(SCRIPT), '-c', str(config_path)],
                          cwd=str(REPO), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def daemon(tmp_path, logging_section=None):
    """A statelessd started without -f; yields (ports, pidfile, pid, config
    path, seconds the start took).  It logs to tmp_path/statelessd.log
    unless given a Logging section."""
    pidfile = tmp_path / 'statelessd.pid'
    ports = [free_port(), free_port()]
    document = statelessd_config(ports, {'Daemon': {'pidfile': str(pidfile)}})
    document['Logging'] = logging_section or file_logging(
        tmp_path / 'statelessd.log')
    path = write_config(tmp_path, document)
    started = time.monotonic()
    result = start_daemon(path)
    took = time.monotonic() - started
    assert result.returncode == 0, result
    assert pidfile.exists(), 'the pid file is missing when the start returns'
    pid = int(pidfile.read_text())
    try:
        yield ports, pidfile, pid, path, took
    finally:
        if alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)


def stop_daemon(pid, pidfile, ports):
    os.kill(pid, signal.SIGTERM)
    assert settle(lambda: not alive(pid), timeout=30), 'still running'
    assert not pidfile.exists(), 'the pid file outlived the daemon'
    for port in ports:
        with socket.socket() as sock:
            assert sock.connect_ex(('127.0.0.1', port)) != 0


def test_daemon_detaches_and_refuses_a_second_start(tmp_path):
    with daemon(tmp_path) as (ports, pidfile, pid, path, took):
        assert took < 15, 'starting took %.1fs' % took
        assert alive(pid) and pid != os.getpid()
        assert os.getsid(pid) != os.getsid(0), 'no session of its own'
        with open('/proc/%d/stat' % pid) as handle:
            parent = int(handle.read().rsplit(')', 1)[1].split()[1])
        assert parent != os.getpid()
        for fd in (0, 1, 2):
            assert os.readlink('/proc/%d/fd/%d' % (pid, fd)) == '/dev/null'
        assert os.readlink('/proc/%d/cwd' % pid) == '/'
        assert settle(lambda: all(
            get(port, '/health').status == 200 for port in ports))
        with sink() as box:
            assert publish(ports[1], box.path(), 'daemon').status == 204
            assert box.take(1) == [b'daemon']

        second = start_daemon(path)
        assert second.returncode == 1, second
        assert 'already running as pid %d' % pid in second.stderr
        assert int(pidfile.read_text()) == pid
        stop_daemon(pid, pidfile, ports)


def test_a_stale_pidfile_is_replaced(tmp_path):
    gone = subprocess.Popen(['true'])
    gone.wait()
    pidfile = tmp_path / 'statelessd.pid'
    pidfile.write_text('%d\n' % gone.pid)
    log = tmp_path / 'statelessd.log'
    with daemon(tmp_path) as (ports, pidfile, pid, _, _):
        assert pid != gone.pid
        assert 'Replacing stale pid file %s (pid %d is not running)' % (
            pidfile, gone.pid) in log.read_text()
        stop_daemon(pid, pidfile, ports)


def process_ids(pid):
    """(real uid, real gid, supplementary groups) of a process."""
    fields = process_status(pid)
    return (int(fields['Uid'].split()[0]), int(fields['Gid'].split()[0]),
            sorted(int(g) for g in fields['Groups'].split()))


def require_root():
    if os.geteuid() != 0:
        pytest.fail('dropping privileges is tested as root only: run the '
                    'tests as root')


@pytest.fixture
def open_directory():
    """A directory Daemon.user can reach: pytest's tmp_path is private."""
    with tempfile.TemporaryDirectory(prefix='statelessd-ops-') as name:
        os.chmod(name, 0o755)
        yield Path(name)


def test_workers_drop_privileges(tmp_path, open_directory):
    require_root()
    nobody = pwd.getpwnam('nobody')
    spool = open_directory / 'spool'
    spool.mkdir(mode=0o700)
    os.chown(spool, nobody.pw_uid, nobody.pw_gid)
    overrides = {'Daemon': {'user': 'nobody', 'group': 'nogroup'},
                 'Application': {'spool': str(spool)}}
    with Statelessd(overrides, ports=2, directory=tmp_path) as gateway:
        assert process_ids(gateway.process.pid)[0] == 0
        workers = gateway.worker_pids()
        assert sorted(workers) == sorted(gateway.ports)
        for pid in workers.values():
            assert process_ids(pid) == (nobody.pw_uid, nobody.pw_gid,
                                        [nobody.pw_gid])
        with sink() as box:
            for port in gateway.ports:
                assert publish(port, box.path(), 'p%d' % port).status == 204
            assert len(box.take(2)) == 2
        for port in gateway.ports:
            spooled = spool / ('statelessd-%d.spool' % port)
            assert spooled.stat().st_uid == nobody.pw_uid


@pytest.mark.parametrize('owner, problem', [
    ('root', 'belongs to uid 0'), (None, 'cannot create')])
def test_the_spool_is_checked_as_daemon_user(tmp_path, open_directory,
                                             owner, problem):
    require_root()
    spool = open_directory / 'spool'
    if owner:
        spool.mkdir(mode=0o700)
    document = statelessd_config([free_port()], {
        'Daemon': {'user': 'nobody'},
        'Application': {'spool': str(spool)}})
    result = start_daemon(write_config(tmp_path, document))
    assert result.returncode == 2, result
    assert 'Application.spool' in result.stderr and problem in \
        result.stderr, result.stderr


def test_an_unknown_daemon_user_is_a_configuration_error(tmp_path):
    document = statelessd_config([free_port()],
                                 {'Daemon': {'user': 'no-such-user-x'}})
    result = start_daemon(write_config(tmp_path, document))
    assert result.returncode == 2
    assert "Daemon.user: there is no user 'no-such-user-x'" in result.stderr


def test_logging_to_syslog_from_the_daemon(tmp_path):
    address = str(tmp_path / 'syslog.sock')
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(address)
    receiver.settimeout(1.0)
    syslog = {'version': 1,
              'formatters': {'plain': {'format': 'statelessd[%(process)d]: '
                                                 '%(message)s'}},
              'handlers': {'syslog': {
                  'class': 'logging.handlers.SysLogHandler',
                  'address': address, 'facility': 'daemon',
                  'formatter': 'plain'}},
              'root': {'level': 'INFO', 'handlers': ['syslog']}}
    try:
        with daemon(tmp_path, syslog) as (ports, pidfile, pid,
                                                        _, _):
            received = []
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and not all(
                    any('serving port %d' % p in m for m in received)
                    for p in ports):
                with contextlib.suppress(socket.timeout):
                    received.append(receiver.recv(4096).decode())
            stop_daemon(pid, pidfile, ports)
    finally:
        receiver.close()
    for port in ports:
        lines = [m for m in received if 'serving port %d' % port in m]
        assert lines, received
        # <facility daemon (3) * 8 + severity info (6)>
        assert lines[0].startswith('<30>statelessd['), lines[0]


@pytest.mark.parametrize('debug', [False, True])
def test_debug_only_handlers_follow_application_debug(tmp_path, debug):
    always, debug_log = tmp_path / 'always.log', tmp_path / 'debug.log'
    logging_section = file_logging(always)
    logging_section['handlers']['debug'] = {
        'class': 'logging.FileHandler', 'filename': str(debug_log),
        'formatter': 'plain', 'debug_only': True, 'delay': True}
    logging_section['root']['handlers'].append('debug')
    overrides = {'Application': {'debug': debug},
                 'Logging': logging_section}
    with Statelessd(overrides, directory=tmp_path) as gateway:
        assert get(gateway.ports[0], '/health').status == 200
    assert 'serving port %d' % gateway.ports[0] in always.read_text()
    if debug:
        assert 'serving port %d' % gateway.ports[0] in debug_log.read_text()
    else:
        assert not debug_log.exists()


def test_systemd_unit_runs_statelessd_in_the_foreground():
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    unit.read(REPO / 'etc' / 'statelessd.service')
    service = unit['Service']
    command = service['ExecStart'].split()
    assert os.path.basename(command[0]) == 'statelessd'
    assert command[1:] == ['-c', '/etc/statelessd.yaml', '-f']
    assert service['Restart'] == 'on-failure'
    assert service.get('Type', 'simple') == 'simple'
    assert unit['Install']['WantedBy'] == 'multi-user.target'


def thread_cpus(pid):
    """{thread id: the CPUs it may run on} for every thread of a process."""
    return {int(task): os.sched_getaffinity(int(task))
            for task in os.listdir('/proc/%d/task' % pid)}


def test_each_worker_keeps_to_one_cpu_the_ports_taking_turns(tmp_path):
    cpus = sorted(os.sched_getaffinity(0))
    with Statelessd(ports=3, directory=tmp_path) as gateway:
        pids = settle(lambda: len(gateway.worker_pids()) == 3
                      and gateway.worker_pids())
        assert pids, gateway.log()
        with sink() as box:
            for port in gateway.ports:
                assert publish(port, box.path(), 'pinned').status == 204
            assert box.take(3) == [b'pinned'] * 3
        for index, port in enumerate(gateway.ports):
            expected = {cpus[index % len(cpus)]}
            threads = thread_cpus(pids[port])
            # the publisher and connection threads started since inherit it
            assert len(threads) > 2
            assert set(map(frozenset, threads.values())) == {
                frozenset(expected)}, (port, threads)
        assert os.sched_getaffinity(gateway.process.pid) == set(cpus)


def test_cpu_affinity_false_leaves_workers_to_the_kernel():
    cpus = os.sched_getaffinity(0)
    with Statelessd({'HTTPServer': {'cpu_affinity': False}},
                    ports=2) as gateway:
        pids = settle(lambda: len(gateway.worker_pids()) == 2
                      and gateway.worker_pids())
        assert pids, gateway.log()
        for pid in pids.values():
            assert os.sched_getaffinity(pid) == cpus


# ----------------------------------------------------------------------------
# statelessd behind a real nginx running etc/nginx.conf.
# ----------------------------------------------------------------------------


def test_the_configuration_keeps_connections_to_statelessd():
    text = NGINX_CONF.read_text()
    for line in ('least_conn;', 'keepalive 32;', 'proxy_http_version 1.1;',
                 'proxy_set_header Connection "";',
                 'proxy_set_header X-Real-IP $remote_addr;',
                 'proxy_set_header X-Forwarded-For '
                 '$proxy_add_x_forwarded_for;',
                 'client_max_body_size 10m;'):
        assert line in text, line
    assert text.index('least_conn;') < text.index('keepalive 32;'), \
        'nginx needs the balancing method before keepalive'
    timeout = re.search(r'keepalive_timeout (\d+)s;', text)
    assert timeout and int(timeout.group(1)) < 75, \
        'the upstream keepalive_timeout must stay below socket_timeout 75 s'


def test_nginx_sends_nothing_more_to_a_port_that_stalls(tmp_path):
    """A worker that stops answering (here SIGSTOP) keeps the one request
    nginx gave it; least_conn sends the rest to the port with nothing in
    flight, where round-robin would send it every other one to wait.  One
    nginx worker: each counts only its own requests in flight."""
    with Statelessd(ports=2, directory=tmp_path) as gateway, \
            nginx(gateway.ports, workers=1) as listen, sink() as box:
        stalled = gateway.worker_pids()[gateway.ports[0]]
        bodies = ['stall-%d' % number for number in range(10)]
        statuses, threads = {}, []

        def send(body):
            statuses[body] = publish(listen, box.path(), body).status
        os.kill(stalled, signal.SIGSTOP)
        try:
            for body in bodies:
                threads.append(threading.Thread(target=send, args=(body,)))
                threads[-1].start()
                threads[-1].join(5)
            waiting = [body for body in bodies if body not in statuses]
        finally:
            os.kill(stalled, signal.SIGCONT)
        for thread in threads:
            thread.join(30)
        assert len(waiting) == 1, \
            '%d of 10 requests waited for the stopped port' % len(waiting)
        assert statuses == {body: 204 for body in bodies}
        assert sorted(box.take(len(bodies))) == sorted(
            body.encode() for body in bodies)


def test_publish_through_the_pool_to_two_ports(tmp_path):
    overrides = {'HTTPServer': {'xheaders': True}}
    with Statelessd(overrides, ports=2, directory=tmp_path) as gateway, \
            nginx(gateway.ports) as listen, sink() as box:
        bodies = [b'pool-%d' % number for number in range(20)]
        for body in bodies:
            response = publish(listen, box.path(), body.decode(),
                               source='127.0.0.7')
            assert response.status == 204, response
        assert sorted(box.take(len(bodies))) == sorted(bodies)
        for port in gateway.ports:
            document = get(port, '/stats').json()
            assert document['connections']['/:guest']['publishes'] >= 1, \
                'port %d got nothing from nginx' % port
        # X-Real-IP, set by nginx to the client's address, is logged.
        log = settle(lambda: re.findall(
            r'127\.0\.0\.7 "POST /%2F/[^"]*" 204', gateway.log()))
        assert len(log) == len(bodies), gateway.log()[-3000:]

        # Bodies up to client_max_body_size pass, larger ones stop at nginx.
        big = b'body=' + b'x' * (2 * 1024 * 1024)
        response = request(listen, 'POST', box.path(), big, {
            'Authorization': 'Basic Z3Vlc3Q6Z3Vlc3Q=',
            'Content-Type': 'application/x-www-form-urlencoded'})
        assert response.status == 204, response
        assert len(box.take(1)[0]) == 2 * 1024 * 1024
        response = request(listen, 'POST', box.path(),
                           b'body=' + b'x' * (10 * 1024 * 1024), {
                               'Authorization': 'Basic Z3Vlc3Q6Z3Vlc3Q=',
                               'Content-Type':
                                   'application/x-www-form-urlencoded'})
        assert response.status == 413, response
        assert b'nginx' in response.body


def test_forwarded_for_is_logged_with_xheaders(tmp_path):
    """X-Forwarded-For is read from the right: its last entry is what the
    trusted proxy (here, loopback) saw; entries before it are the
    client's own claims, taken only through further trusted proxies."""
    overrides = {'HTTPServer': {'xheaders': True}}
    with Statelessd(overrides, directory=tmp_path) as gateway, sink() as box:
        port = gateway.ports[0]
        for forwarded in ('198.51.100.7, 203.0.113.9',
                          '192.0.2.44, 127.0.0.1'):
            response = publish(port, box.path(), 'xff', headers={
                'X-Forwarded-For': forwarded})
            assert response.status == 204
        assert box.take(2) == [b'xff', b'xff']
        assert settle(lambda: '203.0.113.9 "POST ' in gateway.log())
        assert settle(lambda: '192.0.2.44 "POST ' in gateway.log())
        assert '198.51.100.7' not in gateway.log()


# ----------------------------------------------------------------------------
# make pyz: one file that runs with nothing but a Python 3.8+, built once
# and run on every Python the server distributions ship; below 3.8 it says so
# in one line.
# ----------------------------------------------------------------------------


#: The oldest Python statelessd runs on.
FLOOR = '3.8'
#: Every Python from the floor to the newest, each shipped by a server
#: distribution (README, "Locked-down hosts").
SUPPORTED = ('3.8', '3.9', '3.10', '3.11', '3.12', '3.13')
#: RHEL 8's default python3 and the one before the floor.
BELOW_FLOOR = ('3.6', '3.7')


@pytest.fixture(scope='module')
def pyz(tmp_path_factory):
    """dist/statelessd.pyz built by make in a copy of the sources."""
    dist = make_in_copy('pyz', PYZ_SOURCES, tmp_path_factory.mktemp('pyz'))
    return dist / 'statelessd.pyz'


def make_venv(python, directory, *options):
    result = subprocess.run([python, '-m', 'venv'] + list(options)
                            + [str(directory)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return str(directory / 'bin' / 'python')


@pytest.fixture(scope='module')
def bare_python(tmp_path_factory):
    """bare_python(version): a venv of that Python without pip or packages,
    as on a host where nothing can be installed."""
    made = {}

    def bare(version):
        if version not in made:
            venv = tmp_path_factory.mktemp('bare-%s' % version)
            python = make_venv(require_python(version), venv, '--without-pip')
            for module in ('pika', 'yaml'):
                check = subprocess.run([python, '-I', '-c', 'import '
                                        + module], capture_output=True)
                assert check.returncode != 0, ('%s is importable there'
                                               % module)
            made[version] = python
        return made[version]
    return bare


def identify(python):
    """(version, sys.executable) as that interpreter reports them."""
    result = subprocess.run(
        [python, '-I', '-c', 'import platform, sys; '
         'print(platform.python_version()); print(sys.executable)'],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return tuple(result.stdout.splitlines())


def test_the_pyz_bundles_pure_python_only(pyz):
    with zipfile.ZipFile(str(pyz)) as archive:
        names = archive.namelist()
    assert '__main__.py' in names
    for module in [name + '.py' for name in MODULES] + [
            'pika/__init__.py', 'yaml/__init__.py']:
        assert module in names, module
    assert not [n for n in names if n.endswith(('.so', '.pyc'))], names


@pytest.mark.parametrize('version', SUPPORTED)
def test_the_pyz_publishes_without_installed_packages(pyz, bare_python,
                                                      tmp_path, version):
    python = bare_python(version)
    command = [python, '-I', str(pyz)]
    reported = subprocess.run(command + ['--version'], capture_output=True,
                              text=True, timeout=60)
    assert reported.returncode == 0, reported
    assert 'statelessd' in reported.stdout
    with Statelessd(ports=2, command=command, directory=tmp_path) as gateway, \
            sink() as box:
        for port in gateway.ports:
            response = publish(port, box.path(), 'from-%s-%d'
                               % (version, port))
            assert response.status == 204, response
        assert sorted(box.take(2)) == sorted(
            ('from-%s-%d' % (version, port)).encode()
            for port in gateway.ports)


@pytest.mark.parametrize('version', BELOW_FLOOR)
def test_below_the_floor_the_pyz_refuses_in_one_line(pyz, tmp_path,
                                                     version):
    python = require_python(version)
    config = tmp_path / 'statelessd.yaml'
    config.write_text('HTTPServer: {ports: [8000]}\n')
    result = subprocess.run([python, '-I', str(pyz), '-c', str(config),
                             '-f'], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result
    assert result.stdout == ''
    assert result.stderr == ('statelessd needs Python %s or newer; this is '
                             'Python %s (%s)\n' % ((FLOOR,)
                                                   + identify(python)))


def test_pip_install_below_the_floor_is_refused(tmp_path):
    """python_requires turns pip away before it installs anything."""
    python = make_venv(require_python(BELOW_FLOOR[-1]), tmp_path / 'venv')
    source = tmp_path / 'source'
    source.mkdir()
    for name in ['setup.py', 'README.md'] + [m + '.py' for m in MODULES]:
        shutil.copy(str(REPO / name), str(source / name))
    result = subprocess.run([python, '-m', 'pip', 'install', '--no-index',
                             '--no-deps', '--no-build-isolation',
                             str(source)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0, result.stdout
    assert "requires a different Python: %s not in '>=%s'" % (
        identify(python)[0], FLOOR) in result.stderr, result.stderr
    listed = subprocess.run([python, '-m', 'pip', 'list'],
                            capture_output=True, text=True, timeout=60)
    assert 'statelessd' not in listed.stdout


def test_the_floor_is_the_same_everywhere():
    """setup.py, the README and these tests name one oldest Python."""
    setup = (REPO / 'setup.py').read_text()
    assert re.findall(r"python_requires='([^']*)'", setup) == ['>=' + FLOOR]
    readme = (REPO / 'README.md').read_text()
    floors = re.findall(r'Python (3\.\d+) or (?:newer|later)', readme)
    floors += re.findall(r'Python (3\.\d+)\+', readme)
    assert floors and set(floors) == {FLOOR}, floors
    assert SUPPORTED[0] == FLOOR


def test_the_pyz_reports_configuration_errors(pyz, bare_python, tmp_path):
    broken = tmp_path / 'broken.yaml'
    broken.write_text('HTTPServer: {ports: [nope]}\n')
    result = subprocess.run([bare_python(FLOOR), '-I', str(pyz), '-c',
                             str(broken), '-f'], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result
    assert 'HTTPServer.ports[0]' in result.stderr


# ----------------------------------------------------------------------------
# make deb: the Debian package for hosts that install only from their own
# package mirror, installed, run, removed and purged on this machine.
# ----------------------------------------------------------------------------


#: The files make deb reads besides those of make pyz.
SOURCES = PYZ_SOURCES + ('README.md', 'etc/statelessd.service') + tuple(
    'etc/deb/' + name for name in (
        'control', 'conffiles', 'postinst', 'postrm', 'copyright',
        'changelog', 'statelessd.1', 'statelessd.yaml'))
VERSION = re.search(r"^__version__ = '([^']+)'",
                    (REPO / 'statelessd.py').read_text(), re.M).group(1)
BINARY = Path('/usr/bin/statelessd')
CONFIG = Path('/etc/statelessd/statelessd.yaml')
UNIT = Path('/lib/systemd/system/statelessd.service')
SPOOL = Path('/var/spool/statelessd')
#: The ports line of the packaged configuration.
PORTS_LINE = 'ports: [8000, 8001]'


@pytest.fixture(scope='module')
def deb(tmp_path_factory):
    """dist/statelessd_<version>_all.deb built by make in a copy of the
    sources."""
    require_tool('dpkg-deb', 'dpkg')
    dist = make_in_copy('deb', SOURCES, tmp_path_factory.mktemp('deb'))
    package = dist / ('statelessd_%s_all.deb' % VERSION)
    assert package.is_file(), sorted(p.name for p in dist.iterdir())
    return package


def run(*command):
    result = subprocess.run(list(command), capture_output=True, text=True,
                            timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, ('%s failed: %s%s' % (
        ' '.join(command), result.stdout, result.stderr))
    return result.stdout


def package_status():
    """dpkg's status of the statelessd package ('' when it knows none)."""
    result = subprocess.run(['dpkg-query', '-W', '-f=${Status}',
                             'statelessd'], capture_output=True, text=True,
                            timeout=60)
    return result.stdout if result.returncode == 0 else ''


def user_exists(name):
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    return None


@contextlib.contextmanager
def installed(deb):
    """The package installed; purged afterwards whatever happened, with the
    statelessd user it created, so the machine is left as it was."""
    if os.geteuid() != 0:
        pytest.fail('installing the .deb needs root: run the tests as root')
    require_tool('dpkg')
    assert package_status() == '', ('a statelessd package is on this '
                                    'machine already: dpkg --purge statelessd')
    had_user = user_exists('statelessd') is not None
    try:
        run('dpkg', '--install', str(deb))
        yield
    finally:
        run('dpkg', '--purge', 'statelessd')
        if not had_user and user_exists('statelessd'):
            run('userdel', 'statelessd')


def use_free_ports(config):
    """Point the installed configuration at free ports; returns them."""
    text = config.read_text()
    assert PORTS_LINE in text, text
    ports = [free_port(), free_port()]
    config.write_text(text.replace(PORTS_LINE, 'ports: %s' % ports))
    return ports


def test_the_deb_holds_the_pyz_and_depends_on_python3_alone(deb):
    """...and is the file the README tells to copy."""
    fields = run('dpkg-deb', '--field', str(deb))
    assert 'Package: statelessd\n' in fields
    assert 'Version: %s\n' % VERSION in fields
    assert 'Architecture: all\n' in fields
    assert re.findall(r'^(?:Pre-)?Depends: (.*)$', fields, re.M) == [
        'python3 (>= 3.8)']
    assert 'dist/%s' % deb.name in (REPO / 'README.md').read_text()
    contents = run('dpkg-deb', '--contents', str(deb))
    assert re.search(r'^-rwxr-xr-x root/root .* \./usr/bin/statelessd$',
                     contents, re.M), contents
    for path in (CONFIG, UNIT):
        assert re.search(r'^-rw-r--r-- root/root .* \.%s$' % path, contents,
                         re.M), path


def test_the_deb_installs_publishes_and_leaves_its_configuration(deb):
    with installed(deb):
        assert package_status() == 'install ok installed'
        assert run('dpkg-query', '-W', '-f=${Conffiles}',
                   'statelessd').split()[0] == str(CONFIG)
        user = user_exists('statelessd')
        assert user and user.pw_uid < 1000, user
        spool = SPOOL.stat()
        assert (spool.st_uid, stat.S_IMODE(spool.st_mode)) == (user.pw_uid,
                                                              0o700)
        assert 'ExecStart=%s -c %s -f' % (BINARY, CONFIG) in UNIT.read_text()
        assert run(str(BINARY), '--version') == 'statelessd %s\n' % VERSION

        ports = use_free_ports(CONFIG)
        with Statelessd(ports=ports, command=[str(BINARY)],
                        config_path=CONFIG) as gateway, sink() as box:
            for port in gateway.ports:
                response = publish(port, box.path(), 'from-deb-%d' % port)
                assert response.status == 204, response
            assert sorted(box.take(2)) == sorted(
                ('from-deb-%d' % port).encode() for port in ports)
        for port in ports:
            spooled = (SPOOL / ('statelessd-%d.spool' % port)).stat()
            assert spooled.st_uid == user.pw_uid, 'the worker kept root'

        run('dpkg', '--remove', 'statelessd')
        assert package_status() == 'deinstall ok config-files'
        assert not BINARY.exists() and not UNIT.exists()
        assert CONFIG.is_file()
    assert package_status() == ''
    assert not CONFIG.exists() and not SPOOL.exists()


def test_lintian_finds_no_errors(deb):
    lintian = require_tool('lintian')
    result = subprocess.run([lintian, '--fail-on', 'error', str(deb)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not re.search(r'^E: ', result.stdout, re.M), result.stdout


# ----------------------------------------------------------------------------
# TLS to the broker (Application.rabbitmq.tls) against a real TLS
# listener: nginx's stream module terminating TLS in front of RabbitMQ, with
# a CA and server certificate made for the test by openssl.
# ----------------------------------------------------------------------------


@pytest.fixture(scope='module')
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp('pki')
    ca = make_ca(directory, 'test-ca')
    other_ca = make_ca(directory, 'other-ca')
    certificate = make_server_certificate(directory, ca)
    with tls_terminator(directory, certificate) as port:
        yield {'ca': ca[0], 'other_ca': other_ca[0], 'port': port}


def tls_config(pki, **tls):
    tls.setdefault('enabled', True)
    return {'Application': {'rabbitmq': {
        'host': '127.0.0.1', 'port': pki['port'], 'tls': tls}}}


def test_publishes_over_tls_and_the_message_arrives(pki, account):
    queue = account.queue_bound_to('amq.topic', 'tls.#')
    with Statelessd(tls_config(pki, ca_file=str(pki['ca']))) \
            as server:
        response = account.publish(server.port, b'over \x00 tls', 'tls.one',
                                   query='?confirm=1')
        assert response.status == 204, response
    assert [body for _, body in account.drain(queue, 1)] == [b'over \x00 tls']


def test_server_hostname_is_what_gets_verified(pki, account):
    config = tls_config(pki, ca_file=str(pki['ca']),
                        server_hostname='localhost')
    with Statelessd(config) as server:
        assert account.publish(server.port, 'x').status == 204
    config = tls_config(pki, ca_file=str(pki['ca']),
                        server_hostname='broker.example')
    with Statelessd(config) as server:
        response = account.publish(server.port, 'x')
        assert_json_error(response, 503)


def test_wrong_ca_is_503_with_a_clear_log_line(pki, account):
    with Statelessd(tls_config(pki, ca_file=str(pki['other_ca']))) \
            as server:
        response = account.publish(server.port, 'x')
        assert_json_error(response, 503)
        assert response.headers['Retry-After']
        log = server.log()
    lines = [line for line in log.splitlines()
             if 'certificate verify failed' in line]
    assert lines, log
    assert str(pki['port']) in lines[0]


def test_verify_false_only_encrypts(pki, account):
    config = tls_config(pki, ca_file=str(pki['other_ca']), verify=False)
    with Statelessd(config) as server:
        assert account.publish(server.port, 'x').status == 204


def test_plain_amqp_to_a_tls_port_fails_cleanly(pki, account):
    config = {'Application': {'rabbitmq': {'host': '127.0.0.1',
                                           'port': pki['port']}}}
    with Statelessd(config) as server:
        response = account.publish(server.port, 'x')
        assert_json_error(response, 503)


def test_tls_defaults_to_port_5671_and_verification(pki):
    config = statelessd.Config({'Application': {'rabbitmq': {
        'host': 'broker.example', 'tls': {'enabled': True,
                                          'ca_file': str(pki['ca'])}}}})
    assert config.broker_hosts == [('broker.example', 5671)]
    assert config.tls.context.verify_mode.name == 'CERT_REQUIRED'
    assert config.tls.context.check_hostname
    assert statelessd.Config({}).tls is None


@pytest.mark.parametrize('tls, message', [
    ({'enabeld': True}, 'enabeld'),
    ({'enabled': 'yes'}, 'enabled'),
    ({'enabled': True, 'ca_file': '/nonexistent/ca.pem'}, 'ca_file'),
    ({'enabled': True, 'key_file': '/x.key'}, 'key_file'),
    ({'enabled': True, 'cert_file': '/nonexistent/c.pem'}, 'cert_file'),
])
def test_bad_tls_settings_are_configuration_errors(tls, message):
    with pytest.raises(statelessd.ConfigError, match=message):
        statelessd.Config({'Application': {'rabbitmq': {'tls': tls}}})
