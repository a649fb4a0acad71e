#!/usr/bin/env python3
"""How statelessd's throughput grows with its ports (`make bench-scale`).

For each count in SCALE_PORTS (default "1 2 4 8 12"), statelessd serves
that many ports and each port is driven by a wrk of its own (1 thread,
SCALE_CONNECTIONS keep-alive connections, default 16, for SCALE_SECONDS,
default 8), fire-and-forget through a direct exchange into a queue of its
own.  One line per count: the total req/s, the median port's p50, the
worst port's p99, non-2xx answers and the messages held unconfirmed (the
outbox) summed over the workers at mid-run.

Then three rows at the largest count:
 * the same load through nginx in front, running etc/nginx.conf with
   every port in its pool (each wrk now sends to nginx);
 * the same load through a topic exchange.  RabbitMQ's topic routing is
   contended across connections (see bench/results.md): that row measures
   the broker as much as statelessd, and its tail measures how fairly
   statelessd holds requests while the broker is slow to confirm;
 * the paced row: each port sent SCALE_PACED_RATE requests a second
   (default 100) over 4 connections, far below what the CPUs can do.  With
   the CPUs mostly idle no request has any reason to wait, so its p99 and
   maximum show waiting that is not work.

Safe on any number of cores: wrk and the paced clients compete with
statelessd and RabbitMQ for the same CPUs, so on a small machine the large
counts measure contention; the paced row stays meaningful everywhere.

It reuses bench/run.py's process, wrk and queue helpers; like it, it runs
with the standard library and pika, and cleans up what it creates.
"""
import http.client
import os
import shutil
import sys
import tempfile
import threading
import time

import pika

import run as bench

PORT_COUNTS = [int(n) for n in os.environ.get('SCALE_PORTS',
                                                '1 2 4 8 12').split()]
SECONDS = bench.env_int('SCALE_SECONDS', 8)
CONNECTIONS = bench.env_int('SCALE_CONNECTIONS', 16)
PACED_RATE = bench.env_int('SCALE_PACED_RATE', 100)
PACED_CONNECTIONS = 4
DIRECT = 'statelessd-scale-%d' % os.getpid()
TOPIC = DIRECT + '-topic'
BODY = 'body=hello+world&content_type=text%2Fplain&app_id=bench&' \
       'delivery_mode=1'


class Queues:
    """A direct and a topic exchange, and one queue per port bound to both
    with the key k<port index>."""

    def __init__(self, count):
        self.connection = pika.BlockingConnection(pika.ConnectionParameters(
            bench.AMQP_HOST, bench.AMQP_PORT,
            credentials=pika.PlainCredentials(*bench.GUEST), heartbeat=0))
        self.channel = self.connection.channel()
        for exchange, kind in ((DIRECT, 'direct'), (TOPIC, 'topic')):
            self.channel.exchange_declare(exchange, kind, auto_delete=True)
        self.names = ['%s-%d' % (DIRECT, index) for index in range(count)]
        for index, name in enumerate(self.names):
            self.channel.queue_declare(name, exclusive=True)
            for exchange in (DIRECT, TOPIC):
                self.channel.queue_bind(name, exchange, 'k%d' % index)

    def purge(self):
        for name in self.names:
            self.channel.queue_purge(name)

    def close(self):
        self.connection.close()


def path(index, exchange=DIRECT):
    return '/%%2f/%s/k%d' % (exchange, index)


def outbox(server):
    return sum(publisher.get('outbox', 0) for port in server.ports
               for publisher in server.stats(port)['connections'].values())


def serving(directory, count):
    server = bench.Statelessd(directory, [bench.free_port()
                                          for _ in range(count)])
    server.wait_ready()
    for index, port in enumerate(server.ports):
        for exchange in (DIRECT, TOPIC):
            bench.post(port, path(index, exchange), {'body': 'warm'})
    return server


def measure_wrk(server, exchange=DIRECT, proxy=None):
    """One wrk per port, each to its own port and queue, or with proxy (a
    port) all to the proxy."""
    processes = [bench.start_wrk(
        'http://127.0.0.1:%d%s' % (proxy or port, path(index, exchange)),
        'statelessd.lua', BODY, SECONDS, 1, CONNECTIONS)
        for index, port in enumerate(server.ports)]
    time.sleep(SECONDS / 2.0)
    held = outbox(server)
    figures = [bench.wrk_figures(process, SECONDS) for process in processes]
    p50s = sorted(f['p50'] for f in figures)
    label = (' through nginx' if proxy else '') + \
        (' topic' if exchange == TOPIC else '')
    return ('%3d ports%s: %8.0f req/s in all, p50 %s, p99 %s, non-2xx %d, '
            'outbox mid-run %d' % (
                len(server.ports), label,
                sum(f['rate'] for f in figures),
                bench.fmt_ms(p50s[len(p50s) // 2]),
                bench.fmt_ms(max(f['p99'] for f in figures)),
                sum(f['non2xx'] + f['errors'] for f in figures), held))


def measure_nginx(directory, server):
    if not bench.nginx_binary():
        return 'no nginx row: nginx is not installed (apt-get install nginx)'
    proxy = bench.Nginx(directory, server.ports)
    try:
        return measure_wrk(server, proxy=proxy.port)
    finally:
        proxy.stop()


def paced_client(port, index, deadline, latencies, failures):
    """Send at PACED_RATE / PACED_CONNECTIONS a second; keep each latency."""
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
    headers = {'Authorization': 'Basic ' + bench.basic_auth(*bench.GUEST),
               'Content-Type': 'application/x-www-form-urlencoded'}
    interval = PACED_CONNECTIONS / float(PACED_RATE)
    due = time.monotonic()
    mine = []
    while due < deadline:
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        started = time.monotonic()
        connection.request('POST', path(index), BODY, headers)
        response = connection.getresponse()
        response.read()
        mine.append((time.monotonic() - started) * 1000.0)
        if response.status != 204:
            failures.append(response.status)
        due += interval
    connection.close()
    latencies.extend(mine)


def measure_paced(server):
    deadline = time.monotonic() + SECONDS
    latencies, failures = [], []
    threads = [threading.Thread(target=paced_client, args=(
        port, index, deadline, latencies, failures))
        for index, port in enumerate(server.ports)
        for _ in range(PACED_CONNECTIONS)]
    for thread in threads:
        thread.start()
    time.sleep(SECONDS / 2.0)
    held = outbox(server)
    for thread in threads:
        thread.join()
    return ('%3d ports paced at %d req/s each: p50 %s, p99 %s, p99.9 %s, '
            'max %s, non-204 %d, outbox mid-run %d' % (
                len(server.ports), PACED_RATE,
                bench.fmt_ms(bench.percentile(latencies, 50)),
                bench.fmt_ms(bench.percentile(latencies, 99)),
                bench.fmt_ms(bench.percentile(latencies, 99.9)),
                bench.fmt_ms(max(latencies)), len(failures), held))


def main():
    if not shutil.which('wrk'):
        raise SystemExit('bench-scale needs wrk: apt-get install wrk')
    directory = tempfile.mkdtemp(prefix='statelessd-scale-')
    queues = Queues(max(PORT_COUNTS))
    print('%d CPUs; per port: wrk -t1 -c%d -d%ds, fire-and-forget, a queue '
          'each' % (os.cpu_count(), CONNECTIONS, SECONDS), flush=True)
    try:
        for count in PORT_COUNTS:
            server = serving(directory, count)
            try:
                print(measure_wrk(server), flush=True)
            finally:
                server.stop()
                queues.purge()
        server = serving(directory, max(PORT_COUNTS))
        try:
            print(measure_nginx(directory, server), flush=True)
            queues.purge()
            print(measure_wrk(server, TOPIC), flush=True)
            queues.purge()
            print(measure_paced(server), flush=True)
        finally:
            server.stop()
    finally:
        queues.close()
        shutil.rmtree(directory, ignore_errors=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
