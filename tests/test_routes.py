"""The route table: which row answers a method and path, the 405s and
their Allow header, the access rule of each route, a new endpoint added
as one row, and the guard on the send that bypasses socket.send."""
import base64
import contextlib
import http.client
import json
import socket
import ssl
import threading

import pytest

import statelessd

STATIC = statelessd.Config({'Application': {'paths': {'static': '.'}}})
NO_STATIC = statelessd.Config({})


def found(method, path, config=NO_STATIC):
    """The answer and arguments of the row that serves method at path."""
    match = statelessd.find_route(statelessd.Handler.ROUTES, method, path,
                                  config)
    return None if match is None else (match[0].answer, match[1])


def refusal(method, path, config=NO_STATIC):
    with pytest.raises(statelessd.HTTPError) as caught:
        found(method, path, config)
    return caught.value


@pytest.mark.parametrize('method, path, answer, arguments', [
    ('GET', '/', 'send_dashboard', ()),
    ('HEAD', '/stats', 'send_stats', ()),
    ('GET', '/stats/all', 'send_all_stats', ()),
    ('GET', '/metrics', 'send_metrics', ()),
    ('GET', '/health', 'send_health', ()),
    ('POST', '/%2f/amq.topic/a.b', 'publish', ('/', 'amq.topic', 'a.b')),
    ('POST', '/v//key', 'publish', ('v', '', 'key')),
    ('POST', '/api/exchanges/%2f/amq.default/publish', 'publish_api',
     ('/', '')),
    ('POST', '/static/a/b', 'publish', ('static', 'a', 'b')),
])
def test_each_path_shape_has_its_row(method, path, answer, arguments):
    assert found(method, path) == (answer, arguments)


@pytest.mark.parametrize('path', ['/stats/x', '/a/b', '/a/b/c/d',
                                  '/api/exchanges//x/publish', '/static/x'])
def test_a_path_no_row_has_is_not_found(path):
    assert found('POST', path) is None
    assert found('GET', path) is None


def test_static_files_are_routed_only_when_configured():
    assert found('GET', '/static/css/site.css', STATIC) == \
        ('send_static', ('css/site.css',))
    assert found('HEAD', '/static/x', STATIC) == ('send_static', ('x',))
    # Without the setting, a three-segment /static/ path is a publish path.
    assert refusal('GET', '/static/a/b').headers == {'Allow': 'POST'}


def test_static_leaves_other_methods_to_the_rows_after_it():
    assert found('PUT', '/static/x', STATIC) is None
    assert found('POST', '/static/a/b', STATIC) == \
        ('publish', ('static', 'a', 'b'))
    assert refusal('PUT', '/static/a/b', STATIC).headers == {'Allow': 'POST'}


@pytest.mark.parametrize('method', ['POST', 'PUT', 'DELETE', 'OPTIONS'])
@pytest.mark.parametrize('path', ['/', '/stats', '/stats/all', '/metrics',
                                  '/health'])
def test_pages_refuse_other_methods_with_405(method, path):
    error = refusal(method, path)
    assert (error.status, error.reason) == (405, '%s accepts GET' % path)
    assert error.headers == {'Allow': 'GET, HEAD'}


@pytest.mark.parametrize('method', ['GET', 'HEAD', 'PUT', 'PATCH'])
@pytest.mark.parametrize('path', ['/v/x/k', '/api/exchanges/v/x/publish'])
def test_publish_paths_refuse_other_methods_with_405(method, path):
    error = refusal(method, path)
    assert (error.status, error.reason) == \
        (405, 'a publish path accepts POST only')
    assert error.headers == {'Allow': 'POST'}


def test_a_publish_path_is_checked_before_its_method():
    for method in ('GET', 'POST'):
        assert refusal(method, '/v/x/%FF').status == 400
        assert refusal(method, '/api/exchanges/%FF/x/publish').status == 400


@pytest.mark.parametrize('path, access', [
    ('/', statelessd.allow_stats_clients),
    ('/stats', statelessd.allow_stats_clients),
    ('/stats/all', statelessd.allow_stats_clients),
    ('/metrics', statelessd.allow_stats_clients),
    ('/health', statelessd.allow_anyone),
    ('/static/<name*>', statelessd.allow_anyone),
    ('/api/exchanges/<vhost>/<exchange>/publish',
     statelessd.require_basic_auth),
    ('/<vhost>/<exchange>/<routing_key>', statelessd.require_basic_auth),
])
def test_each_route_names_who_may_call_it(path, access):
    [route] = [r for r in statelessd.Handler.ROUTES if r.shape == path]
    assert route.access is access


@pytest.mark.parametrize('path', ['/v/x/k', '/v//', '/caf%C3%A9/x/k',
                                  '/api/exchanges/v/x/publish',
                                  '/api/exchanges/v//publish'])
def test_a_target_matches_only_paths_of_its_shape(path):
    for route in statelessd.Handler.ROUTES:
        if route.target(path) is not None:
            assert statelessd.shape_matcher(route.shape)(path) is not None


def test_shape_names_match_one_segment_and_a_starred_name_the_rest():
    match = statelessd.shape_matcher('/api/<kind>/<rest*>')
    assert match('/api/a/b/c') == ('a', 'b/c')
    assert match('/api//') == ('', '')
    assert match('/api/a') is None
    assert statelessd.shape_matcher('/x.y')('/xay') is None


class EchoHandler(statelessd.Handler):
    """statelessd with one more endpoint: a POST under /api/."""

    ROUTES = (statelessd.Route('POST', '/api/echo/<word>', 'send_echo',
                               access=statelessd.require_basic_auth),) + \
        statelessd.Handler.ROUTES

    def send_echo(self, word):
        self.send_json(200, {'word': word, 'user': self.credentials[0],
                             'body': self.read_body().decode()})


@contextlib.contextmanager
def serving(handler_class, config=NO_STATIC):
    """A worker's server on a free loopback port, in this process."""
    server = statelessd.Server('127.0.0.1', 0)
    server.RequestHandlerClass = handler_class
    port = server.server_address[1]
    server.worker = statelessd.Worker(config, port, b'dashboard')
    server.worker.watchdog.start()
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        server.shutdown()
        server.server_close()
        server.worker.stop(1.0)


def call(port, method, path, body=None, headers=None):
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
    try:
        connection.request(method, path, body, headers or {})
        response = connection.getresponse()
        return response, response.read()
    finally:
        connection.close()


AUTH = {'Authorization': 'Basic ' + base64.b64encode(b'me:pw').decode()}


def test_a_new_post_endpoint_is_one_row():
    with serving(EchoHandler) as port:
        response, body = call(port, 'POST', '/api/echo/hi', b'there', AUTH)
        assert response.status == 200
        assert json.loads(body) == {'word': 'hi', 'user': 'me',
                                    'body': 'there'}
        response, _ = call(port, 'GET', '/api/echo/hi')
        assert response.status == 405
        assert response.getheader('Allow') == 'POST'
        response, _ = call(port, 'POST', '/api/echo/hi', b'')
        assert response.status == 401
        response, body = call(port, 'GET', '/health')
        assert response.status in (200, 503)


def test_stats_pages_check_the_client_and_health_does_not():
    with serving(statelessd.Handler) as port:
        response, body = call(port, 'GET', '/')
        assert (response.status, body) == (200, b'dashboard')
    elsewhere = statelessd.Config({'HTTPServer': {
        'stats_allow': ['192.0.2.0/24']}})
    with serving(statelessd.Handler, elsewhere) as port:
        assert call(port, 'GET', '/')[0].status == 403
        assert call(port, 'GET', '/stats')[0].status == 403
        assert call(port, 'GET', '/health')[0].status in (200, 503)


@pytest.fixture
def raw_send_forbidden(monkeypatch):
    def forbidden(*args):
        raise AssertionError('the raw send was used')
    monkeypatch.setattr(statelessd, 'LIBC_SEND', forbidden)


def test_the_raw_send_refuses_a_tls_socket(raw_send_forbidden):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with socket.socket() as plain:
        with context.wrap_socket(plain, server_hostname='x',
                                 do_handshake_on_connect=False) as tls:
            assert statelessd.send_at_once(tls, b'data') == 0


def test_the_raw_send_refuses_a_unix_socket(raw_send_forbidden):
    left, right = socket.socketpair()
    with left, right:
        assert statelessd.send_at_once(left, b'data') == 0


def test_the_raw_send_takes_a_tcp_socket():
    with socket.create_server(('127.0.0.1', 0)) as listener:
        with socket.create_connection(listener.getsockname()) as left:
            assert statelessd.is_plain_tcp(left)


def test_responses_arrive_whole_through_the_fallback(monkeypatch):
    monkeypatch.setattr(statelessd, 'LIBC_SEND', None)
    with serving(statelessd.Handler) as port:
        response, body = call(port, 'GET', '/stats')
        assert response.status == 200
        assert json.loads(body)['port'] == port
