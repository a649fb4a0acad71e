"""The broker side of statelessd: one publisher thread per vhost/user.

Each publisher owns a pika BlockingConnection and drains a queue.Queue fed
by request threads.  Every message stays in the publisher's keeping until
RabbitMQ confirms it: the main channel runs in confirm mode with pipelined
acks, and whatever is unconfirmed when a channel or connection drops is
published again after the reconnect (at-least-once).

The first message for an exchange the publisher has not used yet goes out
on a second, synchronous confirm channel.  A missing exchange or a refused
write then closes only that channel, so one client's typo never costs the
messages other clients have in flight on the main channel.

The main channel's batched writes use pika's private names; Wire keeps
them in one place, and a pika without them publishes through the public
API instead (see Wire).
"""
import collections
import hashlib
import hmac
import json
import logging
import os
import queue
import random
import re
import struct
import threading
import time
import zlib

import pika
import pika.exceptions
import pika.frame
import pika.spec

import statelessd_stats

LOGGER = logging.getLogger('statelessd.amqp')
#: Whether this process said it publishes without the batched path.
_PUBLIC_FALLBACK_LOGGED = False

#: How long the publisher thread sleeps in pika when nothing wakes it.
IDLE_POLL = 1.0
#: While messages flow, how often the publisher thread looks for more.
BATCH_TICK = 0.002
#: Seconds without a message before the publisher thread sleeps until woken.
QUIET = 0.05
#: Attempts a confirm request's message gets before a nack is final for it.
#: A message answered 204 is never given up for a nack.
NACK_RETRIES = 3
#: Reconnect back-off bounds, in seconds.
BACKOFF_FIRST = 0.5
BACKOFF_MAX = 30.0
#: Messages a connected publisher may have waiting before the requests
#: adding more wait for it to catch up (see FlowControl).
FLOW_HIGH_WATER = 500
#: How often a request held by flow control looks again.
FLOW_CHECK = 0.05
#: How often a message parked for a missing exchange is tried again.
PARK_RETRY = 2.0
#: Encoded properties travel in one frame.  Beyond RabbitMQ's frame_max
#: (128 KiB by default) the broker closes the connection, and every
#: reconnect would send the same message again; half of it is safe.
MAX_PROPERTIES_SIZE = 65536
#: Marshalled Basic.Publish frames a publisher keeps, one per exchange,
#: routing key and mandatory flag; the cache starts over beyond this.
METHOD_FRAMES = 1024
#: An AMQP frame's type, channel and payload size, and its end octet.
FRAME_HEAD = struct.Struct('>BHI')
FRAME_END = bytes([pika.spec.FRAME_END])
#: A content header frame up to its properties: the frame's head, then
#: class, weight (always 0) and body size.
CONTENT_HEADER = struct.Struct('>BHIHxxQ')
#: How /stats names the two ways of publishing (see Wire).
BATCHED, BASIC_PUBLISH = 'batched', 'basic_publish'


class PublishError(Exception):
    """A message was not (or may not have been) taken by RabbitMQ."""

    def __init__(self, reason):
        super().__init__(reason)
        self.reason = reason


class LoginRefused(PublishError):
    """RabbitMQ refused the user name and password."""


class AccessRefused(PublishError):
    """The user may not use the vhost, or the vhost does not exist."""


class ExchangeRefused(PublishError):
    """The user may not publish to the exchange."""


class ExchangeNotFound(PublishError):
    """The exchange does not exist in the vhost."""


class BrokerUnavailable(PublishError):
    """No broker could be reached (or it did not answer in time)."""


class QueueFull(PublishError):
    """The publisher holds as many messages as it is allowed to."""


class SpoolFailed(PublishError):
    """The spool cannot be written, so a message cannot be accepted."""


class Nacked(PublishError):
    """RabbitMQ nacked the message, also after retries."""


class Blocked(PublishError):
    """RabbitMQ blocks publishing (a memory or disk alarm)."""


class Unroutable(PublishError):
    """A mandatory message was returned: no queue took it."""


class ConfirmTimeout(PublishError):
    """No confirm arrived within the confirm timeout."""


class TooManyPublishers(PublishError):
    """The worker already publishes for as many vhost/user pairs as allowed."""


class TLS:
    """How to wrap broker connections: an ssl.SSLContext, and the name to
    verify and send as SNI (None: the host connected to)."""

    def __init__(self, context, server_hostname=None):
        self.context = context
        self.server_hostname = server_hostname


class Settings:
    """What a publisher needs to know about the broker and its limits: the
    broker nodes as (host, port) pairs, the TLS to wrap them in (or None),
    the worker's port, and as attributes the settings the configuration
    declares for the broker side (heartbeat, connect_timeout,
    max_queue_size ...).  Their defaults and checks live in that
    declaration, statelessd.SETTINGS, and nowhere here."""

    def __init__(self, hosts, tls, port, **declared):
        self.hosts = list(hosts)
        self.tls = tls
        self.port = port
        self.__dict__.update(declared)


class Message:
    """One message on its way through a publisher.

    A publisher marks the message whose request waits for the outcome
    (mark_awaited), and the request then waits with outcome().  Any other
    message's client was told 204 already, so the message is kept until
    RabbitMQ takes it.

    properties is read only: messages with the same property fields share
    one BasicProperties (statelessd.form_properties), and Wire reuses its
    encoding.
    """

    __slots__ = ('exchange', 'routing_key', 'body', 'properties', 'mandatory',
                 'error', 'abandoned', 'returned', 'nacks', 'spool_id',
                 '_done', '_settled', '_confirm', '_timeout')

    def __init__(self, exchange, routing_key, body, properties,
                 mandatory=False):
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = body
        self.properties = properties
        self.mandatory = mandatory
        self.error = None
        self.abandoned = False
        self.returned = False
        self.nacks = 0
        self.spool_id = None
        self._done = None
        self._settled = False
        self._confirm = False
        self._timeout = 0.0

    def mark_awaited(self, confirm, timeout):
        """The request waits up to timeout seconds: for RabbitMQ's confirm
        when confirm is true, else for RabbitMQ to take the message (an
        exchange the publisher has not checked yet).

        The request waits on a SimpleQueue, which settle puts one item in:
        a threading.Event costs forty times as much to make, and a
        confirmed batch makes one for each message.
        """
        self._done = queue.SimpleQueue()
        self._confirm = confirm
        self._timeout = timeout

    @property
    def accepted(self):
        """True when the client was told 204 before the broker's word."""
        return self._done is None

    def settle(self, error=None):
        """Record the outcome; a request already answered keeps its answer."""
        done = self._done
        if done is None or self._settled:
            return
        self.error = error
        self._settled = True
        done.put(None)

    def abandon(self, error):
        """Answer the waiting request with error now; a message its client
        was refused is not sent after that."""
        self.abandoned = True
        self.settle(error)

    def outcome(self, deadline):
        """None once RabbitMQ took the message (confirmed it, in confirm
        mode) or when nobody waits for it; else its PublishError.

        Waits until deadline at most.  A request that stops waiting
        abandons the message: its client hears that it failed, so a message
        not yet sent is not sent.
        """
        done = self._done
        if done is None:
            return None
        if not self._settled:
            try:
                done.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                return self._given_up()
        return self.error

    def _given_up(self):
        self.abandoned = True
        if self._confirm:
            return ConfirmTimeout('RabbitMQ did not confirm the message '
                                  'within %ss' % self._timeout)
        return BrokerUnavailable('RabbitMQ did not take the message within '
                                 '%ss' % self._timeout)


def basic_properties(mapping):
    """BasicProperties for a validated mapping; ValueError if AMQP can't
    carry it (a header number out of range, a nested name too long, or
    more than MAX_PROPERTIES_SIZE bytes in all).  Only headers can: the
    other properties are short strings and numbers the edge has checked."""
    properties = pika.BasicProperties(**mapping)
    if 'headers' not in mapping:
        return properties
    try:
        size = sum(len(piece) for piece in properties.encode())
    except (struct.error, OverflowError, TypeError, ValueError,
            pika.exceptions.AMQPError) as error:
        raise ValueError(str(error) or type(error).__name__) from None
    if size > MAX_PROPERTIES_SIZE:
        raise ValueError('the properties take %d bytes, more than the %d '
                         'allowed' % (size, MAX_PROPERTIES_SIZE))
    return properties


def password_digest(salt, secret):
    """The one salted digest statelessd keeps in place of a password."""
    return hashlib.sha256(salt + secret.encode('utf-8')).digest()


def connection_parameters(settings, host, port, vhost, user, password):
    ssl_options = None
    if settings.tls is not None:
        ssl_options = pika.SSLOptions(
            settings.tls.context, settings.tls.server_hostname or host)
    return pika.ConnectionParameters(
        host=host, port=port, virtual_host=vhost,
        credentials=pika.PlainCredentials(user, password),
        ssl_options=ssl_options,
        heartbeat=settings.heartbeat,
        connection_attempts=1,
        socket_timeout=settings.connect_timeout,
        stack_timeout=settings.connect_timeout,
        blocked_connection_timeout=None,
        client_properties={
            'connection_name': 'statelessd:%s %s:%s' % (settings.port, vhost,
                                                       user)})


def open_connection(settings, vhost, user, password, first=0):
    """Connect to the first configured broker host that answers, trying
    them in order from the first-th; returns the connection and its
    (host, port).

    Login and vhost refusals are final and raised at once; anything else
    moves on to the next host.
    """
    last = None
    hosts = settings.hosts[first:] + settings.hosts[:first]
    for host, port in hosts:
        params = connection_parameters(settings, host, port, vhost, user,
                                       password)
        try:
            return pika.BlockingConnection(params), (host, port)
        except pika.exceptions.ProbableAuthenticationError:
            raise LoginRefused('RabbitMQ refused the login for user %r'
                               % user) from None
        except pika.exceptions.ProbableAccessDeniedError as error:
            raise AccessRefused(access_refusal(error, vhost, user)) from None
        except pika.exceptions.AMQPError as error:
            last = error
            LOGGER.warning('Could not connect to %s:%s for %s:%s: %r',
                           host, port, vhost, user, error)
        except OSError as error:
            last = error
            LOGGER.warning('Could not connect to %s:%s for %s:%s: %s',
                           host, port, vhost, user, error)
    raise BrokerUnavailable('RabbitMQ is not reachable (%s)'
                            % type(last).__name__)


def access_refusal(error, vhost, user):
    if 'not found' in str(error):
        return 'vhost %r does not exist' % vhost
    return 'user %r may not use vhost %r' % (user, vhost)


def verify_login(settings, vhost, user, password):
    """Open and close a connection to prove a password right or wrong."""
    open_connection(settings, vhost, user, password)[0].close()


def refused_exchange(reply_text):
    """The exchange a Channel.Close reply names, or None."""
    match = re.search(r"exchange '((?:[^'\\]|\\.)*)'", reply_text or '')
    return match.group(1) if match else None


class Wire:
    """Batched writes with pipelined confirms through pika's private names;
    where a pika lacks them, Wire() raises AttributeError and every message
    goes through the public channel.basic_publish instead (Link._probe).

    pika's public basic_publish builds and marshals the method frame anew
    for every message and hands each frame to the transport separately,
    and BlockingChannel's confirm mode waits for every ack.  Here the
    method frame is kept per exchange, routing key and flag, a batch goes
    out in one write, and acks arrive while more messages go out.  That
    takes BlockingConnection._impl and BlockingChannel._impl,
    Connection._body_max_length and Connection._output_marshaled_frames;
    nothing else in statelessd touches pika's private names.
    """

    def __init__(self, connection, channel):
        connection_impl = connection._impl
        self._channel_impl = channel._impl
        self._body_max_length = connection_impl._body_max_length
        self._output = connection_impl._output_marshaled_frames
        if not isinstance(self._body_max_length, int) or \
                not callable(self._output):
            raise AttributeError('pika.Connection._body_max_length or '
                                 '_output_marshaled_frames changed meaning')
        self._number = channel.channel_number
        self._method_frames = {}
        self._unsent = []
        self._properties = None
        self._encoded_properties = b''

    def select_confirms(self, connection, on_confirm, on_return, on_close):
        """Confirm mode with pipelined acks.

        The channel implementation calls back in wire order, so a
        Basic.Return is always seen before the ack of its message.
        """
        selected = []
        self._channel_impl.confirm_delivery(ack_nack_callback=on_confirm,
                                            callback=selected.append)
        self._channel_impl.add_on_return_callback(on_return)
        self._channel_impl.add_on_close_callback(on_close)
        while not selected:
            connection.process_data_events(time_limit=0.005)

    def add(self, message):
        """Frame the message's Basic.Publish, content header and body as
        pika's Channel.basic_publish does; they leave with the next flush.

        The frames are laid out here rather than by pika.frame, and the
        properties are encoded once for a run of messages that share them
        (a batch's messages with the same fields do): per message, pika's
        marshalling cost more than the rest of the publisher's work.
        """
        key = (message.exchange, message.routing_key, message.mandatory)
        method = self._method_frames.get(key)
        if method is None:
            method = self._method_frame(message, key)
        properties = message.properties
        if properties is not self._properties:
            self._encoded_properties = b''.join(properties.encode())
            self._properties = properties
        encoded = self._encoded_properties
        body = message.body
        number = self._number
        unsent = self._unsent
        unsent.append(method)
        unsent.append(CONTENT_HEADER.pack(
            pika.spec.FRAME_HEADER, number,
            CONTENT_HEADER.size - FRAME_HEAD.size + len(encoded),
            properties.INDEX, len(body)))
        unsent.append(encoded)
        unsent.append(FRAME_END)
        limit = self._body_max_length
        for start in range(0, len(body), limit):
            piece = body[start:start + limit]
            unsent.append(FRAME_HEAD.pack(pika.spec.FRAME_BODY, number,
                                          len(piece)))
            unsent.append(piece)
            unsent.append(FRAME_END)

    def _method_frame(self, message, key):
        if len(self._method_frames) >= METHOD_FRAMES:
            self._method_frames.clear()
        method = self._method_frames[key] = pika.frame.Method(
            self._number, pika.spec.Basic.Publish(
                exchange=message.exchange,
                routing_key=message.routing_key,
                mandatory=message.mandatory)).marshal()
        return method

    def flush(self):
        """Hand the frames added since the last flush to pika as one
        buffer, sent the next time the connection is served.  Messages
        whose frames never leave stay unconfirmed and are published again
        after the reconnect."""
        if self._unsent:
            data = b''.join(self._unsent)
            self._unsent.clear()
            self._output([data])


def blocked_error(reason):
    return Blocked('RabbitMQ blocks publishing (%s); statelessd waits for '
                   'the alarm to clear' % reason)


class Outbox:
    """The messages a publisher took from its queue that RabbitMQ has not
    settled yet, and what the broker's word makes of each.

    Published messages wait for their confirm by delivery tag; others
    wait to be published again, before anything new: the unconfirmed
    ones of a lost channel, nacked ones, and those parked for a missing
    exchange.  A message leaves only with RabbitMQ's final word, so a
    dropped channel or connection loses nothing answered 204.
    """

    def __init__(self, stats, spool, flow, vhost, user):
        self.stats = stats
        self.vhost = vhost
        self.user = user
        self._spool = spool
        self._flow = flow
        self._unconfirmed = collections.OrderedDict()
        self._next_tag = 1
        #: Messages to publish before the queue's, first one first.
        self.retry = collections.deque()
        #: Messages answered 204 whose exchange is missing or refused.
        self.parked = []
        self._nack_held = []
        self._nack_retry_at = None
        self._nack_backoff = BACKOFF_FIRST

    def __len__(self):
        return (len(self._unconfirmed) + len(self.retry) + len(self.parked)
                + len(self._nack_held))

    @property
    def unconfirmed(self):
        """How many published messages wait for their confirm."""
        return len(self._unconfirmed)

    def held_messages(self):
        """Every message held here but the parked ones."""
        return (list(self._unconfirmed.values()) + list(self.retry)
                + self._nack_held)

    def add(self, message):
        """Keep a message just published on the main channel under its
        delivery tag."""
        self._unconfirmed[self._next_tag] = message
        self._next_tag += 1

    def restart(self):
        """A new main channel counts delivery tags from 1: every
        unconfirmed message goes to the front, in publish order."""
        self._next_tag = 1
        if self._unconfirmed:
            self.stats.republished += len(self._unconfirmed)
            self.retry.extendleft(reversed(self._unconfirmed.values()))
            self._unconfirmed.clear()

    def take_back(self):
        """The connection is gone: whatever it did not settle is published
        first on the next one, nacked messages first of all."""
        self.restart()
        self.retry_nacked()

    def nack_retry_due(self):
        return self._nack_retry_at is not None and \
            time.monotonic() >= self._nack_retry_at

    def retry_nacked(self):
        """Publish the nacked messages first (see nacked)."""
        self._nack_retry_at = None
        self.retry.extendleft(reversed(self._nack_held))
        self._nack_held.clear()

    def unpark(self):
        self.retry.extend(self.parked)
        self.parked.clear()

    def on_confirm(self, frame):
        method = frame.method
        acked = isinstance(method, pika.spec.Basic.Ack)
        if acked:
            self._nack_backoff = BACKOFF_FIRST
        for message in self._confirmed_messages(method.delivery_tag,
                                                method.multiple):
            if not acked:
                self.nacked(message)
            elif message.returned:
                self.finish_returned(message)
            else:
                self.stats.confirmed += 1
                self.finish(message)
        self._flow.release()

    def _confirmed_messages(self, tag, multiple):
        """Pop what an ack or nack covers; the outbox is in tag order."""
        if not multiple:
            message = self._unconfirmed.pop(tag, None)
            return [message] if message is not None else []
        messages = []
        unconfirmed = self._unconfirmed
        while unconfirmed and next(iter(unconfirmed)) <= tag:
            messages.append(unconfirmed.popitem(last=False)[1])
        return messages

    def on_return(self, _channel, method, _properties, body):
        for message in self._unconfirmed.values():
            if (message.mandatory and not message.returned
                    and message.exchange == method.exchange
                    and message.routing_key == method.routing_key
                    and message.body == body):
                message.returned = True
                return

    def nacked(self, message):
        """A nack is no reason to drop a message answered 204: it waits and
        goes out again on fresh channels, with backoff, for as long as
        statelessd runs.  A request waiting for the outcome gets its 503
        after NACK_RETRIES attempts.

        RabbitMQ can nack every publish on a channel opened just after a
        quorum queue's leader died; a channel opened later works, so the
        publisher replaces its channels before the retry.
        """
        self.stats.nacked += 1
        message.nacks += 1
        if not message.accepted and message.nacks >= NACK_RETRIES:
            LOGGER.error('RabbitMQ nacked message_id=%r for %r/%r %d times',
                         message.properties.message_id, message.exchange,
                         message.routing_key, message.nacks)
            self.finish(message, Nacked('RabbitMQ nacked the message %d '
                                        'times' % message.nacks))
            return
        self._nack_held.append(message)
        if self._nack_retry_at is None:
            delay = self._nack_backoff * random.uniform(0.5, 1.5)
            self._nack_backoff = min(self._nack_backoff * 2, BACKOFF_MAX)
            self._nack_retry_at = time.monotonic() + delay
            LOGGER.warning('%s:%s RabbitMQ nacked message_id=%r for %r/%r; '
                           'publishing it again on fresh channels in %.1fs',
                           self.vhost, self.user,
                           message.properties.message_id, message.exchange,
                           message.routing_key, delay)

    def refused(self, message, failure):
        """The exchange is missing or refused: a request waiting hears so,
        and a message answered 204 is parked until it can go."""
        if message.accepted:
            LOGGER.warning('Holding a message for %r: %s', message.exchange,
                           failure.reason)
            self.parked.append(message)
        else:
            self.finish(message, failure)

    def finish_returned(self, message):
        self.stats.returned += 1
        reason = ('no queue is bound to exchange %r with routing key %r'
                  % (message.exchange, message.routing_key))
        if message.accepted:
            LOGGER.warning('Returned unroutable message_id=%r: %s',
                           message.properties.message_id, reason)
            self.finish(message)
        else:
            self.finish(message, Unroutable(reason))

    def finish(self, message, error=None):
        """The broker's word is in: tell the request, retire the spool entry."""
        message.settle(error)
        if message.spool_id is not None:
            self._spool.retire(message.spool_id)

    def settle_waiting(self, error, queued):
        """Answer the requests that wait for an outcome with error; keep the
        messages that were answered 204, in order, queued ones last."""
        held = list(self.retry) + queued
        self.retry.clear()
        for message in held:
            if message.accepted:
                self.retry.append(message)
            else:
                self.finish(message, error)


class FlowControl:
    """Holds the requests of a connected publisher that lags behind.

    Request threads take messages faster than one publisher thread can
    publish them, and a busy broker confirms them later than they come;
    left alone, waiting and unconfirmed messages fill max_queue_size and
    the surplus is answered 503.  Waiting here gives the publisher the GIL
    and the broker time, and turns overload into latency.  A publisher
    that is not connected, or that RabbitMQ blocks, is not waited for: its
    queue bound answers for it.
    """

    def __init__(self, settings, in_flight):
        self._high_water = min(FLOW_HIGH_WATER, settings.max_queue_size // 2)
        self._timeout = settings.confirm_timeout
        self._in_flight = in_flight
        self._caught_up = threading.Condition()
        self._waiters = 0

    def keep_pace(self, may_hold):
        """Hold the calling request while in_flight() is at high water and
        may_hold(), for confirm_timeout at most.  Held requests go on oldest
        first, one for each message confirmed or sent (see release)."""
        if self._in_flight() < self._high_water or not may_hold():
            return
        deadline = time.monotonic() + self._timeout
        with self._caught_up:
            self._waiters += 1
            try:
                while (self._in_flight() >= self._high_water and may_hold()
                       and time.monotonic() < deadline):
                    self._caught_up.wait(FLOW_CHECK)
            finally:
                self._waiters -= 1

    def release(self):
        """Let as many held requests go as there is room, oldest first.

        Releasing them all at once when the backlog had halved made the
        wait a lottery: a broker slow to confirm (a contended topic
        exchange) left some requests waiting round after round.  Condition
        waiters are woken in the order they began to wait.
        """
        if not self._waiters:
            return
        room = self._high_water - self._in_flight()
        if room > 0:
            with self._caught_up:
                self._caught_up.notify(room)


class Link:
    """A publisher's connection to RabbitMQ and its two channels: which
    host it opens, which channel each message goes out on, and what a
    block or a closed channel means for the messages.

    A message for an exchange this publisher has seen take messages goes
    out batched on the main channel (Wire).  The first one for any other
    goes out alone on the synchronous check channel: a missing exchange
    or a refused write then closes only that channel, so one client's
    typo never costs the messages other clients have in flight.
    """

    def __init__(self, settings, stats, outbox, vhost, user, on_block):
        self.settings = settings
        self.stats = stats
        self.vhost = vhost
        self.user = user
        self._outbox = outbox
        self._on_block = on_block
        self._next_host = random.randrange(len(settings.hosts))
        self.node = None
        self.blocked_by = None
        #: Exchanges that took a message from this publisher.
        self.known_exchanges = {''}
        #: False for good once this pika lacks what Wire needs.
        self.batched = True
        self._connection = None
        self._channel = None
        self._channel_close_reason = ''
        self._check_channel = None
        self._wire = None

    def connect(self, password):
        """Log in at the host after the last one used, or the next that
        answers, and open both channels."""
        self._connection, self.node = open_connection(
            self.settings, self.vhost, self.user, password,
            self._next_host)
        self._next_host = (self.settings.hosts.index(self.node) + 1) % len(
            self.settings.hosts)
        self.stats.connection_opened()
        self._connection.add_on_connection_blocked_callback(self._on_blocked)
        self._connection.add_on_connection_unblocked_callback(
            self._on_unblocked)
        self._open_check_channel()
        self._open_channel()
        self.stats.connected = True
        LOGGER.info('Connected %s:%s to %s:%s', self.vhost, self.user,
                    *self.node)

    def disconnect(self):
        self.stats.connected = False
        self.blocked_by = None
        connection, self._connection = self._connection, None
        self._channel = self._check_channel = self._wire = None
        self.node = None
        if connection is None:
            return
        try:
            if connection.is_open:
                connection.close()
        except Exception:
            LOGGER.debug('%s:%s closing a failed connection', self.vhost,
                         self.user, exc_info=True)
        self.stats.connection_closed()

    def process_events(self, time_limit):
        self._connection.process_data_events(time_limit=time_limit)

    def wake(self):
        """Cut process_events short, from any thread."""
        connection = self._connection
        if connection is None:
            return
        try:
            connection.add_callback_threadsafe(_nothing)
        except pika.exceptions.ConnectionWrongStateError:
            pass

    def _open_channel(self):
        """Open the main channel for batched publishing, unless this pika
        lacks what Wire needs: then every message goes through the check
        channel."""
        self._outbox.restart()
        if not self.batched:
            return
        channel = self._connection.channel()
        self.stats.channel_opened()
        try:
            wire = Wire(self._connection, channel)
        except AttributeError as error:
            self._publish_publicly(error)
            channel.close()
            return
        wire.select_confirms(self._connection, self._outbox.on_confirm,
                             self._outbox.on_return, self._on_channel_closed)
        self._channel, self._wire = channel, wire

    def _publish_publicly(self, error):
        """Fall back to pika's public basic_publish for good; said once per
        process, since every publisher meets the same pika."""
        global _PUBLIC_FALLBACK_LOGGED
        self.batched = False
        if not _PUBLIC_FALLBACK_LOGGED:
            _PUBLIC_FALLBACK_LOGGED = True
            LOGGER.warning('pika %s lacks what batched publishing needs (%s);'
                           ' publishing with basic_publish, one confirmed '
                           'message at a time', pika.__version__, error)

    def _open_check_channel(self):
        channel = self._connection.channel()
        channel.confirm_delivery()
        self.stats.channel_opened()
        self._check_channel = channel

    def _on_channel_closed(self, _channel, reason):
        self._channel_close_reason = getattr(reason, 'reply_text', '') \
            or str(reason)

    def reopen_closed_channel(self):
        """Replace a main channel RabbitMQ closed; the exchange it blamed
        is checked again."""
        if self._channel is None or not self._channel.is_closed:
            return
        reason = self._channel_close_reason
        LOGGER.warning('%s:%s channel closed: %s', self.vhost, self.user,
                       reason)
        self.stats.channel_closed()
        self.known_exchanges.discard(refused_exchange(reason))
        self._open_channel()

    def replace_channels(self):
        """Close both channels and open fresh ones (see Outbox.nacked)."""
        for channel in (self._channel, self._check_channel):
            if channel is not None and channel.is_open:
                channel.close()
                self.stats.channel_closed()
        self._open_check_channel()
        self._open_channel()

    def _on_blocked(self, _connection, frame):
        """RabbitMQ raised a memory or disk alarm and stops reading what
        this connection publishes.  The connection stays open, as RabbitMQ
        asks: messages answered 204 wait here, and requests waiting for an
        outcome are answered now rather than at their timeout."""
        self.blocked_by = getattr(frame.method, 'reason', '') or 'an alarm'
        LOGGER.warning('%s:%s blocked by RabbitMQ: %s', self.vhost,
                       self.user, self.blocked_by)
        self._on_block(blocked_error(self.blocked_by))

    def _on_unblocked(self, _connection, _frame):
        LOGGER.warning('%s:%s unblocked by RabbitMQ', self.vhost, self.user)
        self.blocked_by = None

    def can_publish(self):
        """While RabbitMQ blocks the connection, messages wait."""
        if self.blocked_by is not None:
            return False
        return self._channel is None or self._channel.is_open

    def send(self, message):
        """Publish one message; it is in the outbox before any frame of it
        is made, so a failure from here on leaves it to be republished."""
        if message.abandoned:
            self._outbox.finish(message,
                                ConfirmTimeout('abandoned by its request'))
            return
        wire = self._wire
        if wire is None or message.exchange not in self.known_exchanges:
            self.flush()
            self._probe(message)
            return
        self._outbox.add(message)
        self.stats.publishes += 1
        wire.add(message)

    def flush(self):
        """Write what send batched, in one buffer."""
        if self._wire is not None:
            self._wire.flush()

    def _probe(self, message):
        """Publish synchronously on the check channel to learn the exchange.

        The message itself is the probe: on ack it is delivered and the
        exchange is known for this publisher from then on.  Without the
        batched path every message goes this way.
        """
        try:
            self._check_channel.basic_publish(
                message.exchange, message.routing_key, message.body,
                message.properties, mandatory=message.mandatory)
        except pika.exceptions.UnroutableError:
            self.known_exchanges.add(message.exchange)
            self.stats.publishes += 1
            self._outbox.finish_returned(message)
        except pika.exceptions.NackError:
            self.stats.publishes += 1
            self._outbox.nacked(message)
        except pika.exceptions.ChannelClosedByBroker as error:
            self.stats.channel_closed()
            self._open_check_channel()
            self._outbox.refused(message, self._refusal(message, error))
        except Exception:
            self._outbox.retry.appendleft(message)
            raise
        else:
            self.known_exchanges.add(message.exchange)
            self.stats.publishes += 1
            self.stats.confirmed += 1
            self._outbox.finish(message)

    def _refusal(self, message, error):
        if error.reply_code == 404:
            return ExchangeNotFound('exchange %r does not exist in vhost %r'
                                    % (message.exchange, self.vhost))
        return ExchangeRefused('user %r may not publish to exchange %r in '
                               'vhost %r' % (self.user, message.exchange,
                                             self.vhost))


class Pump:
    """The publisher thread's work while a connection lasts: it moves
    messages from the queue and the outbox's retries out over the link,
    and keeps the channels fit for it between rounds.

    While messages flow, the thread looks every BATCH_TICK without being
    woken: a wake per message costs a GIL hand-over each, and a tick
    gathers the messages of many requests into one batch.  Once quiet for
    QUIET seconds it asks to be woken and sleeps.  A request that waits for
    its message's outcome would wait out the tick as well, so the first
    such message since the thread last took from the queue wakes it at
    once; those that come before it looks again ride along.
    """

    def __init__(self, incoming, link, outbox, flow):
        self._incoming = incoming
        self._link = link
        self._outbox = outbox
        self._flow = flow
        self._wake_pending = False
        self._awaited_wake_pending = False

    def wake(self, force=False, awaited=False):
        """Have the thread look at the queue soon, from any thread; force
        it, or awaited (a request waits for the outcome), to look now."""
        if awaited and not self._awaited_wake_pending:
            self._awaited_wake_pending = True
            force = True
        if self._wake_pending and not force:
            return
        self._wake_pending = True
        self._link.wake()

    def serve(self, between_rounds):
        """Serve the link until between_rounds(), asked after each round
        of publishing, is true."""
        parked_at = busy_at = time.monotonic()
        while True:
            if self._publish_waiting():
                busy_at = time.monotonic()
            if between_rounds():
                return
            self._link.process_events(self._poll_time(busy_at))
            self._link.reopen_closed_channel()
            if self._outbox.nack_retry_due():
                self._link.replace_channels()
                self._outbox.retry_nacked()
            if self._outbox.parked and \
                    time.monotonic() - parked_at > PARK_RETRY:
                self._outbox.unpark()
                parked_at = time.monotonic()

    def _poll_time(self, busy_at):
        """How long to wait in pika before looking at the queue again."""
        if time.monotonic() - busy_at < QUIET:
            self._wake_pending = True
            return BATCH_TICK
        self._wake_pending = False
        if self._incoming.qsize():
            return 0
        return IDLE_POLL

    def _publish_waiting(self):
        """Publish what waits, in one write; True if there was anything."""
        link, retry = self._link, self._outbox.retry
        self._awaited_wake_pending = False
        sent = 0
        try:
            while retry and link.can_publish():
                link.send(retry.popleft())
                sent += 1
            while link.can_publish():
                try:
                    message = self._incoming.get_nowait()
                except queue.Empty:
                    break
                link.send(message)
                sent += 1
        finally:
            link.flush()
        self._flow.release()
        return sent > 0


class Login:
    """The password a publisher logs in with, and whether RabbitMQ still
    takes it.

    RabbitMQ does not close a connection whose password changed, so the
    password is tried now and then beside the publisher, which the check
    must not stall.  Only a salted digest is compared with the passwords
    requests bring.
    """

    def __init__(self, settings, vhost, user, password):
        self.settings = settings
        self.vhost = vhost
        self.user = user
        self._salt = os.urandom(16)
        self._check = None
        self.rotate(password)

    def matches(self, password):
        return hmac.compare_digest(self._digest,
                                   password_digest(self._salt, password))

    def rotate(self, password):
        """Log in with password from now on; RabbitMQ just took it."""
        self.password = password
        self._digest = password_digest(self._salt, password)
        self._check_due = self._next_check()

    def check_when_due(self, on_refused):
        """Start a check if one is due; on_refused(error) is called from
        the check's thread if RabbitMQ refuses the current password."""
        if time.monotonic() < self._check_due or self._check is not None:
            return
        self._check = threading.Thread(
            target=self._verify, args=(self.password, on_refused),
            name='password-check-%s:%s' % (self.vhost, self.user),
            daemon=True)
        self._check.start()

    def _verify(self, password, on_refused):
        try:
            verify_login(self.settings, self.vhost, self.user, password)
        except (LoginRefused, AccessRefused) as error:
            if password == self.password:
                on_refused(error)
        except PublishError:
            pass
        finally:
            self._check_due = self._next_check()
            self._check = None

    def _next_check(self):
        """Jittered, so that publishers started together do not check
        together."""
        return time.monotonic() + self.settings.password_check_interval * \
            random.uniform(0.8, 1.2)


class PublisherClosed(Exception):
    """The publisher went idle and closed; ask the registry for a new one."""


class Publisher(threading.Thread):
    """One vhost/user: a thread that keeps a connection to RabbitMQ for as
    long as RabbitMQ takes the login, and publishes what request threads
    put in its queue.

    Its parts: Login (the password), Link (the connection and channels),
    Pump (the thread's work while connected), Outbox (what RabbitMQ has
    not settled) and FlowControl (holding requests while the thread
    lags).
    """

    def __init__(self, settings, vhost, user, password, spool=None,
                 on_exit=None):
        super().__init__(name='publisher-%s:%s' % (vhost, user), daemon=True)
        self.settings = settings
        self.stats = statelessd_stats.ConnectionCounters()
        self.vhost = vhost
        self.user = user
        self._login = Login(settings, vhost, user, password)
        self._spool = spool
        self._on_exit = on_exit
        self._queue = queue.Queue()
        self._flow = FlowControl(settings, self._in_flight)
        self._outbox = Outbox(self.stats, spool, self._flow, vhost, user)
        self._link = Link(settings, self.stats, self._outbox, vhost, user,
                          self._answer_waiting)
        self._pump = Pump(self._queue, self._link, self._outbox, self._flow)
        self._ready = threading.Event()
        self._stopping = threading.Event()
        self._reconnect_now = threading.Event()
        self._attempted = threading.Event()
        self._drain_deadline = 0.0
        self._closed = False
        self._closed_lock = threading.Lock()
        self._last_used = time.monotonic()
        self.failure = None
        #: Why RabbitMQ now refuses this vhost/user, or None: its requests
        #: are refused while what it accepted waits for a valid login.
        self.refusal = None

    # -- called from request threads -------------------------------------

    def wait_ready(self, timeout):
        """Wait for the first connection; raise why it failed, if it did."""
        if not self._ready.wait(timeout):
            raise BrokerUnavailable('RabbitMQ did not answer within %ss'
                                    % timeout)
        if self.failure is not None:
            raise self.failure

    @property
    def connected_once(self):
        """True once the first connection opened (and stays true)."""
        return self._ready.is_set() and self.failure is None

    def password_matches(self, password):
        return self._login.matches(password)

    def rotate_password(self, password):
        """Serve a password the broker has just accepted from now on, and
        log in with it at once if the last login was refused."""
        self._login.rotate(password)
        if self.refusal is not None:
            self.refusal = None
            self._reconnect_now.set()

    def await_attempt(self, timeout):
        """Wait until a lost connection's first reconnect has been tried:
        between the two, a deleted user's requests would be taken as 204s
        that no login will ever publish."""
        self._attempted.wait(timeout)

    @property
    def pending(self):
        return self._queue.qsize() + len(self._outbox)

    def report(self):
        unconfirmed = self._outbox.unconfirmed
        report = self.stats.report(queue_size=self.pending - unconfirmed,
                                   outbox=unconfirmed)
        link = self._link
        report.update({
            'node': '%s:%s' % link.node if link.node else None,
            'blocked': link.blocked_by is not None,
            'blocked_by': link.blocked_by,
            'publishing': BATCHED if link.batched else BASIC_PUBLISH})
        return report

    def submit_batch(self, messages, confirm):
        """Take messages in their order, all or none, or raise QueueFull,
        PublisherClosed or, while RabbitMQ blocks publishing, the block.

        A message whose request waits for the outcome (confirm mode, or an
        exchange this publisher has not checked yet) is not spooled: the
        client learns what happened.  Any other is answered at once, so
        it goes to the spool first, when there is one.  While RabbitMQ
        blocks publishing, a request that would wait for the outcome is
        refused at once.  The messages enter the queue together, so that
        one write can carry them all.
        """
        blocked_by = self._link.blocked_by
        if blocked_by is not None and any(self._waits(message, confirm)
                                          for message in messages):
            raise blocked_error(blocked_by)
        if self.pending + len(messages) > self.settings.max_queue_size:
            raise QueueFull('%s:%s holds %d messages; %d more would pass '
                            'its limit of %d' % (self.vhost, self.user,
                                                 self.pending, len(messages),
                                                 self.settings.max_queue_size))
        awaited = False
        for message in messages:
            if self._waits(message, confirm):
                message.mark_awaited(confirm, self.settings.confirm_timeout)
                awaited = True
            elif message.spool_id is None and self._spool is not None:
                self._spool.add(self.vhost, self.user, self._login.password,
                                message)
        with self._closed_lock:
            if self._closed:
                raise PublisherClosed()
            self._last_used = time.monotonic()
            for message in messages:
                self._queue.put(message)
        self._pump.wake(awaited=awaited)
        self._flow.keep_pace(self._may_hold)

    def _waits(self, message, confirm):
        """Whether the message's request waits for its outcome; a spooled
        message's request was answered long ago."""
        return message.spool_id is None and (
            confirm or message.exchange not in self._link.known_exchanges)

    def _may_hold(self):
        return (self.stats.connected and self._link.blocked_by is None
                and not self._stopping.is_set())

    def _in_flight(self):
        return self._queue.qsize() + self._outbox.unconfirmed

    def stop(self, drain_timeout=0.0):
        """Ask the thread to finish; it flushes for up to drain_timeout."""
        self._drain_deadline = time.monotonic() + drain_timeout
        self._stopping.set()
        self._reconnect_now.set()
        self._pump.wake(force=True)

    # -- the publisher thread ----------------------------------------------

    def run(self):
        try:
            self._run()
        except Exception:
            LOGGER.exception('%s:%s publisher failed', self.vhost, self.user)
        finally:
            with self._closed_lock:
                self._closed = True
            if self._on_exit is not None:
                self._on_exit(self)
            self._report_leftovers()

    def _run(self):
        backoff = BACKOFF_FIRST
        while not self._stopping.is_set():
            password = self._login.password
            try:
                self._link.connect(password)
            except PublishError as error:
                if self._first_connection_failed(error) or \
                        self._reconnect_failed(error, password):
                    return
                backoff = self._back_off(backoff)
                continue
            except Exception:
                LOGGER.exception('%s:%s could not open a connection',
                                 self.vhost, self.user)
                self._disconnect()
                if self._first_connection_failed(BrokerUnavailable(
                        'statelessd could not open a connection to '
                        'RabbitMQ')):
                    return
                self._attempted.set()
                backoff = self._back_off(backoff)
                continue
            self.refusal = None
            self._attempted.set()
            self._ready.set()
            served = self._serve_until_lost()
            self._disconnect()
            backoff = BACKOFF_FIRST if served else self._back_off(backoff)

    def _first_connection_failed(self, error):
        """A publisher that never connected ends with its first failure,
        which wait_ready raises; True when it did."""
        if self._ready.is_set():
            return False
        self.failure = error
        self._ready.set()
        return True

    def _back_off(self, backoff):
        """Wait before the next login, unless stop() or a new password
        cuts the wait short; the next wait."""
        self._reconnect_now.wait(backoff * random.uniform(0.5, 1.5))
        self._reconnect_now.clear()
        return min(backoff * 2, BACKOFF_MAX)

    def _serve_until_lost(self):
        """Serve the connection until it ends; False when the thread failed.

        Whatever ends it, a lost connection or a failure in statelessd or
        pika, is survived alike: _disconnect hands every unconfirmed
        message back for a new connection, so nothing answered 204 is lost
        with the thread.
        """
        try:
            self._pump.serve(self._between_rounds)
        except (pika.exceptions.AMQPError, OSError) as error:
            LOGGER.warning('%s:%s lost its connection: %r', self.vhost,
                           self.user, error)
        except Exception:
            LOGGER.exception('%s:%s publisher failed; publishing what it '
                             'holds again on a new connection', self.vhost,
                             self.user)
            return False
        return True

    def _reconnect_failed(self, error, password):
        """A refused login stops the publisher accepting: a deleted user or
        a changed password must not go on publishing as 204s.  What it
        already accepted waits here for a login RabbitMQ takes; holding
        nothing, it retires rather than knock on RabbitMQ's door forever.
        True when it retired.

        A password rotated while the refused attempt was under way is
        tried at once instead: the refusal was of the old one.
        """
        if password != self._login.password:
            self._reconnect_now.set()
            return False
        self._attempted.set()
        if not isinstance(error, (LoginRefused, AccessRefused)):
            LOGGER.warning('%s:%s reconnect failed: %s', self.vhost,
                           self.user, error.reason)
            return False
        first = self.refusal is None
        self.refusal = error
        self._settle_waiting(error)
        if self._retire_if_empty():
            LOGGER.warning('RabbitMQ refuses %s:%s: %s; its publisher holds '
                           'nothing and closes', self.vhost,
                           self.user, error.reason)
            return True
        if first:
            LOGGER.error('RabbitMQ refuses %s:%s: %s; its requests are '
                         'refused, and %d accepted messages wait for a '
                         'login RabbitMQ takes', self.vhost,
                         self.user, error.reason, self.pending)
        return False

    def _retire_if_empty(self):
        """Close to new messages, unless it holds some: atomic with
        submit_batch, so that nothing enters a publisher that is going
        away."""
        with self._closed_lock:
            if self.pending:
                return False
            self._closed = True
        return True

    def _settle_waiting(self, error):
        """Answer the requests that wait for an outcome with the refusal;
        keep the messages that were answered 204, in order."""
        queued = []
        while True:
            try:
                queued.append(self._queue.get_nowait())
            except queue.Empty:
                break
        self._outbox.settle_waiting(error, queued)

    def _answer_waiting(self, error):
        """RabbitMQ blocks publishing: requests waiting for an outcome are
        answered with error now (see Link._on_blocked)."""
        with self._queue.mutex:
            queued = list(self._queue.queue)
        for message in self._outbox.held_messages() + queued:
            if not message.accepted:
                message.abandon(error)

    def _password_refused(self, error):
        LOGGER.error('RabbitMQ no longer takes the password of %s:%s (%s): '
                     'closing its connection', self.vhost, self.user,
                     error.reason)
        self.refusal = error
        self._pump.wake(force=True)

    def _disconnect(self):
        self._attempted.clear()
        self._outbox.take_back()
        self._link.disconnect()

    def _between_rounds(self):
        """The publisher's own business between two rounds of serving;
        True to close the connection: stopped and drained, idle, or
        refused."""
        if self._stopping.is_set() and self._drained():
            return True
        if self._idle():
            LOGGER.info('%s:%s idle for %ss, closing', self.vhost,
                        self.user, self.settings.idle_timeout)
            return True
        if self.refusal is not None:
            return True
        self._login.check_when_due(self._password_refused)
        return False

    def _drained(self):
        if not (self.pending - len(self._outbox.parked)):
            return True
        return time.monotonic() >= self._drain_deadline

    def _idle(self):
        """Close for good when unused for idle_timeout with nothing held."""
        if time.monotonic() - self._last_used < self.settings.idle_timeout \
                or not self._retire_if_empty():
            return False
        self._stopping.set()
        return True

    def _report_leftovers(self):
        left = self.pending
        if left:
            LOGGER.error('%s:%s stopped with %d unconfirmed messages%s',
                         self.vhost, self.user, left,
                         ' (kept in the spool)' if self._spool else '')


def prepare_spool_directory(path):
    """Create the spool directory 0700, or refuse one others can read.

    The spool holds passwords, so nobody but statelessd's user may read it.
    """
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        status = os.stat(path)
    except OSError as error:
        raise ValueError('cannot create %s: %s' % (path, error.strerror))
    if status.st_mode & 0o077:
        raise ValueError('%s is open to other users (mode %03o); statelessd'
                         ' keeps passwords there and needs 0700'
                         % (path, status.st_mode & 0o777))
    if status.st_uid != os.geteuid():
        raise ValueError('%s belongs to uid %d, not to statelessd (uid %d)'
                         % (path, status.st_uid, os.geteuid()))


class Spool:
    """Messages answered 204 and not yet confirmed, on disk for a successor.

    An append-only file of records (length, CRC-32, kind, payload): an add
    holds the vhost, user, password, exchange, routing key, mandatory flag,
    encoded properties and body; a retire names an add whose message the
    broker confirmed.  Adds are written by one flusher thread, one fsync for
    all that arrived meanwhile; the file is rewritten with only the live
    records once retired ones dominate.  A record torn by a crash fails its
    CRC and ends the replay.
    """

    HEADER = struct.Struct('>IIB')
    ADD, RETIRE = 1, 2
    #: Retired records tolerated in the file before it is compacted.
    COMPACT_AFTER = 10000
    #: How long a retire may wait for company before it is written alone.
    RETIRE_DELAY = 1.0

    def __init__(self, directory, name):
        self.path = os.path.join(directory, name)
        self._cond = threading.Condition()
        self._live = collections.OrderedDict()
        self._buffer = []
        self._appended = 0
        self._durable = 0
        self._retired_in_file = 0
        self._next_id = 1
        self._file = None
        self._closing = False
        self._error = None
        self._flusher = threading.Thread(target=self._flush_forever,
                                         name='spool-flusher', daemon=True)

    def open(self):
        """Start a compacted file; return (vhost, user, password, Message)
        for every message a predecessor left unconfirmed."""
        entries = self._recover()
        with self._cond:
            self._rewrite()
        self._flusher.start()
        if entries:
            LOGGER.warning('Replaying %d spooled messages from %s',
                           len(entries), self.path)
        return entries

    def add(self, vhost, user, password, message):
        """Write a message durably; returns once it is fsynced."""
        meta = json.dumps([vhost, user, password, message.exchange,
                           message.routing_key, message.mandatory]).encode()
        properties = b''.join(message.properties.encode())
        with self._cond:
            self._raise_failure()
            spool_id = self._next_id
            self._next_id += 1
            record = self._record(self.ADD, struct.pack(
                '>QII', spool_id, len(meta), len(properties)) + meta
                + properties + message.body)
            self._live[spool_id] = record
            self._buffer.append(record)
            self._appended += 1
            ticket = self._appended
            message.spool_id = spool_id
            self._cond.notify_all()
            while self._durable < ticket:
                if self._error is not None:
                    del self._live[spool_id]
                    message.spool_id = None
                    self._raise_failure()
                self._cond.wait()

    def _raise_failure(self):
        """After a failed write nothing more is accepted (the caller holds
        _cond): answering 204 for what is not on disk would break the
        spool's promise."""
        if self._error is not None:
            raise SpoolFailed('the spool %s cannot be written: %s'
                              % (self.path, self._error))

    def retire(self, spool_id):
        with self._cond:
            if self._live.pop(spool_id, None) is not None:
                self._buffer.append(self._record(
                    self.RETIRE, struct.pack('>Q', spool_id)))
                self._retired_in_file += 1

    def close(self):
        """Write what is buffered and stop the flusher."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._flusher.is_alive():
            self._flusher.join()
        try:
            self._file.close()
        except OSError as error:
            LOGGER.error('Closing the spool %s: %s', self.path, error)

    @classmethod
    def _record(cls, kind, payload):
        return cls.HEADER.pack(len(payload), zlib.crc32(bytes([kind])
                                                        + payload),
                               kind) + payload

    def _flush_forever(self):
        while True:
            with self._cond:
                while not self._closing and self._durable == self._appended:
                    if self._buffer:
                        self._cond.wait(self.RETIRE_DELAY)
                        break
                    self._cond.wait()
                records, self._buffer = self._buffer, []
                ticket = self._appended
                closing = self._closing
            try:
                self._write(records, ticket)
            except OSError as error:
                LOGGER.error('Cannot write the spool %s: %s; refusing '
                             'messages until statelessd restarts',
                             self.path, error)
                with self._cond:
                    self._error = error.strerror or str(error)
                    self._cond.notify_all()
                return
            if closing:
                return

    def _write(self, records, ticket):
        if records:
            self._file.write(b''.join(records))
            self._file.flush()
            os.fsync(self._file.fileno())
        with self._cond:
            self._durable = max(self._durable, ticket)
            self._cond.notify_all()
            if self._retired_in_file > max(self.COMPACT_AFTER,
                                           len(self._live)):
                self._rewrite()

    def _rewrite(self):
        """Replace the file with the live records; the caller holds _cond."""
        temporary = self.path + '.tmp'
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, 'wb') as handle:
            handle.write(b''.join(self._live.values()))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)
        directory = os.open(os.path.dirname(self.path) or '.', os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        if self._file is not None:
            self._file.close()
        self._file = open(self.path, 'ab')
        self._buffer = []
        self._durable = self._appended
        self._retired_in_file = 0
        self._cond.notify_all()

    def _recover(self):
        try:
            with open(self.path, 'rb') as handle:
                data = handle.read()
        except FileNotFoundError:
            return []
        position = 0
        while position + self.HEADER.size <= len(data):
            length, crc, kind = self.HEADER.unpack_from(data, position)
            end = position + self.HEADER.size + length
            payload = data[position + self.HEADER.size:end]
            if end > len(data) or zlib.crc32(bytes([kind]) + payload) != crc:
                break
            spool_id = struct.unpack_from('>Q', payload)[0]
            if kind == self.ADD:
                self._live[spool_id] = data[position:end]
            else:
                self._live.pop(spool_id, None)
            position = end
        if position < len(data):
            LOGGER.warning('Skipped %d bytes of a torn record at the end of '
                           '%s', len(data) - position, self.path)
        self._next_id = max(self._live, default=0) + 1
        return [self._decode(record) for record in self._live.values()]

    def _decode(self, record):
        payload = record[self.HEADER.size:]
        spool_id, meta_size, properties_size = struct.unpack_from('>QII',
                                                                  payload)
        offset = struct.calcsize('>QII')
        meta = json.loads(payload[offset:offset + meta_size])
        offset += meta_size
        properties = pika.BasicProperties()
        properties.decode(payload[offset:offset + properties_size])
        vhost, user, password, exchange, routing_key, mandatory = meta
        message = Message(exchange, routing_key,
                          payload[offset + properties_size:], properties,
                          mandatory)
        message.spool_id = spool_id
        return vhost, user, password, message


class Refusals:
    """Logins RabbitMQ refused lately, refused again from memory.

    A flood of bad credentials then costs the broker one connection per
    distinct vhost/user/password every ttl seconds, not one per request.
    Entries are keyed by a salted digest, so no password is kept, and
    there are at most LIMIT of them, the oldest dropped first.
    """

    LIMIT = 4096

    def __init__(self, ttl):
        self._ttl = ttl
        self._salt = os.urandom(16)
        self._lock = threading.Lock()
        self._entries = collections.OrderedDict()

    def _key(self, vhost, user, password):
        return password_digest(self._salt,
                               json.dumps([vhost, user, password]))

    def check(self, vhost, user, password):
        """Raise the refusal remembered for these credentials, if any."""
        key = self._key(vhost, user, password)
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return
            expires, kind, reason = entry
            if expires <= time.monotonic():
                del self._entries[key]
                return
        raise kind(reason)

    def remember(self, vhost, user, password, error):
        key = self._key(vhost, user, password)
        with self._lock:
            self._entries.pop(key, None)
            self._entries[key] = (time.monotonic() + self._ttl, type(error),
                                  error.reason)
            while len(self._entries) > self.LIMIT:
                self._entries.popitem(last=False)


class Registry:
    """The publishers of one worker process, keyed by vhost and user."""

    def __init__(self, settings, spool=None):
        self.settings = settings
        self.spool = spool
        self._lock = threading.Lock()
        self._publishers = {}
        self._refusals = Refusals(settings.login_failure_ttl)
        self._closed = False

    def publish_batch(self, vhost, user, password, messages, confirm):
        """Hand messages to vhost/user's publisher, starting one if need
        be, in their order, all or none."""
        for _ in range(3):
            publisher = self.publisher_for(vhost, user, password)
            try:
                publisher.submit_batch(messages, confirm)
                return
            except PublisherClosed:
                self._discard(publisher)
        raise BrokerUnavailable('the publisher for %s:%s keeps closing'
                                % (vhost, user))

    def publisher_for(self, vhost, user, password):
        """The running publisher for vhost/user, if this password may use it.

        Credentials refused within login_failure_ttl are refused again
        without asking the broker.
        """
        publisher = self._publishers.get((vhost, user))
        if publisher is not None and not self._closed and \
                publisher.connected_once and \
                publisher.password_matches(password):
            publisher.await_attempt(self.settings.connect_timeout)
            if publisher.refusal is None:
                return publisher
        self._refusals.check(vhost, user, password)
        try:
            return self._login(vhost, user, password)
        except (LoginRefused, AccessRefused) as error:
            self._refusals.remember(vhost, user, password, error)
            raise

    def _login(self, vhost, user, password):
        """A password other than the one the connection was opened with is a
        new login: the broker decides, and a rotated password takes over.
        So is any password while the broker refuses the publisher's own."""
        for _ in range(3):
            publisher = self._running(vhost, user, password)
            try:
                publisher.wait_ready(self.settings.connect_timeout)
            except PublishError:
                self._forget(publisher)
                if publisher.password_matches(password):
                    raise
                continue
            if publisher.refusal is not None or \
                    not publisher.password_matches(password):
                verify_login(self.settings, vhost, user, password)
                publisher.rotate_password(password)
            return publisher
        raise BrokerUnavailable('could not start a publisher for %s:%s'
                                % (vhost, user))

    def _running(self, vhost, user, password):
        with self._lock:
            if self._closed:
                raise BrokerUnavailable('statelessd is shutting down')
            publisher = self._publishers.get((vhost, user))
            if publisher is None:
                if len(self._publishers) >= self.settings.max_publishers:
                    raise TooManyPublishers(
                        'this worker already publishes for %d vhost/user '
                        'pairs, its limit' % len(self._publishers))
                publisher = Publisher(self.settings, vhost, user, password,
                                      self.spool, self._discard)
                self._publishers[(vhost, user)] = publisher
                publisher.start()
            return publisher

    def _forget(self, publisher):
        publisher.stop()
        self._discard(publisher)

    def _discard(self, publisher):
        with self._lock:
            key = (publisher.vhost, publisher.user)
            if self._publishers.get(key) is publisher:
                del self._publishers[key]

    def replay(self, entries):
        """Hand spooled messages back to publishers in the background."""
        groups = collections.OrderedDict()
        for vhost, user, password, message in entries:
            groups.setdefault((vhost, user, password), []).append(message)
        for login, messages in groups.items():
            threading.Thread(target=self._replay, args=login + (messages,),
                             name='replay-%s:%s' % login[:2],
                             daemon=True).start()

    def _replay(self, vhost, user, password, messages):
        """Retry until the broker takes the login: these were answered 204."""
        backoff = BACKOFF_FIRST
        while messages and not self._closed:
            try:
                self.publish_batch(vhost, user, password, messages[:1], False)
            except PublishError as error:
                LOGGER.warning('Spooled messages for %s:%s wait: %s', vhost,
                               user, error.reason)
                time.sleep(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, BACKOFF_MAX)
                continue
            messages.pop(0)
            backoff = BACKOFF_FIRST

    def report(self):
        with self._lock:
            publishers = list(self._publishers.values())
        return {'%s:%s' % (p.vhost, p.user): p.report() for p in publishers}

    def stop(self, timeout):
        """Flush every publisher for up to timeout seconds, then close.

        Returns how many messages were left unconfirmed.
        """
        with self._lock:
            self._closed = True
            publishers = list(self._publishers.values())
        deadline = time.monotonic() + timeout
        for publisher in publishers:
            publisher.stop(timeout)
        for publisher in publishers:
            publisher.join(max(0.0, deadline - time.monotonic()) + 1.0)
        return sum(p.pending for p in publishers)


def _nothing():
    """Wakes the publisher thread out of process_data_events."""
