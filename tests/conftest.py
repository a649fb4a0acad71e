"""Fixtures for the statelessd integration tests; the helpers behind them
live in tests/support.py.

Every test talks to a real RabbitMQ broker and a real statelessd process.
Nothing is skipped: when the broker, rabbitmqctl, php or statelessd.py is
missing, the tests fail with a message that says what is missing.
"""
import secrets
from types import SimpleNamespace

import pytest

from support import (GUEST, Amqp, Broker, BrokerAccount, Http, Statelessd,
                     Target, check_error, check_message, require_broker,
                     require_tool, unique)


@pytest.fixture(scope='session', name='http')
def http_fixture():
    return Http()


@pytest.fixture(scope='session')
def broker_reachable():
    """Fails (never skips) when no broker answers on 127.0.0.1:5672."""
    require_broker()
    return True


@pytest.fixture(scope='session')
def broker(broker_reachable):
    """Vhosts and users made for the session, removed at its end."""
    require_tool('rabbitmqctl', 'the statelessd tests use it to create '
                                'vhosts and users (run them as root)')
    admin = Broker()
    yield admin
    admin.cleanup()


@pytest.fixture(scope='session')
def named_vhost(broker):
    """A vhost of its own (with a slash in its name) and a user for it."""
    return broker.account('statelessd-test/', 'statelessd-user-')


@pytest.fixture(scope='session')
def noperm_user(broker):
    """A user that can log in but has no permission on any vhost."""
    password = 'np-' + secrets.token_hex(12)
    user = broker.add_user(unique('statelessd-noperm-'), password)
    return SimpleNamespace(user=user, password=password)


@pytest.fixture
def account(broker_reachable):
    """A vhost and a user of the test's own, removed afterwards: the test
    may change the password or delete them."""
    with BrokerAccount() as own:
        yield own


@pytest.fixture(scope='module')
def shared_account(broker_reachable):
    """A vhost and a user that the tests of one module share."""
    with BrokerAccount('shared') as own:
        yield own


@pytest.fixture(scope='module')
def amqp_root(broker_reachable):
    amqp = Amqp('/', *GUEST)
    yield amqp
    amqp.close()


@pytest.fixture(scope='module')
def amqp_named(named_vhost):
    amqp = Amqp(named_vhost.vhost, named_vhost.user, named_vhost.password)
    yield amqp
    amqp.close()


@pytest.fixture
def target(amqp_root):
    """Exchange + exclusive queue (binding key "rk") on vhost "/"."""
    tgt = Target(amqp_root)
    yield tgt
    tgt.cleanup()


@pytest.fixture
def named_target(amqp_named):
    """Exchange + exclusive queue (binding key "rk") on the named vhost."""
    tgt = Target(amqp_named)
    yield tgt
    tgt.cleanup()


@pytest.fixture
def consume(amqp_root):
    """consume(queue, n, timeout) -> list of Message.

    queue is a queue name on vhost "/" (read as guest) or a Target.
    """
    def _consume(queue, n=1, timeout=10.0):
        if isinstance(queue, Target):
            return queue.consume(n, timeout)
        return amqp_root.consume(queue, n, timeout)
    return _consume


@pytest.fixture(scope='session')
def assert_message():
    return check_message


@pytest.fixture(scope='session')
def assert_error():
    return check_error


@pytest.fixture(scope='module')
def statelessd(tmp_path_factory, broker_reachable):
    """Factory: statelessd(ports=1, overrides=None) -> running Statelessd.

    ports is a count of free ports to pick, or a list of port numbers.
    overrides is a mapping deep merged into the configuration.  Every
    server is stopped with SIGTERM when the module ends and must exit with
    status 0.
    """
    directory = tmp_path_factory.mktemp('statelessd')
    servers = []

    def factory(ports=1, overrides=None):
        server = Statelessd(overrides, ports, directory)
        servers.append(server)
        return server.start()

    yield factory
    errors = []
    for server in servers:
        try:
            server.stop()
        except AssertionError as error:
            errors.append(str(error))
    if errors:
        pytest.fail('\n\n'.join(errors))


@pytest.fixture(scope='module')
def server(statelessd):
    """One statelessd with one port, shared by a test module."""
    return statelessd()
