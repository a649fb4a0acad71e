"""Logins and passwords: 401 and 403 and what a client sees then, wrong
and rotated passwords never publish, refused credentials are remembered
briefly, publishers per worker are bounded, a flood of bad logins stays
cheap, and no password leaks.
"""
import base64
import concurrent.futures
import http.client
import secrets
import time
from pathlib import Path

import pytest

import support


@pytest.fixture
def proxy():
    proxy = support.CountingProxy()
    yield proxy
    proxy.close()


def through(proxy, **rabbitmq):
    rabbitmq.update({'host': '127.0.0.1', 'port': proxy.port})
    return {'Application': {'rabbitmq': rabbitmq}}


def publish_as(port, vhost, user, password, body=b'x'):
    return support.publish(port, support.publish_path(vhost, 'amq.topic',
                                                      'key'),
                           body, (user, password))


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
                assert account.publish(server.port, 'x').status == 204
            refused = accounts[2].publish(server.port, 'x')
            status, document = support.assert_json_error(refused, 503)
            assert 'limit' in document['reason']
            assert refused.headers['Retry-After']
            for account in accounts[:2]:
                assert account.publish(server.port, 'y').status == 204
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
        worker = server.children()[0]
        assert account.publish(server.port, 'x').status == 204
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
        assert server.children() == [worker]
        assert support.broker_connections(account.user) == 1
        assert account.publish(server.port, 'x').status == 204


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


def test_no_password_in_logs_bodies_stats_or_process_titles(tmp_path,
                                                            account):
    account.change_password(PASSWORD)
    log_file = tmp_path / 'debug.log'
    seen = []
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
        for pid in [server.process.pid] + server.children():
            for name in ('cmdline', 'comm', 'environ'):
                seen.append(Path('/proc/%d/%s' % (pid, name))
                            .read_bytes().decode('latin-1'))
            for task in Path('/proc/%d/task' % pid).iterdir():
                seen.append((task / 'comm').read_text())
    log = server.log()
    debug_log = log_file.read_text(errors='replace')
    assert 'DEBUG pika' in debug_log, 'pika debug logging did not run'
    assert leaks(log + debug_log, [PASSWORD, ROTATED]) == []
    assert leaks('\n'.join(seen), [PASSWORD, ROTATED]) == []


WWW_AUTHENTICATE = 'Basic realm="statelessd"'

#: Passwords (right and wrong) sent in this module; none may be logged.
PASSWORDS_SENT = {"wrong-password"}


# --- 401 -------------------------------------------------------------------

MALFORMED_AUTH = {
    "missing": None,
    "scheme-only": "Basic",
    "not-base64": "Basic !!!not base64!!!",
    "no-colon": "Basic " + base64.b64encode(b"guestguest").decode(),
    "bearer": "Bearer abcdef",
    "empty": "",
}


@pytest.mark.parametrize("name", sorted(MALFORMED_AUTH))
def test_missing_or_malformed_auth_is_401(http, server, target, assert_error,
                                          assert_message, name):
    resp = http.post(server.port, target.path(), {"body": "must not arrive"},
                     auth=MALFORMED_AUTH[name])
    assert_error(resp, 401)
    assert resp.header("WWW-Authenticate") == WWW_AUTHENTICATE, resp
    support.sentinel_arrives_first(http, server.port, target)


@pytest.mark.parametrize("auth", [("guest", "wrong-password"),
                                  ("guest", ""),
                                  ("no-such-user-x", "guest")],
                         ids=["wrong-password", "empty-password",
                              "unknown-user"])
def test_bad_credentials_are_401(http, server, target, assert_error,
                                 assert_message, auth):
    resp = http.post(server.port, target.path(), {"body": "must not arrive"},
                     auth=auth)
    assert_error(resp, 401)
    assert resp.header("WWW-Authenticate") == WWW_AUTHENTICATE, resp
    support.sentinel_arrives_first(http, server.port, target)


@pytest.mark.parametrize("who", ["guest", "named"])
def test_wrong_password_never_publishes(http, server, request, assert_error,
                                        assert_message, named_vhost, who):
    if who == "guest":
        tgt = request.getfixturevalue("target")
    else:
        tgt = request.getfixturevalue("named_target")
    user, password = tgt.auth
    PASSWORDS_SENT.update({password, password + "x"})
    first = http.post(server.port, tgt.path(), {"body": "first"},
                      auth=(user, password))
    assert first.status == 204, first
    # The connection opened for the right password is still open now.
    wrong = http.post(server.port, tgt.path(), {"body": "WRONG"},
                      auth=(user, password + "x"))
    assert_error(wrong, 401)
    assert wrong.header("WWW-Authenticate") == WWW_AUTHENTICATE, wrong
    third = http.post(server.port, tgt.path(), {"body": "third"},
                      auth=(user, password))
    assert third.status == 204, third
    # Had the wrong-password request published, its message would be
    # second in the queue: messages on one route arrive in order.
    messages = tgt.consume(2, timeout=10)
    assert [m.body for m in messages] == [b"first", b"third"]


def test_password_rotation(http, server, broker, target, assert_error,
                           assert_message):
    user = "statelessd-rot-" + secrets.token_hex(6)
    old, new = "old-" + secrets.token_hex(8), "new-" + secrets.token_hex(8)
    PASSWORDS_SENT.update({old, new})
    broker.add_user(user, old)
    try:
        broker.set_permissions("/", user)
        resp = http.post(server.port, target.path(), {"body": "before"},
                         auth=(user, old))
        assert resp.status == 204, resp
        message = target.one()
        assert_message(message, b"before")

        broker.change_password(user, new)
        resp = http.post(server.port, target.path(),
                         {"body": "after", "user_id": user},
                         auth=(user, new))
        assert resp.status == 204, resp
        messages = target.consume(1)
        assert len(messages) == 1, "publish with the new password was lost"
        assert_message(messages[0], b"after", user_id=user)

        resp = http.post(server.port, target.path(), {"body": "stale"},
                         auth=(user, old))
        assert_error(resp, 401)
        support.sentinel_arrives_first(http, server.port, target,
                                       auth=(user, new))
    finally:
        broker.delete_user(user)


# --- 403 -------------------------------------------------------------------


def test_user_without_permission_on_vhost_is_403(
        http, server, named_target, noperm_user, named_vhost, assert_error,
        assert_message):
    PASSWORDS_SENT.add(noperm_user.password)
    resp = http.post(server.port, named_target.path(),
                     {"body": "must not arrive"},
                     auth=(noperm_user.user, noperm_user.password))
    assert_error(resp, 403, [named_vhost.vhost])
    support.sentinel_arrives_first(http, server.port, named_target)


def test_named_user_on_slash_vhost_is_403(http, server, target, named_vhost,
                                          assert_error, assert_message):
    resp = http.post(server.port, target.path(), {"body": "must not arrive"},
                     auth=(named_vhost.user, named_vhost.password))
    assert_error(resp, 403)
    support.sentinel_arrives_first(http, server.port, target)


def test_nonexistent_vhost_is_403(http, server, assert_error):
    vhost = "statelessd-missing-" + secrets.token_hex(6)
    resp = http.post(server.port, "/%s/amq.direct/rk" % vhost,
                     {"body": "nowhere"})
    assert_error(resp, 403, [vhost])


def test_concurrent_wrong_passwords_never_publish(http, server, named_target,
                                                  named_vhost):
    """Right and wrong passwords for one user, interleaved from threads."""
    user, password = named_vhost.user, named_vhost.password
    PASSWORDS_SENT.update({password, password + "!"})

    def requests_of(index):
        for i in range(20):
            good = (i + index) % 2 == 0
            body = b"%s-%d-%d" % (b"good" if good else b"BAD", index, i)
            yield (named_target.path(), body,
                   (user, password if good else password + "!"))

    results = support.post_from_threads(http, server.port, requests_of, 4)
    wrong = [(body, status) for _, body, status in results
             if status != (204 if body.startswith(b"good") else 401)]
    assert not wrong, "unexpected statuses: %r" % wrong[:10]
    expected = sorted(body for _, body, _ in results
                      if body.startswith(b"good"))
    messages = named_target.consume(len(expected), timeout=20)
    extra = named_target.consume(1, timeout=1)
    assert not [m.body for m in messages + extra if m.body.startswith(b"BAD")]
    assert sorted(m.body for m in messages) == expected
    assert extra == []


def test_no_password_sent_in_this_module_reached_the_log(http, server,
                                                        named_target,
                                                        named_vhost):
    """Every password the tests of this module sent to their shared server,
    right or wrong, is absent from its log (root at DEBUG).  This test
    sends a right and a wrong one of its own first, so it proves something
    whichever of the others ran before it."""
    user, password = named_vhost.user, named_vhost.password
    wrong = password + "-not-" + secrets.token_hex(4)
    PASSWORDS_SENT.update({password, wrong})
    right = http.post(server.port, named_target.path(), {"body": "right"},
                      auth=(user, password))
    assert right.status == 204, right
    refused = http.post(server.port, named_target.path(), {"body": "wrong"},
                        auth=(user, wrong))
    assert refused.status == 401, refused
    log = server.log()
    # "guest" is also a user name, so it may be logged as such.
    leaked = sorted(p for p in PASSWORDS_SENT - {"guest"} if p in log)
    assert not leaked, "passwords in the statelessd log: %r" % leaked
