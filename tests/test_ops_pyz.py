"""make pyz: one file that runs with nothing but a Python 3.8+, built once
and run on every Python the server distributions ship; below 3.8 it says so
in one line."""
import re
import shutil
import subprocess
import zipfile

import pytest

from ops_support import (PYZ_SOURCES, REPO, make_in_copy, publish,
                         require_python, running, sink)

#: The oldest Python statelessd runs on.
FLOOR = '3.8'
#: Every Python from the floor to the newest, each shipped by a server
#: distribution (README, "Locked-down hosts").
SUPPORTED = ('3.8', '3.9', '3.10', '3.11', '3.12', '3.13')
#: RHEL 8's default python3 and the one before the floor.
BELOW_FLOOR = ('3.6', '3.7')


@pytest.fixture(scope='module')
def pyz(tmp_path_factory):
    """dist/statelessd.pyz built by make in a copy of the sources."""
    dist = make_in_copy('pyz', PYZ_SOURCES, tmp_path_factory.mktemp('pyz'))
    return dist / 'statelessd.pyz'


def make_venv(python, directory, *options):
    result = subprocess.run([python, '-m', 'venv'] + list(options)
                            + [str(directory)], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return str(directory / 'bin' / 'python')


@pytest.fixture(scope='module')
def bare_python(tmp_path_factory):
    """bare_python(version): a venv of that Python without pip or packages,
    as on a host where nothing can be installed."""
    made = {}

    def bare(version):
        if version not in made:
            venv = tmp_path_factory.mktemp('bare-%s' % version)
            python = make_venv(require_python(version), venv, '--without-pip')
            for module in ('pika', 'yaml'):
                check = subprocess.run([python, '-I', '-c', 'import '
                                        + module], capture_output=True)
                assert check.returncode != 0, ('%s is importable there'
                                               % module)
            made[version] = python
        return made[version]
    return bare


def identify(python):
    """(version, sys.executable) as that interpreter reports them."""
    result = subprocess.run(
        [python, '-I', '-c', 'import platform, sys; '
         'print(platform.python_version()); print(sys.executable)'],
        capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return tuple(result.stdout.splitlines())


def test_the_pyz_bundles_pure_python_only(pyz):
    with zipfile.ZipFile(str(pyz)) as archive:
        names = archive.namelist()
    assert '__main__.py' in names
    for module in ('statelessd.py', 'statelessd_amqp.py',
                   'statelessd_stats.py', 'pika/__init__.py',
                   'yaml/__init__.py'):
        assert module in names, module
    assert not [n for n in names if n.endswith(('.so', '.pyc'))], names


@pytest.mark.parametrize('version', SUPPORTED)
def test_the_pyz_publishes_without_installed_packages(pyz, bare_python,
                                                      tmp_path, version):
    python = bare_python(version)
    command = [python, '-I', str(pyz)]
    reported = subprocess.run(command + ['--version'], capture_output=True,
                              text=True, timeout=60)
    assert reported.returncode == 0, reported
    assert 'statelessd' in reported.stdout
    with running(tmp_path, ports=2, command=command) as gateway, \
            sink() as box:
        for port in gateway.ports:
            response = publish(port, box.path(), 'from-%s-%d'
                               % (version, port))
            assert response.status == 204, response
        assert sorted(box.take(2)) == sorted(
            ('from-%s-%d' % (version, port)).encode()
            for port in gateway.ports)


@pytest.mark.parametrize('version', BELOW_FLOOR)
def test_below_the_floor_the_pyz_refuses_in_one_line(pyz, tmp_path,
                                                     version):
    python = require_python(version)
    config = tmp_path / 'statelessd.yaml'
    config.write_text('HTTPServer: {ports: [8000]}\n')
    result = subprocess.run([python, '-I', str(pyz), '-c', str(config),
                             '-f'], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result
    assert result.stdout == ''
    assert result.stderr == ('statelessd needs Python %s or newer; this is '
                             'Python %s (%s)\n' % ((FLOOR,)
                                                   + identify(python)))


def test_pip_install_below_the_floor_is_refused(tmp_path):
    """python_requires turns pip away before it installs anything."""
    python = make_venv(require_python(BELOW_FLOOR[-1]), tmp_path / 'venv')
    source = tmp_path / 'source'
    source.mkdir()
    for name in ('setup.py', 'README.md', 'statelessd.py',
                 'statelessd_amqp.py', 'statelessd_stats.py'):
        shutil.copy(str(REPO / name), str(source / name))
    result = subprocess.run([python, '-m', 'pip', 'install', '--no-index',
                             '--no-deps', '--no-build-isolation',
                             str(source)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0, result.stdout
    assert "requires a different Python: %s not in '>=%s'" % (
        identify(python)[0], FLOOR) in result.stderr, result.stderr
    listed = subprocess.run([python, '-m', 'pip', 'list'],
                            capture_output=True, text=True, timeout=60)
    assert 'statelessd' not in listed.stdout


def test_the_floor_is_the_same_everywhere():
    """setup.py, the README and these tests name one oldest Python."""
    setup = (REPO / 'setup.py').read_text()
    assert re.findall(r"python_requires='([^']*)'", setup) == ['>=' + FLOOR]
    readme = (REPO / 'README.md').read_text()
    floors = re.findall(r'Python (3\.\d+) or (?:newer|later)', readme)
    floors += re.findall(r'Python (3\.\d+)\+', readme)
    assert floors and set(floors) == {FLOOR}, floors
    assert SUPPORTED[0] == FLOOR


def test_the_pyz_reports_configuration_errors(pyz, bare_python, tmp_path):
    broken = tmp_path / 'broken.yaml'
    broken.write_text('HTTPServer: {ports: [nope]}\n')
    result = subprocess.run([bare_python(FLOOR), '-I', str(pyz), '-c',
                             str(broken), '-f'], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 2, result
    assert 'HTTPServer.ports[0]' in result.stderr
