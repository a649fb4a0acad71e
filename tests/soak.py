"""A long run of statelessd against a private RabbitMQ node: `make soak`.

Two workers take sustained mixed load (fire-and-forget and ?confirm=1), a
stream of requests with wrong passwords, and vhost/user pairs that appear,
publish once and go again once idle_timeout has reaped their publishers.
Half-way through, the node's RabbitMQ application is stopped and started.

Every sample interval (a minute in a long run) it records each worker's
resident memory, threads, open file descriptors and connections at the
broker.  After the load it waits for the publishers to be reaped and
checks:

* lost 0: every message answered 204 is in the queue;
* resident memory in the last third of the samples is within 10% of the
  first third;
* threads, file descriptors and broker connections are back at their
  baseline, taken before the load.

    python tests/soak.py [minutes]       (SOAK_MINUTES, default 15)

It prints the table and the verdicts, and puts them in bench/results.md
as its "Soak run" section, replacing the previous run's.
"""
import contextlib
import os
import platform
import subprocess
import sys
import threading
import time

import pika

from support import (REPO, Http, Load, PrivateBroker, Statelessd, drained,
                     durable_target, process_status, settle, unique)

#: Seconds a publisher may be idle before statelessd closes it.
IDLE_TIMEOUT = 3
#: How far resident memory may grow between the first and last third.
RSS_GROWTH = 0.10
#: Seconds the figures get to settle back to their baseline.
SETTLE = 60
RESULTS = REPO / 'bench' / 'results.md'
SECTION = '## Soak run'


class Sampler:
    """Per worker: resident memory, threads, file descriptors, broker
    connections."""

    def __init__(self, gateway, node):
        self.gateway = gateway
        self.node = node
        self.rows = []

    def sample(self, label, record=True):
        connections = self.broker_connections()
        taken = {}
        for port, pid in sorted(self.gateway.worker_pids().items()):
            status = process_status(pid)
            taken[port] = {
                'rss': int(status['VmRSS'].split()[0]) * 1024,
                'threads': int(status['Threads']),
                'fds': len(os.listdir('/proc/%d/fd' % pid)),
                'connections': connections.count('statelessd:%d ' % port)}
            if record:
                self.rows.append((label, port, taken[port]))
        return taken

    def broker_connections(self):
        return self.node.ctl('list_connections', 'client_properties')

    def table(self):
        lines = ['| sample | port | RSS MiB | threads | fds | broker '
                 'connections |', '|---|---|---|---|---|---|']
        for label, port, figures in self.rows:
            lines.append('| %s | %d | %.1f | %d | %d | %d |' % (
                label, port, figures['rss'] / 1048576, figures['threads'],
                figures['fds'], figures['connections']))
        return '\n'.join(lines)


class WrongPasswords(threading.Thread):
    """Requests with a new wrong password every time: 401, or 503 while the
    broker cannot be asked; never 204."""

    def __init__(self, port, path):
        super().__init__(daemon=True)
        self.port, self.path = port, path
        self.running = threading.Event()
        self.statuses = []

    def run(self):
        http = Http()
        while self.running.is_set():
            response = http.post(self.port, self.path, {'body': 'x'},
                                 auth=('guest', unique('wrong-')))
            self.statuses.append(response.status)
            time.sleep(0.1)


class Churn(threading.Thread):
    """vhost/user pairs that publish once and are deleted after statelessd
    reaped their idle publisher."""

    def __init__(self, node, port):
        super().__init__(daemon=True)
        self.node, self.port = node, port
        self.running = threading.Event()
        # Held for each round of rabbitmqctl calls, and by the restart.
        self.busy = threading.Lock()
        self.pairs = []
        self.created = self.deleted = 0
        self.statuses = []

    def run(self):
        http = Http()
        while self.running.is_set():
            with self.busy:
                self.create(http)
                self.delete_reaped(http)
            time.sleep(0.5)

    def create(self, http):
        vhost, user = unique('soak-vhost-'), unique('soak-user-')
        password = unique('pw-')
        self.node.ctl('add_vhost', vhost)
        self.node.ctl('add_user', user, password)
        self.node.ctl('set_permissions', '-p', vhost, user, '.*', '.*', '.*')
        self.pairs.append((vhost, user))
        self.created += 1
        response = http.post(self.port, '/%s/amq.topic/soak' % vhost,
                             {'body': 'x'}, auth=(user, password))
        self.statuses.append(response.status)

    def delete_reaped(self, http):
        publishers = http.get(self.port, '/stats').json()['connections']
        for vhost, user in list(self.pairs):
            if '%s:%s' % (vhost, user) not in publishers:
                self.node.ctl('delete_user', user)
                self.node.ctl('delete_vhost', vhost)
                self.pairs.remove((vhost, user))
                self.deleted += 1


def soak(seconds, report=print):
    """Run the soak for seconds; returns the verdicts and the table."""
    node = PrivateBroker()
    node.start()
    try:
        overrides = {'Application': {'rabbitmq': {
            'host': '127.0.0.1', 'port': node.port,
            'idle_timeout': IDLE_TIMEOUT, 'max_queue_size': 100000,
            'confirm_timeout': 10}}}
        with Statelessd(overrides, ports=2) as gateway:
            return soak_gateway(gateway, node, seconds, report)
    finally:
        node.remove()


def soak_gateway(gateway, node, seconds, report):
    channel = node.channel()
    name = durable_target(channel)
    channel.connection.close()
    sampler = Sampler(gateway, node)
    baseline = sampler.sample('baseline')
    interval = 60 if seconds >= 360 else seconds / 6
    first, second = gateway.ports
    loads = [Load(port, '/%%2f/%s/%s' % (name, path), threads=2,
                  prefix='%d%s-' % (port, prefix))
             for port in gateway.ports
             for path, prefix in (('f', 'f'), ('c?confirm=1', 'c'))]
    wrong = WrongPasswords(second, '/%%2f/%s/w' % name)
    churn = Churn(node, first)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        for load in loads:
            stack.enter_context(load)
        for worker in (wrong, churn):
            worker.running.set()
            worker.start()
        stack.callback(stop_threads, wrong, churn)
        restarted = False
        samples = 0
        while samples * interval < seconds:
            time.sleep(interval - (time.monotonic() - started) % interval)
            samples += 1
            sampler.sample('%.0f s' % (time.monotonic() - started))
            if not restarted and time.monotonic() - started >= seconds / 2:
                restart(node, churn)
                restarted = True
    report('load stopped after %.0f s' % (time.monotonic() - started))
    settle(lambda: all(drained(port) for port in gateway.ports), SETTLE,
           0.5)
    churn_end(churn)
    settled = settle(lambda: back_to(baseline, sampler.sample('', False)),
                     SETTLE, 5)
    sampler.sample('after')
    channel = node.channel()
    received = consumed_ids(channel, name)
    channel.queue_delete(name)
    channel.exchange_delete(name)
    channel.connection.close()
    accepted = set().union(*(load.accepted() for load in loads))
    return verdicts(sampler, baseline, settled, accepted, received,
                    (loads, wrong, churn), report)


def consumed_ids(channel, queue):
    """Every message_id in the queue, consumed with a subscription: a long
    run leaves a million messages, too many to fetch one basic_get at a
    time."""
    ids = []
    for method, properties, _ in channel.consume(queue, auto_ack=True,
                                                 inactivity_timeout=2):
        if method is None:
            break
        ids.append(properties.message_id)
    channel.cancel()
    return ids


def stop_threads(*threads):
    for thread in threads:
        thread.running.clear()
    for thread in threads:
        thread.join(60)


def restart(node, churn):
    """stop_app and start_app of the node, with the churn paused."""
    with churn.busy:
        try:
            node.stop_app()
            time.sleep(3)
        finally:
            node.start_app()


def churn_end(churn):
    """Delete the pairs left, once statelessd has reaped their publishers."""
    def all_deleted():
        churn.delete_reaped(Http())
        return not churn.pairs
    settle(all_deleted, SETTLE, 0.5)


def back_to(baseline, now):
    return all(now[port][key] <= baseline[port][key]
               for port in baseline
               for key in ('threads', 'fds', 'connections'))


def verdicts(sampler, baseline, settled, accepted, received, workers,
             report):
    """The figures of the run, and whether it passed."""
    during = [row for row in sampler.rows if row[0] not in
              ('baseline', 'after')]
    third = max(1, len(during) // 3)
    rss = {}
    for port in baseline:
        figures = [f['rss'] for _, p, f in during if p == port]
        rss[port] = (sum(figures[:third]) / len(figures[:third]),
                     sum(figures[-third:]) / len(figures[-third:]))
    lost = accepted - set(received)
    loads, wrong, churn = workers
    statuses = [s for load in loads for s in load.statuses.values()]
    result = {
        'accepted': len(accepted), 'received': len(received),
        'duplicates': len(received) - len(set(received)), 'lost': len(lost),
        'refused': sum(1 for s in statuses if s != 204),
        'wrong passwords': len(wrong.statuses),
        'wrong passwords answered 503': wrong.statuses.count(503),
        'wrong passwords accepted': sum(1 for s in wrong.statuses
                                        if s not in (401, 503)),
        'pairs created': churn.created, 'pairs deleted': churn.deleted,
        'rss growth': max(last / first - 1 for first, last in rss.values()),
        'back to baseline': settled}
    result['passed'] = (not lost and result['rss growth'] <= RSS_GROWTH
                        and settled and not result['wrong passwords accepted']
                        and churn.created == churn.deleted)
    report(sampler.table())
    report('\n'.join('%s: %s' % (key, ('%.1f%%' % (value * 100))
                                 if key == 'rss growth' else value)
                     for key, value in result.items()))
    return result


def main():
    minutes = float(sys.argv[1] if len(sys.argv) > 1 else
                    os.environ.get('SOAK_MINUTES', '15'))
    lines = [SECTION, '', run_description(minutes), '']

    def report(text):
        print(text)
        lines.extend([text, ''])

    result = soak(minutes * 60, report)
    record('\n'.join(lines))
    return 0 if result['passed'] else 1


def run_description(minutes):
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'],
                            cwd=str(REPO), capture_output=True,
                            text=True).stdout.strip()
    return ('`make soak` for %g minutes, %s UTC: statelessd %s, Python %s, '
            'pika %s, %d CPUs; two workers, a private RabbitMQ node '
            'restarted half-way, one sample a minute.'
            % (minutes, time.strftime('%Y-%m-%d %H:%M', time.gmtime()),
               commit or '(no git)', platform.python_version(),
               pika.__version__, os.cpu_count()))


def record(text):
    """Put the run's report in bench/results.md in place of the last one."""
    existing = RESULTS.read_text() if RESULTS.exists() else ''
    kept = existing.split('\n' + SECTION)[0].rstrip('\n')
    RESULTS.write_text(kept + '\n\n' + text.rstrip('\n') + '\n')


if __name__ == '__main__':
    sys.exit(main())
