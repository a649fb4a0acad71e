"""statelessd behind a real nginx running etc/nginx.conf."""
import re

from ops_support import (NGINX_CONF, get, nginx, publish, request, running,
                         settle, sink)


def test_the_configuration_keeps_connections_to_statelessd():
    text = NGINX_CONF.read_text()
    for line in ('keepalive 32;', 'proxy_http_version 1.1;',
                 'proxy_set_header Connection "";',
                 'proxy_set_header X-Real-IP $remote_addr;',
                 'proxy_set_header X-Forwarded-For '
                 '$proxy_add_x_forwarded_for;',
                 'client_max_body_size 10m;'):
        assert line in text, line
    timeout = re.search(r'keepalive_timeout (\d+)s;', text)
    assert timeout and int(timeout.group(1)) < 75, \
        'the upstream keepalive_timeout must stay below socket_timeout 75 s'


def test_publish_through_the_pool_to_two_ports(tmp_path):
    overrides = {'HTTPServer': {'xheaders': True}}
    with running(tmp_path, ports=2, overrides=overrides) as gateway, \
            nginx(gateway.ports) as listen, sink() as box:
        bodies = [b'pool-%d' % number for number in range(20)]
        for body in bodies:
            response = publish(listen, box.path(), body.decode(),
                               source='127.0.0.7')
            assert response.status == 204, response
        assert sorted(box.take(len(bodies))) == sorted(bodies)
        for port in gateway.ports:
            document = get(port, '/stats').json()
            assert document['connections']['/:guest']['publishes'] >= 1, \
                'port %d got nothing from nginx' % port
        # X-Real-IP, set by nginx to the client's address, is logged.
        log = settle(lambda: re.findall(
            r'127\.0\.0\.7 "POST /%2F/[^"]*" 204', gateway.log()))
        assert len(log) == len(bodies), gateway.log()[-3000:]

        # Bodies up to client_max_body_size pass, larger ones stop at nginx.
        big = b'body=' + b'x' * (2 * 1024 * 1024)
        response = request(listen, 'POST', box.path(), big, {
            'Authorization': 'Basic Z3Vlc3Q6Z3Vlc3Q=',
            'Content-Type': 'application/x-www-form-urlencoded'})
        assert response.status == 204, response
        assert len(box.take(1)[0]) == 2 * 1024 * 1024
        response = request(listen, 'POST', box.path(),
                           b'body=' + b'x' * (10 * 1024 * 1024), {
                               'Authorization': 'Basic Z3Vlc3Q6Z3Vlc3Q=',
                               'Content-Type':
                                   'application/x-www-form-urlencoded'})
        assert response.status == 413, response
        assert b'nginx' in response.body


def test_forwarded_for_is_logged_with_xheaders(tmp_path):
    """X-Forwarded-For is read from the right: its last entry is what the
    trusted proxy (here, loopback) saw; entries before it are the
    client's own claims, taken only through further trusted proxies."""
    overrides = {'HTTPServer': {'xheaders': True}}
    with running(tmp_path, overrides=overrides) as gateway, sink() as box:
        port = gateway.ports[0]
        for forwarded in ('198.51.100.7, 203.0.113.9',
                          '192.0.2.44, 127.0.0.1'):
            response = publish(port, box.path(), 'xff', headers={
                'X-Forwarded-For': forwarded})
            assert response.status == 204
        assert box.take(2) == [b'xff', b'xff']
        assert settle(lambda: '203.0.113.9 "POST ' in gateway.log())
        assert settle(lambda: '192.0.2.44 "POST ' in gateway.log())
        assert '198.51.100.7' not in gateway.log()
