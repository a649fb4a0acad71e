"""No message lost: confirms, broker outages, channel loss, spool, shutdown.

Tests that stop a broker do it to a private RabbitMQ node started for this
module on its own ports, so nothing else using the machine's broker is
disturbed; the node is started again in a finally block and removed at the
end.
"""
import json
import os
import signal
import subprocess
import sys
import time

import pika
import pytest

from support import (Http, Load, PrivateBroker, arrived_ids, check_error,
                     drained, durable_target, free_port, gateway, rabbitmqctl,
                     received_ids, stats, unique, wait_until, write_config)

import statelessd_amqp


@pytest.fixture(scope='module')
def private_broker():
    broker = PrivateBroker()
    try:
        broker.start()
        yield broker
    finally:
        broker.remove()


@pytest.fixture
def outage(private_broker):
    """stop_app/start_app on the private node; always started again."""
    try:
        yield private_broker
    finally:
        private_broker.start_app()


@pytest.mark.parametrize('confirm', [False, True],
                         ids=['fire-and-forget', 'confirm'])
def test_broker_restart_under_load_loses_nothing(statelessd, outage,
                                                 confirm):
    channel = outage.channel()
    name = durable_target(channel)
    server = gateway(statelessd, outage)
    path = '/%%2f/%s/load?confirm=%d' % (name, confirm)
    assert Http().post(server.port, path, {'body': 'warm-up'}).status == 204
    with Load(server.port, path) as load:
        time.sleep(1.0)
        outage.stop_app()
        time.sleep(2.0)
        outage.start_app()
        time.sleep(1.0)
    channel = outage.channel()
    wait_until(lambda: drained(server.port), 60,
               'statelessd did not deliver its backlog: %s'
               % stats(server.port)['connections'])
    received = set(received_ids(channel, name))
    lost = load.accepted() - received
    print('accepted %d, received %d, lost %d, answered 504: %d, 503: %d'
          % (len(load.accepted()), len(received), len(lost), load.count(504),
             load.count(503)))
    assert len(load.accepted()) > 100
    assert not lost, 'lost %d messages: %s' % (len(lost), sorted(lost)[:20])
    assert set(load.statuses.values()) <= {204, 503, 504}, load.statuses
    counters = stats(server.port)['connections']['/:guest']
    assert counters['connections']['opened'] >= 2
    channel.queue_delete(name)
    channel.exchange_delete(name)


def test_channel_closed_under_load_loses_nothing(statelessd, amqp_root):
    """Deleting an exchange mid-stream closes the publishing channel."""
    channel = amqp_root.channel
    first = durable_target(channel)
    second = unique('statelessd.second.')

    def declare_second():
        channel.exchange_declare(second, 'topic', arguments={
            'alternate-exchange': first})

    declare_second()
    server = statelessd(1)
    loads = [Load(server.port, '/%%2f/%s/a' % first, threads=2, prefix='a'),
             Load(server.port, '/%%2f/%s/b' % second, threads=2, prefix='b')]
    for load in loads:
        assert Http().post(server.port, load.path, {'body': 'x'}).status \
            == 204
        load.__enter__()
    try:
        time.sleep(0.7)
        channel.exchange_delete(second)
        time.sleep(0.7)
        declare_second()
        time.sleep(0.7)
    finally:
        for load in loads:
            load.__exit__()
    wait_until(lambda: drained(server.port), 30,
               'statelessd did not deliver its backlog: %s'
               % stats(server.port)['connections'])
    received = set(received_ids(channel, first))
    accepted = loads[0].accepted() | loads[1].accepted()
    lost = accepted - received
    print('accepted %d, received %d, lost %d'
          % (len(accepted), len(received), len(lost)))
    assert not lost, sorted(lost)[:20]
    counters = stats(server.port)['connections']['/:guest']
    assert counters['channels']['closed'] >= 1, counters
    assert set(loads[0].statuses.values()) == {204}
    assert set(loads[1].statuses.values()) <= {204, 404}
    channel.queue_delete(first)
    channel.exchange_delete(first)
    channel.exchange_delete(second)


def test_second_stream_messages_all_arrive_after_exchange_returns(
        statelessd, amqp_root):
    """Messages answered 204 for a deleted exchange wait for its return."""
    channel = amqp_root.channel
    sink = durable_target(channel)
    name = unique('statelessd.gone.')
    channel.exchange_declare(name, 'topic',
                             arguments={'alternate-exchange': sink})
    server = statelessd(1)
    http = Http()
    path = '/%%2f/%s/k' % name
    assert http.post(server.port, path, {'message_id': 'first'}).status == 204
    channel.exchange_delete(name)
    answers = [http.post(server.port, path, {'message_id': 'm%d' % n})
               for n in range(5)]
    accepted = {'m%d' % n for n, r in enumerate(answers) if r.status == 204}
    assert all(r.status in (204, 404) for r in answers), answers
    channel.exchange_declare(name, 'topic',
                             arguments={'alternate-exchange': sink})
    wait_until(lambda: drained(server.port), 30, 'backlog not delivered')
    time.sleep(0.5)
    received = set(received_ids(channel, sink))
    assert 'first' in received
    assert accepted <= received
    channel.queue_delete(sink)
    channel.exchange_delete(sink)
    channel.exchange_delete(name)


def full_queue(channel, routing_key):
    """A direct exchange and a bound queue that holds one message and
    rejects (nacks) every publish beyond it: (exchange, queue)."""
    exchange = unique('statelessd.nack.')
    channel.exchange_declare(exchange, 'direct')
    full = unique('statelessd.full.')
    channel.queue_declare(full, arguments={'x-max-length': 1,
                                           'x-overflow': 'reject-publish'})
    channel.queue_bind(full, exchange, routing_key)
    return exchange, full


def test_confirm_mode_answers_from_the_broker(statelessd, amqp_root):
    channel = amqp_root.channel
    exchange, full = full_queue(channel, 'full')
    server = statelessd(1)
    http = Http()
    base = '/%%2f/%s/' % exchange

    assert http.post(server.port, base + 'full?confirm=1',
                     {'body': 'one'}).status == 204
    nacked = http.post(server.port, base + 'full?confirm=1', {'body': 'two'})
    check_error(nacked, 503, ['nack'])
    assert nacked.header('Retry-After')

    unroutable = http.post(server.port, base + 'nowhere?confirm=1&mandatory=1',
                           {'body': 'lost'})
    check_error(unroutable, 422, [exchange, 'nowhere'])
    # The same without confirm mode is accepted, counted and logged.
    assert http.post(server.port, base + 'nowhere?mandatory=1',
                     {'body': 'x'}).status == 204
    wait_until(lambda: stats(server.port)['connections']['/:guest']
               ['returned'] == 2, 10, 'returns not counted')
    counters = stats(server.port)['connections']['/:guest']
    assert counters['nacked'] == statelessd_amqp.NACK_RETRIES
    assert counters['confirmed'] >= 1
    assert 'Returned unroutable' in server.log()
    bad = http.post(server.port, base + 'full?confirm=maybe', {'body': 'x'})
    check_error(bad, 400, ['confirm'])
    channel.queue_delete(full)
    channel.exchange_delete(exchange)


def test_nacked_messages_answered_204_wait_for_room(statelessd, amqp_root):
    """A queue that rejects publishes nacks; what was answered 204 is
    published again, on fresh channels, until the queue takes it."""
    channel = amqp_root.channel
    exchange, full = full_queue(channel, 'k')
    server = statelessd(1)
    http = Http()
    path = '/%%2f/%s/k' % exchange
    ids = ['first'] + ['held-%d' % n for n in range(5)]
    for message_id in ids:
        assert http.post(server.port, path,
                         {'message_id': message_id}).status == 204
    wait_until(lambda: stats(server.port)['connections']['/:guest']
               ['nacked'] >= 5, 10, 'the full queue nacked nothing')
    missing = set(ids) - arrived_ids(channel, full, ids, 60)
    assert not missing, 'never delivered: %s' % sorted(missing)
    wait_until(lambda: drained(server.port), 10, 'not drained')
    counters = stats(server.port)['connections']['/:guest']
    assert counters['channels']['closed'] >= 1, counters
    assert 'publishing it again on fresh channels' in server.log()
    channel.queue_delete(full)
    channel.exchange_delete(exchange)


def test_confirm_default_from_configuration(statelessd, amqp_root):
    channel = amqp_root.channel
    exchange = unique('statelessd.confirm.')
    channel.exchange_declare(exchange, 'direct')
    server = statelessd(1, {'Application': {'rabbitmq': {'confirm': True}}})
    http = Http()
    unroutable = http.post(server.port, '/%%2f/%s/x?mandatory=1' % exchange,
                           {'body': 'x'})
    check_error(unroutable, 422, [exchange])
    opted_out = http.post(server.port,
                          '/%%2f/%s/x?mandatory=1&confirm=0' % exchange,
                          {'body': 'x'})
    assert opted_out.status == 204
    channel.exchange_delete(exchange)


def test_confirm_timeout_is_504(statelessd, private_broker):
    """A broker that stops answering (SIGSTOP) never confirms."""
    channel = private_broker.channel()
    name = durable_target(channel)
    server = gateway(statelessd, private_broker, confirm_timeout=1.5)
    http = Http()
    path = '/%%2f/%s/k?confirm=1' % name
    assert http.post(server.port, path, {'message_id': 'before'}).status \
        == 204
    broker_pid = int(open(private_broker.env['RABBITMQ_PID_FILE']).read())
    os.kill(broker_pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        late = http.post(server.port, path, {'message_id': 'late'})
        elapsed = time.monotonic() - started
    finally:
        os.kill(broker_pid, signal.SIGCONT)
    check_error(late, 504, ['confirm'])
    assert 1.4 < elapsed < 5, elapsed
    channel.queue_delete(name)
    channel.exchange_delete(name)


def spool_directory(tmp_path):
    directory = tmp_path / 'spool'
    directory.mkdir(mode=0o700)
    return directory


def test_spool_replays_after_kill_9_during_outage(statelessd, outage,
                                                  tmp_path):
    channel = outage.channel()
    name = durable_target(channel)
    directory = spool_directory(tmp_path)
    server = statelessd(1, {'Application': {
        'spool': str(directory),
        'rabbitmq': {'host': '127.0.0.1', 'port': outage.port,
                     'connect_timeout': 2}}})
    http = Http()
    path = '/%%2f/%s/k' % name
    assert http.post(server.port, path, {'message_id': 'warm'}).status == 204
    outage.stop_app()
    ids = ['spooled-%d' % n for n in range(25)]
    for message_id in ids:
        response = http.post(server.port, path, {'message_id': message_id,
                                                 'delivery_mode': '2'})
        assert response.status == 204, response
    spool_file = directory / ('statelessd-%d.spool' % server.port)
    assert spool_file.stat().st_size > 0
    assert oct(spool_file.stat().st_mode & 0o777) == oct(0o600)
    assert oct(directory.stat().st_mode & 0o777) == oct(0o700)

    [worker] = server.children()
    os.kill(worker, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: server.children() not in ([], [worker]),
               5, 'the master did not restart the killed worker')
    wait_until(lambda: http.get(server.port, '/stats').status == 200, 5,
               'the new worker does not serve')
    print('worker restarted and serving after %.2fs'
          % (time.monotonic() - killed_at))
    assert 'killed by signal 9' in server.log()

    outage.start_app()
    channel = outage.channel()
    missing = set(ids) - arrived_ids(channel, name, ids, 60)
    assert not missing, 'not replayed: %s' % sorted(missing)
    assert 'Replaying 25 spooled messages' in server.log()
    channel.queue_delete(name)
    channel.exchange_delete(name)


def test_full_spool_refuses_with_503_and_keeps_serving(statelessd,
                                                     amqp_root, tmp_path):
    """A spool that cannot be written answers 503 rather than hang or
    answer 204 for a message that is not on disk."""
    channel = amqp_root.channel
    name = durable_target(channel)
    directory = tmp_path / 'full'
    directory.mkdir(mode=0o700)
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=64k,mode=0700',
                    'tmpfs', str(directory)], check=True)
    try:
        server = statelessd(1, {'Application': {'spool': str(directory)}})
        http = Http()
        path = '/%%2f/%s/k' % name
        assert http.post(server.port, path, {'body': 'warm'}).status == 204
        statuses = [http.post(server.port, path, {'body': 'x' * 8192})
                    for _ in range(12)]
        refused = [r for r in statuses if r.status != 204]
        assert refused, 'a 64 KiB spool took 96 KiB of messages'
        for response in refused:
            check_error(response, 503, ['spool'])
        assert http.get(server.port, '/stats').status == 200
        accepted = sum(1 for r in statuses if r.status == 204)
        wait_until(lambda: drained(server.port), 10, 'not drained')
        assert len(received_ids(channel, name)) == accepted + 1
        server.stop()
    finally:
        subprocess.run(['umount', '-l', str(directory)])
    channel.queue_delete(name)
    channel.exchange_delete(name)


def test_spool_directory_others_can_read_is_refused(tmp_path):
    directory = tmp_path / 'open'
    directory.mkdir()
    directory.chmod(0o755)
    config = write_config(tmp_path, {
        'Application': {'spool': str(directory)},
        'HTTPServer': {'address': '127.0.0.1', 'ports': [free_port()]}})
    result = subprocess.run(
        [sys.executable, 'statelessd.py', '-c', str(config), '-f'],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert 'Application.spool' in result.stderr
    assert '0700' in result.stderr


def test_spool_skips_a_torn_last_record(tmp_path):
    directory = spool_directory(tmp_path)
    spool = statelessd_amqp.Spool(str(directory), 'test.spool')
    assert spool.open() == []
    messages = [statelessd_amqp.Message(
        'ex', 'rk', b'body\x00%d' % n,
        pika.BasicProperties(message_id='m%d' % n, headers={'n': n}))
        for n in range(3)]
    for message in messages:
        spool.add('/', 'user', 's3cret', message)
    spool.retire(messages[1].spool_id)
    spool.close()
    path = directory / 'test.spool'
    whole = path.read_bytes()
    torn_record = statelessd_amqp.Spool._record(
        statelessd_amqp.Spool.ADD, b'\x00' * 40)
    path.write_bytes(whole + torn_record[:-7])

    again = statelessd_amqp.Spool(str(directory), 'test.spool')
    entries = again.open()
    assert [(v, u, p, m.exchange, m.routing_key, m.body,
             m.properties.message_id, m.properties.headers)
            for v, u, p, m in entries] == [
        ('/', 'user', 's3cret', 'ex', 'rk', b'body\x000', 'm0', {'n': 0}),
        ('/', 'user', 's3cret', 'ex', 'rk', b'body\x002', 'm2', {'n': 2})]
    again.close()
    # The torn bytes are gone after the compaction at open.
    assert path.stat().st_size < len(whole)


def test_sigterm_flushes_in_flight_messages(statelessd, amqp_root, tmp_path):
    channel = amqp_root.channel
    name = durable_target(channel)
    pidfile = tmp_path / 'statelessd.pid'
    server = statelessd(1, {'Daemon': {'pidfile': str(pidfile)}})
    assert int(pidfile.read_text()) == server.process.pid
    ids = ['flush-%d' % n for n in range(300)]
    http = Http()
    connection = http.connect(server.port)
    for message_id in ids:
        assert http.post(server.port, '/%%2f/%s/k' % name,
                         {'message_id': message_id},
                         conn=connection).status == 204
    assert server.terminate() == 0
    assert not pidfile.exists()
    received = received_ids(channel, name)
    assert sorted(received) == sorted(ids)
    channel.queue_delete(name)
    channel.exchange_delete(name)


def test_sigterm_during_outage_keeps_messages_in_spool(statelessd, outage,
                                                       tmp_path):
    channel = outage.channel()
    name = durable_target(channel)
    directory = spool_directory(tmp_path)
    port = free_port()
    overrides = {'Application': {
        'spool': str(directory),
        'rabbitmq': {'host': '127.0.0.1', 'port': outage.port,
                     'connect_timeout': 2, 'shutdown_timeout': 1}}}
    server = statelessd([port], overrides)
    http = Http()
    path = '/%%2f/%s/k' % name
    assert http.post(port, path, {'message_id': 'warm'}).status == 204
    outage.stop_app()
    ids = ['kept-%d' % n for n in range(10)]
    for message_id in ids:
        assert http.post(port, path, {'message_id': message_id,
                                      'delivery_mode': '2'}).status == 204
    assert server.terminate() == 0
    assert 'stopped with 10 messages unconfirmed, kept in the spool' \
        in server.log()

    outage.start_app()
    successor = statelessd([port], overrides)
    channel = outage.channel()
    missing = set(ids) - arrived_ids(channel, name, ids, 30)
    assert not missing, 'not replayed: %s' % sorted(missing)
    successor.stop()
    channel.queue_delete(name)
    channel.exchange_delete(name)


def test_sigterm_without_spool_reports_the_count(statelessd, outage):
    channel = outage.channel()
    name = durable_target(channel)
    server = gateway(statelessd, outage, shutdown_timeout=1)
    http = Http()
    path = '/%%2f/%s/k' % name
    assert http.post(server.port, path, {'body': 'warm'}).status == 204
    outage.stop_app()
    for n in range(7):
        assert http.post(server.port, path, {'body': str(n)}).status == 204
    assert server.terminate() == 0
    assert 'stopped with 7 messages unconfirmed' in server.log()


def test_idle_publisher_closes_and_reopens(statelessd, amqp_root):
    channel = amqp_root.channel
    exchange = unique('statelessd.idle.')
    channel.exchange_declare(exchange, 'fanout')
    queue = channel.queue_declare('', exclusive=True).method.queue
    channel.queue_bind(queue, exchange)
    server = statelessd(1, {'Application': {'rabbitmq': {
        'idle_timeout': 1}}})
    http = Http()
    path = '/%%2f/%s/' % exchange
    assert http.post(server.port, path, {'body': 'one'}).status == 204
    assert '/:guest' in stats(server.port)['connections']
    wait_until(lambda: '/:guest' not in stats(server.port)['connections'], 10,
               'the idle publisher did not close')

    def statelessd_connections():
        names = rabbitmqctl('list_connections', 'client_properties')
        return names.count('statelessd:%d ' % server.port)

    wait_until(lambda: statelessd_connections() == 0, 10,
               'the idle connection is still open at the broker')
    assert http.post(server.port, path, {'body': 'two'}).status == 204
    assert [m.body for m in amqp_root.consume(queue, 2)] == [b'one', b'two']
    channel.exchange_delete(exchange)


def test_stats_count_delivery(statelessd, amqp_root):
    channel = amqp_root.channel
    exchange = unique('statelessd.count.')
    channel.exchange_declare(exchange, 'fanout')
    queue = channel.queue_declare('', exclusive=True).method.queue
    channel.queue_bind(queue, exchange)
    server = statelessd(1)
    http = Http()
    for n in range(20):
        assert http.post(server.port, '/%%2f/%s/' % exchange,
                         {'body': str(n)}).status == 204
    wait_until(lambda: drained(server.port), 10, 'not drained')
    counters = stats(server.port)['connections']['/:guest']
    assert counters['publishes'] == 20
    assert counters['confirmed'] == 20
    for key in ('nacked', 'returned', 'republished', 'outbox', 'queue_size'):
        assert counters[key] == 0, (key, counters)
    assert json.dumps(counters)
    channel.exchange_delete(exchange)
