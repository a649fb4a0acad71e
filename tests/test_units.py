"""Unit tests of the pure parts: configuration, path, credentials, fields."""
import base64
import decimal
import os
import socket
import time

import pytest
import yaml

import statelessd
import statelessd_amqp

ORIGINAL_EXAMPLE = """%YAML 1.2
---
Daemon:
  pidfile: /var/run/statelessd/statelessd.pid
  user: nginx

Application:
  debug: False
  xsrf_cookies: false
  paths:
    base: /Users/gmr/Dropbox/Source/statelessd
    static: static
    templates: templates
  rabbitmq:
    host: localhost
    port: 5672

HTTPServer:
  no_keep_alive: false
  ports: [8000, 8001, 8002, 8003, 8004]
  xheaders: false

Routes:
 - ['/([^/]+)/([^/]+)/([^/]+)', statelessd.Publisher]
 - [/stats, statelessd.Stats]
 - [/, statelessd.Dashboard]

Logging:
  version: 1
  formatters:
    verbose:
      format: '%(levelname) -10s %(asctime)s %(message)s'
      datefmt: '%Y-%m-%d %H:%M:%S'
  filters: []
  handlers:
    console:
      class: logging.StreamHandler
      formatter: verbose
      debug_only: false
    debugfile:
      class: logging.StreamHandler
      formatter: verbose
      debug_only: true
  loggers:
    statelessd:
      level: INFO
      propagate: true
      handlers: [console, debugfile]
  disable_existing_loggers: true
  incremental: false
"""


def config(text):
    return statelessd.Config(yaml.safe_load(text))


def test_original_layout_loads_unchanged():
    """Its Daemon.user (nginx) must exist; this machine may only have nobody."""
    loaded = config(ORIGINAL_EXAMPLE.replace('user: nginx', 'user: nobody'))
    assert loaded.ports == [8000, 8001, 8002, 8003, 8004]
    assert loaded.broker_hosts == [('localhost', 5672)]
    assert loaded.keep_alive is True
    assert loaded.pidfile == '/var/run/statelessd/statelessd.pid'
    assert 'debugfile' not in loaded.logging['handlers']
    assert loaded.logging['loggers']['statelessd']['handlers'] == ['console']


def test_debug_keeps_debug_only_handlers():
    text = ORIGINAL_EXAMPLE.replace('debug: False', 'debug: True').replace(
        'user: nginx', 'user: nobody')
    assert 'debugfile' in config(text).logging['handlers']


def test_empty_configuration_gets_defaults():
    loaded = statelessd.Config(None)
    assert loaded.ports == [8000]
    assert loaded.broker_hosts == [('localhost', 5672)]
    assert loaded.max_queue_size == 10000
    assert loaded.confirm is False
    assert loaded.spool is None


@pytest.mark.parametrize('text, message', [
    ('HTTPServer: {ports: [abc]}',
     "HTTPServer.ports[0]: 'abc' is not a port number"),
    ('HTTPServer: {ports: [8000, 70000]}',
     'HTTPServer.ports[1]: 70000 is not a port number'),
    ('HTTPServer: {ports: []}', 'HTTPServer.ports: lists no port'),
    ('HTTPServer: {no_keep_alive: sometimes}',
     "HTTPServer.no_keep_alive: 'sometimes' is not true or false"),
    ('Application: {rabbitmq: {port: http}}',
     "Application.rabbitmq.port: 'http' is not a port number"),
    ('Application: {rabbitmq: {connect_timeout: -1}}',
     'Application.rabbitmq.connect_timeout: -1 is not a positive number'),
    ('Application: {rabbitmq: {max_queue_size: 0}}',
     'Application.rabbitmq.max_queue_size: 0 is not a whole number'),
    ('Routes: [[/x, myapp.Handler]]',
     "Routes[0]: 'myapp.Handler' is not a statelessd handler"),
    ('Application: [1]', 'Application: must be a mapping'),
    ('Logging: [1]', 'Logging: must be a logging.config mapping'),
    ('Daemon: {user: no-such-user-here}',
     "Daemon.user: there is no user 'no-such-user-here'"),
])
def test_bad_configuration_names_the_key(text, message):
    with pytest.raises(statelessd.ConfigError) as caught:
        config(text)
    assert message in str(caught.value)


def test_broker_host_list():
    loaded = config('Application: {rabbitmq: {host: [a, "b:5673", '
                    '"[::1]:5674"], port: 5670}}')
    assert loaded.broker_hosts == [('a', 5670), ('b', 5673), ('::1', 5674)]


@pytest.mark.parametrize('path, target', [
    ('/%2f/test/foo', ('/', 'test', 'foo')),
    ('/%2f//my_queue', ('/', '', 'my_queue')),
    ('/%2f/test/', ('/', 'test', '')),
    ('/v/ex/a.b%2Fc', ('v', 'ex', 'a.b/c')),
    ('/caf%C3%A9/ex/k', ('caf\u00e9', 'ex', 'k')),
])
def test_publish_target(path, target):
    assert statelessd.publish_target(path) == target


@pytest.mark.parametrize('path', ['/', '/stats/x', '/a/b', '/a/b/c/d',
                                  '//ex/rk'])
def test_not_a_publish_path(path):
    assert statelessd.publish_target(path) is None


def test_bad_segments_are_400():
    with pytest.raises(statelessd.HTTPError) as caught:
        statelessd.publish_target('/v/ex/%FF')
    assert caught.value.status == 400
    assert 'routing key' in caught.value.reason
    with pytest.raises(statelessd.HTTPError) as caught:
        statelessd.publish_target('/v/ex/' + 'k' * 256)
    assert caught.value.status == 400


def basic(raw):
    return 'Basic ' + base64.b64encode(raw).decode()


def test_basic_credentials():
    assert statelessd.basic_credentials(basic(b'user:pa:ss')) == \
        ('user', 'pa:ss')
    assert statelessd.basic_credentials(basic(b'u:')) == ('u', '')


@pytest.mark.parametrize('header', [
    None, '', 'Bearer abc', 'Basic', 'Basic !!!', basic(b'nocolon'),
    basic(b':password'), basic(b'\xff:x')])
def test_broken_credentials_are_401(header):
    with pytest.raises(statelessd.HTTPError) as caught:
        statelessd.basic_credentials(header)
    assert caught.value.status == 401
    assert caught.value.headers['WWW-Authenticate'] == \
        'Basic realm="statelessd"'


def test_urlencoded_is_byte_exact():
    fields = statelessd.form_fields(
        'application/x-www-form-urlencoded',
        b'body=%00%FF%C3%A9+x&type=t&body2=\xfe')
    assert fields == [('body', b'\x00\xff\xc3\xa9 x'), ('type', b't'),
                      ('body2', b'\xfe')]


def test_multipart_is_byte_exact():
    body = (b'preamble\r\n--XyZ\r\n'
            b'Content-Disposition: form-data; name="body"\r\n'
            b'Content-Type: application/octet-stream\r\n\r\n'
            b'\r\nline\n\r\x00\xff\r\n\r\n'
            b'\r\n--XyZ\r\n'
            b'Content-Disposition: form-data; name="content-type"\r\n\r\n'
            b'text/plain\r\n--XyZ--\r\n')
    fields = statelessd.form_fields('multipart/form-data; boundary="XyZ"',
                                    body)
    assert fields == [('body', b'\r\nline\n\r\x00\xff\r\n\r\n'),
                      ('content-type', b'text/plain')]


@pytest.mark.parametrize('body', [
    b'--XyZ\r\nContent-Disposition: form-data; name="a"\r\n\r\nno end',
    b'nothing here',
    b'--XyZ\r\nContent-Type: text/plain\r\n\r\nx\r\n--XyZ--',
])
def test_malformed_multipart_is_400(body):
    with pytest.raises(statelessd.HTTPError) as caught:
        statelessd.form_fields('multipart/form-data; boundary=XyZ', body)
    assert caught.value.status == 400


@pytest.mark.parametrize('content_type', ['application/json', 'text/plain',
                                          'application/octet-stream'])
def test_other_content_types_are_no_form(content_type):
    assert statelessd.form_fields(content_type, b'body=x') is None


def properties(pairs, user='guest'):
    fields, headers = statelessd.message_fields(pairs)
    return statelessd.message_properties(fields, headers, user)


def test_every_property_maps():
    assert properties([
        ('app_id', b'app'), ('content-encoding', b'gzip'),
        ('content_type', b'text/plain'), ('correlation_id', b'c'),
        ('delivery_mode', b'2'), ('expire', b'60000'),
        ('headers', b'{"a": 1, "b": [true, "x"], "c": 1.5}'),
        ('message-id', b'm'), ('priority', b'255'), ('reply_to', b'r'),
        ('timestamp', b'1364403057'), ('type', b't'), ('user_id', b'guest'),
        ('unknown', b'ignored')]) == {
        'app_id': 'app', 'content_encoding': 'gzip',
        'content_type': 'text/plain', 'correlation_id': 'c',
        'delivery_mode': 2, 'expiration': '60000',
        'headers': {'a': 1, 'b': [True, 'x'], 'c': decimal.Decimal('1.5')},
        'message_id': 'm', 'priority': 255, 'reply_to': 'r',
        'timestamp': 1364403057, 'type': 't', 'user_id': 'guest'}


def test_php_style_headers_join_json_headers():
    assert properties([('headers', b'{"a": "1"}'), ('headers[x-b]', b'two'),
                       ('headers[a]', b'3')]) == {
        'headers': {'a': '3', 'x-b': 'two'}}


@pytest.mark.parametrize('pairs, field', [
    ([('priority', b'abc')], 'priority'),
    ([('priority', b'256')], 'priority'),
    ([('delivery_mode', b'7')], 'delivery_mode'),
    ([('timestamp', b'-5')], 'timestamp'),
    ([('expiration', b'-1')], 'expiration'),
    ([('headers', b'[1, 2]')], 'headers'),
    ([('headers', b'{not json')], 'headers'),
    ([('message_id', b'x' * 256)], 'message_id'),
    ([('type', b'\xff')], 'type'),
    ([('user_id', b'someone-else')], 'user_id'),
])
def test_bad_values_are_400_naming_the_field(pairs, field):
    with pytest.raises(statelessd.HTTPError) as caught:
        properties(pairs)
    assert caught.value.status == 400
    assert field in caught.value.reason


def test_headers_amqp_cannot_carry_are_refused():
    mapping = properties([('headers', b'{"a": 1e300}')])
    with pytest.raises(ValueError):
        statelessd_amqp.basic_properties(mapping)


def test_refused_exchange_from_reply_text():
    assert statelessd_amqp.refused_exchange(
        "NOT_FOUND - no exchange 'gone.x' in vhost '/'") == 'gone.x'
    assert statelessd_amqp.refused_exchange('PRECONDITION_FAILED') is None


def test_send_at_once_sends_what_fits_and_reports_failure_as_nothing():
    assert statelessd.LIBC_SEND is not None   # Linux has it: the fast path
    with socket.create_server(('127.0.0.1', 0)) as listener:
        left = socket.create_connection(listener.getsockname())
        right = listener.accept()[0]
    with left, right:
        assert statelessd.send_at_once(left, b'a response') == 10
        assert right.recv(100) == b'a response'
        large = os.urandom(16 * 1024 * 1024)
        sent = statelessd.send_at_once(left, large)
        assert 0 < sent < len(large)   # never waits for the reader
        right.close()
        time.sleep(0.05)
        assert statelessd.send_at_once(left, b'gone') == 0
