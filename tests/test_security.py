"""Security regressions from an outside review, each through the real
server, and through the real nginx running etc/nginx.conf where a proxy in
front changes what the same bytes do: request capture through an unread
body, ambiguous framing, revoked RabbitMQ logins, the statistics pages
behind nginx, and the lesser items (static paths, 5xx, forwarded
addresses, pid file links, raw UTF-8 paths, header syntax).

A hidden request is only proven not to have run by a marker: a valid
message published after it on the same vhost/user arrives first, and a
publisher keeps its messages in order.
"""
import contextlib
import os
import re
import socket
import subprocess
import sys
import time
import urllib.parse

import pytest
import yaml

import support
from support import (REPO, Statelessd, basic_auth, free_port, get, nginx,
                     request, settle)

import statelessd

FORM = 'application/x-www-form-urlencoded'


@pytest.fixture(scope='module')
def account(shared_account):
    """The tests of this module share one vhost and user."""
    return shared_account


@pytest.fixture(scope='module')
def static(tmp_path_factory):
    directory = tmp_path_factory.mktemp('static')
    (directory / 'a.css').write_text('body { color: black }\n')
    directory.chmod(0o755)
    return directory


@pytest.fixture(scope='module')
def gateway(static):
    overrides = {'Application': {'paths': {'static': str(static)}}}
    with Statelessd(overrides) as instance:
        yield instance


def publish_request(account, routing_key, body, length=None, extra=b''):
    """The bytes of one form publish to amq.topic; length overrides the
    Content-Length, so the body can be left incomplete."""
    body = b'body=' + body
    return (b'POST /%s/amq.topic/%s HTTP/1.1\r\nHost: statelessd\r\n'
            b'Authorization: %s\r\nContent-Type: %s\r\n%s'
            b'Content-Length: %d\r\n\r\n'
            % (urllib.parse.quote(account.vhost, safe='').encode(),
               routing_key.encode(), account.auth.encode(), FORM.encode(),
               extra, len(body) if length is None else length)) + body


def publish(port, account, routing_key, body, password=None, query=''):
    auth = basic_auth(account.user, password or account.password)
    return request(port, 'POST', '/%s/amq.topic/%s%s' % (
        urllib.parse.quote(account.vhost, safe=''), routing_key, query),
        urllib.parse.urlencode({'body': body}),
        {'Authorization': auth, 'Content-Type': FORM})


def bodies_until_marker(account, queue, port):
    """The bodies in queue up to a marker published now; the marker must
    arrive, so anything published before it has arrived too."""
    marker = 'marker-%s' % os.urandom(4).hex()
    assert publish(port, account, queue, marker).status == 204
    bodies = []
    while not bodies or bodies[-1] != marker.encode():
        messages = account.drain(queue, 1, timeout=10)
        assert messages, 'the marker never arrived; got %r' % bodies
        bodies.append(messages[0][1])
    return bodies[:-1]


def responses(raw):
    """The status lines in raw, in order."""
    return re.findall(rb'(?m)^HTTP/1\.1 (\d{3}) ', raw)


def bound_queue(account, name=None):
    """A queue bound to amq.topic with its own name as the routing key."""
    name = name or support.unique('q')
    with contextlib.closing(account.connection()) as connection:
        channel = connection.channel()
        channel.queue_declare(name)
        channel.queue_bind(name, 'amq.topic', name)
    return name


@pytest.fixture
def hidden(account):
    return bound_queue(account)


# -- 1. a body left unread ---------------------------------------------------------

@pytest.mark.parametrize('method, path', [
    ('GET', '/static/a.css'), ('HEAD', '/static/a.css'), ('GET', '/health'),
    ('GET', '/stats'), ('GET', '/metrics'), ('GET', '/')])
def test_a_body_on_a_page_never_runs_as_a_request(gateway, account, hidden,
                                                   method, path):
    port = gateway.ports[0]
    smuggled = publish_request(account, hidden, b'captured')
    data = (b'%s %s HTTP/1.1\r\nHost: statelessd\r\nContent-Length: %d\r\n'
            b'\r\n' % (method.encode(), path.encode(), len(smuggled))
            + smuggled)
    raw = support.raw_exchange(port, data, shutdown=False)
    assert responses(raw) == [b'200'], raw[:500]
    assert b'\r\nConnection: close\r\n' in raw
    assert bodies_until_marker(account, hidden, port) == []


def test_the_smuggled_request_would_publish_on_its_own(gateway, account,
                                                       hidden):
    """The control for the test above: the same bytes, sent as a request,
    publish."""
    port = gateway.ports[0]
    raw = support.raw_exchange(port, publish_request(account, hidden,
                                                     b'captured'),
                               shutdown=False, timeout=2)
    assert responses(raw) == [b'204'], raw[:500]
    assert bodies_until_marker(account, hidden, port) == [b'captured']


def test_through_nginx_a_page_body_cannot_capture_the_next_client(
        tmp_path, account, static):
    overrides = {'Application': {'paths': {'static': str(static)}}}
    attacker, victim = bound_queue(account), bound_queue(account)
    with Statelessd(overrides, directory=tmp_path) as gateway, \
            nginx(gateway.ports, workers=1) as listen:
        # The start of a publish whose body the next request would fill.
        bait = publish_request(account, attacker, b'', length=200)
        raw = support.raw_exchange(listen, (
            b'GET /static/a.css HTTP/1.1\r\nHost: statelessd\r\n'
            b'Connection: close\r\nContent-Length: %d\r\n\r\n'
            % len(bait)) + bait, shutdown=False)
        assert responses(raw) == [b'200'], raw[:500]
        sent = [b'victim-%d' % number for number in range(5)]
        for body in sent:
            response = request(listen, 'POST', '/%s/amq.topic/%s' % (
                urllib.parse.quote(account.vhost, safe=''), victim),
                b'body=' + body, {'Authorization': account.auth,
                                  'Content-Type': FORM})
            assert response.status == 204, response
        assert [body for _, body in account.drain(victim, 5)] == sent
        port = gateway.ports[0]
        assert bodies_until_marker(account, attacker, port) == []


# -- 2. ambiguous framing ------------------------------------------------------------

def chunked_publish(account, routing_key, chunks, headers=b'',
                    version=b'HTTP/1.1'):
    return (b'POST /%s/amq.topic/%s %s\r\nHost: statelessd\r\n'
            b'Authorization: %s\r\nContent-Type: %s\r\n%s\r\n'
            % (urllib.parse.quote(account.vhost, safe='').encode(),
               routing_key.encode(), version, account.auth.encode(),
               FORM.encode(), headers)) + chunks


FRAMING = {
    'content-length with chunked': lambda account, key, smuggled: (
        chunked_publish(account, key, b'0\r\n\r\n' + smuggled,
                        b'Content-Length: %d\r\nTransfer-Encoding: chunked'
                        b'\r\n' % (5 + len(smuggled)))),
    'two transfer-encoding lines': lambda account, key, smuggled: (
        chunked_publish(account, key, b'9\r\nbody=open\r\n0\r\n\r\n'
                        + smuggled, b'Transfer-Encoding: chunked\r\n'
                        b'Transfer-Encoding: identity\r\n')),
    'chunked in HTTP/1.0': lambda account, key, smuggled: (
        chunked_publish(account, key, b'9\r\nbody=open\r\n0\r\n\r\n'
                        + smuggled, b'Transfer-Encoding: chunked\r\n'
                        b'Connection: keep-alive\r\n', b'HTTP/1.0')),
    'a 0x chunk size': lambda account, key, smuggled: (
        chunked_publish(account, key, b'0x9\r\nbody=open\r\n0\r\n\r\n'
                        + smuggled, b'Transfer-Encoding: chunked\r\n')),
    'a spaced chunk size': lambda account, key, smuggled: (
        chunked_publish(account, key, b' 9 \r\nbody=open\r\n0\r\n\r\n'
                        + smuggled, b'Transfer-Encoding: chunked\r\n')),
    'a chunk size line ending in LF': lambda account, key, smuggled: (
        chunked_publish(account, key, b'9\nbody=open\r\n0\r\n\r\n'
                        + smuggled, b'Transfer-Encoding: chunked\r\n')),
    'a request line as a trailer': lambda account, key, smuggled: (
        chunked_publish(account, key, b'9\r\nbody=open\r\n0\r\n'
                        b'GET /stats HTTP/1.1\r\n\r\n' + smuggled,
                        b'Transfer-Encoding: chunked\r\n')),
    'a bare LF hiding Transfer-Encoding past the read buffer':
        lambda account, key, smuggled: chunked_publish(
            account, key, b'9\r\nbody=open\r\n0\r\n\r\n' + smuggled,
            b'X-Pad: ' + b'a' * 9000 + b'\r\nX-A: a\nTransfer-Encoding: '
            b'chunked\r\n'),
    'CR CR LF after Content-Length past the read buffer':
        lambda account, key, smuggled: chunked_publish(
            account, key, b'body=open' + smuggled,
            b'X-Pad: ' + b'a' * 9000 + b'\r\nContent-Length: 9\r\r\n'),
}


@pytest.mark.parametrize('case', sorted(FRAMING))
def test_ambiguous_framing_is_400_and_closes(gateway, account, hidden, case):
    port = gateway.ports[0]
    smuggled = publish_request(account, hidden, b'hidden')
    raw = support.raw_exchange(port, FRAMING[case](account, hidden,
                                                   smuggled),
                               shutdown=False)
    assert responses(raw) == [b'400'], raw[:500]
    assert b'\r\nConnection: close\r\n' in raw
    assert bodies_until_marker(account, hidden, port) == []


@pytest.mark.parametrize('path', ['/health', '/stats'])
def test_conflicting_content_lengths_on_a_page_are_400(gateway, account,
                                                       hidden, path):
    port = gateway.ports[0]
    smuggled = publish_request(account, hidden, b'hidden')
    raw = support.raw_exchange(port, (
        b'GET %s HTTP/1.1\r\nHost: statelessd\r\nContent-Length: 0\r\n'
        b'Content-Length: %d\r\n\r\n' % (path.encode(), len(smuggled)))
        + smuggled, shutdown=False)
    assert responses(raw) == [b'400'], raw[:500]
    assert bodies_until_marker(account, hidden, port) == []


def test_a_bare_lf_is_refused_however_the_bytes_arrive(gateway, account,
                                                       hidden):
    """The head refused in one piece is refused in two writes too, split
    right after the bare LF."""
    port = gateway.ports[0]
    data = chunked_publish(
        account, hidden, b'9\r\nbody=open\r\n0\r\n\r\n' +
        publish_request(account, hidden, b'hidden'),
        b'X-A: a\nTransfer-Encoding: chunked\r\n')
    split = data.index(b'a\n') + 2
    with socket.create_connection(('127.0.0.1', port), timeout=10) as sock:
        sock.sendall(data[:split])
        time.sleep(0.3)
        sock.sendall(data[split:])
        raw = support.read_all(sock, 5)
    assert responses(raw) == [b'400'], raw[:500]
    assert bodies_until_marker(account, hidden, port) == []


def test_connection_close_counts_among_other_options(gateway):
    raw = support.raw_exchange(gateway.ports[0], (
        b'GET /health HTTP/1.1\r\nHost: statelessd\r\n'
        b'Connection: keep-alive, close\r\n\r\n'
        b'GET /health HTTP/1.1\r\nHost: statelessd\r\n\r\n'),
        shutdown=False)
    assert responses(raw) == [b'200'], raw[:500]
    assert b'\r\nConnection: close\r\n' in raw


def test_user_names_that_would_garble_the_log_are_401(gateway, account):
    for user in ('eve\u2028INFO forged line', 'eve\u202eevil'):
        response = request(gateway.ports[0], 'POST',
                           '/%s/amq.topic/x' % account.vhost, b'body=x',
                           {'Authorization': basic_auth(user, 'pw'),
                            'Content-Type': FORM})
        assert response.status == 401, response
    assert '\u2028' not in gateway.log() and '\u202e' not in gateway.log()


def test_well_framed_chunked_publish_still_works(gateway, account, hidden):
    port = gateway.ports[0]
    raw = support.raw_exchange(port, chunked_publish(
        account, hidden, b'9;ext=1\r\nbody=fine\r\n0\r\nX-Trailer: 1\r\n'
        b'\r\n', b'Transfer-Encoding: chunked\r\n'), shutdown=False,
        timeout=2)
    assert responses(raw) == [b'204'], raw[:500]
    assert bodies_until_marker(account, hidden, port) == [b'fine']


# -- 3. logins RabbitMQ no longer takes ------------------------------------------------

@pytest.fixture
def checked_gateway(tmp_path):
    overrides = {'Application': {'rabbitmq': {
        'password_check_interval': 1, 'login_failure_ttl': 0.5}}}
    with Statelessd(overrides, directory=tmp_path) as instance:
        yield instance


@pytest.fixture
def user():
    """A vhost and user of the test's own, which the test may delete."""
    with support.BrokerAccount('user') as own:
        yield own


def publish_until(port, account, queue, status, password=None,
                  timeout=20.0):
    """Publish numbered bodies until one is answered status; returns the
    bodies answered 204 on the way (they must all be delivered)."""
    accepted = []
    answers = []

    def answered():
        body = '%s-%d' % (queue, len(answers))
        response = publish(port, account, queue, body, password)
        answers.append(response.status)
        if response.status == 204:
            accepted.append(body.encode())
        return response.status == status
    assert settle(answered, timeout=timeout, interval=0.2), answers
    return accepted


def test_a_deleted_user_is_refused_and_nothing_accepted_is_lost(
        checked_gateway, user):
    port = checked_gateway.ports[0]
    queue = bound_queue(user)
    accepted = publish_until(port, user, queue, 204)
    support.rabbitmqctl('delete_user', user.user)
    accepted += publish_until(port, user, queue, 401)
    for query in ('', '?confirm=1'):
        response = publish(port, user, queue, 'refused', query=query)
        assert response.status == 401, response
        assert response.header('WWW-Authenticate')
    log = checked_gateway.log()
    assert 'RabbitMQ refuses %s:%s' % (user.vhost, user.user) in log
    assert user.password not in log

    # The user comes back: what was accepted before is published.
    support.rabbitmqctl('add_user', user.user, user.password)
    support.rabbitmqctl('set_permissions', '-p', user.vhost, user.user,
                        '.*', '.*', '.*')
    accepted += publish_until(port, user, queue, 204)
    delivered = [body for _, body in user.drain(queue, len(accepted))]
    assert delivered == accepted


def test_a_changed_password_stops_publishing_within_the_check_interval(
        checked_gateway, user):
    port = checked_gateway.ports[0]
    old = user.password
    queue = bound_queue(user)
    accepted = publish_until(port, user, queue, 204)
    user.change_password('pw-new-' + os.urandom(6).hex())
    # No request uses the new password: the periodic check finds out.
    accepted += publish_until(port, user, queue, 401, password=old)
    response = publish(port, user, queue, 'old', password=old)
    assert response.status == 401, response
    log = checked_gateway.log()
    assert 'no longer takes the password of %s:%s' % (
        user.vhost, user.user) in log
    assert old not in log and user.password not in log

    accepted += publish_until(port, user, queue, 204)
    delivered = [body for _, body in user.drain(queue, len(accepted))]
    assert delivered == accepted


def test_a_refused_publisher_holding_nothing_retires(checked_gateway, user):
    """It would otherwise try the dead login against RabbitMQ forever."""
    port = checked_gateway.ports[0]
    queue = bound_queue(user)
    publish_until(port, user, queue, 204)
    assert user.drain(queue, 1)
    key = '%s:%s' % (user.vhost, user.user)
    assert key in get(port, '/stats').json()['connections']
    support.rabbitmqctl('delete_user', user.user)
    assert settle(lambda: key not in get(port, '/stats').json()[
        'connections'], timeout=15)
    assert 'its publisher holds nothing and closes' in \
        checked_gateway.log()


def test_revoked_permissions_answer_403(checked_gateway, user):
    port = checked_gateway.ports[0]
    publish_until(port, user, 'revoked', 204)
    support.rabbitmqctl('clear_permissions', '-p', user.vhost, user.user)
    publish_until(port, user, 'revoked', 403)


# -- 4. statistics behind nginx ---------------------------------------------------------

def test_the_shipped_pair_keeps_stats_from_clients_behind_nginx(tmp_path):
    shipped = yaml.safe_load((REPO / 'statelessd.yaml').read_text())
    server = shipped['HTTPServer']
    overrides = {'HTTPServer': {
        'xheaders': server.get('xheaders', False),
        'stats_allow': ['127.0.0.1/32']}}
    if 'trusted_proxies' in server:
        overrides['HTTPServer']['trusted_proxies'] = server['trusted_proxies']
    with Statelessd(overrides, directory=tmp_path) as gateway, \
            nginx(gateway.ports) as listen:
        for page in ('/', '/stats', '/stats/all', '/metrics'):
            outside = get(listen, page, source='127.0.0.2')
            assert outside.status == 403, (page, outside)
            assert get(gateway.ports[0], page,
                       source='127.0.0.2').status == 403
            assert get(listen, page).status == 200, page
        assert get(listen, '/health', source='127.0.0.2').status == 200


# -- 5. the lesser items ----------------------------------------------------------------

def test_a_nul_in_a_static_path_is_404_and_logged_escaped(gateway):
    raw = support.raw_exchange(gateway.ports[0], (
        b'GET /static/%00 HTTP/1.1\r\nHost: statelessd\r\n\r\n'
        b'GET /health HTTP/1.1\r\nHost: statelessd\r\n\r\n'),
        shutdown=False)
    assert responses(raw) == [b'404'], raw[:500]
    assert '\x00' not in gateway.log()


def test_a_5xx_closes_the_connection(tmp_path):
    unreachable = {'Application': {'rabbitmq': {
        'host': '127.0.0.1', 'port': free_port(),
        'connect_timeout': 1}}}
    with Statelessd(unreachable, directory=tmp_path) as instance:
        raw = support.raw_exchange(instance.ports[0], (
            b'GET /health HTTP/1.1\r\nHost: statelessd\r\n\r\n'
            b'GET /health HTTP/1.1\r\nHost: statelessd\r\n\r\n'),
            shutdown=False)
        assert responses(raw) == [b'503'], raw[:500]
        assert b'\r\nConnection: close\r\n' in raw
        raw = support.raw_exchange(instance.ports[0], (
            b'POST /%2f/amq.topic/x HTTP/1.1\r\nHost: statelessd\r\n'
            b'Authorization: Basic Z3Vlc3Q6Z3Vlc3Q=\r\n'
            b'Content-Length: 6\r\n\r\nbody=x'
            b'GET /health HTTP/1.1\r\nHost: statelessd\r\n\r\n'),
            shutdown=False)
        assert responses(raw) == [b'503'], raw[:500]


@pytest.fixture(scope='module')
def forwarding_gateway():
    with Statelessd({'HTTPServer': {'xheaders': True}}) as instance:
        yield instance


@pytest.mark.parametrize('headers', [
    b'X-Real-IP: evil.example <script>\r\n',
    b'X-Real-IP: fe80::1%eth0-pwned\r\n',
    b'X-Real-IP: 6.6.6.6\r\nX-Real-IP: 7.7.7.7\r\n',
    b'X-Forwarded-For: 6.6.6.6, not-an-address\r\n'])
def test_only_a_single_valid_forwarded_address_is_logged(
        forwarding_gateway, account, hidden, headers):
    port = forwarding_gateway.ports[0]
    raw = support.raw_exchange(port, publish_request(
        account, hidden, b'xff', extra=headers), shutdown=False, timeout=2)
    assert responses(raw) == [b'204'], raw[:500]
    path = '/%s/amq.topic/%s' % (account.vhost, hidden)
    assert settle(lambda: '127.0.0.1 "POST %s' % path
                  in forwarding_gateway.log())
    for text in ('evil', 'pwned', '6.6.6.6', '7.7.7.7'):
        assert text not in forwarding_gateway.log()
    assert bodies_until_marker(account, hidden, port) == [b'xff']


def test_control_characters_in_a_forwarded_address_are_refused(
        forwarding_gateway, account, hidden):
    port = forwarding_gateway.ports[0]
    raw = support.raw_exchange(port, publish_request(
        account, hidden, b'escape', extra=b'X-Real-IP: 6.6.6.6\x1b[2J\r\n'),
        shutdown=False)
    assert responses(raw) == [b'400'], raw[:500]
    assert '\x1b' not in forwarding_gateway.log()
    assert bodies_until_marker(account, hidden, port) == []


def test_two_real_ip_lines_get_no_stats(forwarding_gateway):
    port = forwarding_gateway.ports[0]
    assert get(port, '/stats', headers={'X-Real-IP': '127.0.0.1'}).status \
        == 200
    raw = support.raw_exchange(port, (
        b'GET /stats HTTP/1.1\r\nHost: statelessd\r\nX-Real-IP: 127.0.0.1'
        b'\r\nX-Real-IP: 127.0.0.1\r\n\r\n'), shutdown=False)
    assert responses(raw) == [b'403'], raw[:500]


def test_an_untrusted_peer_cannot_name_the_client(tmp_path, account, hidden):
    overrides = {'HTTPServer': {'xheaders': True,
                                'trusted_proxies': ['192.0.2.0/24']}}
    with Statelessd(overrides, directory=tmp_path) as instance:
        port = instance.ports[0]
        raw = support.raw_exchange(port, publish_request(
            account, hidden, b'direct', extra=b'X-Real-IP: 6.6.6.6\r\n'),
            shutdown=False, timeout=2)
        assert responses(raw) == [b'204'], raw[:500]
        assert settle(lambda: '127.0.0.1 "POST' in instance.log())
        assert '6.6.6.6' not in instance.log()
        assert bodies_until_marker(account, hidden, port) == [b'direct']


def test_writing_the_pidfile_follows_no_planted_link(tmp_path):
    target = tmp_path / 'target'
    target.write_text('precious\n')
    pidfile = tmp_path / 'statelessd.pid'
    os.symlink(target, '%s.%d' % (pidfile, os.getpid()))
    statelessd.write_pidfile(str(pidfile))
    assert target.read_text() == 'precious\n'
    assert pidfile.read_text() == '%d\n' % os.getpid()
    assert not pidfile.is_symlink()
    assert sorted(os.listdir(tmp_path)) == sorted([
        'target', 'statelessd.pid', 'statelessd.pid.%d' % os.getpid()])


def test_a_pidfile_that_is_not_a_file_is_refused_at_once(tmp_path):
    pidfile = tmp_path / 'statelessd.pid'
    os.mkfifo(str(pidfile))
    result = start_with_pidfile(tmp_path, pidfile)
    assert result.returncode == 2, result
    assert 'is not a regular file' in result.stderr


def start_with_pidfile(tmp_path, pidfile):
    config = tmp_path / 'statelessd.yaml'
    config.write_text(yaml.safe_dump({
        'Daemon': {'pidfile': str(pidfile)},
        'HTTPServer': {'address': '127.0.0.1',
                       'ports': [free_port()]}}))
    return subprocess.run([sys.executable, str(REPO / 'statelessd.py'),
                           '-c', str(config), '-f'], capture_output=True,
                          text=True, timeout=30, stdin=subprocess.DEVNULL)


def test_a_pidfile_link_is_refused_and_its_target_never_read(tmp_path):
    secret = tmp_path / 'secret'
    secret.write_text('root-password-hash\n')
    pidfile = tmp_path / 'statelessd.pid'
    os.symlink(secret, pidfile)
    result = start_with_pidfile(tmp_path, pidfile)
    assert result.returncode == 2, result
    assert 'Daemon.pidfile' in result.stderr and 'symbolic link' in \
        result.stderr
    assert 'root-password-hash' not in result.stdout + result.stderr
    assert secret.read_text() == 'root-password-hash\n'


def test_a_stale_pidfile_is_replaced_without_logging_its_contents(
        tmp_path):
    pidfile = tmp_path / 'statelessd.pid'
    pidfile.write_text('not a pid but a secret\n')
    overrides = {'Daemon': {'pidfile': str(pidfile)}}
    with Statelessd(overrides, directory=tmp_path) as instance:
        assert pidfile.read_text() == '%d\n' % instance.process.pid
        assert 'Replacing stale pid file' in instance.log()
        assert 'secret' not in instance.log()


def test_raw_utf8_in_a_path_publishes(gateway, account):
    key = bound_queue(account, 'cl\u00e9-\u00e0-\u00c5-' + os.urandom(4).hex())
    raw = support.raw_exchange(gateway.ports[0], (
        b'POST /%s/amq.topic/%s HTTP/1.1\r\nHost: statelessd\r\n'
        b'Authorization: %s\r\nContent-Type: %s\r\nContent-Length: 9\r\n'
        b'\r\nbody=utf8' % (account.vhost.encode(), key.encode('utf-8'),
                             account.auth.encode(), FORM.encode())),
        shutdown=False, timeout=2)
    assert responses(raw) == [b'204'], raw[:500]
    assert [body for _, body in account.drain(key, 1)] == [b'utf8']


@pytest.mark.parametrize('header', [
    b'X-Note: a\x00b', b'Content Length: 5', b'X(y): 1', b'X-Note: a\x7fb'])
def test_malformed_header_lines_are_400(gateway, account, hidden, header):
    port = gateway.ports[0]
    raw = support.raw_exchange(port, publish_request(
        account, hidden, b'bad', extra=header + b'\r\n'), shutdown=False)
    assert responses(raw) == [b'400'], raw[:500]
    assert bodies_until_marker(account, hidden, port) == []
