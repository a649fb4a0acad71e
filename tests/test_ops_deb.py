"""make deb: the Debian package for hosts that install only from their own
package mirror, installed, run, removed and purged on this machine."""
import contextlib
import os
import pwd
import re
import stat
import subprocess
from pathlib import Path

import pytest

from ops_support import (PYZ_SOURCES, REPO, free_port, make_in_copy, publish,
                         require_tool, running, sink)

#: The files make deb reads besides those of make pyz.
SOURCES = PYZ_SOURCES + ('README.md', 'etc/statelessd.service') + tuple(
    'etc/deb/' + name for name in (
        'control', 'conffiles', 'postinst', 'postrm', 'copyright',
        'changelog', 'statelessd.1', 'statelessd.yaml'))
VERSION = re.search(r"^__version__ = '([^']+)'",
                    (REPO / 'statelessd.py').read_text(), re.M).group(1)
BINARY = Path('/usr/bin/statelessd')
CONFIG = Path('/etc/statelessd/statelessd.yaml')
UNIT = Path('/lib/systemd/system/statelessd.service')
SPOOL = Path('/var/spool/statelessd')
#: The ports line of the packaged configuration.
PORTS_LINE = 'ports: [8000, 8001]'


@pytest.fixture(scope='module')
def deb(tmp_path_factory):
    """dist/statelessd_<version>_all.deb built by make in a copy of the
    sources."""
    require_tool('dpkg-deb', 'dpkg')
    dist = make_in_copy('deb', SOURCES, tmp_path_factory.mktemp('deb'))
    package = dist / ('statelessd_%s_all.deb' % VERSION)
    assert package.is_file(), sorted(p.name for p in dist.iterdir())
    return package


def run(*command):
    result = subprocess.run(list(command), capture_output=True, text=True,
                            timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, ('%s failed: %s%s' % (
        ' '.join(command), result.stdout, result.stderr))
    return result.stdout


def package_status():
    """dpkg's status of the statelessd package ('' when it knows none)."""
    result = subprocess.run(['dpkg-query', '-W', '-f=${Status}',
                             'statelessd'], capture_output=True, text=True,
                            timeout=60)
    return result.stdout if result.returncode == 0 else ''


def user_exists(name):
    with contextlib.suppress(KeyError):
        return pwd.getpwnam(name)
    return None


@contextlib.contextmanager
def installed(deb):
    """The package installed; purged afterwards whatever happened, with the
    statelessd user it created, so the machine is left as it was."""
    if os.geteuid() != 0:
        pytest.fail('installing the .deb needs root: run the tests as root')
    require_tool('dpkg')
    assert package_status() == '', ('a statelessd package is on this '
                                    'machine already: dpkg --purge statelessd')
    had_user = user_exists('statelessd') is not None
    try:
        run('dpkg', '--install', str(deb))
        yield
    finally:
        run('dpkg', '--purge', 'statelessd')
        if not had_user and user_exists('statelessd'):
            run('userdel', 'statelessd')


def use_free_ports(config):
    """Point the installed configuration at free ports; returns them."""
    text = config.read_text()
    assert PORTS_LINE in text, text
    ports = [free_port(), free_port()]
    config.write_text(text.replace(PORTS_LINE, 'ports: %s' % ports))
    return ports


def test_the_deb_holds_the_pyz_and_depends_on_python3_alone(deb):
    """...and is the file the README tells to copy."""
    fields = run('dpkg-deb', '--field', str(deb))
    assert 'Package: statelessd\n' in fields
    assert 'Version: %s\n' % VERSION in fields
    assert 'Architecture: all\n' in fields
    assert re.findall(r'^(?:Pre-)?Depends: (.*)$', fields, re.M) == [
        'python3 (>= 3.8)']
    assert 'dist/%s' % deb.name in (REPO / 'README.md').read_text()
    contents = run('dpkg-deb', '--contents', str(deb))
    assert re.search(r'^-rwxr-xr-x root/root .* \./usr/bin/statelessd$',
                     contents, re.M), contents
    for path in (CONFIG, UNIT):
        assert re.search(r'^-rw-r--r-- root/root .* \.%s$' % path, contents,
                         re.M), path


def test_the_deb_installs_publishes_and_leaves_its_configuration(deb,
                                                                tmp_path):
    with installed(deb):
        assert package_status() == 'install ok installed'
        assert run('dpkg-query', '-W', '-f=${Conffiles}',
                   'statelessd').split()[0] == str(CONFIG)
        user = user_exists('statelessd')
        assert user and user.pw_uid < 1000, user
        spool = SPOOL.stat()
        assert (spool.st_uid, stat.S_IMODE(spool.st_mode)) == (user.pw_uid,
                                                              0o700)
        assert 'ExecStart=%s -c %s -f' % (BINARY, CONFIG) in UNIT.read_text()
        assert run(str(BINARY), '--version') == 'statelessd %s\n' % VERSION

        ports = use_free_ports(CONFIG)
        with running(tmp_path, ports, command=[str(BINARY)],
                     config_path=CONFIG) as gateway, sink() as box:
            for port in gateway.ports:
                response = publish(port, box.path(), 'from-deb-%d' % port)
                assert response.status == 204, response
            assert sorted(box.take(2)) == sorted(
                ('from-deb-%d' % port).encode() for port in ports)
        for port in ports:
            spooled = (SPOOL / ('statelessd-%d.spool' % port)).stat()
            assert spooled.st_uid == user.pw_uid, 'the worker kept root'

        run('dpkg', '--remove', 'statelessd')
        assert package_status() == 'deinstall ok config-files'
        assert not BINARY.exists() and not UNIT.exists()
        assert CONFIG.is_file()
    assert package_status() == ''
    assert not CONFIG.exists() and not SPOOL.exists()


def test_lintian_finds_no_errors(deb):
    lintian = require_tool('lintian')
    result = subprocess.run([lintian, '--fail-on', 'error', str(deb)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not re.search(r'^E: ', result.stdout, re.M), result.stdout
