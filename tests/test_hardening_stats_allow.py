"""HTTPServer.stats_allow and trusted_proxies: who may read the figures."""
import pytest

import hardening_support as support
import statelessd

FIGURES = ('/stats', '/', '/stats/all', '/metrics')


def test_loopback_may_read_the_figures_by_default():
    with support.Statelessd() as server:
        for path in FIGURES:
            assert support.request(server.port, 'GET', path).status == 200


def test_default_allows_loopback_and_private_networks_only():
    allow = statelessd.Config({}).stats_allow
    for address in ('127.0.0.1', '::1', '10.1.2.3', '172.20.0.1',
                    '192.168.1.1', 'fd00::1'):
        assert any(statelessd.ip_address(address) in net for net in allow)
    for address in ('8.8.8.8', '2001:db8::1', '172.32.0.1'):
        assert not any(statelessd.ip_address(address) in net
                       for net in allow)


def test_ipv4_mapped_addresses_count_as_ipv4():
    assert str(statelessd.ip_address('::ffff:10.0.0.1')) == '10.0.0.1'


def test_clients_outside_stats_allow_get_403():
    with support.Statelessd({'HTTPServer': {
            'stats_allow': ['10.0.0.0/8']}}) as server:
        for path in FIGURES:
            response = support.request(server.port, 'GET', path)
            status, document = support.assert_json_error(response, 403)
            assert '127.0.0.1' in document['reason']
        assert support.request(server.port, 'GET', '/health').status == 200
        # X-Real-IP means nothing without xheaders.
        response = support.request(server.port, 'GET', '/stats',
                                   headers={'X-Real-IP': '10.0.0.1'})
        support.assert_json_error(response, 403)


@pytest.mark.parametrize('headers, status', [
    ({'X-Real-IP': '10.1.2.3'}, 200),
    ({'X-Real-IP': '8.8.8.8'}, 403),
    ({'X-Real-IP': 'not-an-address'}, 403),
    ({'X-Forwarded-For': '10.1.2.3'}, 403),
    ({}, 403),
])
def test_x_real_ip_counts_from_a_trusted_proxy(headers, status):
    with support.Statelessd({'HTTPServer': {
            'xheaders': True, 'stats_allow': ['10.0.0.0/8']}}) as server:
        response = support.request(server.port, 'GET', '/stats',
                                   headers=headers)
        assert response.status == status, response


def test_x_real_ip_from_an_untrusted_peer_is_ignored():
    with support.Statelessd({'HTTPServer': {
            'xheaders': True, 'stats_allow': ['10.0.0.0/8'],
            'trusted_proxies': ['192.0.2.1']}}) as server:
        response = support.request(server.port, 'GET', '/stats',
                                   headers={'X-Real-IP': '10.1.2.3'})
        support.assert_json_error(response, 403)


def test_publishing_is_not_subject_to_stats_allow():
    account = support.BrokerAccount('allow')
    try:
        with support.Statelessd({'HTTPServer': {
                'stats_allow': ['10.0.0.0/8']}}) as server:
            assert support.publish(server.port, account, 'amq.topic', 'k',
                                   [('body', 'x')]).status == 204
    finally:
        account.delete()
