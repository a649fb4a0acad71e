"""make pyz: one file that runs with nothing but a Python 3.9+."""
import shutil
import subprocess
import zipfile

import pytest

from ops_support import PYTHON, REPO, publish, require_tool, running, sink

#: The top-level files the build reads.
SOURCES = ('Makefile', 'setup.py', 'statelessd.py', 'statelessd_amqp.py',
           'statelessd_stats.py')


@pytest.fixture(scope='module')
def pyz(tmp_path_factory):
    """dist/statelessd.pyz built by make in a copy of the sources."""
    make = require_tool('make')
    build = tmp_path_factory.mktemp('pyz')
    for name in SOURCES:
        shutil.copy(REPO / name, build / name)
    result = subprocess.run([make, 'pyz', 'PY=%s' % PYTHON], cwd=str(build),
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    return build / 'dist' / 'statelessd.pyz'


@pytest.fixture(scope='module')
def bare_python(tmp_path_factory):
    """A Python without pika and PyYAML: a venv without pip or packages."""
    system = require_tool('python3')
    venv = tmp_path_factory.mktemp('bare')
    result = subprocess.run([system, '-m', 'venv', '--without-pip',
                             str(venv)], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    python = str(venv / 'bin' / 'python')
    for module in ('pika', 'yaml'):
        check = subprocess.run([python, '-I', '-c', 'import ' + module],
                               capture_output=True)
        assert check.returncode != 0, '%s is importable there' % module
    return python


def test_the_pyz_bundles_pure_python_only(pyz):
    with zipfile.ZipFile(pyz) as archive:
        names = archive.namelist()
    assert '__main__.py' in names
    for module in ('statelessd.py', 'statelessd_amqp.py',
                   'statelessd_stats.py', 'pika/__init__.py',
                   'yaml/__init__.py'):
        assert module in names, module
    assert not [n for n in names if n.endswith(('.so', '.pyc'))], names


def test_the_pyz_publishes_without_installed_packages(pyz, bare_python,
                                                      tmp_path):
    command = [bare_python, '-I', str(pyz)]
    version = subprocess.run(command + ['--version'], capture_output=True,
                             text=True, timeout=60)
    assert version.returncode == 0 and 'statelessd' in version.stdout
    with running(tmp_path, ports=2, command=command) as gateway, \
            sink() as box:
        for port in gateway.ports:
            response = publish(port, box.path(), 'from-pyz-%d' % port)
            assert response.status == 204, response
        assert sorted(box.take(2)) == sorted(b'from-pyz-%d' % port
                                             for port in gateway.ports)


def test_the_pyz_reports_configuration_errors(pyz, bare_python, tmp_path):
    broken = tmp_path / 'broken.yaml'
    broken.write_text('HTTPServer: {ports: [nope]}\n')
    result = subprocess.run([bare_python, '-I', str(pyz), '-c', str(broken),
                             '-f'], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result
    assert 'HTTPServer.ports[0]' in result.stderr
