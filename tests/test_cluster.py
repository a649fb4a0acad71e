"""A three-node RabbitMQ cluster with a quorum queue: node failures under
load, and resource alarms.

The cluster is the tests' own: three private nodes on free ports, joined
with rabbitmqctl join_cluster, started once for the module.  statelessd
lists all three in Application.rabbitmq.host.  Every scenario posts a mix
of fire-and-forget and ?confirm=1 messages while a node fails, and ends
with every message answered 204 in the quorum queue; duplicates are
allowed and counted.  A test that stops a node or raises an alarm starts
the node again, or clears the alarm, in a finally block.
"""
import time

import pytest

from support import (Http, Load, PrivateBroker, check_error, drained,
                     received_ids, stats, unique, wait_until)


class Cluster:
    """Three private RabbitMQ nodes joined into one cluster."""

    def __init__(self):
        self.nodes = [PrivateBroker() for _ in range(3)]

    def start(self):
        for node in self.nodes:
            node.launch()
        for node in self.nodes:
            node.await_started()
        first = self.nodes[0]
        for node in self.nodes[1:]:
            node.ctl('stop_app')
            node.ctl('join_cluster', first.name)
            node.start_app()

    def remove(self):
        for node in self.nodes:
            node.remove()

    def hosts(self):
        return ['127.0.0.1:%d' % node.port for node in self.nodes]

    def node_at(self, address):
        [node] = [n for n in self.nodes if '127.0.0.1:%d' % n.port == address]
        return node

    def running_node(self, besides=None):
        return next(node for node in self.nodes
                    if node is not besides and node.is_running())

    def ensure_running(self, node):
        """Start a node that was stopped or killed; it rejoins by itself."""
        if not node.is_running():
            node.start()
        else:
            node.start_app()


@pytest.fixture(scope='module')
def cluster():
    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


def quorum_target(node):
    """A durable exchange bound to a quorum queue with a member on every
    node; returns its name."""
    name = unique('statelessd.quorum.')
    channel = node.channel()
    channel.exchange_declare(name, 'topic', durable=True)
    channel.queue_declare(name, durable=True,
                          arguments={'x-queue-type': 'quorum'})
    channel.queue_bind(name, name, '#')
    channel.connection.close()
    return name


def cluster_gateway(statelessd, cluster, ports=1, **rabbitmq):
    settings = {'host': cluster.hosts(), 'confirm_timeout': 10,
                'connect_timeout': 3, 'max_queue_size': 100000}
    settings.update(rabbitmq)
    return statelessd(ports, {'Application': {'rabbitmq': settings}})


def connected_node(server, cluster, name):
    """The node the /:guest publisher is connected to, after a first
    message to the target called name."""
    response = Http().post(server.port, '/%%2f/%s/warm-up' % name,
                           {'body': 'warm-up'})
    assert response.status == 204, response
    wait_until(lambda: publisher(server).get('node'), 30,
               'statelessd connects to no node: %s' % publisher(server))
    return cluster.node_at(publisher(server)['node'])


def publisher(server):
    return stats(server.port)['connections'].get('/:guest', {})


class MixedLoad:
    """Fire-and-forget and confirm-mode clients on one target."""

    def __init__(self, port, name):
        self.loads = [
            Load(port, '/%%2f/%s/f' % name, threads=3, prefix='f'),
            Load(port, '/%%2f/%s/c?confirm=1' % name, threads=3,
                 prefix='c')]

    def __enter__(self):
        for load in self.loads:
            load.__enter__()
        return self

    def __exit__(self, *exc):
        for load in self.loads:
            load.__exit__()

    def accepted(self):
        return set().union(*(load.accepted() for load in self.loads))

    def statuses(self):
        return [status for load in self.loads
                for status in load.statuses.values()]


def check_delivered(server, cluster, name, load, scenario):
    """Every message answered 204 is in the quorum queue; returns the
    counts for the scenario."""
    wait_until(lambda: drained(server.port), 120,
               'statelessd did not deliver its backlog: %s'
               % stats(server.port)['connections'])
    channel = cluster.running_node().channel()
    received = received_ids(channel, name)
    accepted = load.accepted()
    lost = accepted - set(received)
    statuses = load.statuses()
    counters = publisher(server)
    counts = {'accepted': len(accepted), 'received': len(received),
              'duplicates': len(received) - len(set(received)),
              'lost': len(lost),
              'refused': sum(1 for status in statuses if status != 204),
              'nacked': counters['nacked'],
              'republished': counters['republished']}
    print('%s: %s' % (scenario, counts))
    assert len(accepted) > 100, counts
    assert not lost, 'lost %d: %s' % (len(lost), sorted(lost)[:20])
    assert set(statuses) <= {204, 503, 504}, set(statuses)
    channel.queue_delete(name)
    channel.exchange_delete(name)
    channel.connection.close()
    return counts


def outage_of_the_connected_node(statelessd, cluster, scenario, outage):
    """Run outage(server, node) on the node statelessd publishes to, under
    load, and check that every message answered 204 arrived; the server."""
    name = quorum_target(cluster.nodes[0])
    server = cluster_gateway(statelessd, cluster)
    victim = connected_node(server, cluster, name)
    try:
        with MixedLoad(server.port, name) as load:
            time.sleep(1.5)
            outage(server, victim)
    finally:
        cluster.ensure_running(victim)
    check_delivered(server, cluster, name, load, scenario)
    return server


def test_kill_9_of_the_connected_node(statelessd, cluster):
    def kill(server, victim):
        victim.kill()
        wait_until(lambda: publisher(server)['node'] not in
                   (None, '127.0.0.1:%d' % victim.port), 30,
                   'statelessd did not move to another node: %s'
                   % publisher(server))
        time.sleep(3.0)
    server = outage_of_the_connected_node(statelessd, cluster, 'kill -9',
                                          kill)
    assert publisher(server)['connections']['opened'] >= 2


def test_stop_app_and_start_app_of_the_connected_node(statelessd, cluster):
    def stop_and_start(server, victim):
        victim.stop_app()
        time.sleep(3.0)
        victim.start_app()
        time.sleep(1.0)
    outage_of_the_connected_node(statelessd, cluster, 'stop_app/start_app',
                                 stop_and_start)


def test_rolling_restart_under_load(statelessd, cluster):
    name = quorum_target(cluster.nodes[0])
    server = cluster_gateway(statelessd, cluster)
    connected_node(server, cluster, name)
    with MixedLoad(server.port, name) as load:
        for node in cluster.nodes:
            time.sleep(1.0)
            try:
                node.stop_app()
                time.sleep(1.0)
            finally:
                node.start_app()
        time.sleep(1.0)
    check_delivered(server, cluster, name, load, 'rolling restart')


def test_connected_node_stopped_while_the_quorum_holds(statelessd, cluster):
    """The whole node goes away; /health and /stats name the node each
    worker is connected to, before and after."""
    name = quorum_target(cluster.nodes[0])
    server = cluster_gateway(statelessd, cluster)
    victim = connected_node(server, cluster, name)
    http = Http()
    health = http.get(server.port, '/health').json()
    assert health['nodes'] == ['127.0.0.1:%d' % victim.port], health
    try:
        with MixedLoad(server.port, name) as load:
            time.sleep(1.0)
            victim.ctl('stop')
            wait_until(lambda: publisher(server)['node'] not in
                       (None, '127.0.0.1:%d' % victim.port), 30,
                       'statelessd did not move to another node')
            time.sleep(2.0)
            health = http.get(server.port, '/health')
        assert health.status == 200, health
        now = publisher(server)['node']
        assert health.json()['nodes'] == [now]
        assert now in cluster.hosts() and now != '127.0.0.1:%d' % victim.port
    finally:
        cluster.ensure_running(victim)
    check_delivered(server, cluster, name, load, 'node stopped')


def test_workers_spread_over_the_nodes(statelessd, cluster):
    """Each publisher starts at a random node: eight workers do not all
    pick the first one."""
    name = quorum_target(cluster.nodes[0])
    server = cluster_gateway(statelessd, cluster, ports=8)
    http = Http()
    for port in server.ports:
        assert http.post(port, '/%%2f/%s/k' % name, {'body': 'x'}).status \
            == 204
    nodes = {stats(port)['connections']['/:guest']['node']
             for port in server.ports}
    assert len(nodes) >= 2, nodes
    channel = cluster.nodes[0].channel()
    channel.queue_delete(name)
    channel.exchange_delete(name)
    channel.connection.close()


ALARMS = {
    'memory': (('set_vm_memory_high_watermark', '0.0001'),
               ('set_vm_memory_high_watermark', '0.4')),
    'disk': (('set_disk_free_limit', '100000GB'),
             ('set_disk_free_limit', '50MB'))}


@pytest.fixture(params=sorted(ALARMS))
def alarm(request, cluster):
    """alarm.raise_() sets off a memory or disk alarm on the first node;
    it is cleared in a finally block."""
    node = cluster.nodes[0]
    raise_alarm, clear_alarm = ALARMS[request.param]
    alarm = type('Alarm', (), {})()
    alarm.kind = request.param
    alarm.node = node
    alarm.raise_ = lambda: node.ctl(*raise_alarm)
    alarm.clear = lambda: node.ctl(*clear_alarm)
    try:
        yield alarm
    finally:
        alarm.clear()


def test_resource_alarm_refuses_what_would_wait_and_keeps_the_rest(
        statelessd, cluster, alarm):
    name = quorum_target(alarm.node)
    server = cluster_gateway(statelessd, cluster, max_queue_size=40,
                             confirm_timeout=30)
    http = Http()
    path = '/%%2f/%s/k' % name
    accepted = []

    def post(message_id, query=''):
        response = http.post(server.port, path + query,
                             {'message_id': message_id, 'delivery_mode': 2})
        if response.status == 204:
            accepted.append(message_id)
        return response

    assert post('before').status == 204
    alarm.raise_()
    # RabbitMQ tells a connection it is blocked when it next publishes: a
    # confirm request then is confirmed (sent before the block) or answered
    # 503 naming the alarm, never left to wait out confirm_timeout.
    for attempt in range(100):
        answer = post('while-blocking-%d' % attempt, '?confirm=1')
        if answer.status != 204:
            break
        time.sleep(0.2)
    check_error(answer, 503, [alarm.kind])
    assert answer.header('Retry-After')
    counters = publisher(server)
    assert counters['blocked'] and alarm.kind in counters['blocked_by'], \
        counters

    refused = post('confirmed', '?confirm=1')
    check_error(refused, 503, [alarm.kind])
    assert refused.header('Retry-After')
    answers = [post('blocked-%d' % n) for n in range(60)]
    statuses = [answer.status for answer in answers]
    assert statuses[0] == 204 and statuses[-1] == 503, statuses
    check_error(answers[-1], 503, ['holds'])
    assert answers[-1].header('Retry-After')

    health = http.get(server.port, '/health')
    assert health.status == 503, health
    assert alarm.kind in health.json()['reason'], health.json()
    metrics = http.get(server.port, '/metrics').body.decode()
    assert 'statelessd_publisher_blocked{port="%d",vhost="/",user="guest"} 1' \
        % server.port in metrics, metrics
    all_stats = http.get(server.port, '/stats/all').json()
    assert all_stats['totals']['blocked'] == 1

    alarm.clear()
    wait_until(lambda: not publisher(server)['blocked'], 30,
               'the alarm did not clear: %s' % publisher(server))
    wait_until(lambda: drained(server.port), 30,
               'not delivered after the alarm: %s' % publisher(server))
    assert http.get(server.port, '/health').status == 200
    channel = alarm.node.channel()
    received = received_ids(channel, name)
    lost = set(accepted) - set(received)
    print('%s alarm: accepted %d, received %d, lost %d'
          % (alarm.kind, len(accepted), len(received), len(lost)))
    assert not lost, sorted(lost)
    assert publisher(server)['connections'] == {'opened': 1, 'closed': 0}
    channel.queue_delete(name)
    channel.exchange_delete(name)
    channel.connection.close()
