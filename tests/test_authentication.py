"""Logins: refused credentials are remembered briefly, publishers per worker
are bounded, a flood of bad logins stays cheap, and no password leaks.
"""
import base64
import concurrent.futures
import http.client
import time
from pathlib import Path

import pytest

import hardening_support as support


@pytest.fixture
def account():
    account = support.BrokerAccount('login')
    yield account
    account.delete()


@pytest.fixture
def proxy():
    proxy = support.CountingProxy()
    yield proxy
    proxy.close()


def through(proxy, **rabbitmq):
    rabbitmq.update({'host': '127.0.0.1', 'port': proxy.port})
    return {'Application': {'rabbitmq': rabbitmq}}


def publish_as(port, vhost, user, password, body=b'x'):
    return support.request(
        port, 'POST', '/%s/amq.topic/key' % support.quote(vhost),
        b'body=' + body,
        {'Authorization': support.basic_auth(user, password),
         'Content-Type': 'application/x-www-form-urlencoded'})


def test_refused_login_is_answered_from_memory(account, proxy):
    with support.Statelessd(through(proxy, login_failure_ttl=2)) as server:
        answers = [publish_as(server.port, account.vhost, account.user,
                              'wrong') for _ in range(50)]
        assert {answer.status for answer in answers} == {401}
        assert proxy.connections == 1
        # The right password is another key: it logs in at once.
        assert publish_as(server.port, account.vhost, account.user,
                          account.password).status == 204
        assert proxy.connections == 2
        # A wrong password for a running publisher is remembered too.
        for _ in range(20):
            assert publish_as(server.port, account.vhost, account.user,
                              'wrong-again').status == 401
        assert proxy.connections == 3
        time.sleep(2.5)
        assert publish_as(server.port, account.vhost, account.user,
                          'wrong').status == 401
        assert proxy.connections == 4


def test_missing_vhost_is_remembered_as_well(account, proxy):
    with support.Statelessd(through(proxy)) as server:
        for _ in range(20):
            answer = publish_as(server.port, account.vhost + '-nope',
                                account.user, account.password)
            support.assert_json_error(answer, 403)
        assert proxy.connections == 1


def test_publishers_beyond_max_publishers_get_503():
    accounts = [support.BrokerAccount('maxpub') for _ in range(3)]
    try:
        config = {'Application': {'rabbitmq': {'max_publishers': 2}}}
        with support.Statelessd(config) as server:
            for account in accounts[:2]:
                assert support.publish(server.port, account, 'amq.topic', 'k',
                                       [('body', 'x')]).status == 204
            refused = support.publish(server.port, accounts[2], 'amq.topic',
                                      'k', [('body', 'x')])
            status, document = support.assert_json_error(refused, 503)
            assert 'limit' in document['reason']
            assert refused.headers['Retry-After']
            for account in accounts[:2]:
                assert support.publish(server.port, account, 'amq.topic', 'k',
                                       [('body', 'y')]).status == 204
    finally:
        for account in accounts:
            account.delete()


def flood(port, requests, distinct, vhost, workers=16):
    """requests bad logins over `distinct` vhost/user/password triples;
    returns the statuses seen."""
    def one(index):
        n = index % distinct
        connection = http.client.HTTPConnection('127.0.0.1', port,
                                                timeout=30)
        try:
            connection.request(
                'POST', '/%s/amq.topic/k' % vhost, b'body=x',
                {'Authorization': support.basic_auth('ghost-%d' % n,
                                                     'pw-%d' % n),
                 'Content-Type': 'application/x-www-form-urlencoded'})
            response = connection.getresponse()
            response.read()
            return response.status
        finally:
            connection.close()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        return list(pool.map(one, range(requests)))


def test_bad_login_flood_keeps_memory_threads_and_connections_bounded(
        account):
    with support.Statelessd({'Application': {'rabbitmq': {
            'login_failure_ttl': 10}}}) as server:
        worker = server.worker_pids()[0]
        assert support.publish(server.port, account, 'amq.topic', 'k',
                               [('body', 'x')]).status == 204
        flood(server.port, 200, 50, support.quote(account.vhost))
        rss_before = support.rss_kib(worker)
        threads_before = support.thread_count(worker)
        started = time.monotonic()
        statuses = flood(server.port, 5000, 50, support.quote(account.vhost))
        seconds = time.monotonic() - started
        time.sleep(1.0)
        rss_after = support.rss_kib(worker)
        threads_after = support.thread_count(worker)
        print('flood of 5000 bad logins: %.1fs, RSS %d -> %d KiB, threads '
              '%d -> %d, broker connections for %s: %d'
              % (seconds, rss_before, rss_after, threads_before,
                 threads_after, account.user,
                 support.broker_connections(account.user)))
        assert set(statuses) <= {401, 503}, set(statuses)
        assert statuses.count(401) > 4500
        assert rss_after - rss_before < 30 * 1024
        assert threads_after <= threads_before + 2
        assert server.worker_pids() == [worker]
        assert support.broker_connections(account.user) == 1
        assert support.publish(server.port, account, 'amq.topic', 'k',
                               [('body', 'x')]).status == 204


PASSWORD = 'Sekr1t-Hard-Pa55word-7731'
ROTATED = 'Sekr1t-Rotated-Pa55word-9902'


def debug_logging(path):
    return {'Logging': {
        'version': 1,
        'disable_existing_loggers': False,
        'formatters': {'plain': {'format': '%(levelname)s %(name)s: '
                                           '%(message)s'}},
        'handlers': {
            'console': {'class': 'logging.StreamHandler',
                        'formatter': 'plain', 'stream': 'ext://sys.stderr'},
            'file': {'class': 'logging.FileHandler', 'formatter': 'plain',
                     'filename': str(path), 'level': 'DEBUG'}},
        'loggers': {'pika': {'level': 'DEBUG'},
                    'statelessd': {'level': 'DEBUG'}},
        'root': {'level': 'DEBUG', 'handlers': ['console', 'file']}}}


def leaks(text, passwords):
    """The forms of each password that must appear nowhere."""
    found = []
    for password in passwords:
        forms = [password, base64.b64encode(password.encode()).decode()]
        found.extend(form for form in forms if form in text)
    return found


def test_no_password_in_logs_bodies_stats_or_process_titles(tmp_path):
    account = support.BrokerAccount('secret')
    account.change_password(PASSWORD)
    log_file = tmp_path / 'debug.log'
    seen = []
    try:
        with support.Statelessd(debug_logging(log_file)) as server:
            def publish(password, expect):
                answer = publish_as(server.port, account.vhost, account.user,
                                    password)
                seen.append(answer.body.decode('latin-1'))
                seen.append(str(dict(answer.headers)))
                assert answer.status == expect, answer
            publish(PASSWORD, 204)
            publish(PASSWORD + 'x', 401)
            publish('', 401)
            account.change_password(ROTATED)
            publish(ROTATED, 204)
            publish(PASSWORD, 401)
            publish(ROTATED, 204)
            for path in ('/stats', '/', '/stats/all', '/metrics'):
                seen.append(support.request(server.port, 'GET',
                                            path).body.decode('latin-1'))
            for pid in [server.process.pid] + server.worker_pids():
                for name in ('cmdline', 'comm', 'environ'):
                    seen.append(Path('/proc/%d/%s' % (pid, name))
                                .read_bytes().decode('latin-1'))
                for task in Path('/proc/%d/task' % pid).iterdir():
                    seen.append((task / 'comm').read_text())
        log = server.log_text()
        debug_log = log_file.read_text(errors='replace')
    finally:
        account.delete()
    assert 'DEBUG pika' in debug_log, 'pika debug logging did not run'
    assert leaks(log + debug_log, [PASSWORD, ROTATED]) == []
    assert leaks('\n'.join(seen), [PASSWORD, ROTATED]) == []
