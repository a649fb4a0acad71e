"""Daemon mode, the pid file, dropping privileges, logging and the
systemd unit."""
import configparser
import contextlib
import os
import pwd
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from ops_support import (PYTHON, REPO, SCRIPT, config, free_port, get,
                         publish, running, settle, sink, write_config)


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
    document = config(ports, {'Daemon': {'pidfile': str(pidfile)}})
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
    fields = {}
    with open('/proc/%d/status' % pid) as handle:
        for line in handle:
            name, _, value = line.partition(':')
            fields[name] = value.split()
    return (int(fields['Uid'][0]), int(fields['Gid'][0]),
            sorted(int(g) for g in fields['Groups']))


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
    with running(tmp_path, ports=2, overrides=overrides) as gateway:
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
    document = config([free_port()], {
        'Daemon': {'user': 'nobody'},
        'Application': {'spool': str(spool)}})
    result = start_daemon(write_config(tmp_path, document))
    assert result.returncode == 2, result
    assert 'Application.spool' in result.stderr and problem in \
        result.stderr, result.stderr


def test_an_unknown_daemon_user_is_a_configuration_error(tmp_path):
    document = config([free_port()], {'Daemon': {'user': 'no-such-user-x'}})
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
    with running(tmp_path, overrides=overrides) as gateway:
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
    with running(tmp_path, ports=3) as gateway:
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


def test_cpu_affinity_false_leaves_workers_to_the_kernel(tmp_path):
    cpus = os.sched_getaffinity(0)
    with running(tmp_path, ports=2,
                 overrides={'HTTPServer': {'cpu_affinity': False}}) as gateway:
        pids = settle(lambda: len(gateway.worker_pids()) == 2
                      and gateway.worker_pids())
        assert pids, gateway.log()
        for pid in pids.values():
            assert os.sched_getaffinity(pid) == cpus
