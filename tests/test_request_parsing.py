"""Property tests of statelessd's pure request parsing.

For any input, parsing ends in a message or in an HTTPError with a 4xx
status, never in another exception; valid messages round-trip byte-exact
through urlencoded and multipart bodies.
"""
import base64
import decimal
import json
import urllib.parse

from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import statelessd
from support import basic_auth, encode_multipart, urlencode

SETTINGS = settings(max_examples=300, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

# Text as a client can send it: any code point but unpaired surrogates.
TEXT = st.text(st.characters(blacklist_categories=('Cs',)))
SHORT_NAME = TEXT.filter(lambda t: len(t.encode('utf-8')) <= 255)
#: Names statelessd takes: no control characters, and none of the line
#: separators and bidirectional controls it refuses so that names it logs
#: cannot forge or garble a log line (tested in test_security.py).
PLAIN_NAME = st.text(st.characters(
    blacklist_categories=('Cs', 'Cc', 'Zl', 'Zp'),
    blacklist_characters='\u061c\u200e\u200f\u202a\u202b\u202c\u202d'
                         '\u202e\u2066\u2067\u2068\u2069'),
    max_size=60).filter(lambda t: len(t.encode('utf-8')) <= 255)


def client_error(call, *args):
    """call(*args), or the HTTPError it raised, which must be a 4xx."""
    try:
        return call(*args)
    except statelessd.HTTPError as error:
        assert 400 <= error.status < 500, (error.status, error.reason)
        assert error.reason
        return error


def parse_message(content_type, body, user):
    """What Handler.publish does with a request's body: fields, properties
    and the AMQP encoding of them."""
    pairs = statelessd.form_fields(content_type, body)
    if pairs is None:
        # Header values arrive as latin-1 text, one character per byte.
        wire_type = content_type.encode('utf-8').decode('latin-1')
        message = statelessd.raw_message('x', 'rk', body, wire_type, [],
                                         user, False)
        return message.body, {name: value for name, value
                              in vars(message.properties).items()
                              if value is not None}
    fields, headers = statelessd.message_fields(pairs)
    properties = statelessd.message_properties(fields, headers, user)
    statelessd.amqp_properties(properties)
    return fields.get('body', b''), properties


# -- paths ----------------------------------------------------------------------

@SETTINGS
@given(st.text())
@example('/%ff/x/y')
@example('/v/e/' + '%41' * 300)
@example('/\u0100/e/r')
@example('/%0a/e/r')
def test_any_path_is_a_target_none_or_4xx(path):
    result = client_error(statelessd.publish_target, path)
    assert result is None or isinstance(result, (tuple,
                                                 statelessd.HTTPError))


@SETTINGS
@given(PLAIN_NAME.filter(bool), PLAIN_NAME, SHORT_NAME)
def test_publish_target_round_trips(vhost, exchange, routing_key):
    path = '/%s/%s/%s' % tuple(urllib.parse.quote(part, safe='')
                               for part in (vhost, exchange, routing_key))
    assert statelessd.publish_target(path) == (vhost, exchange, routing_key)


@SETTINGS
@given(PLAIN_NAME.filter(lambda t: t and '/' not in t and '%' not in t))
def test_raw_utf8_in_a_path_decodes_as_utf8(vhost):
    # The stdlib hands over the request line as latin-1 text.
    path = ('/%s/amq.topic/key' % vhost).encode('utf-8').decode('latin-1')
    assert statelessd.publish_target(path) == (vhost, 'amq.topic', 'key')


def test_names_longer_than_a_short_string_are_400():
    for path in ('/%s/e/r' % ('v' * 256), '/v/%s/r' % ('e' * 256),
                 '/v/e/%s' % ('%C3%A9' * 128)):
        error = client_error(statelessd.publish_target, path)
        assert isinstance(error, statelessd.HTTPError)
        assert error.status == 400 and '255' in error.reason


# -- credentials ------------------------------------------------------------------

@SETTINGS
@given(st.one_of(st.none(), st.text(),
                 st.binary().map(lambda b: 'Basic ' + b.decode('latin-1')),
                 st.binary().map(lambda b: 'Basic ' + base64.b64encode(b)
                                 .decode('ascii'))))
@example('Basic \xe9\xe9')
@example('Basic ' + base64.b64encode(b'\xff\xfe:x').decode())
@example('Basic ' + base64.b64encode(b'nocolon').decode())
@example('Basic ' + base64.b64encode(b'user:pass\x00word').decode())
@example('Basic ' + base64.b64encode(b'us\ner:password').decode())
@example('Basic !!!!')
def test_any_authorization_header_is_credentials_or_401(header):
    result = client_error(statelessd.basic_credentials, header)
    if isinstance(result, statelessd.HTTPError):
        assert result.status == 401
        assert result.headers.get('WWW-Authenticate')
    else:
        user, password = result
        assert user and ':' not in user


@SETTINGS
@given(PLAIN_NAME.filter(lambda t: t and ':' not in t),
       TEXT.filter(lambda t: '\x00' not in t))
def test_basic_credentials_round_trip(user, password):
    header = basic_auth(user, password)
    assert statelessd.basic_credentials(header) == (user, password)


# -- bodies -----------------------------------------------------------------------

CONTENT_TYPES = st.one_of(
    st.none(), st.text(max_size=80),
    st.just('application/x-www-form-urlencoded'),
    st.builds(lambda b: 'multipart/form-data; boundary=' + b,
              st.text(max_size=80)),
    st.just('multipart/form-data'), st.just('text/plain'))


def multipartish():
    """Bodies near the multipart grammar, where the parser has edges."""
    pieces = st.sampled_from([b'--b', b'--b--', b'\r\n', b'\r\n\r\n',
                              b'Content-Disposition: form-data; name="body"',
                              b'Content-Disposition: form-data; name="h\xff"',
                              b'Content-Disposition: form-data', b'x',
                              b'name*=utf-8\'\'%ff', b'"', b';'])
    return st.lists(pieces, max_size=20).map(b''.join)


@SETTINGS
@given(CONTENT_TYPES, st.one_of(st.binary(max_size=400), multipartish()),
       st.text(min_size=1, max_size=10))
@example('multipart/form-data; boundary=b',
         b'--b\r\nContent-Disposition: form-data; name="headers[\xff]"\r\n'
         b'\r\nx\r\n--b--', 'u')
@example('multipart/form-data; boundary=b',
         b'--b\r\nContent-Disposition: form-data; name="body"\r\n\r\nx', 'u')
@example('application/x-www-form-urlencoded', b'%ff=1', 'u')
@example(None, b'priority=%C2%B2', 'u')
@example(None, b'timestamp=\xb2', 'u')
@example(None, b'headers=%7B%22%5Cud800%22%3A1%7D', 'u')
@example(None, b'headers=' + b'%5B' * 5000, 'u')
@example(None, b'headers=' + b'%7B%22a%22%3A' * 400 + b'1' + b'%7D' * 400,
         'u')
@example(None, b'headers=%7B%22a%22%3A1e999999999%7D', 'u')
@example(None, b'headers=%7B%22a%22%3A1e-999999999%7D', 'u')
@example(None, b'headers=%7B%22a%22%3A%7B%22' + b'k' * 300 + b'%22%3A1%7D%7D',
         'u')
@example(None, b'headers=%7B%22a%22%3A%22' + b'v' * 70000 + b'%22%7D', 'u')
@example(None, b'user_id=someone-else', 'u')
@example(None, b'headers=%7B%22c%22%3A1.5%2C%22d%22%3A%5B2.5e3%5D%7D', 'u')
@example(None, b'headers=%7B%22a%22%3A1e300%7D', 'u')
def test_any_body_is_a_message_or_4xx(content_type, body, user):
    result = client_error(parse_message, content_type, body, user)
    if not isinstance(result, statelessd.HTTPError):
        message_body, properties = result
        assert isinstance(message_body, bytes)
        assert properties.get('user_id', user) == user


@SETTINGS
@given(st.lists(st.tuples(TEXT, st.binary()), max_size=8))
def test_urlencoded_fields_round_trip(pairs):
    body = urlencode(pairs)
    assert statelessd.form_fields(
        'application/x-www-form-urlencoded', body) == pairs


FORM_BYTES = st.binary().map(lambda raw: raw.replace(b'\x00', b'%')) | \
    st.text(alphabet='ab%+&=2F', max_size=40).map(str.encode)


@SETTINGS
@given(FORM_BYTES)
@example(b'a=1&&b&=c&d=%zz&e=%2&f=+%2B+&g=%C3%A9%FF')
def test_urlencoded_fields_split_as_parse_qsl_does(body):
    """Any body, well formed or not: the same fields as parse_qsl with
    keep_blank_values, decoded byte for byte."""
    expected = [(name.encode('latin-1'), value.encode('latin-1'))
                for name, value in urllib.parse.parse_qsl(
                    body.decode('latin-1'), keep_blank_values=True,
                    encoding='latin-1')]
    result = client_error(statelessd.urlencoded_fields, body)
    if isinstance(result, statelessd.HTTPError):
        assert result.status == 400
        assert any(not utf8(name) for name, _ in expected)
    else:
        assert [(name.encode('utf-8'), value)
                for name, value in result] == expected


def utf8(raw):
    try:
        raw.decode('utf-8')
    except UnicodeDecodeError:
        return False
    return True


MULTIPART_NAME = st.text(st.characters(blacklist_categories=('Cs', 'Cc'),
                                       blacklist_characters='"\\'),
                         min_size=1, max_size=30)


@SETTINGS
@given(st.lists(st.tuples(MULTIPART_NAME, st.binary()), max_size=8))
def test_multipart_fields_round_trip(pairs):
    content_type, body = encode_multipart(pairs)
    assert statelessd.form_fields(content_type, body) == pairs


PROPERTY_TEXT = st.text(st.characters(blacklist_categories=('Cs',)),
                        max_size=40)


@SETTINGS
@given(body=st.binary(max_size=2000),
       message_id=PROPERTY_TEXT, app_id=PROPERTY_TEXT,
       priority=st.integers(0, 255), delivery_mode=st.integers(1, 2),
       headers=st.dictionaries(
           st.text(st.characters(blacklist_categories=('Cs',)), max_size=20),
           st.one_of(st.integers(-2 ** 31, 2 ** 31 - 1), PROPERTY_TEXT,
                     st.booleans(), st.none(),
                     st.decimals(places=2, min_value=-10 ** 6,
                                 max_value=10 ** 6)), max_size=5),
       encoding=st.sampled_from(['urlencoded', 'multipart']))
def test_valid_message_round_trips(body, message_id, app_id, priority,
                                   delivery_mode, headers, encoding):
    fields = [('body', body), ('message_id', message_id),
              ('app_id', app_id), ('priority', str(priority)),
              ('delivery_mode', str(delivery_mode)),
              ('headers', json_object(headers))]
    if encoding == 'urlencoded':
        content_type = 'application/x-www-form-urlencoded'
        raw = urlencode(fields)
    else:
        marker_free = all(b'--hard-' not in value if isinstance(value, bytes)
                          else '--hard-' not in value for _, value in fields)
        assume(marker_free)
        content_type, raw = encode_multipart(fields)
    parsed_body, properties = parse_message(content_type, raw, 'user')
    assert parsed_body == body
    assert properties['message_id'] == message_id
    assert properties['app_id'] == app_id
    assert properties['priority'] == priority
    assert properties['delivery_mode'] == delivery_mode
    assert properties.get('headers', {}) == headers


def json_object(mapping):
    """JSON for a flat mapping, decimals written as JSON numbers."""
    return '{%s}' % ', '.join(
        '%s: %s' % (json.dumps(name), value if isinstance(
            value, decimal.Decimal) else json.dumps(value))
        for name, value in mapping.items())


def test_user_id_of_someone_else_is_refused():
    error = client_error(parse_message, None, b'user_id=admin', 'guest')
    assert isinstance(error, statelessd.HTTPError) and error.status == 400


# -- JSON and batches ------------------------------------------------------------

def parse_api(body, user='u'):
    """What Handler.publish_api does with a body before publishing."""
    document = statelessd.json_document(body)
    if isinstance(document, dict):
        return [statelessd.api_message('x', document, user)]
    return statelessd.batch_messages(
        document, lambda item: statelessd.api_message('x', item, user))


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | TEXT,
    lambda children: st.lists(children, max_size=4) |
    st.dictionaries(TEXT, children, max_size=4), max_leaves=12)
API_OBJECT = st.fixed_dictionaries({}, optional={
    'routing_key': JSON | TEXT, 'payload': JSON | TEXT,
    'payload_encoding': st.sampled_from(['string', 'base64', 'hex']) | JSON,
    'properties': JSON | st.dictionaries(
        st.sampled_from(['app_id', 'priority', 'delivery_mode', 'timestamp',
                         'expiration', 'headers', 'user_id', 'colour']),
        JSON, max_size=4)})


@SETTINGS
@given(st.binary())
@example(b'[' * 50000)
@example(b'{"a": ' * 50000)
@example(b'[{"routing_key": "r", "payload": "\\udc00"}]')
def test_any_json_body_is_messages_or_4xx(body):
    client_error(parse_api, body)


@SETTINGS
@given(API_OBJECT | st.lists(API_OBJECT, max_size=4) | JSON)
def test_any_json_document_is_messages_or_4xx(document):
    result = client_error(parse_api, json.dumps(document).encode())
    if not isinstance(result, statelessd.HTTPError):
        assert all(isinstance(message.body, bytes) for message in result)


BATCH_NAME = st.text(alphabet='messag[]01x_bodyhr-', max_size=30)


@SETTINGS
@given(st.lists(st.tuples(BATCH_NAME, st.binary(max_size=20)), max_size=8))
@example([('messages[0][body]', b'a'), ('messages[2][body]', b'c')])
@example([('messages[99999999999][body]', b'a')])
def test_any_form_batch_is_messages_or_4xx(pairs):
    def parse(pairs):
        return statelessd.batch_messages(
            statelessd.form_batch(pairs, 1000),
            lambda fields: statelessd.batch_form_message(
                'x', 'rk', fields, 'u', False))
    client_error(parse, pairs)
