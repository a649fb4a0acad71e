"""statelessd: a stateless HTTP to AMQP publishing gateway.

The edge of statelessd: command line, configuration, the master process
that forks one worker per port, and HTTP request handling.  Publishing
lives in statelessd_amqp, counting in statelessd_stats.
"""
import argparse
import base64
import collections
import concurrent.futures
import contextlib
import decimal
import email.message
import email.parser
import email.utils
import errno
import functools
import grp
import http
import http.client
import http.server
import ipaddress
import json
import logging
import logging.config
import mimetypes
import os
import queue
import re
import pwd
import select
import signal
import socket
import ssl
import stat
import sys
import tempfile
import threading
import time
import urllib.parse

import yaml

import statelessd_amqp
import statelessd_stats

__version__ = '1.0.0'

LOGGER = logging.getLogger('statelessd')

#: How long a worker thread may hold the GIL before it is asked to pass it
#: on.  Request and publisher threads give it up at every socket call
#: anyway, so the default 5 ms would only add forced switches between
#: request threads.
SWITCH_INTERVAL = 0.1
#: Seconds a client is told to wait before retrying a 503.
RETRY_AFTER = 5
#: Seconds /stats/all and /metrics wait for a sibling port's /stats.
SIBLING_TIMEOUT = 1.0
#: Seconds /health waits for a TCP connect to a RabbitMQ node.
HEALTH_TIMEOUT = 1.0
#: What a custom dashboard in Application.paths.templates is called.
DASHBOARD_TEMPLATE = 'dashboard.html'
#: The original project's Routes section, whose paths statelessd serves.
ORIGINAL_ROUTES = [['/([^/]+)/([^/]+)/([^/]+)', 'statelessd.Publisher'],
                   ['/stats', 'statelessd.Stats'],
                   ['/', 'statelessd.Dashboard']]
#: The handler names accepted in the Routes section.
ROUTE_HANDLERS = tuple(handler for _, handler in ORIGINAL_ROUTES)
#: Header lines the standard library's parser takes at most.
MAX_HEADER_LINES = 100
#: AMQP short strings (names, most properties) hold at most this many bytes.
SHORT_STRING = 255
#: Property fields of at most this many bytes in all are checked and built
#: once for many messages (form_properties).
CACHED_PROPERTIES_SIZE = 1024
#: Field names of at most this many characters are decoded and read once
#: for many requests (known_field_name, batch_field).
CACHED_NAME_LENGTH = 64
#: Who may read the statistics by default: this host and private networks.
STATS_ALLOW = ['127.0.0.0/8', '::1/128', '10.0.0.0/8', '172.16.0.0/12',
               '192.168.0.0/16', 'fc00::/7']
#: Proxies whose X-Real-IP is believed by default (with xheaders on).
TRUSTED_PROXIES = ['127.0.0.0/8', '::1/128']
URLENCODED = 'application/x-www-form-urlencoded'
TRUE_WORDS = ('1', 'true', 'yes', 'on')
FALSE_WORDS = ('0', 'false', 'no', 'off', '')


class ConfigError(Exception):
    """A configuration value statelessd cannot run with."""


class AlreadyRunning(Exception):
    """Daemon.pidfile names a statelessd that is still running."""


class HTTPError(Exception):
    """A request statelessd answers with an error status."""

    def __init__(self, status, reason, headers=None):
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}
        #: More of the error document than its error and reason: a batch's
        #: results.
        self.details = {}


class FieldError(HTTPError):
    """A 400 naming the field at fault: "field priority must be ...", and
    in a batch "field messages[3].priority must be ..."."""

    def __init__(self, field, problem):
        super().__init__(400, 'field %s %s' % (field, problem)
                         if field else 'the body %s' % problem)
        self.field = field
        self.problem = problem

    def within(self, container):
        """The same error for the field inside container: "messages[3]",
        "properties"."""
        field = '%s.%s' % (container, self.field) if self.field else container
        return FieldError(field, self.problem)


# -- configuration -----------------------------------------------------------

class Setting:
    """One configuration key, declared once: loading, checking, the broker
    side's settings, the error messages and the README's configuration
    block all follow this declaration.

    check(value, key) returns the value to use, or raises a ConfigError
    that starts with the key.  Config keeps the value as an attribute of
    the setting's name, unless attribute is false: then the value is only
    checked, or is one part of a value Config builds from several
    settings.  broker marks what the publishers need.
    """

    def __init__(self, section, name, default, check, description,
                 broker=False, attribute=True):
        self.section = section
        self.name = name
        self.default = default
        self.check = check
        self.description = description
        self.broker = broker
        self.attribute = attribute

    @property
    def key(self):
        """The name a user looks for: Application.rabbitmq.heartbeat."""
        if self.section is None:
            return self.name
        return '%s.%s' % (self.section, self.name)

    def load(self, document):
        """The checked value in a configuration document, or the default."""
        value = section_mapping(document, self.section).get(self.name,
                                                            self.default)
        return self.check(value, self.key)


def section_mapping(document, section):
    """The mapping a dotted section names, {} where it is left out."""
    mapping = document
    names = section.split('.') if section else []
    for depth, name in enumerate(names, 1):
        value = mapping.get(name)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise ConfigError('%s: must be a mapping'
                              % '.'.join(names[:depth]))
        mapping = value
    return mapping


def true_or_false(value, key):
    if not isinstance(value, bool):
        raise ConfigError('%s: %r is not true or false' % (key, value))
    return value


def positive_seconds(value, key):
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or value <= 0:
        raise ConfigError('%s: %r is not a positive number of seconds'
                          % (key, value))
    return float(value)


def whole_number_at_least(minimum):
    """A check for a whole number of at least minimum."""
    def check(value, key):
        if isinstance(value, bool) or not isinstance(value, int) \
                or value < minimum:
            raise ConfigError('%s: %r is not a whole number of at least %d'
                              % (key, value, minimum))
        return value
    return check


def header_line_count(value, key):
    """The standard library's header parser stops at MAX_HEADER_LINES."""
    value = whole_number_at_least(1)(value, key)
    if value > MAX_HEADER_LINES:
        raise ConfigError('%s: %d is more than the %d header lines '
                          'statelessd can parse'
                          % (key, value, MAX_HEADER_LINES))
    return value


def nonempty_string(value, key):
    if not isinstance(value, str) or not value:
        raise ConfigError('%s: %r is not a string' % (key, value))
    return value


def absolute_path(value, key):
    """A path from the directory statelessd starts in, made absolute
    because the daemon changes its directory to /."""
    return os.path.abspath(nonempty_string(value, key))


def optional(check):
    """check, letting a left-out setting (null) through as None."""
    def optional_check(value, key):
        return None if value is None else check(value, key)
    return optional_check


def accepted_and_ignored(value, key):
    """For the original project's keys that mean nothing here."""
    return value


def port_number(value, key):
    if isinstance(value, str) and value.isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) \
            or not 0 < value < 65536:
        raise ConfigError('%s: %r is not a port number' % (key, value))
    return value


def port_list(value, key):
    """One port or a list of ports, none twice."""
    if not isinstance(value, list):
        value = [value]
    if not value:
        raise ConfigError('%s: lists no port' % key)
    result = [port_number(port, '%s[%d]' % (key, index))
              for index, port in enumerate(value)]
    if len(set(result)) != len(result):
        raise ConfigError('%s: lists a port twice' % key)
    return result


def host_list(value, key):
    """One host or a list of host[:port] nodes, as [(host, port or None)]."""
    names = value if isinstance(value, list) else [value]
    if not names:
        raise ConfigError('%s: lists no host' % key)
    nodes = []
    for index, name in enumerate(names):
        name_key = '%s[%d]' % (key, index) if isinstance(value, list) else key
        if not isinstance(name, str) or not name:
            raise ConfigError('%s: %r is not a host name' % (name_key, name))
        host, _, port = name.rpartition(':')
        if host and ']' not in port:
            nodes.append((host.strip('[]'), port_number(port, name_key)))
        else:
            nodes.append((name.strip('[]'), None))
    return nodes


def cidr_networks(value, key):
    """A list of CIDR networks (a bare address is a network of one)."""
    if not isinstance(value, list):
        raise ConfigError('%s: must be a list of networks' % key)
    result = []
    for index, entry in enumerate(value):
        try:
            result.append(ipaddress.ip_network(str(entry)))
        except ValueError as error:
            raise ConfigError('%s[%d]: %s' % (key, index, error)) from None
    return result


def original_routes(value, key):
    """The original Routes section names only its own handlers; the paths
    are fixed here, so the section is only checked."""
    if value is None:
        return None
    if not isinstance(value, list):
        raise ConfigError('%s: must be a list of [pattern, handler]' % key)
    for index, route in enumerate(value):
        if not (isinstance(route, list) and len(route) == 2):
            raise ConfigError('%s[%d]: %r is not [pattern, handler]'
                              % (key, index, route))
        if route[1] not in ROUTE_HANDLERS:
            raise ConfigError('%s[%d]: %r is not a statelessd handler '
                              '(one of %s)' % (key, index, route[1],
                                               ', '.join(ROUTE_HANDLERS)))
    return value


def logging_mapping(value, key):
    if value is not None and not isinstance(value, dict):
        raise ConfigError('%s: must be a logging.config mapping' % key)
    return value


#: Every setting statelessd reads, in the order of the README's
#: configuration block.
SETTINGS = (
    Setting('Daemon', 'pidfile', None, optional(absolute_path),
            'where the master writes its pid; a live pid there refuses a '
            'second start'),
    Setting('Daemon', 'user', None, optional(nonempty_string),
            'the user root-started workers drop to once their port is bound',
            attribute=False),
    Setting('Daemon', 'group', None, optional(nonempty_string),
            "the workers' group (default: the user's own)",
            attribute=False),
    Setting('Application', 'debug', False, true_or_false,
            'true enables Logging handlers marked debug_only: true'),
    Setting('Application', 'xsrf_cookies', False, accepted_and_ignored,
            'accepted, unused (statelessd sets no cookies)',
            attribute=False),
    Setting('Application.paths', 'base', None, optional(absolute_path),
            'the directory templates and static are relative to',
            attribute=False),
    Setting('Application.paths', 'templates', None,
            optional(nonempty_string),
            'a dashboard.html here replaces the built-in page',
            attribute=False),
    Setting('Application.paths', 'static', None, optional(nonempty_string),
            'files served at /static/', attribute=False),
    Setting('Application', 'spool', None, optional(absolute_path),
            "where accepted messages wait for their confirm, for a killed "
            "worker's successor to replay"),
    Setting('Application.rabbitmq', 'host', 'localhost', host_list,
            'a host, or a list of host[:port] nodes tried in order',
            attribute=False),
    Setting('Application.rabbitmq', 'port', None, optional(port_number),
            'port for hosts that name none (default 5672, 5671 with TLS)',
            attribute=False),
    Setting('Application.rabbitmq', 'heartbeat', 60,
            whole_number_at_least(0),
            'AMQP heartbeat, seconds (0 disables)', broker=True),
    Setting('Application.rabbitmq', 'connect_timeout', 5.0, positive_seconds,
            "seconds a first request waits for its publisher's connection",
            broker=True),
    Setting('Application.rabbitmq', 'confirm_timeout', 10.0,
            positive_seconds,
            'seconds confirm-mode requests wait for the ack (then 504)',
            broker=True),
    Setting('Application.rabbitmq', 'confirm', False, true_or_false,
            'true: every request waits for the confirm unless ?confirm=0'),
    Setting('Application.rabbitmq', 'max_queue_size', 10000,
            whole_number_at_least(1),
            'messages one vhost/user publisher may hold (then 503)',
            broker=True),
    Setting('Application.rabbitmq', 'max_publishers', 1000,
            whole_number_at_least(1),
            'vhost/user pairs a worker keeps a connection and a thread for '
            '(then 503)', broker=True),
    Setting('Application.rabbitmq', 'login_failure_ttl', 5.0,
            positive_seconds,
            'seconds a refused vhost/user/password is refused again from '
            'memory', broker=True),
    Setting('Application.rabbitmq', 'password_check_interval', 300.0,
            positive_seconds,
            "seconds between checks that RabbitMQ still takes a publisher's "
            "password", broker=True),
    Setting('Application.rabbitmq', 'idle_timeout', 3600.0, positive_seconds,
            'seconds before an unused publisher closes its connection',
            broker=True),
    Setting('Application.rabbitmq', 'shutdown_timeout', 10.0,
            positive_seconds, 'seconds a stopping worker waits for confirms'),
    Setting('Application.rabbitmq.tls', 'enabled', False, true_or_false,
            'amqps to the broker', attribute=False),
    Setting('Application.rabbitmq.tls', 'ca_file', None,
            optional(nonempty_string),
            "CA bundle the broker's certificate must chain to (default: the "
            "system's)", attribute=False),
    Setting('Application.rabbitmq.tls', 'cert_file', None,
            optional(nonempty_string),
            'client certificate, for brokers that ask for one',
            attribute=False),
    Setting('Application.rabbitmq.tls', 'key_file', None,
            optional(nonempty_string), 'its key (default: in cert_file)',
            attribute=False),
    Setting('Application.rabbitmq.tls', 'verify', True, true_or_false,
            'check the certificate chain and host name; false only encrypts',
            attribute=False),
    Setting('Application.rabbitmq.tls', 'server_hostname', None,
            optional(nonempty_string),
            'name to verify and send as SNI (default: the host connected to)',
            attribute=False),
    Setting('HTTPServer', 'address', '0.0.0.0', nonempty_string,
            'address to bind'),
    Setting('HTTPServer', 'ports', [8000], port_list,
            'one worker process per port'),
    Setting('HTTPServer', 'no_keep_alive', False, true_or_false,
            'true closes every connection after one request',
            attribute=False),
    Setting('HTTPServer', 'cpu_affinity', True, true_or_false,
            'each worker stays on one CPU, the ports taking the CPUs in turn'),
    Setting('HTTPServer', 'xheaders', False, true_or_false,
            "true: the client address from a trusted proxy's X-Real-IP"),
    Setting('HTTPServer', 'max_body_size', 10485760, whole_number_at_least(0),
            'bytes; larger bodies are answered 413'),
    Setting('HTTPServer', 'max_batch_size', 1000, whole_number_at_least(1),
            'messages in one batch request (then 413)'),
    Setting('HTTPServer', 'max_header_size', 32768,
            whole_number_at_least(256),
            'bytes of headers, request line not included (then 431)'),
    Setting('HTTPServer', 'max_header_count', MAX_HEADER_LINES,
            header_line_count, 'header lines (then 431)'),
    Setting('HTTPServer', 'socket_timeout', 75.0, positive_seconds,
            'seconds a connection may sit idle, and the longest a response '
            'may take to send'),
    Setting('HTTPServer', 'request_timeout', 60.0, positive_seconds,
            'seconds a started request has to arrive in full (then 408)'),
    Setting('HTTPServer', 'max_connections', 500, whole_number_at_least(1),
            'connections a worker serves at once, a thread each (then 503)'),
    Setting('HTTPServer', 'stats_allow', STATS_ALLOW, cidr_networks,
            'networks that may read /, /stats, /stats/all and /metrics'),
    Setting('HTTPServer', 'trusted_proxies', TRUSTED_PROXIES, cidr_networks,
            'whose X-Real-IP counts, with xheaders'),
    Setting(None, 'Routes', ORIGINAL_ROUTES, original_routes,
            "accepted for compatibility: the original's three handlers, at "
            "fixed paths", attribute=False),
    Setting(None, 'Logging', None, logging_mapping,
            'a logging.config.dictConfig mapping (default: INFO to stderr)',
            attribute=False),
)

#: Sections where an unknown key is an error: a misspelt tls "enabled"
#: must not quietly leave the broker connection in plain text.
STRICT_SECTIONS = ('Application.rabbitmq.tls',)


class Config:
    """The validated configuration: an attribute for each declared setting,
    and the values built from several (run_as, templates, static, tls,
    broker_hosts, keep_alive, loopback, logging)."""

    def __init__(self, document, settings=SETTINGS):
        if document is None:
            document = {}
        if not isinstance(document, dict):
            raise ConfigError('the configuration must be a mapping of '
                              'sections')
        refuse_unknown_keys(document, settings)
        values = {}
        for setting in settings:
            values[setting.key] = setting.load(document)
            if setting.attribute:
                setattr(self, setting.name, values[setting.key])
        self._broker_names = [setting.name for setting in settings
                              if setting.broker]
        self.run_as = run_as(values['Daemon.user'], values['Daemon.group'])
        base = values['Application.paths.base'] or os.getcwd()
        self.templates = path_under(base,
                                    values['Application.paths.templates'])
        self.static = path_under(base, values['Application.paths.static'])
        self.tls = broker_tls(values, 'Application.rabbitmq.tls.')
        self.broker_hosts = broker_nodes(
            values['Application.rabbitmq.host'],
            values['Application.rabbitmq.port'], self.tls)
        self.keep_alive = not values['HTTPServer.no_keep_alive']
        #: Where a worker reaches its sibling ports for /stats/all.
        self.loopback = loopback_address(self.address)
        self.logging = logging_config(values['Logging'], self.debug)

    def broker_settings(self, port):
        """The publishers' settings: those declared for the broker side,
        the broker nodes, TLS and the worker's port."""
        declared = {name: getattr(self, name) for name in self._broker_names}
        return statelessd_amqp.Settings(self.broker_hosts, self.tls, port,
                                        **declared)


def load_config(path):
    try:
        with open(path, 'rb') as handle:
            document = yaml.safe_load(handle)
    except OSError as error:
        raise ConfigError('%s: %s' % (path, error.strerror)) from None
    except yaml.YAMLError as error:
        raise ConfigError('%s: not valid YAML: %s'
                          % (path, str(error).replace('\n', ' '))) from None
    return Config(document)


def refuse_unknown_keys(document, settings):
    for section in STRICT_SECTIONS:
        known = [setting.name for setting in settings
                 if setting.section == section]
        unknown = sorted(set(section_mapping(document, section)) - set(known))
        if unknown:
            raise ConfigError('%s.%s: unknown setting (known: %s)'
                              % (section, unknown[0], ', '.join(known)))


def path_under(base, path):
    """A path relative to base made absolute, or None."""
    if path is None:
        return None
    return os.path.abspath(os.path.join(base, path))


def run_as(user, group):
    """(uid, gid) from Daemon.user and Daemon.group, or None."""
    if user is None:
        if group is not None:
            raise ConfigError('Daemon.group: needs Daemon.user as well')
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ConfigError('Daemon.user: there is no user %r' % user) from None
    if group is None:
        return entry.pw_uid, entry.pw_gid
    try:
        return entry.pw_uid, grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError('Daemon.group: there is no group %r'
                          % group) from None


def loopback_address(address):
    """The address siblings answer on: a wildcard bind answers loopback."""
    if address == '0.0.0.0':
        return '127.0.0.1'
    if address == '::':
        return '::1'
    return address


def broker_nodes(nodes, port, tls):
    """The (host, port) nodes, a node naming no port taking
    Application.rabbitmq.port, else AMQP's port (amqps' with TLS)."""
    if port is None:
        port = 5671 if tls else 5672
    return [(host, port if node_port is None else node_port)
            for host, node_port in nodes]


def broker_tls(values, prefix):
    """amqps to the broker (a statelessd_amqp.TLS), or None while the tls
    settings under prefix leave it off."""
    tls = {key[len(prefix):]: value for key, value in values.items()
           if key.startswith(prefix)}
    if not tls['enabled']:
        return None
    if tls['key_file'] and not tls['cert_file']:
        raise ConfigError(prefix + 'key_file: needs cert_file')
    try:
        context = ssl.create_default_context(cafile=tls['ca_file'])
    except (OSError, ssl.SSLError) as error:
        raise ConfigError('%sca_file: %s' % (prefix, error)) from None
    if tls['cert_file']:
        try:
            context.load_cert_chain(tls['cert_file'], tls['key_file'])
        except (OSError, ssl.SSLError) as error:
            raise ConfigError('%scert_file: %s' % (prefix, error)) from None
    if not tls['verify']:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return statelessd_amqp.TLS(context, tls['server_hostname'])


def logging_config(mapping, debug):
    """The Logging section, minus debug_only handlers unless debugging."""
    if mapping is None:
        return {'version': 1, 'disable_existing_loggers': False,
                'formatters': {'plain': {
                    'format': '%(asctime)s %(levelname)s %(process)d '
                              '%(name)s: %(message)s'}},
                'handlers': {'console': {'class': 'logging.StreamHandler',
                                         'formatter': 'plain'}},
                'loggers': {'pika': {'level': 'WARNING'}},
                'root': {'level': 'DEBUG' if debug else 'INFO',
                         'handlers': ['console']}}
    mapping = json.loads(json.dumps(mapping))
    mapping.setdefault('version', 1)
    # statelessd's loggers exist before the configuration is applied.
    mapping.setdefault('disable_existing_loggers', False)
    handlers = mapping.get('handlers') or {}
    dropped = set()
    for name, handler in list(handlers.items()):
        if isinstance(handler, dict) and handler.pop('debug_only', False) \
                and not debug:
            dropped.add(name)
            del handlers[name]
    loggers = list((mapping.get('loggers') or {}).values())
    loggers.append(mapping.get('root') or {})
    for logger in loggers:
        if isinstance(logger, dict) and logger.get('handlers'):
            logger['handlers'] = [h for h in logger['handlers']
                                  if h not in dropped]
    return mapping


def configure_logging(mapping):
    try:
        logging.config.dictConfig(mapping)
    except (ValueError, TypeError, AttributeError, ImportError) as error:
        cause = error.__cause__ or error
        raise ConfigError('Logging: %s: %s' % (error, cause)) from None


# -- request parsing -----------------------------------------------------------

def decode_segment(segment, what):
    """Percent-decode a path segment as UTF-8.

    The request line arrives as latin-1 text, one character per byte, so
    raw UTF-8 in a path decodes as well as percent-encoded UTF-8 does.
    """
    try:
        raw = segment.encode('latin-1')
    except UnicodeEncodeError:
        raise HTTPError(400, 'the %s in the path is not valid UTF-8'
                        % what) from None
    try:
        return urllib.parse.unquote_to_bytes(raw).decode('utf-8')
    except UnicodeDecodeError:
        raise HTTPError(400, 'the %s in the path is not valid UTF-8'
                        % what) from None


@functools.lru_cache(maxsize=256)
def publish_target(path):
    """(vhost, exchange, routing_key) of a publish path, or None.

    Clients publish to a few paths over and over, so the answers are
    kept; a refused path raises and is not kept.
    """
    segments = path.split('/')
    if len(segments) != 4 or segments[0] or not segments[1]:
        return None
    return publish_names(segments[1], segments[2], segments[3])


@functools.lru_cache(maxsize=256)
def api_target(path):
    """(vhost, exchange) of the management API's publish path,
    /api/exchanges/<vhost>/<exchange>/publish, or None.  Its name for the
    default exchange is amq.default."""
    segments = path.split('/')
    if len(segments) != 6 or segments[:3] != ['', 'api', 'exchanges'] \
            or segments[5] != 'publish' or not segments[3]:
        return None
    vhost, exchange, _ = publish_names(segments[3], segments[4], '')
    return vhost, '' if exchange == 'amq.default' else exchange


def publish_names(vhost, exchange, routing_key):
    """The decoded names of a publish path's segments.

    Names are AMQP short strings; a vhost or exchange name with control
    characters names nothing RabbitMQ has and would only garble logs.
    """
    vhost = decode_segment(vhost, 'vhost')
    exchange = decode_segment(exchange, 'exchange')
    routing_key = decode_segment(routing_key, 'routing key')
    for name, value in (('vhost', vhost), ('exchange', exchange),
                        ('routing key', routing_key)):
        if len(value.encode('utf-8')) > SHORT_STRING:
            raise HTTPError(400, 'the %s is longer than %d bytes'
                            % (name, SHORT_STRING))
    for name, value in (('vhost', vhost), ('exchange', exchange)):
        if has_unloggable_characters(value):
            raise HTTPError(400, 'the %s contains control characters' % name)
    return vhost, exchange, routing_key


#: Characters that would forge or garble a log line: control characters,
#: line and paragraph separators, and the bidirectional controls.
UNLOGGABLE_CHARACTERS = re.compile(
    '[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]')


def has_unloggable_characters(value):
    return UNLOGGABLE_CHARACTERS.search(value) is not None


#: RFC 9110 section 5.6.2: what a header name may be made of.
TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
#: Control characters RFC 9110 section 5.5 keeps out of a header value.
FIELD_CONTROL_CHARACTERS = re.compile('[\x00-\x08\x0a-\x1f\x7f]')
#: Control characters in a request line, whose CRLF is already gone.
REQUEST_LINE_CONTROLS = re.compile('[\x00-\x1f\x7f]')
#: RFC 9112 section 7.1: bare hex digits, optional extensions, CRLF.
CHUNK_SIZE_LINE = re.compile(
    rb'([0-9A-Fa-f]{1,16})(?:[ \t]*;[\t\x20-\x7e\x80-\xff]*)?\r\n\Z')


def has_request_line_controls(line):
    return REQUEST_LINE_CONTROLS.search(line) is not None


def connection_options(headers):
    """The Connection header's options, from every line, in lower case."""
    return {option.strip(' \t').lower()
            for line in headers.get_all('Connection', ())
            for option in line.split(',')}


def is_token(name):
    return TOKEN.fullmatch(name) is not None


def has_field_control_characters(value):
    return FIELD_CONTROL_CHARACTERS.search(value) is not None


def basic_credentials(header):
    """(user, password) from an Authorization header, or a 401."""
    scheme, _, encoded = (header or '').strip().partition(' ')
    if scheme.lower() != 'basic' or not encoded.strip():
        raise unauthorized('HTTP Basic credentials are required')
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True)
        user, colon, password = decoded.decode('utf-8').partition(':')
    except ValueError:
        # binascii.Error, UnicodeDecodeError, and the ValueError of
        # non-ASCII text in the header all mean the same thing here.
        raise unauthorized('the Basic credentials are not valid base64 of '
                           'UTF-8 user:password') from None
    if not colon or not user:
        raise unauthorized('the Basic credentials need a user and a '
                           'password separated by a colon')
    if has_unloggable_characters(user) or '\0' in password:
        # AMQP PLAIN separates user and password with NUL bytes; the user
        # name is logged, where line and paragraph separators or direction
        # overrides would forge or garble lines.
        raise unauthorized('the Basic credentials contain control '
                           'characters')
    return user, password


def unauthorized(reason):
    return HTTPError(401, reason,
                     {'WWW-Authenticate': 'Basic realm="statelessd"'})


def query_flag(pairs, name, default):
    """The last non-empty value of the query parameter name as a flag."""
    values = [value for field, value in pairs if field == name and value]
    if not values:
        return default
    word = values[-1].decode('latin-1').strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise HTTPError(400, 'the query parameter %s must be 1 or 0' % name)


def form_fields(content_type, body):
    """[(name, bytes value)] from a urlencoded or multipart/form-data body,
    or None when the Content-Type names neither: that body is published as
    it is.  No Content-Type at all means urlencoded, as in the original."""
    if content_type is None or content_type.strip().lower() in \
            ('', URLENCODED):
        return urlencoded_fields(body)
    header = email.message.Message()
    header['Content-Type'] = content_type
    kind = header.get_content_type()
    if kind == URLENCODED:
        return urlencoded_fields(body)
    if kind == 'multipart/form-data':
        boundary = header.get_param('boundary')
        if not boundary or not isinstance(boundary, str) \
                or len(boundary) > 200 or not boundary.isascii():
            raise HTTPError(400, 'the multipart Content-Type has no usable '
                            'boundary')
        return multipart_fields(body, boundary.encode('ascii'))
    return None


def query_fields(query):
    """The fields of a query string, byte-exact as form fields are: the
    request line was read as latin-1, one character per byte."""
    return urlencoded_fields(query.encode('latin-1'))


def urlencoded_fields(body):
    """The fields as parse_qsl(keep_blank_values=True) splits them, values
    percent-decoded byte-exact: parse_qsl itself decodes to text, and
    costs more than the split it does."""
    fields = []
    for piece in body.split(b'&'):
        if piece:
            name, _, value = piece.partition(b'=')
            fields.append((known_field_name(name)
                           if len(name) <= CACHED_NAME_LENGTH
                           else field_name(form_unquote(name)),
                           form_unquote(value)))
    return fields


@functools.lru_cache(maxsize=4096)
def known_field_name(raw):
    """A short field name, decoded once: a batch sends the same
    messages%5B0%5D%5Bbody%5D in every request, and decoding them again
    is much of its work.  Long names are not kept; a refused one raises and
    is not kept."""
    return field_name(form_unquote(raw))


def form_unquote(raw):
    if b'+' in raw:
        raw = raw.replace(b'+', b' ')
    if b'%' in raw:
        return urllib.parse.unquote_to_bytes(raw)
    return raw


def field_name(raw):
    try:
        return raw.decode('utf-8')
    except UnicodeDecodeError:
        raise HTTPError(400, 'a field name is not valid UTF-8') from None


def multipart_fields(body, boundary):
    """Parse multipart/form-data byte-exact: part contents are never decoded.

    The standard library's email parser normalises line endings in parts,
    so the parts are cut at their delimiters by hand.
    """
    delimiter = b'--' + boundary
    start = body.find(delimiter)
    if start < 0 or (start > 0 and body[start - 2:start] != b'\r\n'):
        raise HTTPError(400, 'the multipart body has no part delimited by '
                        'its boundary')
    fields = []
    position = start + len(delimiter)
    while not body.startswith(b'--', position):
        line_end = body.find(b'\r\n', position)
        if line_end < 0:
            raise HTTPError(400, 'the multipart body is truncated')
        if body.startswith(b'\r\n', line_end + 2):
            head, content_start = b'', line_end + 4
        else:
            head_end = body.find(b'\r\n\r\n', line_end)
            if head_end < 0:
                raise HTTPError(400, 'a multipart part has no end of headers')
            head, content_start = body[line_end + 2:head_end], head_end + 4
        content_end = body.find(b'\r\n' + delimiter, content_start)
        if content_end < 0:
            raise HTTPError(400, 'the multipart body is truncated: no closing '
                            'boundary')
        fields.append((part_name(head), body[content_start:content_end]))
        position = content_end + 2 + len(delimiter)
    return fields


def part_name(head):
    """The part's field name.

    Browsers send names as raw UTF-8.  The head is parsed as latin-1, one
    character per byte (the email parser would turn non-ASCII bytes into
    replacement characters), and the name decoded from those bytes; an
    RFC 2231 name comes decoded already.
    """
    headers = email.parser.HeaderParser().parsestr(
        head.decode('latin-1') + '\r\n\r\n')
    name = headers.get_param('name', header='content-disposition')
    if not name:
        raise HTTPError(400, 'a multipart part has no Content-Disposition '
                        'name')
    if isinstance(name, tuple):
        return email.utils.collapse_rfc2231_value(name)
    return field_name(name.encode('latin-1'))


def message_fields(pairs):
    """Normalise field names: hyphens are underscores, and a property's
    aliases (expire) are its name.

    PHP-style headers[name]=value fields are gathered into one mapping.
    The last of repeated fields wins, as it did in the original.
    """
    fields, headers = {}, {}
    aliases = PROPERTIES.aliases
    for name, value in pairs:
        if name.startswith('headers[') and name.endswith(']'):
            headers[name[8:-1]] = field_text(value,
                                             'headers[%s]' % name[8:-1])
            continue
        name = name.replace('-', '_')
        fields[aliases.get(name, name)] = value
    return fields, headers


def field_text(value, field):
    """A field's bytes as text: AMQP strings are UTF-8."""
    try:
        return value.decode('utf-8')
    except UnicodeDecodeError:
        raise FieldError(field, 'is not valid UTF-8') from None


def is_digits(value):
    """ASCII digits only: str.isdigit() also passes "²", which int() refuses."""
    return value.isascii() and value.isdigit()


def header_decimal(literal):
    """A JSON number with a fraction or exponent, as an AMQP decimal.

    AMQP decimals have nine digits and a scale of at most 255.  Long
    literals and wild exponents are refused here, before arithmetic on
    them could cost time or overflow; what is merely out of range is
    refused when the properties are encoded.
    """
    number = decimal.Decimal(literal)
    if len(literal) > 40 or not -1000 < number.as_tuple().exponent < 1000:
        raise ValueError('the number %s is beyond an AMQP decimal'
                         % literal[:40])
    return number


# -- message properties ----------------------------------------------------------
#
# A kind of property value knows both shapes a publish sends it in: from_json
# turns a value of the management API's properties object into the form
# field it stands for, and to_property checks a form field and makes it the
# property's value.  JSON properties pass through the form's checks, so the
# two shapes cannot drift apart.

class ShortText:
    """UTF-8 text of at most SHORT_STRING bytes: most properties."""

    def from_json(self, value, field):
        if not isinstance(value, str):
            raise FieldError(field, 'must be a string')
        return value.encode('utf-8')

    def to_property(self, raw, field, user):
        return short_string(field_text(raw, field), field)


class AuthenticatedUser(ShortText):
    """user_id: RabbitMQ closes the channel of a message whose user_id is
    not the connection's user, so a mismatch is refused here, with a
    reason."""

    def to_property(self, raw, field, user):
        value = super().to_property(raw, field, user)
        if value != user:
            raise FieldError(field, 'must be the authenticated user %r, '
                             'RabbitMQ rejects any other' % user)
        return value


class WholeNumber:
    """A whole number from low to high: ASCII digits in a form, a JSON
    number or a string of digits in JSON properties."""

    def __init__(self, low, high):
        self.low = low
        self.high = high

    def from_json(self, value, field):
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value).encode('ascii')
        if not isinstance(value, str):
            raise FieldError(field, 'must be a whole number')
        return value.encode('utf-8')

    def to_property(self, raw, field, user):
        value = field_text(raw, field).strip()
        number = self.number_in_range(value)
        if number is None:
            raise FieldError(field, 'must be a whole number from %d to %d, '
                             'not %r' % (self.low, self.high, value[:40]))
        return number

    def number_in_range(self, value):
        """The number value spells, or None if it is no digits or out of
        range.  int() refuses thousands of digits with a ValueError, so a
        value longer than high is out of range before int() sees it."""
        digits = value.lstrip('0') or '0'
        if not is_digits(value) or len(digits) > len(str(self.high)):
            return None
        number = int(digits)
        return number if self.low <= number <= self.high else None


class Milliseconds(WholeNumber):
    """expiration: a number of milliseconds that AMQP carries as a short
    string."""

    def to_property(self, raw, field, user):
        return str(super().to_property(raw, field, user))


class JSONHeaders:
    """headers: a JSON object, sent as JSON text in a form and as the object
    itself in JSON properties.  Its strings must be valid Unicode (JSON
    escapes can spell unpaired surrogates) and its decimals ones AMQP can
    carry; JSON properties were checked so when their document was
    parsed."""

    def from_json(self, value, field):
        if not isinstance(value, dict):
            raise FieldError(field, 'must be a JSON object')
        return value

    def to_property(self, raw, field, user):
        if isinstance(raw, dict):
            return dict(raw)
        try:
            headers = json.loads(field_text(raw, field),
                                 parse_float=header_decimal)
            json.dumps(headers, ensure_ascii=False,
                       default=str).encode('utf-8')
        except RecursionError:
            raise FieldError(field, 'is nested too deeply') from None
        except UnicodeEncodeError:
            raise FieldError(field, 'contains an unpaired surrogate') \
                from None
        except ValueError as error:
            raise FieldError(field, 'is not valid JSON: %s' % error) from None
        if not isinstance(headers, dict):
            raise FieldError(field, 'must be a JSON object')
        return headers


class Property:
    """An AMQP basic property a publish may set: the name that a form field
    and the management API's properties object both give it, the other
    names a form may use, and the kind of value it holds."""

    def __init__(self, name, kind, aliases=()):
        self.name = name
        self.kind = kind
        self.aliases = aliases


class MessageProperties:
    """The declared properties, found by the names a form or a JSON
    properties object uses."""

    def __init__(self, *declared):
        self.declared = declared
        #: (name, to_property) in order: what a publish runs through.
        self.checks = tuple((prop.name, prop.kind.to_property)
                            for prop in declared)
        self.by_name = {prop.name: prop for prop in declared}
        self.names = tuple(self.by_name)
        self.aliases = {alias: prop.name for prop in declared
                        for alias in prop.aliases}


#: The properties a publish may set, in the order they are checked: the
#: first bad one is the one a 400 names.  A new property is one line here;
#: a new kind of value is one class above.  body, and a batch message's
#: routing_key, are form fields too, but they are the message itself rather
#: than its properties.
PROPERTIES = MessageProperties(
    Property('app_id', ShortText()),
    Property('content_encoding', ShortText()),
    Property('content_type', ShortText()),
    Property('correlation_id', ShortText()),
    Property('message_id', ShortText()),
    Property('reply_to', ShortText()),
    Property('type', ShortText()),
    Property('user_id', AuthenticatedUser()),
    Property('delivery_mode', WholeNumber(1, 2)),
    Property('priority', WholeNumber(0, 255)),
    Property('timestamp', WholeNumber(0, 2 ** 63 - 1)),
    Property('expiration', Milliseconds(0, 2 ** 32 - 1), aliases=('expire',)),
    Property('headers', JSONHeaders()),
)


def message_properties(fields, bracket_headers, user):
    """The AMQP properties a message's fields ask for, each checked as
    PROPERTIES declares it; headers[name] fields join the headers object."""
    properties = {}
    for name, to_property in PROPERTIES.checks:
        if name in fields:
            properties[name] = to_property(fields[name], name, user)
    headers = properties.pop('headers', {})
    headers.update(bracket_headers)
    if headers:
        properties['headers'] = short_header_names(headers)
    return properties


def short_header_names(headers):
    """headers, once each name is known to be an AMQP short string."""
    for name in headers:
        if len(name.encode('utf-8')) > SHORT_STRING:
            raise FieldError('headers', 'has a name longer than %d bytes'
                             % SHORT_STRING)
    return headers


def amqp_properties(properties):
    """BasicProperties for validated properties, or a 400 when AMQP cannot
    carry them (a decimal out of range, headers nested too deeply...)."""
    try:
        return statelessd_amqp.basic_properties(properties)
    except (ValueError, ArithmeticError, RecursionError) as error:
        raise FieldError('headers', 'cannot be sent over AMQP: %s'
                         % (str(error) or type(error).__name__)) from None


def form_message(exchange, routing_key, fields, headers, user, mandatory):
    """The message a form's fields describe."""
    return statelessd_amqp.Message(
        exchange, routing_key, fields.get('body', b''),
        form_properties(fields, headers, user), mandatory)


def form_properties(fields, headers, user):
    """The BasicProperties of a form's property fields and headers[name]
    fields.

    Clients send the same few sets of properties again and again.  Short
    sets are kept once checked and built, and the messages that share one
    share its BasicProperties, which a publisher then encodes once for a
    run of them.  A JSON headers object is not kept: it is no form field
    but the management API's object, and not hashable.
    """
    named = tuple((name, fields[name]) for name in PROPERTIES.names
                  if name in fields)
    bracketed = tuple(headers.items())
    if isinstance(fields.get('headers'), dict) or \
            sum(len(name) + len(value) for name, value in named + bracketed) \
            > CACHED_PROPERTIES_SIZE:
        return amqp_properties(message_properties(fields, headers, user))
    return cached_properties(user, named, bracketed)


@functools.lru_cache(maxsize=256)
def cached_properties(user, named, bracketed):
    return amqp_properties(message_properties(dict(named), dict(bracketed),
                                              user))


def batch_form_message(exchange, routing_key, pairs, user, mandatory):
    """A form batch's message: its routing key is the path's unless its
    fields name one."""
    fields, headers = message_fields(pairs)
    if 'routing_key' in fields:
        routing_key = short_string(field_text(fields['routing_key'],
                                              'routing_key'), 'routing_key')
    return form_message(exchange, routing_key, fields, headers, user,
                        mandatory)


def raw_message(exchange, routing_key, body, content_type, query, user,
                mandatory):
    """A body published as it is, its properties named in the query string
    (query_fields) and its content_type the request's unless the query
    names one."""
    fields, headers = message_fields(query)
    fields['body'] = body
    if 'content_type' not in fields:
        fields['content_type'] = content_type.encode('latin-1')
    return form_message(exchange, routing_key, fields, headers, user,
                        mandatory)


def short_string(value, field):
    if len(value.encode('utf-8')) > SHORT_STRING:
        raise FieldError(field, 'is longer than %d bytes' % SHORT_STRING)
    return value


#: messages[<index>]<the field's name, in brackets>: a form batch's fields,
#: as PHP's http_build_query(['messages' => $list]) names them.
BATCH_FIELD = re.compile(r'messages\[([^\]]*)\]\[([^\]]*)\](.*)\Z', re.S)


def is_form_batch(pairs):
    return any(name.startswith('messages[') for name, _ in pairs)


def form_batch(pairs, limit):
    """The fields of each message of a form batch, in index order.

    Indices run from 0 without gaps: a gap is more likely a client's
    mistake than a plan, and each result must answer one index.
    """
    groups = {}
    for name, value in pairs:
        index, field = (batch_field(name) if len(name) <= CACHED_NAME_LENGTH
                        else batch_field.__wrapped__(name))
        groups.setdefault(index, []).append((field, value))
    if len(groups) > limit:
        raise batch_too_large(len(groups), limit)
    missing = next((i for i in range(len(groups)) if i not in groups), None)
    if missing is not None:
        raise FieldError('messages[%d]' % missing, 'is missing: the indices '
                         'must run from 0 without gaps')
    return [groups[index] for index in range(len(groups))]


@functools.lru_cache(maxsize=4096)
def batch_field(name):
    """(index, the field's own name) of a form batch's field.  Every batch
    of a client sends the same names, so short ones are read once."""
    match = BATCH_FIELD.match(name)
    if match is None:
        raise FieldError(name, 'is not part of a batch: send '
                         'messages[<index>][<field>] fields only')
    index, field, rest = match.groups()
    if not is_digits(index) or len(index) > 9:
        raise FieldError(name, 'has an index that is not a whole number')
    return int(index), field + rest


def batch_too_large(size, limit):
    return HTTPError(413, 'the batch of %d messages exceeds the limit of %d '
                     '(HTTPServer.max_batch_size)' % (size, limit))


def batch_messages(items, build):
    """A message from each item, every one checked before any is
    published: the first bad one answers 400 naming its index."""
    if not items:
        raise HTTPError(400, 'the batch has no messages')
    messages = []
    for index, item in enumerate(items):
        try:
            messages.append(build(item))
        except FieldError as error:
            raise error.within('messages[%d]' % index) from None
    return messages


#: Where JSON text may spell a surrogate: only a \u escape can, UTF-8
#: cannot.  Text without one needs no check that its strings encode.
SURROGATE_ESCAPE = re.compile(r'\\u[dD][89a-fA-F]')


def json_document(body):
    """The request body as JSON: UTF-8, numbers with a fraction as AMQP
    decimals, strings that encode as UTF-8, and nesting within the
    interpreter's recursion limit."""
    try:
        text = body.decode('utf-8')
        document = json.loads(text, parse_float=header_decimal,
                              parse_constant=json_constant)
        if SURROGATE_ESCAPE.search(text):
            json.dumps(document, ensure_ascii=False,
                       default=str).encode('utf-8')
    except UnicodeDecodeError:
        raise HTTPError(400, 'the body is not valid UTF-8') from None
    except UnicodeEncodeError:
        raise HTTPError(400, 'the body contains an unpaired surrogate') \
            from None
    except RecursionError:
        raise HTTPError(400, 'the body is nested too deeply') from None
    except ValueError as error:
        raise HTTPError(400, 'the body is not valid JSON: %s' % error) \
            from None
    if not isinstance(document, (dict, list)):
        raise HTTPError(400, 'the body must be a JSON object, or an array of '
                        'objects for a batch')
    return document


def json_constant(name):
    raise ValueError('%s is not a number AMQP can carry' % name)


def api_message(exchange, document, user):
    """A message from one object in the management API's publish shape.

    properties and payload_encoding may be left out: they default to {} and
    string.  Other keys are ignored, as the management API does:
    rabbitmqadmin sends vhost and exchange too.
    """
    if not isinstance(document, dict):
        raise FieldError('', 'must be a JSON object')
    routing_key = short_string(json_string(document, 'routing_key'),
                               'routing_key')
    payload = json_string(document, 'payload')
    encoding = document.get('payload_encoding', 'string')
    if encoding == 'string':
        body = payload.encode('utf-8')
    elif encoding == 'base64':
        try:
            body = base64.b64decode(payload, validate=True)
        except ValueError:
            raise FieldError('payload', 'is not valid base64') from None
    else:
        raise FieldError('payload_encoding', "must be 'string' or 'base64'")
    properties = document.get('properties', {})
    if not isinstance(properties, dict):
        raise FieldError('properties', 'must be a JSON object')
    try:
        basic_properties = form_properties(json_property_fields(properties),
                                           {}, user)
    except FieldError as error:
        raise error.within('properties') from None
    return statelessd_amqp.Message(exchange, routing_key, body,
                                   basic_properties, mandatory=True)


def json_string(document, key):
    if key not in document:
        raise FieldError(key, 'is missing')
    if not isinstance(document[key], str):
        raise FieldError(key, 'must be a string')
    return document[key]


def json_property_fields(properties):
    """The form fields a JSON properties object stands for, each named as
    its property is and turned into the form's shape by its kind."""
    fields = {}
    for name, value in properties.items():
        declared = PROPERTIES.by_name.get(name)
        if declared is None:
            raise FieldError(name, 'is not an AMQP basic property')
        fields[name] = declared.kind.from_json(value, name)
    return fields


# -- HTTP ------------------------------------------------------------------------

#: The status of each kind of publish failure.  A kind missing here answers
#: as its nearest parent does; PublishError itself, a failure with no more
#: to say, is a 500.
ERROR_STATUS = {
    statelessd_amqp.PublishError: 500,
    statelessd_amqp.LoginRefused: 401,
    statelessd_amqp.AccessRefused: 403,
    statelessd_amqp.ExchangeRefused: 403,
    statelessd_amqp.ExchangeNotFound: 404,
    statelessd_amqp.Unroutable: 422,
    statelessd_amqp.BrokerUnavailable: 503,
    statelessd_amqp.QueueFull: 503,
    statelessd_amqp.TooManyPublishers: 503,
    statelessd_amqp.Nacked: 503,
    statelessd_amqp.Blocked: 503,
    statelessd_amqp.SpoolFailed: 503,
    statelessd_amqp.ConfirmTimeout: 504,
}


def unrouted(error):
    """A mandatory message returned as unroutable: the management API
    answers it {"routed": false}, not as a failure."""
    return isinstance(error, statelessd_amqp.Unroutable)


def failure(error):
    """A failed message's result in a batch's answer."""
    problem = publish_error(error)
    return {'status': problem.status, 'reason': problem.reason}


def publish_error(error):
    """The HTTPError a PublishError answers: 401 asks for credentials
    again, 503 says when to retry."""
    status = publish_status(error)
    if status == 401:
        return unauthorized(error.reason)
    headers = {'Retry-After': str(RETRY_AFTER)} if status == 503 else None
    return HTTPError(status, error.reason, headers)


def publish_status(error):
    """ERROR_STATUS for error's class or, failing that, its nearest parent
    that has one."""
    for kind in type(error).__mro__:
        if kind in ERROR_STATUS:
            return ERROR_STATUS[kind]
    raise TypeError('%r is no PublishError' % error)


class Worker:
    """What the request threads of one worker process share."""

    def __init__(self, config, port, dashboard):
        self.config = config
        self.port = port
        self.dashboard = dashboard
        self.host = socket.gethostname()
        self.spool = None
        if config.spool:
            self.spool = statelessd_amqp.Spool(config.spool,
                                               'statelessd-%d.spool' % port)
        self.registry = statelessd_amqp.Registry(config.broker_settings(port),
                                                 self.spool)
        self.stopping = False
        self.requests = statelessd_stats.RequestCounters()
        # The handlers answering a request now; a set's add and discard
        # need no lock.
        self.in_flight = set()
        self.connection_slots = threading.BoundedSemaphore(
            config.max_connections)
        self.watchdog = Watchdog()

    def start(self):
        """Replay what a predecessor on this port left in the spool."""
        if self.spool is not None:
            self.registry.replay(self.spool.open())

    def stop(self, timeout):
        """Finish requests in flight, then flush publishers and the spool."""
        self.stopping = True
        deadline = time.monotonic() + timeout
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.05)
        left = self.registry.stop(max(0.0, deadline - time.monotonic()))
        if self.spool is not None:
            self.spool.close()
        if left:
            LOGGER.error('Port %d stopped with %d messages unconfirmed%s',
                         self.port, left, ', kept in the spool'
                         if self.spool is not None else '')

    def stats(self):
        return statelessd_stats.stats_document(
            self.host, self.port, self.requests, self.registry.report())

    def all_stats(self):
        """Every configured port's /stats document, in port order.

        The siblings are asked in parallel over loopback with a short
        timeout, so a dead or hung worker is reported, not waited for.
        """
        ports = self.config.ports
        with concurrent.futures.ThreadPoolExecutor(len(ports)) as pool:
            return list(pool.map(self.port_stats, ports))

    def port_stats(self, port):
        if port == self.port:
            document = self.stats()
        else:
            try:
                document = sibling_stats(self.config.loopback, port)
            except (OSError, ValueError, http.client.HTTPException) as error:
                return {'port': port, 'up': False,
                        'error': failure_reason(error)}
        document['up'] = True
        return document

    def health(self):
        """Why this worker cannot publish now (None when it can), and the
        RabbitMQ nodes its publishers are connected to.

        A connected publisher proves the broker reachable; without one, a
        TCP connect to the configured RabbitMQ nodes must succeed.  A
        resource alarm blocks every publisher of the cluster, so one
        blocked publisher makes the worker unhealthy.
        """
        publishers = self.registry.report().values()
        nodes = sorted({c['node'] for c in publishers if c['node']})
        if self.stopping:
            return 'the worker is shutting down', nodes
        for counters in publishers:
            if counters['blocked']:
                return ('RabbitMQ blocks publishing (%s)'
                        % counters['blocked_by'], nodes)
        if nodes:
            return None, nodes
        return broker_unreachable(self.config.broker_hosts), nodes


def sibling_stats(address, port):
    connection = http.client.HTTPConnection(address, port,
                                            timeout=SIBLING_TIMEOUT)
    try:
        connection.request('GET', '/stats')
        response = connection.getresponse()
        body = response.read()
    finally:
        connection.close()
    if response.status != 200:
        raise ValueError('GET /stats answered %d' % response.status)
    return json.loads(body)


def failure_reason(error):
    if isinstance(error, socket.timeout):
        return 'no answer within %ss' % SIBLING_TIMEOUT
    return getattr(error, 'strerror', None) or str(error) or \
        type(error).__name__


def broker_unreachable(hosts):
    """None when a RabbitMQ node accepts a TCP connection, else why not."""
    failures = []
    for host, port in hosts:
        try:
            socket.create_connection((host, port), HEALTH_TIMEOUT).close()
            return None
        except OSError as error:
            failures.append('%s:%d %s' % (host, port,
                                          failure_reason(error)))
    return 'no RabbitMQ node answers: %s' % '; '.join(failures)


class HTTPProtocol(http.server.BaseHTTPRequestHandler):
    """HTTP/1.1 as RFC 9112 frames it: the request line, headers and body
    within the configured limits and deadlines, and responses that say
    when the connection closes.  Knows no URL: a subclass answers each
    request in route(method)."""

    server_version = 'statelessd/' + __version__
    protocol_version = 'HTTP/1.1'
    # The stdlib's default, HTTP/0.9, would answer an unparseable request
    # line with a bare body, no status line.
    default_request_version = 'HTTP/1.0'

    def setup(self):
        """The socket stays blocking, without a timeout: a timeout makes
        every read and write poll first, and each of those system calls
        hands the GIL to another thread.  The watchdog keeps the deadlines
        instead."""
        self.worker = self.server.worker
        super().setup()
        self.watch = self.worker.watchdog.watch(self.connection)
        self.linger = False

    def handle_one_request(self):
        """Wait up to socket_timeout for a request to begin, then give it
        request_timeout to arrive in full."""
        config = self.worker.config
        self.status = None
        self.published = 0
        self.headers = RequestHeaders()
        self.unread_body = False
        self.watch.until(time.monotonic() + config.socket_timeout)
        try:
            begun = self.rfile.peek(1)
        except OSError:
            begun = b''
        if not begun:
            self.close_connection = True
            return
        self.started = time.monotonic()
        self.watch.until(self.started + config.request_timeout)
        super().handle_one_request()

    def parse_request(self):
        """Parse the request line and headers, as the stdlib does, without
        its email parser, which is slow, and within
        HTTPServer.max_header_size and max_header_count."""
        self.command = None
        self.request_version = self.default_request_version
        self.close_connection = True
        self.requestline = str(self.raw_requestline,
                               'iso-8859-1').rstrip('\r\n')
        # Spaces only: str.split() would also split on bytes 0x85 and 0xA0,
        # which are parts of raw UTF-8 characters in a path.
        words = self.requestline.split(' ')
        if len(words) != 3 or has_request_line_controls(self.requestline):
            self.send_error(400, 'bad request line %r'
                            % escape_controls(self.requestline[:100]))
            return False
        command, path, version = words
        self.command, self.request_version = command, version
        if not version.startswith('HTTP/') or \
                version[5:] not in ('1.0', '1.1'):
            self.send_error(505 if version[5:6].isdigit() else 400,
                            'HTTP version %r is not supported'
                            % escape_controls(version[:20]))
            return False
        self.path = '/' + path.lstrip('/') if path.startswith('//') else path
        try:
            self.headers = self.read_headers()
            self.framing = body_framing(self.headers, version)
        except HTTPError as error:
            self.send_error(error.status, error.reason)
            return False
        self.unread_body = self.framing != 0
        connection = connection_options(self.headers)
        self.close_connection = (
            version == 'HTTP/1.0' and 'keep-alive' not in connection
            or 'close' in connection or not self.worker.config.keep_alive)
        if version == 'HTTP/1.1' and \
                self.headers.get('Expect', '').lower() == '100-continue':
            return self.handle_expect_100()
        return True

    def read_headers(self):
        limit = self.worker.config.max_header_size
        lines = self.buffered_head(limit)
        if lines is None:
            try:
                lines = read_field_lines(self.rfile, limit, HEADERS)
            except Truncated as truncated:
                raise HTTPError(400, str(truncated)) from None
        if len(lines) > self.worker.config.max_header_count:
            raise HTTPError(431, 'the request has more than %d header lines'
                            % self.worker.config.max_header_count)
        return parse_field_lines(lines, HEADERS)

    def buffered_head(self, limit):
        """The header lines, taken from the read buffer in one go when the
        whole head is there, as it nearly always is; else None."""
        buffered = self.rfile.peek(1)
        if buffered.startswith(b'\r\n'):
            self.rfile.read(2)
            return []
        end = buffered.find(b'\r\n\r\n', 0, limit + 2)
        if end < 0:
            return None
        return self.rfile.read(end + 4)[:end].decode('iso-8859-1').split(
            '\r\n')

    def handle_expect_100(self):
        """Refuse an oversized body before the client sends it."""
        try:
            self.body_length()
        except HTTPError as error:
            self.send_json_error(error)
            self.record(self.command, error.status)
            return False
        return super().handle_expect_100()

    def do_GET(self):
        self.dispatch('GET')

    def do_HEAD(self):
        self.dispatch('HEAD')

    def do_POST(self):
        self.dispatch('POST')

    def do_PUT(self):
        self.dispatch('PUT')

    def do_DELETE(self):
        self.dispatch('DELETE')

    def do_PATCH(self):
        self.dispatch('PATCH')

    def do_OPTIONS(self):
        self.dispatch('OPTIONS')

    def dispatch(self, method):
        """Answer the request through route(method); whatever escapes it is
        answered here, as JSON."""
        if self.worker.stopping:
            self.close_connection = True
        self.worker.in_flight.add(self)
        try:
            self.route(method)
        except HTTPError as error:
            self.send_json_error(error)
        except (ConnectionError, TimeoutError) as error:
            LOGGER.debug('%s went away: %r', self.address_string(), error)
            self.close_connection = True
            return
        except Exception:
            LOGGER.exception('Unexpected error handling %s %s', method,
                             escape_controls(self.path.split('?')[0][:200]))
            self.send_json_error(HTTPError(500, 'statelessd failed to handle '
                                           'the request; see its log'))
        finally:
            self.worker.in_flight.discard(self)
        self.record(method, self.status or 500)

    def route(self, method):
        """Answer the request; what a request means is the subclass's."""
        raise NotImplementedError

    def record(self, method, status):
        self.worker.requests.record(method or 'UNKNOWN', status,
                                    time.monotonic() - self.started,
                                    self.published)

    def body_length(self):
        """The Content-Length, None for a chunked body; 413 (before any of
        the body is read) when it is over HTTPServer.max_body_size."""
        limit = self.worker.config.max_body_size
        if self.framing is not None and self.framing > limit:
            raise HTTPError(413, 'the body of %d bytes exceeds the limit of '
                            '%d bytes' % (self.framing, limit))
        return self.framing

    def read_body(self):
        """The request body, within HTTPServer.max_body_size and
        request_timeout."""
        length = self.body_length()
        config = self.worker.config
        try:
            if length is None:
                body = read_chunked(self.rfile, config.max_body_size,
                                    config.max_header_size)
            else:
                body = read_exactly(self.rfile, length)
        except Truncated as truncated:
            raise self.incomplete(str(truncated)) from None
        self.unread_body = False
        self.watch.until(None)
        return body

    def incomplete(self, reason):
        """408 when request_timeout cut the request short, else 400."""
        if self.watch is not None and self.watch.expired:
            return HTTPError(408, 'the request did not arrive in full within '
                             '%ss' % self.worker.config.request_timeout)
        return HTTPError(400, reason)

    def send_body(self, status, content_type=None, body=b'', headers=None):
        """Write the whole response at once: one send, one GIL round.

        Whatever the route, a body left unread closes the connection (its
        bytes must never be read as the next request), and so does any
        5xx: after a failure the request's framing is no longer trusted.
        """
        if self.unread_body:
            self.close_connection = True
            self.linger = True
        elif status >= 500:
            self.close_connection = True
        self.status = status
        self.log_request(status)
        lines = ['%s %d %s' % (self.protocol_version, status,
                               self.responses[status][0]),
                 'Server: ' + self.server_version,
                 'Date: ' + self.date_time_string()]
        lines.extend('%s: %s' % item for item in (headers or {}).items())
        if status != 204:
            lines.append('Content-Type: ' + content_type)
            lines.append('Content-Length: %d' % len(body))
        if self.close_connection:
            lines.append('Connection: close')
        head = ('\r\n'.join(lines) + '\r\n\r\n').encode('latin-1')
        data = head if self.command == 'HEAD' else head + body
        sent = send_at_once(self.connection, data)
        if sent < len(data):
            self.watch.until(time.monotonic() +
                             self.worker.config.socket_timeout,
                             socket.SHUT_RDWR)
            self.wfile.write(data[sent:])

    def date_time_string(self, timestamp=None):
        """The Date header, formatted once a second rather than per
        response."""
        now = int(time.time() if timestamp is None else timestamp)
        cached = DATE_CACHE
        if cached[0] != now:
            cached[:] = [now, super().date_time_string(now)]
        return cached[1]

    def send_json_error(self, error):
        """Errors are short JSON, and close the connection.  It lingers so
        that a client still sending reads the answer rather than a reset."""
        self.close_connection = True
        self.linger = True
        document = {'error': http.HTTPStatus(error.status).phrase,
                    'reason': error.reason[:300]}
        document.update(error.details)
        body = json.dumps(document).encode()
        self.send_body(error.status, 'application/json', body, error.headers)

    def send_error(self, code, message=None, explain=None):
        """Answer errors the stdlib detects (bad request line, header
        limits, unknown method...) as JSON, or 408 when request_timeout
        cut the request short."""
        self.close_connection = True
        error = self.incomplete(explain or message or
                                http.HTTPStatus(code).phrase)
        if error.status != 408:
            error.status = code
        try:
            self.send_json_error(error)
        except OSError as failure:
            LOGGER.debug('%s went away: %r', self.address_string(), failure)
        self.record(self.command, error.status)

    def finish(self):
        self.worker.watchdog.forget(self.watch)
        super().finish()
        if self.linger:
            self.worker.watchdog.linger(self.connection)

    def client_ip(self):
        """The client's address for access checks; None when a trusted
        proxy names none."""
        return client_ip(self.client_address[0], self.headers,
                         self.worker.config)

    def address_string(self):
        return logged_address(self.client_address[0], self.headers,
                              self.worker.config)

    def log_message(self, format, *args):
        LOGGER.debug('%s %s', self.address_string(), format % args)

    def log_request(self, code='-', size='-'):
        if LOGGER.isEnabledFor(logging.INFO):
            LOGGER.info('%s "%s" %s %.1fms', self.address_string(),
                        escape_controls(self.requestline[:1000]), code,
                        (time.monotonic() - self.started) * 1000)


class Truncated(Exception):
    """A request body that ended before its framing said it would."""


def body_framing(headers, version):
    """How a request's body is delimited (RFC 9112 section 6): its
    length, or None for chunked.  Anything a proxy in front could read
    differently is refused with 400, which closes the connection."""
    codings = headers.get_all('Transfer-Encoding')
    lengths = headers.get_all('Content-Length')
    if codings is not None:
        if version == 'HTTP/1.0':
            raise HTTPError(400, 'Transfer-Encoding is not allowed in an '
                            'HTTP/1.0 request')
        if lengths is not None:
            raise HTTPError(400, 'the request has both Transfer-Encoding '
                            'and Content-Length')
        coding = ','.join(codings)
        if coding.strip(' \t').lower() != 'chunked':
            raise HTTPError(400, 'Transfer-Encoding %r is not supported: '
                            'send chunked or a Content-Length'
                            % coding[:40])
        return None
    if lengths is None:
        return 0
    distinct = set(lengths)
    if len(distinct) != 1:
        raise HTTPError(400, 'the request has conflicting '
                        'Content-Length headers')
    length = distinct.pop()
    if not is_digits(length):
        raise HTTPError(400, 'Content-Length %r is not a number'
                        % length[:20])
    return int(length)


def read_exactly(rfile, length):
    body = rfile.read(length)
    if len(body) != length:
        raise Truncated('the body ended after %d of %d bytes'
                        % (len(body), length))
    return body


def read_chunked(rfile, limit, trailer_limit):
    """A chunked body of at most limit bytes, its trailers (at most
    trailer_limit bytes) checked and dropped."""
    chunks, size = [], 0
    while True:
        line = rfile.readline(1024)
        if not line.endswith(b'\n'):
            raise Truncated('a chunk size line is truncated')
        match = CHUNK_SIZE_LINE.match(line)
        if match is None:
            raise HTTPError(400, 'a chunk size is malformed: %r'
                            % escape_controls(line[:40].decode('latin-1')))
        length = int(match.group(1), 16)
        size += length
        if size > limit:
            raise HTTPError(413, 'the body exceeds the limit of %d bytes'
                            % limit)
        if not length:
            skip_trailers(rfile, trailer_limit)
            return b''.join(chunks)
        chunk = rfile.read(length)
        if len(chunk) != length or rfile.readline(3) != b'\r\n':
            raise Truncated('a chunk is truncated')
        chunks.append(chunk)


class FieldSection(collections.namedtuple('FieldSection', 'line plural')):
    """What a reader of field lines calls the section it reads."""


HEADERS = FieldSection('header', 'the request headers')
TRAILERS = FieldSection('trailer', 'the trailers')


def read_field_lines(rfile, limit, section):
    """The lines of a header or trailer section (RFC 9112 sections 5 and
    7.1.2) up to its empty line, within limit bytes.  Headers and
    trailers go through this one reader, so that the two can never be
    checked differently; Truncated when the stream ends first."""
    lines, size = [], 0
    while True:
        line = rfile.readline(limit - size + 1)
        size += len(line)
        if size > limit:
            raise HTTPError(431, '%s exceed %d bytes'
                            % (section.plural, limit))
        if not line.endswith(b'\n'):
            raise Truncated('%s are truncated' % section.plural)
        if not line.endswith(b'\r\n'):
            raise HTTPError(400, 'a %s line does not end in CRLF'
                            % section.line)
        if line == b'\r\n':
            return lines
        lines.append(line[:-2].decode('iso-8859-1'))


def parse_field_lines(lines, section):
    """RequestHeaders of the lines; 400 naming the first malformed one."""
    fields = RequestHeaders()
    for line in lines:
        name, colon, value = line.partition(':')
        if not colon or not is_token(name) or \
                has_field_control_characters(value):
            raise HTTPError(400, 'malformed %s line %r'
                            % (section.line, escape_controls(line[:60])))
        fields.add(name, value.strip(' \t'))
    return fields


def skip_trailers(rfile, limit):
    """Check a chunked body's trailers as headers are checked; drop them."""
    parse_field_lines(read_field_lines(rfile, limit, TRAILERS), TRAILERS)


def client_ip(peer, headers, config):
    """The client's address for access checks; None when a trusted
    proxy's X-Real-IP is not one valid address.

    Only with xheaders on and only from a trusted proxy does X-Real-IP
    count, as one line: any client can send the header, and the proxy
    must replace it.  X-Forwarded-For never counts here: a proxy that
    passes on the client's own would let it name any address.
    """
    peer = ip_address(peer)
    if not is_trusted_proxy(peer, config):
        return peer
    real = headers.get_all('X-Real-IP')
    if real is None:
        return peer
    return forwarded_ip(real[0]) if len(real) == 1 else None


def is_trusted_proxy(address, config):
    return config.xheaders and in_networks(address, config.trusted_proxies)


def logged_address(peer, headers, config):
    """The client for the log: an address a trusted proxy names, once it
    parsed as one, else the peer's.  Without X-Real-IP, X-Forwarded-For
    is read from the right, where proxies append what they saw, to the
    first hop that is not itself a trusted proxy."""
    if not config.xheaders:
        return peer
    address = client_ip(peer, headers, config)
    if address is not None and 'X-Real-IP' not in headers and \
            is_trusted_proxy(address, config):
        address = forwarded_client(address, headers, config)
    return str(address or peer)


def forwarded_client(proxy, headers, config):
    address = proxy
    hops = ','.join(headers.get_all('X-Forwarded-For', []))
    for hop in reversed(hops.split(',') if hops else []):
        address = forwarded_ip(hop)
        if address is None or not is_trusted_proxy(address, config):
            return address
    return address


def allow_anyone(handler):
    """Access for a route any client may call."""
    return None


def allow_stats_clients(handler):
    """HTTPServer.stats_allow decides who may read the figures: they name
    every vhost and user publishing through the worker."""
    address = handler.client_ip()
    if address is None:
        raise HTTPError(403, 'statistics are not served when the proxy '
                        'does not name one client address')
    if not in_networks(address, handler.worker.config.stats_allow):
        raise HTTPError(403, 'statistics are not served to %s' % address)
    return None


def require_basic_auth(handler):
    """The request's HTTP Basic (user, password), which RabbitMQ checks
    when the message is published; 401 without them."""
    return basic_credentials(handler.headers.get('Authorization'))


class Route:
    """A row of the route table: the methods and path shape it answers,
    the Handler method that answers, and who may call it.

    In a shape, <name> matches one path segment and <name*> the rest of
    the path; the answer gets them in order.  A target replaces the
    shape's own matching where names need decoding and checking before
    the method is: a function from the path to the answer's arguments,
    or None.  A route with a setting is served only while that Config
    setting is set.  Other methods on an exclusive route's path are
    answered 405; a route that is not exclusive leaves them to the rows
    after it.  access(handler) raises the refusal, or returns what the
    answer may read as handler.credentials.
    """

    def __init__(self, methods, shape, answer, access=allow_anyone,
                 target=None, refusal=None, setting=None, exclusive=True):
        self.methods = tuple(methods.split())
        self.shape = shape
        self.answer = answer
        self.access = access
        self.target = target or shape_matcher(shape)
        self.refusal = refusal or '%s accepts %s' % (shape, self.methods[0])
        self.setting = setting
        self.exclusive = exclusive

    def match(self, path, config):
        """The answer's arguments when path is this route's, else None."""
        if self.setting is not None and not getattr(config, self.setting):
            return None
        return self.target(path)

    def refuse(self):
        return HTTPError(405, self.refusal, {'Allow': ', '.join(self.methods)})


SHAPE_NAME = re.compile(r'<(\w+)(\*?)>')


def shape_matcher(shape):
    """A function from a path to the values of shape's names, or None."""
    if '<' not in shape:
        return lambda path: () if path == shape else None
    pattern, end = [], 0
    for name in SHAPE_NAME.finditer(shape):
        pattern.append(re.escape(shape[end:name.start()]))
        pattern.append('(.*)' if name.group(2) else '([^/]*)')
        end = name.end()
    pattern.append(re.escape(shape[end:]))
    regex = re.compile(''.join(pattern), re.S)

    def match(path):
        found = regex.fullmatch(path)
        return None if found is None else found.groups()
    return match


def find_route(routes, method, path, config):
    """The first route that answers method at path, and the answer's
    arguments; None when no route has the path.  The first exclusive
    route whose path it is refuses any other method with 405."""
    for route in routes:
        arguments = route.match(path, config)
        if arguments is None:
            continue
        if method in route.methods:
            return route, arguments
        if route.exclusive:
            raise route.refuse()
    return None


PUBLISH_PATH_REFUSAL = 'a publish path accepts POST only'


class Handler(HTTPProtocol):
    """statelessd's pages and its publishing, answered as ROUTES says."""

    #: The first row whose path and method match answers.  The publish
    #: path is any three segments, so a new row goes before it.  /health
    #: says only up or down, and which RabbitMQ nodes the worker is
    #: connected to; the other pages are for stats_allow clients.
    ROUTES = (
        Route('GET HEAD', '/', 'send_dashboard', access=allow_stats_clients),
        Route('GET HEAD', '/stats', 'send_stats', access=allow_stats_clients),
        Route('GET HEAD', '/stats/all', 'send_all_stats',
              access=allow_stats_clients),
        Route('GET HEAD', '/metrics', 'send_metrics',
              access=allow_stats_clients),
        Route('GET HEAD', '/health', 'send_health'),
        Route('GET HEAD', '/static/<name*>', 'send_static', setting='static',
              exclusive=False),
        Route('POST', '/api/exchanges/<vhost>/<exchange>/publish',
              'publish_api', access=require_basic_auth, target=api_target,
              refusal=PUBLISH_PATH_REFUSAL),
        Route('POST', '/<vhost>/<exchange>/<routing_key>', 'publish',
              access=require_basic_auth, target=publish_target,
              refusal=PUBLISH_PATH_REFUSAL),
    )

    def route(self, method):
        path, _, self.query = self.path.partition('?')
        found = find_route(self.ROUTES, method, path, self.worker.config)
        if found is None:
            raise HTTPError(404, 'no such resource: publish to '
                            '/<vhost>/<exchange>/<routing_key> or '
                            '/api/exchanges/<vhost>/<exchange>/publish')
        route, arguments = found
        self.credentials = route.access(self)
        getattr(self, route.answer)(*arguments)

    def send_dashboard(self):
        self.send_body(200, 'text/html; charset=utf-8', self.worker.dashboard)

    def send_stats(self):
        self.send_json(200, self.worker.stats())

    def send_all_stats(self):
        documents = self.worker.all_stats()
        self.send_json(200, statelessd_stats.all_document(self.worker.host,
                                                          documents))

    def send_metrics(self):
        text = statelessd_stats.prometheus_text(self.worker.all_stats())
        self.send_body(200, statelessd_stats.PROMETHEUS_CONTENT_TYPE,
                       text.encode('utf-8'))

    def send_health(self):
        """200 while this worker can publish, 503 (one JSON line) if not;
        either names the RabbitMQ nodes the worker is connected to."""
        problem, nodes = self.worker.health()
        if problem is None:
            self.send_json(200, {'status': 'ok', 'port': self.worker.port,
                                 'nodes': nodes})
        else:
            self.send_json(503, {'status': 'unavailable',
                                 'port': self.worker.port,
                                 'reason': problem, 'nodes': nodes},
                           {'Retry-After': str(RETRY_AFTER)})

    def send_static(self, name):
        """A file below Application.paths.static, never one outside it."""
        root = os.path.realpath(self.worker.config.static)
        relative = decode_segment(name, 'file name')
        path = None if has_unloggable_characters(relative) else \
            os.path.realpath(os.path.join(root, relative))
        if path is None or not path.startswith(root + os.sep) or \
                not os.path.isfile(path):
            raise HTTPError(404, 'no such static file: %s'
                            % escape_controls(name))
        with open(path, 'rb') as handle:
            body = handle.read()
        content_type = mimetypes.guess_type(path)[0] or \
            'application/octet-stream'
        self.send_body(200, content_type, body)

    def send_json(self, status, document, headers=None):
        self.send_body(status, 'application/json',
                       json.dumps(document).encode() + b'\n', headers)

    def publish(self, vhost, exchange, routing_key):
        """The original's form API; a body that is not a form is published
        as it is, and messages[i][...] fields make a batch."""
        user, password = self.credentials
        query = query_fields(self.query)
        confirm = query_flag(query, 'confirm', self.worker.config.confirm)
        mandatory = query_flag(query, 'mandatory', False)
        content_type = self.headers.get('Content-Type')
        body = self.read_body()
        pairs = form_fields(content_type, body)
        if pairs is None:
            message = raw_message(exchange, routing_key, body, content_type,
                                  query, user, mandatory)
        elif is_form_batch(pairs):
            messages = batch_messages(
                form_batch(pairs, self.worker.config.max_batch_size),
                lambda fields: batch_form_message(exchange, routing_key,
                                                  fields, user, mandatory))
            self.publish_form_batch(vhost, user, password, messages, confirm)
            return
        else:
            fields, headers = message_fields(pairs)
            message = form_message(exchange, routing_key, fields, headers,
                                   user, mandatory)
        error = self.publish_all(vhost, user, password, [message],
                                 confirm)[0]
        if error is not None:
            raise publish_error(error)
        self.send_body(204)

    def publish_form_batch(self, vhost, user, password, messages, confirm):
        """200 {"published": N}, with a result per message in confirm mode;
        else the first failure's status and every message's result."""
        errors = self.publish_all(vhost, user, password, messages, confirm)
        results = [{'status': 204} if error is None else failure(error)
                   for error in errors]
        answer = {'published': errors.count(None), 'results': results}
        self.send_batch_answer(errors, answer if confirm else
                               {'published': answer['published']}, answer)

    def publish_api(self, vhost, exchange):
        """The management API's publish: mandatory, confirmed, answered
        {"routed": ...}; a JSON array is a batch."""
        user, password = self.credentials
        document = json_document(self.read_body())
        if isinstance(document, dict):
            error = self.publish_all(vhost, user, password,
                                     [api_message(exchange, document, user)],
                                     True)[0]
            if error is not None and not unrouted(error):
                raise publish_error(error)
            self.send_json(200, {'routed': error is None})
            return
        if len(document) > self.worker.config.max_batch_size:
            raise batch_too_large(len(document),
                                  self.worker.config.max_batch_size)
        messages = batch_messages(
            document, lambda item: api_message(exchange, item, user))
        errors = self.publish_all(vhost, user, password, messages, True)
        failures = [None if unrouted(error) else error for error in errors]
        results = [{'routed': error is None} if problem is None
                   else failure(problem)
                   for error, problem in zip(errors, failures)]
        self.send_batch_answer(failures, results, {'results': results})

    def publish_all(self, vhost, user, password, messages, confirm):
        """Publish messages in their order on one publisher; the outcome of
        each, None or its PublishError."""
        try:
            self.worker.registry.publish_batch(vhost, user, password,
                                               messages, confirm)
        except statelessd_amqp.PublishError as error:
            raise publish_error(error) from None
        self.published = len(messages)
        deadline = time.monotonic() + self.worker.config.confirm_timeout
        return [message.outcome(deadline) for message in messages]

    def send_batch_answer(self, errors, answer, details):
        """200 with answer when every message went, else the first failure's
        status, its error document holding details (every message's result):
        a batch is not a transaction, and a client retries exactly the
        failed ones."""
        for index, error in enumerate(errors):
            if error is not None:
                problem = publish_error(error)
                problem.reason = 'messages[%d]: %s' % (index, problem.reason)
                problem.details = details
                raise problem
        self.send_json(200, answer)


def libc_send():
    """libc's send(2), called through ctypes.PyDLL, which keeps the GIL;
    None where ctypes or the function is missing."""
    try:
        import ctypes
        send = ctypes.PyDLL(None).send
    except (ImportError, OSError, AttributeError):
        return None
    send.restype = ctypes.c_ssize_t
    send.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_size_t,
                     ctypes.c_int]
    return send


LIBC_SEND = libc_send() if hasattr(socket, 'MSG_DONTWAIT') else None
SEND_FLAGS = getattr(socket, 'MSG_DONTWAIT', 0) | \
    getattr(socket, 'MSG_NOSIGNAL', 0)


def send_at_once(sock, data):
    """Send what a plain TCP socket takes without waiting, GIL held, so
    that no other request thread takes the GIL mid-response; else, and on
    any error, send nothing and return 0: the caller's sendall sends it.

    socket.send releases the GIL for the system call, and under load
    another request thread takes it: the sender then waits its turn to
    finish the request, though a response nearly always fits the socket's
    buffer.  The bytes go to the file descriptor as they are, so anything
    that is not a plain TCP socket (a TLS socket above all) is refused.
    """
    if LIBC_SEND is None or not is_plain_tcp(sock):
        return 0
    return max(LIBC_SEND(sock.fileno(), data, len(data), SEND_FLAGS), 0)


def is_plain_tcp(sock):
    """Whether sock is the kernel's TCP socket itself, not a subclass (such
    as ssl.SSLSocket) that transforms the bytes on their way."""
    return type(sock) is socket.socket and sock.type == socket.SOCK_STREAM \
        and sock.family in (socket.AF_INET, socket.AF_INET6)


def escape_controls(line):
    """A client's text for a log line, control characters escaped."""
    if line.isprintable():
        return line
    return ''.join(c if c.isprintable() else repr(c)[1:-1] for c in line)


def ip_address(text):
    """An address, with IPv4-mapped IPv6 addresses (of a dual-stack
    socket) as the IPv4 addresses they are."""
    address = ipaddress.ip_address(text)
    if address.version == 6 and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def forwarded_ip(text):
    """The address a proxy header names, or None.  A zone (fe80::1%eth0)
    is refused: ipaddress takes any characters there, escapes included."""
    text = text.strip(' \t')
    if '%' in text:
        return None
    try:
        return ip_address(text)
    except ValueError:
        return None


def in_networks(address, networks):
    return any(address in network for network in networks)


class RequestHeaders:
    """A request's headers by case-insensitive name; the part of
    http.client.HTTPMessage that statelessd uses."""

    __slots__ = ('_values',)

    def __init__(self):
        self._values = {}

    def add(self, name, value):
        self._values.setdefault(name.lower(), []).append(value)

    def get(self, name, default=None):
        values = self._values.get(name.lower())
        return values[0] if values else default

    def get_all(self, name, default=None):
        return self._values.get(name.lower(), default)

    def __contains__(self, name):
        return name.lower() in self._values


class Watch:
    """A connection's current deadline, kept by the Watchdog, and how its
    socket is shut down when the deadline passes; no deadline while a
    request waits for its confirm."""

    __slots__ = ('sock', 'deadline', 'how', 'expired')

    def __init__(self, sock):
        self.sock = sock
        self.deadline = None
        self.how = socket.SHUT_RD
        self.expired = False

    def until(self, deadline, how=socket.SHUT_RD):
        self.how = how
        self.deadline = deadline


class Watchdog(threading.Thread):
    """Keeps each connection's deadlines: socket_timeout while it is idle
    or its response is being sent, request_timeout while a request
    arrives.  It also closes connections that were answered before their
    request was read.

    A per-read socket timeout cannot stop a client that sends a byte just
    before each timeout (slowloris); a deadline per request can.  Shutting
    down a socket's read side wakes the thread blocked on it with an end of
    file, and the request ends as a 408; shutting down both sides ends a
    send to a client that stopped reading.

    Closing a socket with unread input makes the kernel reset the
    connection, and a client still sending its request may lose the answer
    to it.  So such sockets linger here for up to LINGER seconds, their
    input read and dropped, until the client closes.
    """

    TICK = 0.2
    LINGER = 2.0
    MAX_LINGERING = 1024

    def __init__(self):
        super().__init__(name='watchdog', daemon=True)
        self._lock = threading.Lock()
        self._watches = set()
        self._lingering = collections.deque()

    def watch(self, sock):
        watch = Watch(sock)
        with self._lock:
            self._watches.add(watch)
        return watch

    def forget(self, watch):
        """After this returns, the watchdog no longer touches the socket."""
        with self._lock:
            self._watches.discard(watch)

    def linger(self, sock):
        """Keep a duplicate of the socket open after the handler closes it."""
        try:
            sock.shutdown(socket.SHUT_WR)
            copy = sock.dup()
            copy.setblocking(False)
        except OSError:
            return
        with self._lock:
            self._lingering.append((copy, time.monotonic() + self.LINGER))
            while len(self._lingering) > self.MAX_LINGERING:
                self._lingering.popleft()[0].close()

    def run(self):
        while True:
            time.sleep(self.TICK)
            self._expire(time.monotonic())
            self._drain(time.monotonic())

    def _expire(self, now):
        with self._lock:
            for watch in [w for w in self._watches
                          if w.deadline is not None and w.deadline <= now]:
                self._watches.discard(watch)
                watch.expired = True
                try:
                    watch.sock.shutdown(watch.how)
                except OSError:
                    pass

    def _drain(self, now):
        with self._lock:
            lingering, self._lingering = self._lingering, collections.deque()
        keep = []
        for sock, until in lingering:
            if until > now and read_and_drop(sock):
                keep.append((sock, until))
            else:
                sock.close()
        with self._lock:
            self._lingering.extendleft(reversed(keep))


def read_and_drop(sock):
    """Read and drop what a lingering socket holds; False once it is done."""
    for _ in range(64):
        try:
            if not sock.recv(65536):
                return False
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
    return True


class Server(http.server.ThreadingHTTPServer):
    """One port's HTTP server; created by the master, served by a worker."""

    daemon_threads = True
    request_queue_size = 128
    #: Seconds a connection thread waits for another connection.
    THREAD_IDLE = 0.25

    def __init__(self, address, port):
        self.address_family = (socket.AF_INET6 if ':' in address
                               else socket.AF_INET)
        super().__init__((address, port), Handler)
        self.worker = None
        self._connections = queue.SimpleQueue()
        self._idle_threads = 0
        self._idle_lock = threading.Lock()

    def process_request(self, request, client_address):
        """Serve the connection in a thread of its own, or, when
        HTTPServer.max_connections are being served, answer 503 at once.

        A thread that served a connection waits THREAD_IDLE seconds for the
        next one before it ends, so that clients that connect for every
        request, as PHP does, do not each pay for starting a thread.
        """
        if not self.worker.connection_slots.acquire(blocking=False):
            self.refuse(request)
            return
        self._connections.put((request, client_address))
        with self._idle_lock:
            if self._idle_threads:
                self._idle_threads -= 1
                return
        threading.Thread(target=self.serve_connections, daemon=True,
                         name='connection').start()

    def serve_connections(self):
        """Serve connections until none came for THREAD_IDLE seconds.

        An idle thread that process_request counted on (idle count already
        taken) has a connection queued for it, so it serves that first."""
        while True:
            try:
                request, client_address = self._connections.get(
                    timeout=self.THREAD_IDLE)
            except queue.Empty:
                with self._idle_lock:
                    if self._idle_threads:
                        self._idle_threads -= 1
                        return
                continue
            self.process_request_thread(request, client_address)
            with self._idle_lock:
                self._idle_threads += 1

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.worker.connection_slots.release()

    def refuse(self, request):
        self.worker.requests.record('UNKNOWN', 503, 0.0)
        try:
            request.setblocking(False)
            request.send(BUSY_RESPONSE)
        except OSError:
            pass
        self.worker.watchdog.linger(request)
        request.close()

    def handle_error(self, request, client_address):
        """Log what escaped a handler; the stdlib prints it to stderr."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            LOGGER.debug('%s went away: %r', client_address[0], error)
        else:
            LOGGER.exception('Unexpected error serving %s', client_address[0])


def busy_response():
    """The 503 for a connection beyond HTTPServer.max_connections."""
    body = json.dumps({'error': 'Service Unavailable',
                       'reason': 'this worker is serving as many connections '
                                 'as it may; retry later'}).encode()
    return (b'HTTP/1.1 503 Service Unavailable\r\n'
            b'Content-Type: application/json\r\n'
            b'Content-Length: %d\r\nRetry-After: %d\r\n'
            b'Connection: close\r\n\r\n' % (len(body), RETRY_AFTER)) + body


BUSY_RESPONSE = busy_response()
#: The second and the Date header text of the responses sent in it.
DATE_CACHE = [None, '']


# -- processes -------------------------------------------------------------------

def run_worker(config, server, dashboard):
    """Serve one port until SIGTERM, then drain and exit."""
    sys.setswitchinterval(SWITCH_INTERVAL)
    worker = server.worker = Worker(config, server.server_address[1],
                                    dashboard)

    def stop(signum, frame):
        worker.stopping = True
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    worker.watchdog.start()
    worker.start()
    LOGGER.info('Worker %d serving port %d', os.getpid(), worker.port)
    server.serve_forever()
    worker.stop(config.shutdown_timeout)
    LOGGER.info('Worker %d for port %d stopped', os.getpid(), worker.port)


def pin_to_cpu(index):
    """Keep this worker, and the threads it starts, on one CPU.

    A worker runs Python on one core at a time anyway.  Its request threads
    pass the GIL to each other several times per request, and each pass to
    a thread on another CPU costs a cross-CPU wake-up: pinned, one port
    served a third more requests per second in the benchmark.
    """
    if not hasattr(os, 'sched_setaffinity'):
        return
    cpus = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cpus[index % len(cpus)]})


def drop_privileges(run_as):
    """Run a worker as Daemon.user: its port is bound, nothing else needs
    root.  The master keeps root to restart workers and remove its pid
    file."""
    if run_as is None or os.geteuid() != 0:
        return
    uid, gid = run_as
    os.setgroups([gid])
    os.setgid(gid)
    os.setuid(uid)


class Master:
    """Forks a worker per port, restarts the ones that die, stops them all.

    Signal handlers only note the signal and write to a pipe; the main loop
    does the work, as in gunicorn's arbiter.
    """

    RESTART_BACKOFF_MAX = 30.0

    def __init__(self, config):
        self.config = config
        self.dashboard = dashboard_page(config.templates)
        self.servers = {}
        self.workers = {}
        self.started = {}
        self.backoff = {}
        self.signals = []
        self.pipe = None
        if config.run_as is not None and os.geteuid() != 0 \
                and config.run_as[0] != os.geteuid():
            LOGGER.warning('Daemon.user is set, but statelessd does not run '
                           'as root: the workers keep uid %d', os.geteuid())

    def bind_ports(self):
        for port in self.config.ports:
            self.servers[port] = self.bind(port)

    def run(self):
        self.pipe = os.pipe()
        for fd in self.pipe:
            os.set_blocking(fd, False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(signum, self.note_signal)
        for port in self.config.ports:
            self.spawn(port)
        self.supervise()
        return 0

    def bind(self, port):
        try:
            return Server(self.config.address, port)
        except OSError as error:
            raise ConfigError('HTTPServer.ports: cannot bind %s:%d: %s'
                              % (self.config.address, port,
                                 error.strerror)) from None

    def note_signal(self, signum, frame):
        self.signals.append(signum)
        try:
            os.write(self.pipe[1], b'.')
        except OSError:
            pass

    def spawn(self, port):
        pid = os.fork()
        if pid:
            self.workers[pid] = port
            self.started[port] = time.monotonic()
            return
        code = 0
        try:
            for fd in self.pipe:
                os.close(fd)
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(signum, signal.SIG_DFL)
            for other, server in self.servers.items():
                if other != port:
                    server.socket.close()
            drop_privileges(self.config.run_as)
            if self.config.cpu_affinity:
                pin_to_cpu(self.config.ports.index(port))
            run_worker(self.config, self.servers[port], self.dashboard)
        except BaseException:
            LOGGER.exception('Worker for port %d failed', port)
            code = 1
        finally:
            logging.shutdown()
            os._exit(code)

    def supervise(self):
        pending = {}
        while True:
            wait = min([1.0] + [max(0.0, when - time.monotonic())
                                for when in pending.values()])
            try:
                select.select([self.pipe[0]], [], [], wait)
                os.read(self.pipe[0], 4096)
            except (BlockingIOError, InterruptedError):
                pass
            stopping = any(s in (signal.SIGTERM, signal.SIGINT)
                           for s in self.signals)
            self.signals.clear()
            for port in self.reap():
                pending[port] = time.monotonic() + self.restart_delay(port)
            if stopping:
                self.stop_workers()
                return
            for port, when in list(pending.items()):
                if time.monotonic() >= when:
                    del pending[port]
                    self.spawn(port)

    def reap(self):
        """Collect dead workers; yield the ports that need a new one."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if not pid:
                return
            port = self.workers.pop(pid, None)
            if port is not None:
                LOGGER.error('Worker %d for port %d died: %s', pid, port,
                             describe_status(status))
                yield port

    def restart_delay(self, port):
        """No delay after a worker that ran a while; back off crash loops."""
        if time.monotonic() - self.started[port] > self.RESTART_BACKOFF_MAX:
            self.backoff[port] = 0.0
        else:
            self.backoff[port] = min(
                max(self.backoff.get(port, 0.0) * 2, 0.5),
                self.RESTART_BACKOFF_MAX)
        return self.backoff[port]

    def stop_workers(self):
        for pid in self.workers:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + self.config.shutdown_timeout * 2 + 5
        while self.workers and time.monotonic() < deadline:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid:
                self.workers.pop(pid, None)
            else:
                time.sleep(0.05)
        for pid in self.workers:
            LOGGER.error('Worker %d did not stop in time; killing it', pid)
            os.kill(pid, signal.SIGKILL)
        for server in self.servers.values():
            server.server_close()


def describe_status(status):
    if os.WIFSIGNALED(status):
        return 'killed by signal %d' % os.WTERMSIG(status)
    return 'exit status %d' % os.WEXITSTATUS(status)


def dashboard_page(templates):
    """The page at /: templates/dashboard.html if there is one.

    Read once at start, before the workers fork, so the warning about a
    missing template is logged once and not by every worker.
    """
    if templates is None:
        return statelessd_stats.DASHBOARD
    path = os.path.join(templates, DASHBOARD_TEMPLATE)
    try:
        with open(path, 'rb') as handle:
            return handle.read()
    except OSError as error:
        LOGGER.warning('Application.paths.templates: cannot read %s (%s); '
                       'serving the built-in dashboard', path,
                       error.strerror)
        return statelessd_stats.DASHBOARD


def daemonize():
    """Detach: fork, setsid, fork again.

    The process that was started waits until the daemon reports that it
    runs (see report_started), so whoever started it (an init script,
    systemd Type=forking) finds the pid file written when it returns, and
    exits 1 if the daemon does not get that far.  Until then the daemon
    keeps the terminal's stdio, so errors while starting still reach it.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    child = os.fork()
    if child:
        os.close(write_end)
        started = os.read(read_end, 1)
        os.waitpid(child, 0)
        os._exit(0 if started else 1)
    os.close(read_end)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir('/')
    return write_end


def report_started(pipe):
    """Let the started process exit; stdio goes to /dev/null from now on."""
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    os.write(pipe, b'.')
    os.close(pipe)


def check_pidfile(path):
    """Refuse to start while Daemon.pidfile names a running process.

    The file is opened without following a symbolic link, and what it
    holds is never logged: it is not ours until we have written it.
    """
    if not path:
        return
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW |
                             os.O_NONBLOCK)
    except FileNotFoundError:
        return
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise ConfigError('Daemon.pidfile: %s is a symbolic link; '
                              'statelessd does not follow it' % path) \
                from None
        raise ConfigError('Daemon.pidfile: cannot read %s: %s'
                          % (path, error.strerror)) from None
    with os.fdopen(descriptor, 'rb') as handle:
        if not stat.S_ISREG(os.fstat(descriptor).st_mode):
            raise ConfigError('Daemon.pidfile: %s is not a regular file'
                              % path)
        text = handle.read(32).strip()
    if text.isdigit() and process_exists(int(text)):
        raise AlreadyRunning('already running as pid %s (Daemon.pidfile %s);'
                             ' stop it first' % (text.decode(), path))
    LOGGER.warning('Replacing stale pid file %s (%s)', path,
                   'pid %s is not running' % text.decode() if text.isdigit()
                   else 'it holds no pid')


def process_exists(pid):
    """True if pid runs, also as another user; our own pid is stale (a
    container restart reuses pids)."""
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_pidfile(path):
    """Write the pid file whole or not at all: write a new file of a name
    nobody can have planted (mkstemp creates it, following no link), then
    rename it over the pid file, which replaces a link rather than its
    target."""
    if not path:
        return
    directory, name = os.path.split(path)
    try:
        descriptor, partial = tempfile.mkstemp(prefix=name + '.',
                                               dir=directory or '.')
    except OSError as error:
        raise ConfigError('Daemon.pidfile: cannot write %s: %s'
                          % (path, error.strerror)) from None
    try:
        with os.fdopen(descriptor, 'w') as handle:
            handle.write('%d\n' % os.getpid())
            os.fchmod(handle.fileno(), 0o644)
        os.replace(partial, path)
    except OSError as error:
        with contextlib.suppress(OSError):
            os.unlink(partial)
        raise ConfigError('Daemon.pidfile: cannot write %s: %s'
                          % (path, error.strerror)) from None


def remove_pidfile(path):
    if path:
        try:
            os.unlink(path)
        except OSError as error:
            if error.errno != errno.ENOENT:
                raise


# -- command line ----------------------------------------------------------------

def prepare_spool(directory, run_as):
    """Check the spool directory as the user the workers will run as."""
    if directory:
        try:
            with worker_identity(run_as):
                statelessd_amqp.prepare_spool_directory(directory)
        except ValueError as error:
            raise ConfigError('Application.spool: %s' % error) from None


@contextlib.contextmanager
def worker_identity(run_as):
    """Act as Daemon.user for a moment, when the workers will drop to it."""
    if run_as is None or os.geteuid() != 0:
        yield
        return
    uid, gid = run_as
    os.setegid(gid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog='statelessd',
        description='Stateless HTTP to AMQP publishing gateway')
    parser.add_argument('-c', '--config', required=True,
                        help='path to the YAML configuration file')
    parser.add_argument('-f', '--foreground', action='store_true',
                        help='run in the foreground')
    parser.add_argument('--version', action='version',
                        version='statelessd ' + __version__)
    return parser.parse_args(argv)


def serve(config, foreground):
    """Bind every port (errors still reach the terminal), detach unless
    running in the foreground, then supervise the workers."""
    check_pidfile(config.pidfile)
    master = Master(config)
    master.bind_ports()
    started = None if foreground else daemonize()
    write_pidfile(config.pidfile)
    try:
        if started is not None:
            report_started(started)
        return master.run()
    finally:
        remove_pidfile(config.pidfile)


def main(argv=None):
    args = parse_args(argv)
    try:
        config = load_config(args.config)
        configure_logging(config.logging)
        prepare_spool(config.spool, config.run_as)
        return serve(config, args.foreground)
    except ConfigError as error:
        print('statelessd: configuration error: %s' % error, file=sys.stderr)
        return 2
    except AlreadyRunning as error:
        print('statelessd: %s' % error, file=sys.stderr)
        return 1


if __name__ == '__main__':
    sys.exit(main())
