"""Hypothesis-driven requests against a real statelessd and RabbitMQ:
whatever arrives is answered with a status and, for errors, a JSON reason;
valid messages arrive byte-exact.
"""
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hardening_support as support

SETTINGS = settings(max_examples=150, deadline=None,
                    suppress_health_check=list(HealthCheck))
#: What statelessd may answer to anything at all: never 500, 502 or 504.
ACCEPTABLE = set(range(200, 500)) | {501, 503, 505}


@pytest.fixture(scope='module')
def account():
    account = support.BrokerAccount('hypo')
    yield account
    account.delete()


@pytest.fixture(scope='module')
def server(account):
    with support.Statelessd({'HTTPServer': {'request_timeout': 2,
                                            'max_body_size': 4096}}) \
            as instance:
        instance.workers_at_start = instance.worker_pids()
        yield instance
        assert instance.worker_pids() == instance.workers_at_start
    support.assert_clean_log(instance.log_text())


def token(alphabet=st.characters(min_codepoint=0, max_codepoint=255)):
    return st.text(alphabet, max_size=30).map(
        lambda t: t.encode('latin-1'))


def path_strategy(account):
    segment = st.one_of(st.just(account.vhost.encode()),
                        st.just(b'amq.topic'), token(),
                        st.binary(max_size=20), st.just(b'%ff'),
                        st.just(b'a' * 300))
    return st.one_of(
        st.lists(segment, min_size=1, max_size=5).map(
            lambda parts: b'/' + b'/'.join(parts)),
        st.sampled_from([b'/', b'/stats', b'*', b'', b'http://x/y/z/w']),
        st.binary(max_size=60))


HEADER_NAMES = st.one_of(st.sampled_from([
    b'Authorization', b'Content-Type', b'Content-Length',
    b'Transfer-Encoding', b'Expect', b'Connection', b'X-Real-IP']),
    token())


def header_value(account):
    return st.one_of(
        st.just(support.basic_auth(account.user, account.password).encode()),
        st.sampled_from([b'Basic', b'Basic !!', b'Basic \xe9', b'chunked',
                         b'100-continue', b'-1', b'99999999999', b'\xb2',
                         b'multipart/form-data; boundary=b',
                         b'application/x-www-form-urlencoded', b'close']),
        token(), st.binary(max_size=40))


@st.composite
def raw_requests(draw, account):
    method = draw(st.one_of(st.sampled_from([b'GET', b'POST', b'HEAD',
                                             b'PUT', b'OPTIONS']), token()))
    path = draw(path_strategy(account))
    version = draw(st.sampled_from([b'HTTP/1.1', b'HTTP/1.0', b'HTTP/2.0',
                                    b'', b'HTTP/x', b'HTTP/1.1 extra']))
    headers = draw(st.lists(st.tuples(HEADER_NAMES, header_value(account)),
                            max_size=8))
    body = draw(st.one_of(st.binary(max_size=300),
                          st.just(b'body=hello&priority=\xb2'),
                          st.just(b'--b\r\nContent-Disposition: form-data; '
                                  b'name="body"\r\n\r\nx\r\n--b--\r\n')))
    if draw(st.booleans()):
        headers.append((b'Content-Length', b'%d' % len(body)))
    line = b' '.join(part for part in (method, path, version) if part)
    return (line + b'\r\n' + b''.join(name + b': ' + value + b'\r\n'
                                      for name, value in headers)
            + b'\r\n' + body)


def test_any_request_gets_a_status_and_json_errors(server, account):
    @SETTINGS
    @given(raw_requests(account))
    def check(data):
        raw = support.raw_exchange(server.port, data, timeout=10)
        assert raw.startswith(b'HTTP/1.1 '), (data, raw[:200])
        status, headers, body = support.parse_responses(
            raw.split(b'HTTP/1.1 100 Continue\r\n\r\n')[-1])[0]
        assert status in ACCEPTABLE, (data, status, body)
        if status >= 400 and data.split(b' ')[0] != b'HEAD':
            document = json.loads(body)
            assert document['reason'], document
    check()


PROPERTY_TEXT = st.text(st.characters(blacklist_categories=('Cs', 'Cc')),
                        max_size=30)


def test_valid_messages_arrive_byte_exact(server, account):
    queue = account.queue_bound_to('amq.topic', 'hypo.#')

    @settings(max_examples=40, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(body=st.binary(max_size=3000), message_id=PROPERTY_TEXT,
           headers=st.dictionaries(PROPERTY_TEXT, PROPERTY_TEXT, max_size=3),
           multipart=st.booleans())
    def check(body, message_id, headers, multipart):
        fields = [('body', body), ('message_id', message_id),
                  ('headers', json.dumps(headers))]
        if multipart:
            content_type, raw = support.multipart(fields)
        else:
            content_type, raw = ('application/x-www-form-urlencoded',
                                 support.urlencode(fields))
        if len(raw) > 4096:
            return
        response = support.request(
            server.port, 'POST', '/%s/amq.topic/hypo.key?confirm=1'
            % support.quote(account.vhost), raw,
            {'Authorization': account.auth, 'Content-Type': content_type})
        assert response.status == 204, response
        [(properties, received)] = account.drain(queue, 1)
        assert received == body
        assert properties.message_id == message_id
        assert {k: (v.decode() if isinstance(v, bytes) else v)
                for k, v in (properties.headers or {}).items()} == headers
    check()
