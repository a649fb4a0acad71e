"""Counting and reporting for one statelessd worker process.

The /stats document keeps the original statelessd layout: process figures
from getrusage, request counters, and one entry per vhost/user publisher.
"""
import collections
import resource
import threading
import time


class RequestCounters:
    """Responses by status, requests by method and total processing time.

    Request threads update these concurrently, hence the lock.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._counts = collections.Counter()
        self._processing_time = 0.0

    def record(self, method, status, seconds):
        with self._lock:
            self._counts['response.%d' % status] += 1
            self._counts['method.%s' % method] += 1
            self._processing_time += seconds

    def report(self):
        with self._lock:
            report = dict(self._counts)
            report['processing_time'] = self._processing_time
        return report


class ConnectionCounters:
    """Counters for one vhost/user publisher.

    Only the publisher's own thread writes them, so plain attributes are
    safe to read from request threads.
    """

    def __init__(self):
        self.connections_opened = 0
        self.connections_closed = 0
        self.channels_opened = 0
        self.channels_closed = 0
        self.connected = False
        self.publishes = 0
        self.confirmed = 0
        self.nacked = 0
        self.returned = 0
        self.republished = 0

    def connection_opened(self):
        self.connections_opened += 1

    def connection_closed(self):
        self.connections_closed += 1
        self.channels_closed = self.channels_opened

    def channel_opened(self):
        self.channels_opened += 1

    def channel_closed(self):
        self.channels_closed += 1

    def report(self, queue_size, outbox):
        return {'connections': {'opened': self.connections_opened,
                                'closed': self.connections_closed},
                'channels': {'opened': self.channels_opened,
                             'closed': self.channels_closed},
                'connected': self.connected,
                'publishes': self.publishes,
                'queue_size': queue_size,
                'confirmed': self.confirmed,
                'nacked': self.nacked,
                'returned': self.returned,
                'republished': self.republished,
                'outbox': outbox}


def process_report():
    """This process's resource usage, as the original /stats reported it."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {'timestamp': int(time.time()),
            'block': {'input': usage.ru_inblock, 'output': usage.ru_oublock},
            'context_switches': usage.ru_nvcsw + usage.ru_nivcsw,
            'cpu_time': {'user': usage.ru_utime, 'system': usage.ru_stime},
            'memory_usage': usage.ru_maxrss,
            'page_faults': {'minor': usage.ru_minflt,
                            'major': usage.ru_majflt},
            'page_size': resource.getpagesize(),
            'signals_received': usage.ru_nsignals,
            'swap_outs': usage.ru_nswap}


def stats_document(host, port, requests, connections):
    document = process_report()
    document.update({'host': host, 'port': port,
                     'requests': requests.report(),
                     'connections': connections})
    return document
