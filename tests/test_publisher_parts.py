"""The publisher's parts on their own, without a broker: a message waiting
for its outcome, and the outbox's bookkeeping of RabbitMQ's word."""
import threading
import time
import types

import pika
import pika.spec
import pytest

import statelessd_amqp
import statelessd_stats


def message(name='m', mandatory=False):
    return statelessd_amqp.Message(
        'ex', 'rk', name.encode(), pika.BasicProperties(message_id=name),
        mandatory)


def test_a_message_nobody_waits_for_has_no_outcome_to_wait_for():
    accepted = message()
    assert accepted.accepted
    assert accepted.outcome(time.monotonic() + 60) is None
    accepted.settle(statelessd_amqp.Nacked('ignored'))
    assert accepted.outcome(time.monotonic() + 60) is None
    assert not accepted.abandoned


@pytest.mark.parametrize('confirm, kind, text', [
    (True, statelessd_amqp.ConfirmTimeout,
     'RabbitMQ did not confirm the message within 2.5s'),
    (False, statelessd_amqp.BrokerUnavailable,
     'RabbitMQ did not take the message within 2.5s')])
def test_a_request_that_stops_waiting_abandons_its_message(confirm, kind,
                                                            text):
    awaited = message()
    awaited.mark_awaited(confirm, 2.5)
    assert not awaited.accepted
    error = awaited.outcome(time.monotonic() + 0.01)
    assert type(error) is kind and error.reason == text
    assert awaited.abandoned


def test_the_first_word_on_a_message_is_its_outcome():
    awaited = message()
    awaited.mark_awaited(True, 10)
    nacked = statelessd_amqp.Nacked('nacked')
    threading.Timer(0.05, awaited.settle, (nacked,)).start()
    assert awaited.outcome(time.monotonic() + 10) is nacked
    awaited.settle()
    assert awaited.outcome(time.monotonic()) is nacked
    assert not awaited.abandoned


def test_abandon_answers_the_request_and_stops_the_message():
    awaited = message()
    awaited.mark_awaited(False, 10)
    blocked = statelessd_amqp.blocked_error('disk')
    awaited.abandon(blocked)
    assert awaited.outcome(time.monotonic() + 10) is blocked
    assert awaited.abandoned


class Flow:
    released = 0

    def release(self):
        self.released += 1


def outbox(flow=None):
    return statelessd_amqp.Outbox(statelessd_stats.ConnectionCounters(),
                                  None, flow or Flow(), '/', 'guest')


def ack(tag, multiple=False, kind=pika.spec.Basic.Ack):
    return types.SimpleNamespace(method=kind(delivery_tag=tag,
                                             multiple=multiple))


def settled(messages):
    """Which messages have their outcome, asked without waiting."""
    return [each.outcome(time.monotonic()) is None for each in messages]


def test_acks_settle_by_delivery_tag_single_or_multiple():
    flow = Flow()
    box = outbox(flow)
    messages = [message(str(n)) for n in range(5)]
    for each in messages:
        each.mark_awaited(True, 10)
        box.add(each)
    box.on_confirm(ack(2))
    assert settled(messages) == [False, True, False, False, False]
    box.on_confirm(ack(4, multiple=True))
    assert settled(messages) == [True, True, True, True, False]
    assert box.unconfirmed == 1 and box.stats.confirmed == 4
    assert flow.released == 2


def test_a_new_channel_publishes_the_unconfirmed_first_in_order():
    box = outbox()
    box.retry.append(message('queued-retry'))
    for name in ('a', 'b', 'c'):
        box.add(message(name))
    box.on_confirm(ack(1))
    box.restart()
    assert [m.body for m in box.retry] == [b'b', b'c', b'queued-retry']
    assert box.unconfirmed == 0 and box.stats.republished == 2
    box.add(message('d'))
    box.on_confirm(ack(1))
    assert box.unconfirmed == 0


def test_a_nacked_request_gets_its_error_after_the_retries():
    box = outbox()
    awaited, accepted = message('awaited'), message('accepted')
    awaited.mark_awaited(True, 10)
    for attempt in range(1, statelessd_amqp.NACK_RETRIES + 1):
        box.add(awaited)
        box.add(accepted)
        box.on_confirm(ack(2, multiple=True,
                           kind=pika.spec.Basic.Nack))
        assert box.nack_retry_due() is False
        box.take_back()
        expected = [b'accepted'] if attempt == statelessd_amqp.NACK_RETRIES \
            else [b'awaited', b'accepted']
        assert [m.body for m in box.retry] == expected
        box.retry.clear()
    error = awaited.outcome(time.monotonic())
    assert isinstance(error, statelessd_amqp.Nacked)
    assert accepted.nacks == statelessd_amqp.NACK_RETRIES
    assert len(box) == 0


def pika_frames(channel_number, frame_max_body, message):
    """The bytes pika's own Channel.basic_publish marshals for message."""
    frames = [pika.frame.Method(channel_number, pika.spec.Basic.Publish(
        exchange=message.exchange, routing_key=message.routing_key,
        mandatory=message.mandatory)).marshal(),
        pika.frame.Header(channel_number, len(message.body),
                          message.properties).marshal()]
    for start in range(0, len(message.body), frame_max_body):
        frames.append(pika.frame.Body(
            channel_number, message.body[start:start + frame_max_body])
            .marshal())
    return b''.join(frames)


def test_the_wire_frames_messages_as_pika_does():
    """Properties shared by a run of messages are encoded once; the bytes
    are still pika's, for bodies of no frame, one frame and several."""
    written = []
    connection = types.SimpleNamespace(_impl=types.SimpleNamespace(
        _body_max_length=10, _output_marshaled_frames=written.extend))
    channel = types.SimpleNamespace(_impl=None, channel_number=3)
    wire = statelessd_amqp.Wire(connection, channel)
    shared = pika.BasicProperties(content_type='text/plain',
                                  headers={'x-a': 1, 'x-b': 'two'})
    messages = [
        statelessd_amqp.Message('ex', 'rk', b'', shared),
        statelessd_amqp.Message('ex', 'rk', b'0123456789', shared),
        statelessd_amqp.Message('ex', 'other', b'x' * 25, shared, True),
        statelessd_amqp.Message('', 'rk', 'é'.encode() * 3,
                                pika.BasicProperties(delivery_mode=2,
                                                     priority=7)),
        statelessd_amqp.Message('ex', 'rk', b'last', shared)]
    for each in messages:
        wire.add(each)
    wire.flush()
    assert written == [b''.join(pika_frames(3, 10, each)
                                for each in messages)]
