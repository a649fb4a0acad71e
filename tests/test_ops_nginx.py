"""statelessd behind a real nginx running etc/nginx.conf."""
import contextlib
import re
import subprocess
import tempfile
from pathlib import Path

import pytest

from ops_support import (REPO, free_port, get, publish, request, require_tool,
                         running, settle, sink)

NGINX_CONF = REPO / 'etc' / 'nginx.conf'


def render(template, directory, listen, ports):
    """etc/nginx.conf with our ports, and logs and buffers in directory."""
    servers = ''.join('        server 127.0.0.1:%d;\n' % port
                      for port in ports)
    text, count = re.subn(r'(?m)^        server 127\.0\.0\.1:\d+;\n', '',
                          template)
    assert count >= 1, 'etc/nginx.conf has no upstream server lines'
    text = text.replace('    upstream statelessd {\n',
                        '    upstream statelessd {\n' + servers, 1)
    text, count = re.subn(r'(?m)^        listen 80;$',
                          '        listen 127.0.0.1:%d;' % listen, text)
    assert count == 1, 'etc/nginx.conf has no "listen 80;"'
    paths = ''.join('    %s %s;\n' % (directive, directory / name)
                    for directive, name in (
                        ('access_log', 'access.log'),
                        ('client_body_temp_path', 'body'),
                        ('proxy_temp_path', 'proxy'),
                        ('fastcgi_temp_path', 'fastcgi'),
                        ('uwsgi_temp_path', 'uwsgi'),
                        ('scgi_temp_path', 'scgi')))
    return text.replace('http {\n', 'http {\n' + paths, 1)


@contextlib.contextmanager
def nginx(ports):
    """nginx on a free port in front of ports; yields the port.

    Its files live in a directory of their own: nginx workers run as an
    unprivileged user and cannot reach into pytest's private tmp_path.
    """
    binary = require_tool('nginx')
    with tempfile.TemporaryDirectory(prefix='statelessd-nginx-') as name:
        directory = Path(name)
        directory.chmod(0o755)
        with serving(binary, directory, ports) as listen:
            yield listen


@contextlib.contextmanager
def serving(binary, directory, ports):
    listen = free_port()
    conf = directory / 'nginx.conf'
    conf.write_text(render(NGINX_CONF.read_text(), directory, listen, ports))
    error_log = directory / 'error.log'
    process = subprocess.Popen(
        [binary, '-c', str(conf), '-p', str(directory), '-e', str(error_log),
         '-g', 'daemon off; pid %s;' % (directory / 'nginx.pid')],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT)
    try:
        def answering():
            if process.poll() is not None:
                pytest.fail('nginx exited with %s: %s\n%s' % (
                    process.returncode, process.stdout.read().decode(),
                    error_log.read_text() if error_log.exists() else ''))
            try:
                return get(listen, '/health', timeout=2).status == 200
            except OSError:
                return False
        assert settle(answering, timeout=15), 'nginx did not answer'
        yield listen
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
    overrides = {'HTTPServer': {'xheaders': True}}
    with running(tmp_path, overrides=overrides) as gateway, sink() as box:
        port = gateway.ports[0]
        response = publish(port, box.path(), 'xff', headers={
            'X-Forwarded-For': '198.51.100.7, 10.0.0.1'})
        assert response.status == 204
        assert box.take(1) == [b'xff']
        assert settle(lambda: '198.51.100.7 "POST ' in gateway.log())
