"""Each setting is declared once, in statelessd.SETTINGS: the README's
configuration block, the checks and their messages, and the broker side's
settings all follow that declaration."""
import re
from pathlib import Path

import pytest
import yaml

import statelessd

README = Path(__file__).resolve().parent.parent / 'README.md'


def readme_block():
    """The README's configuration block: the YAML block opening with
    Daemon."""
    found = re.search(r'^```yaml\n(Daemon:.*?)^```$', README.read_text(),
                      re.MULTILINE | re.DOTALL)
    assert found, 'README.md has no ```yaml block opening with Daemon:'
    return found.group(1)


def declared_sections():
    sections = set()
    for setting in statelessd.SETTINGS:
        names = (setting.section or '').split('.')
        sections.update('.'.join(names[:depth])
                        for depth in range(1, len(names) + 1))
    return sections - {''}


def flattened(mapping, sections, prefix=''):
    """{dotted key: value}, descending into the declared sections only."""
    result = {}
    for name, value in mapping.items():
        key = prefix + name
        if key in sections:
            result.update(flattened(value, sections, key + '.'))
        else:
            result[key] = value
    return result


def test_readme_lists_exactly_the_declared_settings_and_defaults():
    listed = flattened(yaml.safe_load(readme_block()), declared_sections())
    declared = {setting.key: setting.default
                for setting in statelessd.SETTINGS}
    assert sorted(listed) == sorted(declared)
    assert listed == declared


def test_readme_describes_every_setting():
    block = readme_block()
    for setting in statelessd.SETTINGS:
        assert setting.description, setting.key
        line = re.search(r'^ *%s:.*$' % setting.name, block, re.MULTILINE)
        assert '#' in line.group(0), '%s has no comment in the README' % (
            setting.key)


def test_readme_block_is_the_default_configuration():
    listed = statelessd.Config(yaml.safe_load(readme_block()))
    default = statelessd.Config({})
    assert vars(listed) == vars(default)


def test_declared_defaults_are_loaded():
    config = statelessd.Config({})
    for setting in statelessd.SETTINGS:
        if setting.attribute and setting.default is not None:
            assert getattr(config, setting.name) == setting.check(
                setting.default, setting.key), setting.key


def test_broker_side_gets_exactly_the_declared_broker_settings():
    config = statelessd.Config({'Application': {'rabbitmq': {
        'heartbeat': 7, 'max_publishers': 3, 'idle_timeout': 9}}})
    settings = config.broker_settings(8123)
    broker = {setting.name for setting in statelessd.SETTINGS
              if setting.broker}
    assert set(vars(settings)) == broker | {'hosts', 'tls', 'port'}
    assert (settings.heartbeat, settings.max_publishers,
            settings.idle_timeout) == (7, 3, 9.0)
    assert settings.port == 8123
    assert settings.hosts == [('localhost', 5672)]
    assert settings.tls is None


@pytest.mark.parametrize('document, message', [
    ({'Application': {'rabbitmq': {'heartbeat': -1}}},
     'Application.rabbitmq.heartbeat: -1 is not a whole number of at '
     'least 0'),
    ({'HTTPServer': {'max_batch_size': True}},
     'HTTPServer.max_batch_size: True is not a whole number of at least 1'),
    ({'HTTPServer': {'max_header_size': 'big'}},
     "HTTPServer.max_header_size: 'big' is not a whole number of at "
     "least 256"),
    ({'HTTPServer': {'max_header_count': 101}},
     'HTTPServer.max_header_count: 101 is more than the 100 header lines '
     'statelessd can parse'),
    ({'Application': {'rabbitmq': {'password_check_interval': 0}}},
     'Application.rabbitmq.password_check_interval: 0 is not a positive '
     'number of seconds'),
    ({'HTTPServer': {'socket_timeout': '75'}},
     "HTTPServer.socket_timeout: '75' is not a positive number of seconds"),
    ({'Application': {'rabbitmq': {'confirm': 'yes'}}},
     "Application.rabbitmq.confirm: 'yes' is not true or false"),
    ({'HTTPServer': {'address': ''}}, "HTTPServer.address: '' is not a string"),
    ({'Daemon': {'pidfile': 7}}, 'Daemon.pidfile: 7 is not a string'),
    ({'Application': {'paths': {'static': ['a']}}},
     "Application.paths.static: ['a'] is not a string"),
    ({'HTTPServer': {'ports': [8000, 8000]}},
     'HTTPServer.ports: lists a port twice'),
    ({'HTTPServer': {'ports': 0}}, 'HTTPServer.ports[0]: 0 is not a port '
                                   'number'),
    ({'Application': {'rabbitmq': {'port': 'amqp'}}},
     "Application.rabbitmq.port: 'amqp' is not a port number"),
    ({'Application': {'rabbitmq': {'host': ['a', 'b:99999']}}},
     'Application.rabbitmq.host[1]: 99999 is not a port number'),
    ({'Application': {'rabbitmq': {'host': ''}}},
     "Application.rabbitmq.host: '' is not a host name"),
    ({'HTTPServer': {'trusted_proxies': '127.0.0.1'}},
     'HTTPServer.trusted_proxies: must be a list of networks'),
    ({'HTTPServer': {'stats_allow': ['10.0.0.0/33']}},
     'HTTPServer.stats_allow[0]: '),
    ({'Application': {'rabbitmq': {'tls': {'enable': True}}}},
     'Application.rabbitmq.tls.enable: unknown setting (known: enabled, '
     'ca_file, cert_file, key_file, verify, server_hostname)'),
    ({'Application': {'rabbitmq': {'tls': {'enabled': True,
                                           'key_file': 'k.pem'}}}},
     'Application.rabbitmq.tls.key_file: needs cert_file'),
    ({'Application': {'rabbitmq': []}},
     'Application.rabbitmq: must be a mapping'),
    ({'Daemon': {'group': 'nogroup'}},
     'Daemon.group: needs Daemon.user as well'),
    ({'Routes': [['/', 'statelessd.Dashboard'], ['/x']]},
     "Routes[1]: ['/x'] is not [pattern, handler]"),
    ({'Logging': 'verbose'}, 'Logging: must be a logging.config mapping'),
    ('ports: [8000]', 'the configuration must be a mapping of sections'),
])
def test_a_bad_value_names_its_setting(document, message):
    with pytest.raises(statelessd.ConfigError) as caught:
        statelessd.Config(document)
    assert str(caught.value).startswith(message)


def test_tls_is_built_from_its_declared_settings():
    config = statelessd.Config({'Application': {'rabbitmq': {
        'host': ['a', 'b:5673'],
        'tls': {'enabled': True, 'verify': False,
                'server_hostname': 'broker.example'}}}})
    assert config.broker_hosts == [('a', 5671), ('b', 5673)]
    assert config.tls.server_hostname == 'broker.example'
    assert not config.tls.context.check_hostname


def test_adding_a_setting_is_one_declaration():
    """One row: loaded, defaulted, checked and named in its errors, and
    with broker=True handed to the publishers, with nothing else changed."""
    settings = statelessd.SETTINGS + (
        statelessd.Setting('Application.rabbitmq', 'channel_max', 16,
                           statelessd.whole_number_at_least(1),
                           'channels a publisher may open', broker=True),)
    assert statelessd.Config({}, settings).channel_max == 16
    loaded = statelessd.Config(
        {'Application': {'rabbitmq': {'channel_max': 4}}}, settings)
    assert loaded.channel_max == 4
    assert loaded.broker_settings(8000).channel_max == 4
    with pytest.raises(statelessd.ConfigError) as caught:
        statelessd.Config({'Application': {'rabbitmq': {'channel_max': 0}}},
                          settings)
    assert str(caught.value) == ('Application.rabbitmq.channel_max: 0 is not '
                                 'a whole number of at least 1')
