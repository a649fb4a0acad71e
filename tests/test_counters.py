"""The stat declarations of statelessd_stats drive /stats, the /stats/all
totals, /metrics and the dashboard's publisher table; adding a stat is one
declaration plus its increment."""
import json
import re
import types
from pathlib import Path

import pytest

import statelessd_stats

#: What Publisher.report adds to its counters' report.
PUBLISHER_FACTS = {'node': '127.0.0.1:5672', 'blocked': False,
                   'blocked_by': None, 'publishing': 'batched'}


def declared(module=statelessd_stats):
    return (module.PORT_STATS + module.REQUEST_STATS
            + module.PUBLISHER_STATS)


def declared_families(module=statelessd_stats):
    return {stat.metric: (stat.kind, stat.description)
            for stat in declared(module) if stat.metric}


def exposed_families(text):
    """{name: (kind, help)} of a Prometheus text exposition."""
    helps, kinds = {}, {}
    for line in text.splitlines():
        if line.startswith('# HELP '):
            _, _, name, description = line.split(' ', 3)
            helps[name] = description
        elif line.startswith('# TYPE '):
            _, _, name, kind = line.split(' ')
            kinds[name] = kind
    assert set(helps) == set(kinds)
    return {name: (kinds[name], helps[name]) for name in helps}


def publisher_report(module, **counts):
    """One publisher's /stats entry, its counters incremented to counts."""
    counters = module.ConnectionCounters()
    for key, count in counts.items():
        for _ in range(count):
            setattr(counters, key, getattr(counters, key) + 1)
    report = counters.report(queue_size=2, outbox=1)
    report.update(PUBLISHER_FACTS)
    return report


def port_documents(module, **counts):
    """A /stats document of a port that answered (requests of every kind,
    two publishers) and the entry of one that did not."""
    requests = module.RequestCounters()
    requests.record('POST', 204, 0.002, 3)
    requests.record('GET', 200, 0.001)
    connections = {'/:guest': publisher_report(module, **counts),
                   'other:guest': publisher_report(module, **counts)}
    document = module.stats_document('localhost', 8000, requests,
                                     connections)
    document['up'] = True
    return [document, {'port': 8001, 'up': False, 'error': 'no answer'}]


def dashboard_columns(page):
    match = re.search(rb'const COLUMNS = (.*);', page)
    assert match, 'the dashboard has no COLUMNS'
    return json.loads(match.group(1))


def extended(declaration):
    """statelessd_stats with one more line in PUBLISHER_STATS."""
    path = Path(statelessd_stats.__file__)
    source = path.read_text()
    anchor = 'PUBLISHER_STATS = (\n'
    assert source.count(anchor) == 1
    module = types.ModuleType('statelessd_stats_extended')
    code = compile(source.replace(anchor, anchor + declaration + '\n'),
                   str(path), 'exec')
    exec(code, module.__dict__)
    return module


def test_metrics_families_are_the_declared_ones():
    text = statelessd_stats.prometheus_text(port_documents(statelessd_stats))
    assert exposed_families(text) == declared_families()


def test_every_declared_publisher_stat_is_reported_and_summed():
    documents = port_documents(statelessd_stats, publishes=3, confirmed=2)
    report = documents[0]['connections']['/:guest']
    assert set(report) >= {stat.key
                           for stat in statelessd_stats.PUBLISHER_STATS}
    totals = statelessd_stats.totals(documents)
    for stat in statelessd_stats.PUBLISHER_METRICS:
        assert totals[stat.key] == 2 * report[stat.key], stat
    assert totals['publishes'] == 6 and totals['queue_size'] == 4


def test_dashboard_columns_follow_the_declaration():
    columns = dashboard_columns(statelessd_stats.DASHBOARD)
    assert columns == [[stat.key, stat.column]
                       for stat in statelessd_stats.PUBLISHER_STATS
                       if stat.column]
    assert [heading for _, heading in columns] == [
        'connected', 'node', 'blocked', 'publishes', 'confirmed', 'nacked',
        'returned', 'queued', 'outbox']


def test_request_counts_are_named_for_stats_and_labelled_for_metrics():
    document = port_documents(statelessd_stats)[0]
    requests = dict(document['requests'])
    assert requests.pop('processing_time') == pytest.approx(0.003)
    assert requests == {'response.204': 1, 'response.200': 1,
                        'method.POST': 1, 'method.GET': 1, 'messages': 3}
    lines = statelessd_stats.prometheus_text([document]).splitlines()
    for sample in ('statelessd_http_responses_total{port="8000",code="204"}'
                   ' 1', 'statelessd_http_requests_total{port="8000",'
                   'method="GET"} 1', 'statelessd_http_messages_total'
                   '{port="8000"} 3'):
        assert sample in lines


def test_unlabelled_request_counts_are_reported_from_the_start():
    report = statelessd_stats.RequestCounters().report()
    assert report == {'messages': 0, 'processing_time': 0.0}


def test_a_misspelt_increment_fails():
    counters = statelessd_stats.ConnectionCounters()
    with pytest.raises(AttributeError):
        counters.publishd = 1


def test_adding_a_counter_is_one_declaration_plus_its_increment():
    module = extended(
        "    Stat('dropped', COUNTER, 'statelessd_messages_dropped_total', "
        "'Messages dropped.', column='dropped'),")
    documents = port_documents(module, dropped=2)
    assert documents[0]['connections']['/:guest']['dropped'] == 2
    assert module.totals(documents)['dropped'] == 4
    text = module.prometheus_text(documents)
    assert exposed_families(text) == dict(
        declared_families(),
        statelessd_messages_dropped_total=('counter', 'Messages dropped.'))
    assert ('statelessd_messages_dropped_total{port="8000",vhost="/",'
            'user="guest"} 2') in text.splitlines()
    assert ['dropped', 'dropped'] in dashboard_columns(module.DASHBOARD)


def test_a_live_worker_reports_what_is_declared(http, statelessd, target):
    """The publisher fills in every declared figure, and /metrics has
    every declared family and no other."""
    port = statelessd().port
    assert http.post(port, target.path(), {'body': 'counted'}).status == 204
    target.one()
    stats = http.get(port, '/stats').json()
    for report in stats['connections'].values():
        assert set(report) >= {stat.key
                               for stat in statelessd_stats.PUBLISHER_STATS}
    metrics = http.get(port, '/metrics').body.decode('utf-8')
    assert exposed_families(metrics) == declared_families()
