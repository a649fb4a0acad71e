"""The dashboard at /: built in or from Application.paths.templates, and
rendered by a real headless Chromium."""
import html.parser
import os
import re
import signal
import subprocess

from ops_support import get, publish, require_tool, running, settle, sink


def chromium(url, profile, *output):
    """Run headless Chromium on url; output is --dump-dom or --screenshot."""
    binary = require_tool('chromium')
    command = [binary, '--headless', '--no-sandbox', '--disable-gpu',
               '--disable-quic', '--no-first-run',
               '--disable-background-networking',
               '--disable-component-update', '--disable-sync',
               '--user-data-dir=%s' % profile, '--window-size=1280,900',
               '--virtual-time-budget=8000'] + list(output) + [url]
    result = subprocess.run(command, capture_output=True, timeout=180,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr.decode(errors='replace')
    return result.stdout.decode('utf-8')


class Dashboard(html.parser.HTMLParser):
    """Port cards and their vhost:user rows from a rendered dashboard."""

    def __init__(self, text):
        super().__init__()
        self.ports = {}
        self.figures = {}
        self._port = self._row = self._field = None
        self._figure = self._value = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == 'article' and 'data-port' in attrs:
            self._port = self.ports[int(attrs['data-port'])] = {
                'up': attrs['data-up'] == 'true', 'rows': {}, 'text': ''}
        elif tag == 'tr' and 'data-key' in attrs and self._port is not None:
            self._row = self._port['rows'][attrs['data-key']] = {}
        elif tag == 'td' and 'data-field' in attrs and self._row is not None:
            self._field = attrs['data-field']
            self._row[self._field] = ''
        elif tag == 'div' and attrs.get('class') == 'figure':
            self._figure = attrs['id']
        elif tag == 'div' and attrs.get('class') == 'value' and self._figure:
            self._value = self._figure
            self.figures[self._value] = ''

    def handle_endtag(self, tag):
        if tag == 'td':
            self._field = None
        elif tag == 'tr':
            self._row = None
        elif tag == 'article':
            self._port = None
        elif tag == 'div' and self._value is not None:
            self._figure = self._value = None

    def handle_data(self, data):
        if self._field is not None:
            self._row[self._field] += data
        if self._port is not None:
            self._port['text'] += data
        if self._value is not None:
            self.figures[self._value] += data


def count(text):
    return int(text.replace(',', ''))


def test_chromium_renders_every_port(tmp_path):
    with running(tmp_path, ports=3) as gateway, sink() as box:
        first, second, hung = gateway.ports
        for port, number in ((first, 3), (second, 5)):
            for index in range(number):
                assert publish(port, box.path(),
                               'd%d' % index).status == 204
        box.take(8)
        assert settle(lambda: all(
            get(p, '/stats').json()['connections']['/:guest']['confirmed']
            for p in (first, second)))
        pid = gateway.worker_pids()[hung]
        os.kill(pid, signal.SIGSTOP)
        try:
            dom = chromium('http://127.0.0.1:%d/' % first,
                           tmp_path / 'profile', '--dump-dom')
            screenshot = tmp_path / 'dashboard.png'
            chromium('http://127.0.0.1:%d/' % second, tmp_path / 'profile',
                     '--screenshot=%s' % screenshot)
        finally:
            os.kill(pid, signal.SIGCONT)
    page = Dashboard(dom)
    assert sorted(page.ports) == sorted(gateway.ports), dom[-3000:]
    for port, number in ((first, 3), (second, 5)):
        card = page.ports[port]
        assert card['up'], card
        row = card['rows']['/:guest']
        assert row['connected'] == 'yes', row
        assert row['node'] == '127.0.0.1:5672', row
        assert row['blocked'] == 'no', row
        assert count(row['publishes']) == number, row
        assert count(row['confirmed']) == number, row
        assert '204 \u00d7 %d' % number in card['text'], card['text']
    assert not page.ports[hung]['up']
    assert 'down' in page.ports[hung]['text']
    assert page.figures['total-ports'] == '2 / 3'
    assert count(page.figures['total-publishes']) == 8
    assert count(page.figures['total-messages']) == 8
    assert page.figures['total-connections'] == '2 / 2'
    assert screenshot.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert screenshot.stat().st_size > 20000


def test_builtin_page_is_self_contained_and_served_by_every_port(tmp_path):
    with running(tmp_path, ports=2) as gateway:
        pages = [get(port, '/') for port in gateway.ports]
    assert pages[0].body == pages[1].body
    for page in pages:
        assert page.status == 200
        assert page.headers['Content-Type'] == 'text/html; charset=utf-8'
    text = pages[0].body.decode('utf-8')
    assert '/stats/all' in text
    assert not re.search(r'<script[^>]+src=|<link[^>]+stylesheet|@import|'
                         r'url\(', text)
    urls = set(re.findall(r'https?://[^"\s]*', text))
    assert urls <= {'http://www.w3.org/2000/svg'}, urls


def test_a_dashboard_template_replaces_the_page(tmp_path):
    base = tmp_path / 'site'
    (base / 'templates').mkdir(parents=True)
    (base / 'static' / 'css').mkdir(parents=True)
    (base / 'templates' / 'dashboard.html').write_text(
        '<!DOCTYPE html><link rel="stylesheet" href="/static/css/ops.css">'
        '<p>our own dashboard</p>')
    (base / 'static' / 'css' / 'ops.css').write_text('p { color: red }\n')
    (tmp_path / 'secret.txt').write_text('not for the web')
    paths = {'Application': {'paths': {'base': str(base),
                                       'templates': 'templates',
                                       'static': 'static'}}}
    with running(tmp_path, overrides=paths) as gateway:
        port = gateway.ports[0]
        page = get(port, '/')
        assert page.status == 200
        assert b'<p>our own dashboard</p>' in page.body
        css = get(port, '/static/css/ops.css')
        assert css.status == 200
        assert css.headers['Content-Type'] == 'text/css'
        assert css.body == b'p { color: red }\n'
        for path in ('/static/../../secret.txt', '/static/%2e%2e/%2e%2e/'
                     'secret.txt', '/static/css', '/static/missing.css'):
            response = get(port, path)
            assert response.status == 404, (path, response)
        assert get(port, '/stats/all').status == 200
    assert 'templates' not in gateway.log()


def test_a_missing_template_is_one_warning(tmp_path):
    (tmp_path / 'templates').mkdir()
    paths = {'Application': {'paths': {'templates':
                                       str(tmp_path / 'templates')}}}
    with running(tmp_path, ports=3, overrides=paths) as gateway:
        page = get(gateway.ports[2], '/')
        assert page.status == 200 and b'/stats/all' in page.body
    warnings = [line for line in gateway.log().splitlines()
                if 'Application.paths.templates' in line]
    assert len(warnings) == 1, warnings
    assert 'WARNING' in warnings[0] and 'dashboard.html' in warnings[0]
