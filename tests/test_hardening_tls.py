"""TLS to the broker (Application.rabbitmq.tls) against a real TLS
listener: nginx's stream module terminating TLS in front of RabbitMQ, with
a CA and server certificate made for the test by openssl.
"""
import pytest

import hardening_support as support
import statelessd


@pytest.fixture(scope='module')
def pki(tmp_path_factory):
    directory = tmp_path_factory.mktemp('pki')
    ca = support.make_ca(directory, 'test-ca')
    other_ca = support.make_ca(directory, 'other-ca')
    certificate = support.make_server_certificate(directory, ca)
    terminator = support.TLSTerminator(directory, certificate)
    yield {'ca': ca[0], 'other_ca': other_ca[0], 'port': terminator.port}
    terminator.stop()


@pytest.fixture
def account():
    account = support.BrokerAccount('tls')
    yield account
    account.delete()


def tls_config(pki, **tls):
    tls.setdefault('enabled', True)
    return {'Application': {'rabbitmq': {
        'host': '127.0.0.1', 'port': pki['port'], 'tls': tls}}}


def test_publishes_over_tls_and_the_message_arrives(pki, account):
    queue = account.queue_bound_to('amq.topic', 'tls.#')
    with support.Statelessd(tls_config(pki, ca_file=str(pki['ca']))) \
            as server:
        response = support.publish(server.port, account, 'amq.topic',
                                   'tls.one', [('body', b'over \x00 tls')],
                                   query='?confirm=1')
        assert response.status == 204, response
    assert [body for _, body in account.drain(queue, 1)] == [b'over \x00 tls']


def test_server_hostname_is_what_gets_verified(pki, account):
    config = tls_config(pki, ca_file=str(pki['ca']),
                        server_hostname='localhost')
    with support.Statelessd(config) as server:
        assert support.publish(server.port, account, 'amq.topic', 'k',
                               [('body', 'x')]).status == 204
    config = tls_config(pki, ca_file=str(pki['ca']),
                        server_hostname='broker.example')
    with support.Statelessd(config) as server:
        response = support.publish(server.port, account, 'amq.topic', 'k',
                                   [('body', 'x')])
        support.assert_json_error(response, 503)


def test_wrong_ca_is_503_with_a_clear_log_line(pki, account):
    with support.Statelessd(tls_config(pki, ca_file=str(pki['other_ca']))) \
            as server:
        response = support.publish(server.port, account, 'amq.topic', 'k',
                                   [('body', 'x')])
        support.assert_json_error(response, 503)
        assert response.headers['Retry-After']
        log = server.log_text()
    lines = [line for line in log.splitlines()
             if 'certificate verify failed' in line]
    assert lines, log
    assert str(pki['port']) in lines[0]


def test_verify_false_only_encrypts(pki, account):
    config = tls_config(pki, ca_file=str(pki['other_ca']), verify=False)
    with support.Statelessd(config) as server:
        assert support.publish(server.port, account, 'amq.topic', 'k',
                               [('body', 'x')]).status == 204


def test_plain_amqp_to_a_tls_port_fails_cleanly(pki, account):
    config = {'Application': {'rabbitmq': {'host': '127.0.0.1',
                                           'port': pki['port']}}}
    with support.Statelessd(config) as server:
        response = support.publish(server.port, account, 'amq.topic', 'k',
                                   [('body', 'x')])
        support.assert_json_error(response, 503)


def test_tls_defaults_to_port_5671_and_verification(pki):
    config = statelessd.Config({'Application': {'rabbitmq': {
        'host': 'broker.example', 'tls': {'enabled': True,
                                          'ca_file': str(pki['ca'])}}}})
    assert config.broker_hosts == [('broker.example', 5671)]
    assert config.tls.context.verify_mode.name == 'CERT_REQUIRED'
    assert config.tls.context.check_hostname
    assert statelessd.Config({}).tls is None


@pytest.mark.parametrize('tls, message', [
    ({'enabeld': True}, 'enabeld'),
    ({'enabled': 'yes'}, 'enabled'),
    ({'enabled': True, 'ca_file': '/nonexistent/ca.pem'}, 'ca_file'),
    ({'enabled': True, 'key_file': '/x.key'}, 'key_file'),
    ({'enabled': True, 'cert_file': '/nonexistent/c.pem'}, 'cert_file'),
])
def test_bad_tls_settings_are_configuration_errors(tls, message):
    with pytest.raises(statelessd.ConfigError, match=message):
        statelessd.Config({'Application': {'rabbitmq': {'tls': tls}}})
