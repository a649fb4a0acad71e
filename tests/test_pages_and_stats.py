"""The pages and figures: /stats, /stats/all, /metrics, /health, the
dashboard at / (rendered by a real headless Chromium), who may read them
(stats_allow), multi-port servers, shutdown and secrecy.
"""
import base64
import html.parser
import json
import os
import re
import secrets
import signal
import subprocess
import time

import pytest

import statelessd
from support import (GUEST, Statelessd, assert_json_error, free_port, get,
                     publish, publish_path, rabbitmqctl, request, require_tool,
                     settle, sink, unique)

NUMBER = (int, float)


@pytest.fixture(scope="module")
def pair(statelessd):
    """One statelessd serving two ports (one child process per port)."""
    return statelessd(ports=2)


def stats(http, port):
    resp = http.get(port, "/stats")
    assert resp.status == 200, resp
    content_type = resp.header("Content-Type") or ""
    assert content_type.startswith("application/json"), resp
    return resp.json()


def counter(doc, name):
    return doc["requests"].get(name, 0)


def connection(doc, key):
    return doc["connections"].get(key)


def publishes(doc, key='/:guest'):
    entry = connection(doc, key)
    return 0 if entry is None else entry["publishes"]


def is_number(value):
    return isinstance(value, NUMBER) and not isinstance(value, bool)


def stats_when(http, port, predicate, timeout=5.0):
    """Poll /stats until predicate(doc) holds; return the last doc."""
    docs = []

    def holds():
        docs.append(stats(http, port))
        return predicate(docs[-1])
    settle(holds, timeout)
    return docs[-1]


def test_stats_layout(http, pair):
    for port in pair.ports:
        doc = stats(http, port)
        assert doc["port"] == port and isinstance(doc["port"], int)
        assert isinstance(doc["host"], str) and doc["host"]
        assert set(doc["page_faults"]) >= {"major", "minor"}
        assert set(doc["cpu_time"]) >= {"user", "system"}
        assert set(doc["block"]) >= {"input", "output"}
        for value in (doc["page_faults"]["major"], doc["page_faults"]["minor"],
                      doc["cpu_time"]["user"], doc["cpu_time"]["system"],
                      doc["block"]["input"], doc["block"]["output"],
                      doc["memory_usage"], doc["timestamp"],
                      doc["context_switches"], doc["swap_outs"],
                      doc["page_size"], doc["signals_received"]):
            assert is_number(value), doc
        assert doc["page_size"] > 0
        assert doc["memory_usage"] > 0
        assert abs(doc["timestamp"] - time.time()) < 300, doc["timestamp"]
        assert isinstance(doc["requests"], dict)
        assert isinstance(doc["requests"]["processing_time"], float), doc
        assert counter(doc, "method.GET") >= 1, doc["requests"]
        assert counter(doc, "response.200") >= 1, doc["requests"]
        assert isinstance(doc["connections"], dict)


def test_counts_follow_requests(http, pair, target, assert_message):
    port = pair.ports[0]
    before = stats(http, port)
    for i in range(5):
        resp = http.post(port, target.path(), {"body": "count-%d" % i})
        assert resp.status == 204, resp
    for _ in range(2):
        resp = http.post(port, target.path(), {"priority": "abc"})
        assert resp.status == 400, resp
    messages = target.consume(5)
    assert [m.body for m in messages] == [b"count-%d" % i for i in range(5)]

    after = stats_when(http, port, lambda d: (
        publishes(d, "/:guest") - publishes(before, "/:guest") >= 5
        and (connection(d, "/:guest") or {}).get("queue_size") == 0))
    assert counter(after, "response.204") - counter(before,
                                                    "response.204") == 5
    assert counter(after, "response.400") - counter(before,
                                                    "response.400") == 2
    assert counter(after, "method.POST") - counter(before, "method.POST") == 7
    assert publishes(after, "/:guest") - publishes(before, "/:guest") == 5
    assert after["requests"]["processing_time"] > 0

    entry = connection(after, "/:guest")
    assert entry["connected"] is True
    assert entry["queue_size"] == 0
    assert isinstance(entry["publishes"], int)
    assert entry["connections"]["opened"] >= 1
    assert entry["connections"]["opened"] >= entry["connections"]["closed"]
    assert entry["channels"]["opened"] >= 1
    assert entry["channels"]["opened"] >= entry["channels"]["closed"]
    for value in (entry["connections"]["closed"], entry["channels"]["closed"]):
        assert isinstance(value, int) and value >= 0


def test_stats_are_per_port(http, pair, named_target, named_vhost):
    first, second = pair.ports
    key = "%s:%s" % (named_vhost.vhost, named_vhost.user)
    auth = (named_vhost.user, named_vhost.password)
    before_first = stats(http, first)
    before_second = stats(http, second)
    for i in range(4):
        resp = http.post(first, named_target.path(), {"body": "p1-%d" % i},
                         auth=auth)
        assert resp.status == 204, resp
    assert len(named_target.consume(4)) == 4

    after_first = stats_when(http, first, lambda d: (
        publishes(d, key) - publishes(before_first, key) >= 4))
    after_second = stats(http, second)
    assert publishes(after_first, key) - publishes(before_first, key) == 4
    assert connection(after_first, key)["connected"] is True
    assert after_first["port"] == first and after_second["port"] == second

    entry = connection(after_second, key)
    assert entry is None or entry["publishes"] == 0, entry
    assert (counter(after_second, "response.204")
            == counter(before_second, "response.204"))
    assert (counter(after_second, "method.POST")
            == counter(before_second, "method.POST"))


def test_both_ports_publish(http, pair, target, assert_message):
    before = {port: stats(http, port) for port in pair.ports}
    for port in pair.ports:
        for i in range(3):
            resp = http.post(port, target.path(),
                             {"body": "port-%d-%d" % (port, i),
                              "app_id": str(port)})
            assert resp.status == 204, resp
    messages = target.consume(6)
    assert sorted(m.body for m in messages) == sorted(
        b"port-%d-%d" % (port, i) for port in pair.ports for i in range(3))
    for message in messages:
        port = int(message.body.split(b"-")[1])
        assert_message(message, message.body, app_id=str(port))
    for port in pair.ports:
        after = stats_when(http, port, lambda d, p=port: (
            publishes(d, "/:guest") - publishes(before[p], "/:guest") >= 3))
        assert (publishes(after, "/:guest")
                - publishes(before[port], "/:guest")) == 3
        assert (counter(after, "response.204")
                - counter(before[port], "response.204")) == 3


@pytest.mark.parametrize("which", [0, 1])
def test_index_page_is_html(http, pair, which):
    resp = http.get(pair.ports[which], "/")
    assert resp.status == 200, resp
    assert (resp.header("Content-Type") or "").startswith("text/html"), resp
    assert resp.body.strip(), resp


def test_passwords_never_leak(http, pair, broker, named_target, named_vhost,
                              noperm_user, target):
    port = pair.ports[0]
    user, password = named_vhost.user, named_vhost.password
    wrong = "wrong-" + secrets.token_hex(10)
    bodies = []

    def post(path, auth, fields=None, **kwargs):
        resp = http.post(port, path, fields or {"body": "secret-test"},
                         auth=auth, **kwargs)
        bodies.append(resp.body)
        return resp

    assert post(named_target.path(), (user, password)).status == 204
    assert post(named_target.path(), (user, wrong)).status == 401
    assert post(named_target.path(), (user, password),
                {"priority": "abc"}).status == 400
    assert post(named_target.path(exchange="statelessd.missing.x"),
                (user, password)).status == 404
    assert post(target.path(), (user, password)).status == 403
    assert post(named_target.path(), (noperm_user.user,
                                      noperm_user.password)).status == 403
    assert post(named_target.path(), (user, password),
                headers={"Content-Type": "text/plain"}).status == 204
    assert post(named_target.path(), (user, password),
                {"user_id": "someone-else"}).status == 400
    assert len(named_target.consume(2)) == 2

    stats_text = http.get(port, "/stats").body.decode("utf-8", "replace")
    time.sleep(0.5)  # let the log lines of these requests be written
    log = pair.log()

    secrets_seen = {
        "password": password,
        "wrong password": wrong,
        "no-permission password": noperm_user.password,
        "Authorization value": base64.b64encode(
            ("%s:%s" % (user, password)).encode()).decode(),
        "wrong Authorization value": base64.b64encode(
            ("%s:%s" % (user, wrong)).encode()).decode(),
    }
    for label, secret in secrets_seen.items():
        assert secret not in log, "%s appears in the log" % label
        assert secret not in stats_text, "%s appears in /stats" % label
        for body in bodies:
            assert secret.encode() not in body, (
                "%s appears in a response body: %r" % (label, body))


def test_log_is_written_at_debug_level(http, pair, target):
    """The Logging section is applied: requests leave lines in the log."""
    resp = http.post(pair.ports[0], target.path(), {"body": "logged"})
    assert resp.status == 204, resp
    target.one()
    time.sleep(0.5)
    assert pair.log().strip(), (
        "statelessd wrote nothing to stderr with the root logger at DEBUG")


def test_sigterm_stops_master_and_children(http, statelessd, target):
    server = statelessd(ports=2)
    for port in server.ports:
        resp = http.post(port, target.path(), {"body": "bye-%d" % port})
        assert resp.status == 204, resp
    assert len(target.consume(2)) == 2
    # Exit status 0, and no port still served once the master is gone.
    server.stop()


# ----------------------------------------------------------------------------
# /stats/all, /metrics and /health across the ports of one statelessd,
# and publishing through a broker host list whose first node is dead.
# ----------------------------------------------------------------------------


#: The keys of the original per-process /stats document.
STATS_KEYS = {'timestamp', 'block', 'context_switches', 'cpu_time',
              'memory_usage', 'page_faults', 'page_size', 'signals_received',
              'swap_outs', 'host', 'port', 'requests', 'connections'}
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
                   r'(,|$)')


@pytest.fixture(scope='module')
def trio():
    """One statelessd serving three ports."""
    with Statelessd(ports=3) as gateway:
        yield gateway


def test_stats_all_has_every_port_and_totals(trio):
    first, second, third = trio.ports
    with sink() as box:
        for port, count in ((first, 2), (second, 3)):
            for number in range(count):
                response = publish(port, box.path(), 'm%d-%d'
                                   % (port, number))
                assert response.status == 204, response
        assert len(box.take(5)) == 5
    response = get(third, '/stats/all')
    assert response.status == 200, response
    assert response.headers['Content-Type'] == 'application/json'
    everything = response.json()
    assert [d['port'] for d in everything['ports']] == trio.ports
    assert all(d['up'] is True for d in everything['ports'])
    for document in everything['ports']:
        assert set(document) >= STATS_KEYS, sorted(document)
        own = get(document['port'], '/stats').json()
        assert publishes(own) == publishes(document)
    assert publishes(everything['ports'][0]) >= 2
    assert publishes(everything['ports'][1]) >= 3
    totals = everything['totals']
    assert totals['ports'] == 3 and totals['up'] == 3
    assert totals['publishes'] == sum(publishes(d)
                                      for d in everything['ports'])
    assert totals['confirmed'] == totals['publishes']
    assert totals['requests']['response.204'] == sum(
        d['requests'].get('response.204', 0) for d in everything['ports'])
    assert totals['resident_memory'] > 0
    assert totals['connected'] >= 2


def test_stats_keeps_its_per_process_layout(trio):
    document = get(trio.ports[0], '/stats').json()
    assert set(document) >= STATS_KEYS
    assert 'ports' not in document and 'totals' not in document
    assert document['port'] == trio.ports[0]
    assert isinstance(document['connections'], dict)


def test_a_hung_port_is_reported_not_waited_for(trio):
    first, _, third = trio.ports
    pid = trio.worker_pids()[third]
    os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = get(first, '/stats/all')
        elapsed = time.monotonic() - started
        metrics = get(first, '/metrics').body.decode()
    finally:
        os.kill(pid, signal.SIGCONT)
    assert response.status == 200, response
    assert elapsed < 3.0, '/stats/all took %.2fs' % elapsed
    documents = {d['port']: d for d in response.json()['ports']}
    assert documents[third] == {'port': third, 'up': False,
                                'error': documents[third]['error']}
    assert 'no answer' in documents[third]['error']
    assert documents[first]['up'] is True
    assert response.json()['totals']['up'] == 2
    assert 'statelessd_up{port="%d"} 0' % third in metrics.splitlines()
    assert 'statelessd_up{port="%d"} 1' % first in metrics.splitlines()
    assert settle(lambda: get(first, '/stats/all').json()['totals']['up']
                  == 3)


def parse_exposition(text):
    """{(name, labels): value} of a text exposition, checking its grammar.

    Every sample must follow the HELP and TYPE lines of its family, and a
    family's samples must stand together.
    """
    assert text.endswith('\n')
    samples, kinds, seen, current = {}, {}, set(), None
    for line in text.splitlines():
        if line.startswith('# HELP '):
            name = line.split()[2]
            assert name not in seen, 'family %s appears twice' % name
            seen.add(name)
            current = name
            continue
        if line.startswith('# TYPE '):
            _, _, name, kind = line.split()
            assert name == current, line
            kinds[name] = kind
            continue
        match = SAMPLE.match(line)
        assert match, 'not a sample line: %r' % line
        name, labels, value = match.groups()
        family = re.sub(r'_(bucket|sum|count)$', '', name) \
            if kinds.get(current) == 'histogram' else name
        assert family == current, '%s outside its family' % name
        pairs = []
        rest = labels or ''
        while rest:
            label = LABEL.match(rest)
            assert label, 'bad labels in %r' % line
            pairs.append((label.group(1), unescape(label.group(2))))
            rest = rest[label.end():]
        key = (name, tuple(pairs))
        assert key not in samples, 'duplicate sample %r' % (key,)
        samples[key] = float(value)
    for name, kind in kinds.items():
        assert kind in ('counter', 'gauge', 'histogram'), kind
        if kind == 'counter':
            assert name.endswith('_total'), name
    return samples, kinds


def unescape(value):
    return re.sub(r'\\(.)', lambda m: {'n': '\n'}.get(m.group(1),
                                                      m.group(1)), value)


@pytest.fixture
def odd_vhost():
    """A vhost whose name needs escaping in a Prometheus label."""
    name = unique('ops"vh\\')
    rabbitmqctl('add_vhost', name)
    rabbitmqctl('set_permissions', '-p', name, GUEST[0], '.*', '.*', '.*')
    yield name
    rabbitmqctl('delete_vhost', name)


def test_metrics_exposition(trio, odd_vhost):
    first, second, _ = trio.ports
    with sink(odd_vhost) as box:
        assert publish(second, box.path(), 'odd').status == 204
        assert box.take(1) == [b'odd']
    response = get(first, '/metrics')
    assert response.status == 200, response
    assert response.headers['Content-Type'].startswith(
        'text/plain; version=0.0.4')
    samples, kinds = parse_exposition(response.body.decode('utf-8'))
    for name, kind in (
            ('statelessd_up', 'gauge'),
            ('statelessd_http_requests_total', 'counter'),
            ('statelessd_http_responses_total', 'counter'),
            ('statelessd_http_request_duration_seconds', 'histogram'),
            ('statelessd_messages_published_total', 'counter'),
            ('statelessd_messages_confirmed_total', 'counter'),
            ('statelessd_messages_nacked_total', 'counter'),
            ('statelessd_messages_returned_total', 'counter'),
            ('statelessd_messages_republished_total', 'counter'),
            ('statelessd_queued_messages', 'gauge'),
            ('statelessd_outbox_messages', 'gauge'),
            ('statelessd_publisher_connected', 'gauge'),
            ('statelessd_publisher_blocked', 'gauge'),
            ('process_cpu_seconds_total', 'counter'),
            ('process_resident_memory_bytes', 'gauge')):
        assert kinds.get(name) == kind, (name, kinds.get(name))
    odd = (('port', str(second)), ('vhost', odd_vhost), ('user', 'guest'))
    assert samples[('statelessd_messages_published_total', odd)] == 1
    assert samples[('statelessd_messages_confirmed_total', odd)] == 1
    assert samples[('statelessd_messages_nacked_total', odd)] == 0
    assert samples[('statelessd_messages_returned_total', odd)] == 0
    assert samples[('statelessd_outbox_messages', odd)] == 0
    assert samples[('statelessd_publisher_connected', odd)] == 1
    assert samples[('statelessd_publisher_blocked', odd)] == 0
    assert '\\"' in response.body.decode() and '\\\\' in \
        response.body.decode()
    for port in trio.ports:
        label = (('port', str(port)),)
        assert samples[('statelessd_up', label)] == 1
        assert samples[('process_cpu_seconds_total', label)] > 0
        assert samples[('process_resident_memory_bytes', label)] > 1e6
        check_histogram(samples, str(port))
    assert samples[('statelessd_http_responses_total',
                    (('port', str(second)), ('code', '204')))] >= 1
    assert samples[('statelessd_http_requests_total',
                    (('port', str(second)), ('method', 'POST')))] >= 1


def check_histogram(samples, port):
    name = 'statelessd_http_request_duration_seconds'
    buckets = sorted(
        (float(labels[1][1]), value) for (sample, labels), value
        in samples.items() if sample == name + '_bucket'
        and labels[0] == ('port', port))
    assert buckets and buckets[-1][0] == float('inf')
    counts = [value for _, value in buckets]
    assert counts == sorted(counts), 'buckets are not cumulative'
    count = samples[(name + '_count', (('port', port),))]
    assert counts[-1] == count and count >= 1
    assert samples[(name + '_sum', (('port', port),))] > 0


def test_health_answers_one_json_line(trio):
    for port in trio.ports:
        response = get(port, '/health')
        assert response.status == 200, response
        assert response.headers['Content-Type'] == 'application/json'
        assert response.body.count(b'\n') == 1 and \
            response.body.endswith(b'\n')
        document = json.loads(response.body)
        assert document.pop('nodes') in ([], ['127.0.0.1:5672']), document
        assert document == {'status': 'ok', 'port': port}
    assert request(trio.ports[0], 'HEAD', '/health').status == 200
    assert request(trio.ports[0], 'POST', '/health').status == 405


def test_health_is_503_when_no_broker_answers(tmp_path):
    dead = free_port()
    overrides = {'Application': {'rabbitmq': {'host': ['127.0.0.1:%d'
                                                       % dead]}}}
    with Statelessd(overrides, directory=tmp_path) as gateway:
        response = get(gateway.ports[0], '/health')
        assert response.status == 503, response
        assert response.headers['Retry-After'] == '5'
        assert response.body.count(b'\n') == 1
        document = json.loads(response.body)
        assert document['status'] == 'unavailable'
        assert '127.0.0.1:%d' % dead in document['reason']
        path = publish_path('/', 'amq.topic', 'rk')
        assert publish(gateway.ports[0], path, 'x').status == 503


def test_a_dead_broker_node_is_skipped(tmp_path):
    """Each publisher starts at a random node, so whether a worker tried
    the dead one first is chance: what holds is that every worker
    publishes, through the live node."""
    dead = free_port()
    overrides = {'Application': {'rabbitmq': {
        'host': ['127.0.0.1:%d' % dead, '127.0.0.1:5672']}}}
    with Statelessd(overrides, ports=2, directory=tmp_path) as gateway, \
            sink() as box:
        for port in gateway.ports:
            response = publish(port, box.path(), 'via-%d' % port)
            assert response.status == 204, response
        assert sorted(box.take(2)) == sorted(b'via-%d' % port
                                             for port in gateway.ports)
        for port in gateway.ports:
            assert get(port, '/health').status == 200
            publishers = get(port, '/stats').json()['connections']
            assert publishers['/:guest']['node'] == '127.0.0.1:5672'
    log = gateway.log()
    assert log.count('Could not connect to 127.0.0.1:%d' % dead) == \
        log.count('Could not connect to')


# ----------------------------------------------------------------------------
# HTTPServer.stats_allow and trusted_proxies: who may read the figures.
# ----------------------------------------------------------------------------


FIGURES = ('/stats', '/', '/stats/all', '/metrics')


def test_loopback_may_read_the_figures_by_default():
    with Statelessd() as server:
        for path in FIGURES:
            assert request(server.port, 'GET', path).status == 200


def test_default_allows_loopback_and_private_networks_only():
    allow = statelessd.Config({}).stats_allow
    for address in ('127.0.0.1', '::1', '10.1.2.3', '172.20.0.1',
                    '192.168.1.1', 'fd00::1'):
        assert any(statelessd.ip_address(address) in net for net in allow)
    for address in ('8.8.8.8', '2001:db8::1', '172.32.0.1'):
        assert not any(statelessd.ip_address(address) in net
                       for net in allow)


def test_ipv4_mapped_addresses_count_as_ipv4():
    assert str(statelessd.ip_address('::ffff:10.0.0.1')) == '10.0.0.1'


def test_clients_outside_stats_allow_get_403():
    with Statelessd({'HTTPServer': {
            'stats_allow': ['10.0.0.0/8']}}) as server:
        for path in FIGURES:
            response = request(server.port, 'GET', path)
            status, document = assert_json_error(response, 403)
            assert '127.0.0.1' in document['reason']
        assert request(server.port, 'GET', '/health').status == 200
        # X-Real-IP means nothing without xheaders.
        response = request(server.port, 'GET', '/stats',
                                   headers={'X-Real-IP': '10.0.0.1'})
        assert_json_error(response, 403)


@pytest.mark.parametrize('headers, status', [
    ({'X-Real-IP': '10.1.2.3'}, 200),
    ({'X-Real-IP': '8.8.8.8'}, 403),
    ({'X-Real-IP': 'not-an-address'}, 403),
    ({'X-Forwarded-For': '10.1.2.3'}, 403),
    ({}, 403),
])
def test_x_real_ip_counts_from_a_trusted_proxy(headers, status):
    with Statelessd({'HTTPServer': {
            'xheaders': True, 'stats_allow': ['10.0.0.0/8']}}) as server:
        response = request(server.port, 'GET', '/stats',
                                   headers=headers)
        assert response.status == status, response


def test_x_real_ip_from_an_untrusted_peer_is_ignored():
    with Statelessd({'HTTPServer': {
            'xheaders': True, 'stats_allow': ['10.0.0.0/8'],
            'trusted_proxies': ['192.0.2.1']}}) as server:
        response = request(server.port, 'GET', '/stats',
                                   headers={'X-Real-IP': '10.1.2.3'})
        assert_json_error(response, 403)


def test_publishing_is_not_subject_to_stats_allow(account):
    with Statelessd({'HTTPServer': {
            'stats_allow': ['10.0.0.0/8']}}) as server:
        assert account.publish(server.port, 'x').status == 204


# ----------------------------------------------------------------------------
# The dashboard at /: built in or from Application.paths.templates, and
# rendered by a real headless Chromium.
# ----------------------------------------------------------------------------


def chromium(url, profile, *output):
    """Run headless Chromium on url; output is --dump-dom or --screenshot."""
    binary = require_tool('chromium')
    command = [binary, '--headless', '--no-sandbox', '--disable-gpu',
               '--disable-quic', '--no-first-run',
               '--disable-background-networking',
               '--disable-component-update', '--disable-sync',
               '--user-data-dir=%s' % profile, '--window-size=1280,900',
               '--virtual-time-budget=8000'] + list(output) + [url]
    result = subprocess.run(command, capture_output=True, timeout=180,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr.decode(errors='replace')
    return result.stdout.decode('utf-8')


class Dashboard(html.parser.HTMLParser):
    """Port cards and their vhost:user rows from a rendered dashboard."""

    def __init__(self, text):
        super().__init__()
        self.ports = {}
        self.figures = {}
        self._port = self._row = self._field = None
        self._figure = self._value = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == 'article' and 'data-port' in attrs:
            self._port = self.ports[int(attrs['data-port'])] = {
                'up': attrs['data-up'] == 'true', 'rows': {}, 'text': ''}
        elif tag == 'tr' and 'data-key' in attrs and self._port is not None:
            self._row = self._port['rows'][attrs['data-key']] = {}
        elif tag == 'td' and 'data-field' in attrs and self._row is not None:
            self._field = attrs['data-field']
            self._row[self._field] = ''
        elif tag == 'div' and attrs.get('class') == 'figure':
            self._figure = attrs['id']
        elif tag == 'div' and attrs.get('class') == 'value' and self._figure:
            self._value = self._figure
            self.figures[self._value] = ''

    def handle_endtag(self, tag):
        if tag == 'td':
            self._field = None
        elif tag == 'tr':
            self._row = None
        elif tag == 'article':
            self._port = None
        elif tag == 'div' and self._value is not None:
            self._figure = self._value = None

    def handle_data(self, data):
        if self._field is not None:
            self._row[self._field] += data
        if self._port is not None:
            self._port['text'] += data
        if self._value is not None:
            self.figures[self._value] += data


def count(text):
    return int(text.replace(',', ''))


def test_chromium_renders_every_port(tmp_path):
    with Statelessd(ports=3, directory=tmp_path) as gateway, sink() as box:
        first, second, hung = gateway.ports
        for port, number in ((first, 3), (second, 5)):
            for index in range(number):
                assert publish(port, box.path(),
                               'd%d' % index).status == 204
        box.take(8)
        assert settle(lambda: all(
            get(p, '/stats').json()['connections']['/:guest']['confirmed']
            for p in (first, second)))
        pid = gateway.worker_pids()[hung]
        os.kill(pid, signal.SIGSTOP)
        try:
            dom = chromium('http://127.0.0.1:%d/' % first,
                           tmp_path / 'profile', '--dump-dom')
            screenshot = tmp_path / 'dashboard.png'
            chromium('http://127.0.0.1:%d/' % second, tmp_path / 'profile',
                     '--screenshot=%s' % screenshot)
        finally:
            os.kill(pid, signal.SIGCONT)
    page = Dashboard(dom)
    assert sorted(page.ports) == sorted(gateway.ports), dom[-3000:]
    for port, number in ((first, 3), (second, 5)):
        card = page.ports[port]
        assert card['up'], card
        row = card['rows']['/:guest']
        assert row['connected'] == 'yes', row
        assert row['node'] == '127.0.0.1:5672', row
        assert row['blocked'] == 'no', row
        assert count(row['publishes']) == number, row
        assert count(row['confirmed']) == number, row
        assert '204 \u00d7 %d' % number in card['text'], card['text']
    assert not page.ports[hung]['up']
    assert 'down' in page.ports[hung]['text']
    assert page.figures['total-ports'] == '2 / 3'
    assert count(page.figures['total-publishes']) == 8
    assert count(page.figures['total-messages']) == 8
    assert page.figures['total-connections'] == '2 / 2'
    assert screenshot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert screenshot.stat().st_size > 20000


def test_builtin_page_is_self_contained_and_served_by_every_port(tmp_path):
    with Statelessd(ports=2, directory=tmp_path) as gateway:
        pages = [get(port, '/') for port in gateway.ports]
    assert pages[0].body == pages[1].body
    for page in pages:
        assert page.status == 200
        assert page.headers['Content-Type'] == 'text/html; charset=utf-8'
    text = pages[0].body.decode('utf-8')
    assert '/stats/all' in text
    assert not re.search(r'<script[^>]+src=|<link[^>]+stylesheet|@import|'
                         r'url\(', text)
    urls = set(re.findall(r'https?://[^"\s]*', text))
    assert urls <= {'http://www.w3.org/2000/svg'}, urls


def test_a_dashboard_template_replaces_the_page(tmp_path):
    base = tmp_path / 'site'
    (base / 'templates').mkdir(parents=True)
    (base / 'static' / 'css').mkdir(parents=True)
    (base / 'templates' / 'dashboard.html').write_text(
        '<!DOCTYPE html><link rel="stylesheet" href="/static/css/ops.css">'
        '<p>our own dashboard</p>')
    (base / 'static' / 'css' / 'ops.css').write_text('p { color: red }\n')
    (tmp_path / 'secret.txt').write_text('not for the web')
    paths = {'Application': {'paths': {'base': str(base),
                                       'templates': 'templates',
                                       'static': 'static'}}}
    with Statelessd(paths, directory=tmp_path) as gateway:
        port = gateway.ports[0]
        page = get(port, '/')
        assert page.status == 200
        assert b'<p>our own dashboard</p>' in page.body
        css = get(port, '/static/css/ops.css')
        assert css.status == 200
        assert css.headers['Content-Type'] == 'text/css'
        assert css.body == b'p { color: red }\n'
        for path in ('/static/../../secret.txt', '/static/%2e%2e/%2e%2e/'
                     'secret.txt', '/static/css', '/static/missing.css'):
            response = get(port, path)
            assert response.status == 404, (path, response)
        assert get(port, '/stats/all').status == 200
    assert 'templates' not in gateway.log()


def test_a_missing_template_is_one_warning(tmp_path):
    (tmp_path / 'templates').mkdir()
    paths = {'Application': {'paths': {'templates':
                                       str(tmp_path / 'templates')}}}
    with Statelessd(paths, ports=3, directory=tmp_path) as gateway:
        page = get(gateway.ports[2], '/')
        assert page.status == 200 and b'/stats/all' in page.body
    warnings = [line for line in gateway.log().splitlines()
                if 'Application.paths.templates' in line]
    assert len(warnings) == 1, warnings
    assert 'WARNING' in warnings[0] and 'dashboard.html' in warnings[0]
