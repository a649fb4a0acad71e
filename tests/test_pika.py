"""pika's private names: a pika without them, and a failure inside pika.

statelessd's batched publishing uses private pika names (statelessd_amqp.
Wire).  These tests run the real statelessd with a real pika changed the
way an upgrade could change it: a sitecustomize module on PYTHONPATH,
loaded by the statelessd processes only, renames a private name throughout
pika's own source, or makes pika's frame output raise once in the middle
of the load.  Every message answered 204 must arrive all the same.
"""
import textwrap
import time

import pytest

from support import (Http, Load, check_error, drained, durable_target,
                     received_ids, stats, unique, wait_until)

RENAME = '''
import importlib.machinery
import sys


class RenamingLoader(importlib.machinery.SourceFileLoader):
    """pika.connection compiled with {old} renamed to {new}."""

    def get_code(self, fullname):
        source = self.get_data(self.path).replace(b'{old}', b'{new}')
        return compile(source, self.path, 'exec')


class Finder:
    def find_spec(self, name, path, target=None):
        if name != 'pika.connection':
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        spec.loader = RenamingLoader(name, spec.origin)
        return spec


sys.meta_path.insert(0, Finder())
'''

FAIL_ONCE = '''
import itertools

import pika.connection

output = pika.connection.Connection._output_marshaled_frames
calls = itertools.count(1)


def output_failing_once(self, frames):
    if next(calls) == {call}:
        raise RuntimeError('injected failure in pika')
    return output(self, frames)


pika.connection.Connection._output_marshaled_frames = output_failing_once
'''


@pytest.fixture
def changed_pika(tmp_path, monkeypatch):
    """changed_pika(source): statelessd processes started afterwards run
    source as their sitecustomize."""
    def install(source):
        directory = tmp_path / 'sitecustomize'
        directory.mkdir()
        (directory / 'sitecustomize.py').write_text(textwrap.dedent(source))
        monkeypatch.setenv('PYTHONPATH', str(directory))
    return install


@pytest.fixture
def durable(amqp_root):
    """The name of a durable exchange and queue on /, deleted after the
    test."""
    name = durable_target(amqp_root.channel)
    yield name
    amqp_root.channel.queue_delete(name)
    amqp_root.channel.exchange_delete(name)


def publish_under_load(server, name, seconds=2.0):
    """Mixed load (fire-and-forget and confirm mode); the accepted ids."""
    loads = [Load(server.port, '/%%2f/%s/a' % name, threads=2, prefix='f'),
             Load(server.port, '/%%2f/%s/b?confirm=1' % name, threads=2,
                  prefix='c')]
    for load in loads:
        load.__enter__()
    try:
        time.sleep(seconds)
    finally:
        for load in loads:
            load.__exit__()
    return loads


def check_nothing_lost(server, channel, name, loads):
    wait_until(lambda: drained(server.port), 60,
               'statelessd did not deliver its backlog: %s'
               % stats(server.port)['connections'])
    received = received_ids(channel, name)
    accepted = set().union(*(load.accepted() for load in loads))
    lost = accepted - set(received)
    print('accepted %d, received %d, duplicates %d, lost %d'
          % (len(accepted), len(received), len(received) - len(set(received)),
             len(lost)))
    assert len(accepted) > 50
    assert not lost, 'lost %d: %s' % (len(lost), sorted(lost)[:20])
    for load in loads:
        assert set(load.statuses.values()) == {204}, load.statuses


def test_pika_without_output_marshaled_frames_publishes_publicly(
        statelessd, amqp_root, changed_pika, durable):
    changed_pika(RENAME.format(old='_output_marshaled_frames',
                               new='_write_marshaled_frames'))
    channel = amqp_root.channel
    name = durable
    server = statelessd(1)
    loads = publish_under_load(server, name)
    check_nothing_lost(server, channel, name, loads)
    counters = stats(server.port)['connections']['/:guest']
    assert counters['publishing'] == 'basic_publish', counters
    log = server.log()
    assert log.count('lacks what batched publishing needs') == 1, log
    assert '_output_marshaled_frames' in log
    http = Http()
    missing = http.post(server.port, '/%%2f/%s/x?confirm=1'
                        % unique('statelessd.none.'), {'body': 'x'})
    check_error(missing, 404, ['does not exist'])


def test_pika_without_body_max_length_publishes_publicly(
        statelessd, amqp_root, changed_pika, durable):
    changed_pika(RENAME.format(old='_body_max_length',
                               new='_largest_body_frame'))
    channel = amqp_root.channel
    name = durable
    server = statelessd(1)
    big = 'x' * 300000
    assert Http().post(server.port, '/%%2f/%s/k' % name,
                       {'message_id': 'big', 'body': big}).status == 204
    wait_until(lambda: drained(server.port), 10, 'not drained')
    method, _, body = channel.basic_get(name, auto_ack=True)
    assert body == big.encode()
    counters = stats(server.port)['connections']['/:guest']
    assert counters['publishing'] == 'basic_publish', counters
    assert '_body_max_length' in server.log()


def test_unmodified_pika_publishes_batched(statelessd, durable):
    name = durable
    server = statelessd(1)
    assert Http().post(server.port, '/%%2f/%s/k' % name,
                       {'body': 'x'}).status == 204
    counters = stats(server.port)['connections']['/:guest']
    assert counters['publishing'] == 'batched', counters
    assert 'lacks what batched publishing needs' not in server.log()


def test_failure_inside_pika_loses_nothing(statelessd, amqp_root,
                                           changed_pika, durable):
    """An exception that is neither an AMQPError nor an OSError, raised by
    pika in the publisher thread while messages are unconfirmed."""
    changed_pika(FAIL_ONCE.format(call=60))
    channel = amqp_root.channel
    name = durable
    server = statelessd(1)
    loads = publish_under_load(server, name, seconds=3.0)
    check_nothing_lost(server, channel, name, loads)
    log = server.log()
    assert 'injected failure in pika' in log, log[-3000:]
    assert 'publisher failed; publishing what it holds again' in log
    counters = stats(server.port)['connections']['/:guest']
    assert counters['connections']['opened'] == 2, counters
    assert counters['publishing'] == 'batched', counters
