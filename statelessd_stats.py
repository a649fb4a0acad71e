"""Counting and reporting for statelessd.

The /stats document keeps the original statelessd layout: process figures
from getrusage, request counters, and one entry per vhost/user publisher.
It adds the current resident memory and a request duration histogram,
which /metrics needs.  The documents of all ports are summed up for
/stats/all, rendered as Prometheus text for /metrics, and shown by the
dashboard page.

Each figure is declared once, as a Stat in PORT_STATS, REQUEST_STATS or
PUBLISHER_STATS.  /stats, the /stats/all totals, /metrics and the
dashboard's publisher table all follow those tables, so adding a stat is
one declaration plus the line that counts it.
"""
import bisect
import collections
import json
import resource
import threading
import time

#: Upper bounds (seconds) of the request duration histogram's buckets.
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0)

COUNTER, GAUGE, HISTOGRAM = 'counter', 'gauge', 'histogram'


class Stat:
    """One figure: its /stats key, its /metrics family and its place on
    the dashboard, in one place so that they cannot disagree.

    kind, metric and description are the family's TYPE, name and HELP; a
    stat without a metric is a fact /stats reports but /metrics and the
    /stats/all totals leave out.  label names the label that tells a
    stat's samples apart ('code' for responses); column is the heading of
    a publisher stat on the dashboard, which leaves out those without one.
    """

    __slots__ = ('key', 'kind', 'metric', 'description', 'label', 'column')

    def __init__(self, key, kind=None, metric=None, description=None,
                 label=None, column=None):
        self.key = key
        self.kind = kind
        self.metric = metric
        self.description = description
        self.label = label
        self.column = column

    def __repr__(self):
        return 'Stat(%r)' % self.key


#: Figures of a worker process, labelled with its port; add_port_metrics
#: reads each from its own place in the /stats document.
PORT_STATS = (
    Stat('up', GAUGE, 'statelessd_up',
         '1 when the worker serving the port answered.'),
    Stat('request_duration', HISTOGRAM,
         'statelessd_http_request_duration_seconds',
         'Time from reading the request line to the response.', label='le'),
    Stat('cpu_time', COUNTER, 'process_cpu_seconds_total',
         'User and system CPU time of the worker process.'),
    Stat('resident_memory', GAUGE, 'process_resident_memory_bytes',
         'Resident memory of the worker process.'),
)

#: Request counters, labelled with the port and their own label if any;
#: /stats names a labelled count 'key.label', such as 'response.204'.
REQUEST_STATS = (
    Stat('response', COUNTER, 'statelessd_http_responses_total',
         'HTTP responses by status code.', label='code'),
    Stat('method', COUNTER, 'statelessd_http_requests_total',
         'HTTP requests by method.', label='method'),
    Stat('messages', COUNTER, 'statelessd_http_messages_total',
         'Messages HTTP requests handed to publishers, one per message of '
         'a batch.'),
)

#: Figures of one vhost/user publisher, labelled with the port, vhost and
#: user, in the order of the dashboard's columns.  ConnectionCounters holds
#: the counters, which the publisher's thread increments, and 'connected';
#: the publisher adds the other gauges and facts to its report.
PUBLISHER_STATS = (
    Stat('connected', GAUGE, 'statelessd_publisher_connected',
         '1 while the publisher is connected to RabbitMQ.',
         column='connected'),
    Stat('node', column='node'),
    Stat('blocked', GAUGE, 'statelessd_publisher_blocked',
         '1 while a RabbitMQ resource alarm blocks the publisher.',
         column='blocked'),
    Stat('publishes', COUNTER, 'statelessd_messages_published_total',
         'Messages published to RabbitMQ (republished ones once more).',
         column='publishes'),
    Stat('confirmed', COUNTER, 'statelessd_messages_confirmed_total',
         'Messages RabbitMQ confirmed.', column='confirmed'),
    Stat('nacked', COUNTER, 'statelessd_messages_nacked_total',
         'Nacks from RabbitMQ; each nacked message is published again.',
         column='nacked'),
    Stat('returned', COUNTER, 'statelessd_messages_returned_total',
         'Mandatory messages RabbitMQ returned as unroutable.',
         column='returned'),
    Stat('republished', COUNTER, 'statelessd_messages_republished_total',
         'Unconfirmed messages published again after a reconnect.'),
    Stat('queue_size', GAUGE, 'statelessd_queued_messages',
         'Messages waiting to be published.', column='queued'),
    Stat('outbox', GAUGE, 'statelessd_outbox_messages',
         'Messages published and waiting for their confirm.',
         column='outbox'),
)
#: The publisher stats /metrics exports and /stats/all adds up.
PUBLISHER_METRICS = tuple(stat for stat in PUBLISHER_STATS if stat.metric)
#: The publisher stats ConnectionCounters keeps.
PUBLISHER_COUNTERS = tuple(stat.key for stat in PUBLISHER_STATS
                           if stat.kind == COUNTER)


class RequestCounters:
    """Responses by status, requests by method, and how long they took.

    Request threads only append (method, status, seconds) to a deque,
    which needs no lock; the figures are added up when someone reads them,
    or when FOLD_AFTER requests have piled up.  The counts are keyed by
    (stat key, label), the label None for an unlabelled stat.
    """

    FOLD_AFTER = 10000

    def __init__(self):
        self._lock = threading.Lock()
        self._recorded = collections.deque()
        self._counts = collections.Counter()
        self._processing_time = 0.0
        self._durations = [0] * (len(DURATION_BUCKETS) + 1)

    def record(self, method, status, seconds, messages=0):
        """messages: how many messages the request handed to publishers."""
        self._recorded.append((method, status, seconds, messages))
        if len(self._recorded) > self.FOLD_AFTER:
            self._fold()

    def _fold(self):
        with self._lock:
            recorded = self._recorded
            while recorded:
                method, status, seconds, messages = recorded.popleft()
                self._counts['response', status] += 1
                self._counts['method', method] += 1
                self._counts['messages', None] += messages
                self._processing_time += seconds
                self._durations[bisect.bisect_left(DURATION_BUCKETS,
                                                   seconds)] += 1

    def report(self):
        """The 'requests' object of /stats; unlabelled stats are there
        from the start, labelled ones from their first count."""
        self._fold()
        with self._lock:
            report = {request_key(key, label): count
                      for (key, label), count in self._counts.items()}
            report['processing_time'] = self._processing_time
        for stat in REQUEST_STATS:
            if stat.label is None:
                report.setdefault(stat.key, 0)
        return report

    def histogram(self):
        """Cumulative counts per upper bound, as Prometheus histograms are."""
        self._fold()
        with self._lock:
            durations = list(self._durations)
            total = self._processing_time
        buckets, count = {}, 0
        for bound, observed in zip(DURATION_BUCKETS + ('+Inf',), durations):
            count += observed
            buckets[str(bound)] = count
        return {'buckets': buckets, 'count': count, 'sum': total}


def request_key(key, label):
    """How /stats names a request count: 'messages', 'response.204'."""
    return key if label is None else '%s.%s' % (key, label)


#: REQUEST_STATS by key, to read a /stats document's request counts back.
REQUEST_STATS_BY_KEY = {stat.key: stat for stat in REQUEST_STATS}


def request_counts(requests):
    """(stat, label, count) for each declared count of a /stats document's
    'requests' object, which may come from a sibling port's JSON."""
    for name, count in sorted(requests.items()):
        key, dot, label = name.partition('.')
        stat = REQUEST_STATS_BY_KEY.get(key)
        if stat is not None and bool(dot) == bool(stat.label):
            yield stat, label or None, count


class ConnectionCounters:
    """Counters for one vhost/user publisher: one slot per counter of
    PUBLISHER_STATS, so a misspelt increment fails instead of counting
    nowhere.

    Only the publisher's own thread writes them, so plain attributes are
    safe to read from request threads.
    """

    __slots__ = ('connections_opened', 'connections_closed',
                 'channels_opened', 'channels_closed',
                 'connected') + PUBLISHER_COUNTERS

    def __init__(self):
        self.connections_opened = 0
        self.connections_closed = 0
        self.channels_opened = 0
        self.channels_closed = 0
        self.connected = False
        for key in PUBLISHER_COUNTERS:
            setattr(self, key, 0)

    def connection_opened(self):
        self.connections_opened += 1

    def connection_closed(self):
        self.connections_closed += 1
        self.channels_closed = self.channels_opened

    def channel_opened(self):
        self.channels_opened += 1

    def channel_closed(self):
        self.channels_closed += 1

    def report(self, **measured):
        """measured: the gauges the publisher reads off its queues."""
        report = {'connections': {'opened': self.connections_opened,
                                  'closed': self.connections_closed},
                  'channels': {'opened': self.channels_opened,
                               'closed': self.channels_closed},
                  'connected': self.connected}
        for key in PUBLISHER_COUNTERS:
            report[key] = getattr(self, key)
        report.update(measured)
        return report


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


def resident_memory():
    """Resident memory in bytes now; getrusage only knows the peak."""
    try:
        with open('/proc/self/statm') as handle:
            pages = int(handle.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * resource.getpagesize()


def stats_document(host, port, requests, connections):
    document = process_report()
    document.update({'host': host, 'port': port,
                     'requests': requests.report(),
                     'request_duration': requests.histogram(),
                     'resident_memory': resident_memory(),
                     'connections': connections})
    return document


# -- all ports ---------------------------------------------------------------

def all_document(host, documents):
    """/stats/all: every port's document (or why it is missing), summed up."""
    return {'host': host, 'timestamp': int(time.time()),
            'ports': documents, 'totals': totals(documents)}


def totals(documents):
    """Sums over the ports that answered; a publisher's flags (connected,
    blocked) add up to how many publishers have them."""
    up = [document for document in documents if document.get('up')]
    requests = collections.Counter()
    sums = dict.fromkeys((stat.key for stat in PUBLISHER_METRICS), 0)
    publishers = 0
    for document in up:
        requests.update(document['requests'])
        for counters in document['connections'].values():
            publishers += 1
            for key in sums:
                sums[key] += counters[key]
    result = {'ports': len(documents), 'up': len(up),
              'requests': dict(requests), 'publishers': publishers,
              'cpu_time': {
                  'user': sum(d['cpu_time']['user'] for d in up),
                  'system': sum(d['cpu_time']['system'] for d in up)},
              'resident_memory': sum(d.get('resident_memory') or 0
                                     for d in up)}
    result.update(sums)
    return result


# -- Prometheus --------------------------------------------------------------

#: Prometheus text format version 0.0.4, the one every scraper reads.
PROMETHEUS_CONTENT_TYPE = 'text/plain; version=0.0.4; charset=utf-8'
#: PORT_STATS by key: each sits in its own place in /stats, so each is
#: read by a line of its own.
PORT_STATS_BY_KEY = {stat.key: stat for stat in PORT_STATS}


class Exposition:
    """Prometheus samples, grouped by metric family.

    All samples of a family must follow its one HELP and TYPE line, so the
    samples of every port are collected before anything is written.
    """

    def __init__(self):
        self._families = {}

    def add(self, stat, labels, value, suffix=''):
        if value is None:
            return
        samples = self._families.setdefault(stat, [])
        samples.append('%s%s%s %s' % (stat.metric, suffix, label_text(labels),
                                      sample_value(value)))

    def render(self):
        lines = []
        for stat, samples in self._families.items():
            lines.append('# HELP %s %s' % (stat.metric, stat.description
                                           .replace('\\', '\\\\')
                                           .replace('\n', '\\n')))
            lines.append('# TYPE %s %s' % (stat.metric, stat.kind))
            lines.extend(samples)
        return ''.join(line + '\n' for line in lines)


def label_text(labels):
    if not labels:
        return ''
    return '{%s}' % ','.join('%s="%s"' % (name, escape_label(value))
                             for name, value in labels)


def escape_label(value):
    return (str(value).replace('\\', '\\\\').replace('"', '\\"')
            .replace('\n', '\\n'))


def sample_value(value):
    if isinstance(value, bool):
        return '1' if value else '0'
    if isinstance(value, float):
        return repr(value)
    return str(value)


def prometheus_text(documents):
    """/metrics: every port's /stats document, labelled with its port."""
    metrics = Exposition()
    for document in documents:
        port = (('port', document['port']),)
        metrics.add(PORT_STATS_BY_KEY['up'], port, bool(document.get('up')))
        if document.get('up'):
            add_port_metrics(metrics, port, document)
    return metrics.render()


def add_port_metrics(metrics, port, document):
    for stat, label, count in request_counts(document['requests']):
        labels = port if label is None else port + ((stat.label, label),)
        metrics.add(stat, labels, count)
    add_histogram(metrics, port, document['request_duration'])
    cpu = document['cpu_time']
    metrics.add(PORT_STATS_BY_KEY['cpu_time'], port,
                float(cpu['user'] + cpu['system']))
    metrics.add(PORT_STATS_BY_KEY['resident_memory'], port,
                document.get('resident_memory'))
    for key, counters in sorted(document['connections'].items()):
        vhost, _, user = key.rpartition(':')
        labels = port + (('vhost', vhost), ('user', user))
        for stat in PUBLISHER_METRICS:
            metrics.add(stat, labels, counters[stat.key])


def add_histogram(metrics, port, histogram):
    stat = PORT_STATS_BY_KEY['request_duration']
    for bound, count in histogram['buckets'].items():
        metrics.add(stat, port + ((stat.label, bound),), count, '_bucket')
    metrics.add(stat, port, float(histogram['sum']), '_sum')
    metrics.add(stat, port, histogram['count'], '_count')


# -- dashboard ---------------------------------------------------------------

def dashboard_columns():
    """[key, heading] of each column of the dashboard's publisher table."""
    return [[stat.key, stat.column] for stat in PUBLISHER_STATS
            if stat.column]


#: The page at /, unless Application.paths.templates holds a dashboard.html.
#: It polls /stats/all and keeps the publish history it charts in
#: sessionStorage, so a reload keeps the chart.  Self-contained: it must
#: work where the browser reaches nothing but statelessd.  @COLUMNS@ stands
#: for dashboard_columns().
DASHBOARD_PAGE = b"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>statelessd</title><link rel="icon" href="data:,">
<style>
:root{--fg:#1d2433;--muted:#6b7385;--line:#e3e6ec;--bg:#f4f5f8;--ok:#1f8a4c;
--bad:#c0392b;--accent:#2f6fdf}
*{box-sizing:border-box}
body{margin:0;font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,
"Helvetica Neue",Arial,sans-serif;color:var(--fg);background:var(--bg)}
header{display:flex;align-items:baseline;gap:1.2em;padding:.9em 1.5em;
background:#1d2433;color:#fff}
header h1{margin:0;font-size:1.3em}
header span{color:#aab1c0;font-size:.9em}
main{padding:1em 1.5em}
#problem{color:#fff;background:var(--bad);padding:.5em 1em;border-radius:4px;
margin-bottom:1em}
#problem:empty{display:none}
.totals{display:grid;grid-template-columns:repeat(auto-fill,minmax(150px,1fr));
gap:.7em;margin-bottom:1.2em}
.figure{background:#fff;border:1px solid var(--line);border-radius:6px;
padding:.5em .8em}
.figure .label{color:var(--muted);font-size:.75em;text-transform:uppercase;
letter-spacing:.04em}
.figure .value{font-size:1.35em;font-weight:600;white-space:nowrap}
.ports{display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));
gap:1em}
.port{background:#fff;border:1px solid var(--line);border-radius:6px;
padding:.8em 1em}
.port h2{margin:0 0 .3em;font-size:1.1em;display:flex;gap:.6em;
align-items:center}
.state{font-size:.7em;padding:.1em .6em;border-radius:1em;color:#fff;
background:var(--ok);text-transform:uppercase}
.port.down{border-color:var(--bad)}
.port.down .state{background:var(--bad)}
.facts{color:var(--muted);font-size:.9em;margin-bottom:.5em}
.error{color:var(--bad)}
svg.chart{display:block;width:100%;height:90px;background:#fafbfc;
border:1px solid var(--line);border-radius:4px}
svg.chart polyline{fill:none;stroke:var(--accent);stroke-width:2}
svg.chart text{fill:var(--muted);font-size:11px}
table{border-collapse:collapse;width:100%;margin-top:.6em;font-size:.9em}
th,td{padding:.25em .5em;text-align:right;border-bottom:1px solid var(--line);
white-space:nowrap}
th:first-child,td:first-child{text-align:left;white-space:normal;
word-break:break-all}
th{color:var(--muted);font-weight:500}
td.no{color:var(--bad)}
.codes{margin-top:.6em;display:flex;flex-wrap:wrap;gap:.4em}
.code{font-size:.8em;padding:.1em .5em;border-radius:3px;background:#eef1f6}
.code.c2{background:#e3f4ea}.code.c4{background:#fdf1dc}
.code.c5{background:#fbe2df}
</style></head>
<body>
<header><h1>statelessd</h1><span id="host"></span><span id="updated"></span>
</header>
<main>
<div id="problem"></div>
<section class="totals" id="totals"></section>
<section class="ports" id="ports"></section>
</main>
<script>
"use strict";
const REFRESH = 3000;           // poll /stats/all every 3 seconds
const WINDOW = 10 * 60 * 1000;  // chart the last 10 minutes
const STORE = "statelessd-history";
// port -> [[time, publishes, cpu seconds], ...], cumulative figures
let history = {};
try { history = JSON.parse(sessionStorage.getItem(STORE)) || {}; }
catch (e) { history = {}; }

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {}))
    node.setAttribute(name, value);
  for (const child of children)
    node.append(child instanceof Node ? child : String(child));
  return node;
}

function svg(tag, attrs) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs))
    node.setAttribute(name, value);
  return node;
}

const number = n => Math.round(n).toLocaleString("en-US");
const rate = n => (n >= 10 ? n.toFixed(0) : n.toFixed(1)) + "/s";
const mebibytes = n => (n / 1048576).toFixed(1) + " MiB";

function publishes(doc) {
  return Object.values(doc.connections)
    .reduce((sum, c) => sum + c.publishes, 0);
}

function cpu(doc) { return doc.cpu_time.user + doc.cpu_time.system; }

function remember(doc, now) {
  const points = history[doc.port] = history[doc.port] || [];
  points.push([now, publishes(doc), cpu(doc)]);
  while (points.length && points[0][0] < now - WINDOW) points.shift();
}

// [[time, per second]] between consecutive points; a restarted worker's
// counters start again from zero, so a drop is no point at all.
function rates(port, field) {
  const points = history[port] || [], result = [];
  for (let i = 1; i < points.length; i++) {
    const seconds = (points[i][0] - points[i - 1][0]) / 1000;
    const delta = points[i][field] - points[i - 1][field];
    if (seconds > 0 && delta >= 0)
      result.push([points[i][0], delta / seconds]);
  }
  return result;
}

function latest(port, field) {
  const series = rates(port, field);
  return series.length ? series[series.length - 1][1] : 0;
}

function chart(port, now) {
  const width = 600, height = 90, series = rates(port, 1);
  const peak = Math.max(0, ...series.map(p => p[1]));
  const top = Math.max(peak, 1);
  const box = svg("svg", {"class": "chart", viewBox: `0 0 ${width} ${height}`,
                          preserveAspectRatio: "none"});
  const points = series.map(([t, r]) =>
    `${((t - now + WINDOW) / WINDOW * width).toFixed(1)},` +
    `${(height - 4 - r / top * (height - 18)).toFixed(1)}`);
  box.append(svg("polyline", {points: points.join(" "),
                              "vector-effect": "non-scaling-stroke"}));
  const label = svg("text", {x: 6, y: 13});
  label.textContent = `publishes ${rate(latest(port, 1))}, ` +
    `peak ${rate(peak)}, last 10 min`;
  box.append(label);
  return box;
}

function figure(label, value, id) {
  return el("div", {"class": "figure", id: id},
            el("div", {"class": "label"}, label),
            el("div", {"class": "value"}, value));
}

function renderTotals(all) {
  const t = all.totals, up = all.ports.filter(d => d.up);
  const cpuRate = up.reduce((sum, d) => sum + latest(d.port, 2), 0);
  const publishRate = up.reduce((sum, d) => sum + latest(d.port, 1), 0);
  const responses = Object.entries(t.requests)
    .filter(([k]) => k.startsWith("response."))
    .reduce((sum, [, v]) => sum + v, 0);
  document.getElementById("totals").replaceChildren(
    figure("ports up", `${t.up} / ${t.ports}`, "total-ports"),
    figure("publish rate", rate(publishRate), "total-rate"),
    figure("publishes", number(t.publishes), "total-publishes"),
    figure("confirmed", number(t.confirmed), "total-confirmed"),
    figure("nacked / returned", `${number(t.nacked)} / ${number(t.returned)}`,
           "total-failed"),
    figure("queued / outbox", `${number(t.queue_size)} / ${number(t.outbox)}`,
           "total-queued"),
    figure("connections", `${t.connected} / ${t.publishers}`,
           "total-connections"),
    figure("blocked", number(t.blocked), "total-blocked"),
    figure("requests", number(responses), "total-requests"),
    figure("messages", number(t.requests.messages || 0), "total-messages"),
    figure("cpu", `${(cpuRate * 100).toFixed(0)}%`, "total-cpu"),
    figure("memory", mebibytes(t.resident_memory), "total-memory"));
}

function codes(doc) {
  const box = el("div", {"class": "codes"});
  for (const [name, count] of Object.entries(doc.requests).sort()) {
    if (!name.startsWith("response.")) continue;
    const code = name.slice(9);
    box.append(el("span", {"class": "code c" + code[0], "data-code": code},
                  `${code} \\u00d7 ${number(count)}`));
  }
  return box;
}

// [[field, heading], ...] of the publisher table, from PUBLISHER_STATS.
const COLUMNS = @COLUMNS@;

// A cell's text, and whether it shows a problem.
function cell(c, field) {
  if (field === "connected") return [c.connected ? "yes" : "no", !c.connected];
  if (field === "node") return [c.node || "\\u2014", false];
  if (field === "blocked")
    return [c.blocked ? c.blocked_by || "yes" : "no", Boolean(c.blocked)];
  return [number(c[field]), false];
}

function connections(doc) {
  const body = el("tbody");
  for (const [key, c] of Object.entries(doc.connections).sort()) {
    const row = el("tr", {"data-key": key}, el("td", {}, key));
    for (const [field] of COLUMNS) {
      const [value, bad] = cell(c, field);
      row.append(el("td", {"data-field": field, "class": bad ? "no" : ""},
                    value));
    }
    body.append(row);
  }
  if (!body.children.length)
    body.append(el("tr", {}, el("td", {colspan: COLUMNS.length + 1},
                              "no publishers yet")));
  return el("table", {},
            el("thead", {}, el("tr", {}, el("th", {}, "vhost:user"),
               ...COLUMNS.map(([, heading]) => el("th", {}, heading)))),
            body);
}

function portCard(doc, now) {
  const card = el("article", {"class": doc.up ? "port" : "port down",
                              "data-port": doc.port, "data-up": doc.up},
                  el("h2", {}, `port ${doc.port}`,
                     el("span", {"class": "state"}, doc.up ? "up" : "down")));
  if (!doc.up) {
    card.append(el("div", {"class": "error"}, doc.error || "no answer"));
    return card;
  }
  card.append(
    el("div", {"class": "facts"},
       `cpu ${cpu(doc).toFixed(1)} s ` +
       `(${(latest(doc.port, 2) * 100).toFixed(0)}%) \\u00b7 ` +
       `memory ${mebibytes(doc.resident_memory || 0)} \\u00b7 ` +
       `${number(publishes(doc))} publishes`),
    chart(doc.port, now), connections(doc), codes(doc));
  return card;
}

function render(all) {
  const now = Date.now();
  for (const doc of all.ports) if (doc.up) remember(doc, now);
  for (const port of Object.keys(history))
    if (!all.ports.some(d => String(d.port) === port)) delete history[port];
  try { sessionStorage.setItem(STORE, JSON.stringify(history)); }
  catch (e) { /* storage full or disabled: the chart starts afresh */ }
  document.getElementById("host").textContent = all.host;
  document.getElementById("updated").textContent =
    "updated " + new Date(now).toLocaleTimeString();
  document.getElementById("problem").textContent = "";
  renderTotals(all);
  document.getElementById("ports").replaceChildren(
    ...all.ports.map(doc => portCard(doc, now)));
}

async function refresh() {
  try {
    const response = await fetch("/stats/all", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    render(await response.json());
  } catch (error) {
    document.getElementById("problem").textContent =
      "statelessd does not answer: " + error.message;
  }
  setTimeout(refresh, REFRESH);
}

refresh();
</script></body></html>
"""
#: The page served, its publisher table's columns filled in.
DASHBOARD = DASHBOARD_PAGE.replace(
    b'@COLUMNS@', json.dumps(dashboard_columns()).encode('ascii'))
