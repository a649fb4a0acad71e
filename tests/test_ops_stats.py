"""/stats/all, /metrics and /health across the ports of one statelessd,
and publishing through a broker host list whose first node is dead."""
import json
import os
import re
import signal
import time

import pytest

from ops_support import (GUEST, free_port, get, publish, publish_path,
                         rabbitmqctl, request, running, settle, sink, unique)

#: The keys of the original per-process /stats document.
STATS_KEYS = {'timestamp', 'block', 'context_switches', 'cpu_time',
              'memory_usage', 'page_faults', 'page_size', 'signals_received',
              'swap_outs', 'host', 'port', 'requests', 'connections'}
SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"'
                   r'(,|$)')


@pytest.fixture(scope='module')
def trio(tmp_path_factory):
    """One statelessd serving three ports."""
    with running(tmp_path_factory.mktemp('trio'), ports=3) as gateway:
        yield gateway


def publishes(document, key='/:guest'):
    entry = document['connections'].get(key)
    return entry['publishes'] if entry else 0


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
    with running(tmp_path, overrides=overrides) as gateway:
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
    with running(tmp_path, ports=2, overrides=overrides) as gateway, \
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
