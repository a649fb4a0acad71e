# statelessd: `make run`, `make test` and `make bench` set up everything they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# The oldest pika setup.py allows: the delivery, pika and cluster tests run
# against it too, in a virtual environment of its own.
PIKA_OLDEST := 1.2.1
OLDEST_VENV := .venv-pika-$(PIKA_OLDEST)
CONFIG ?= statelessd.yaml
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -q

.PHONY: run test soak bench node-peer bench-scale wrk venv oldest-pika-venv broker php nginx chromium tls-proxy pythons lintian pyz deb clean

run: venv broker
	$(PY) statelessd.py -c $(CONFIG) -f

# The whole suite on the default Python, then the delivery, pika and
# cluster tests on the oldest pika setup.py allows, and the unit, publish,
# delivery and pure-function tests on the oldest and newest supported Pythons.
CORE_TESTS := tests/test_units.py tests/test_fields.py tests/test_settings.py \
  tests/test_routes.py tests/test_counters.py tests/test_publisher_parts.py \
  tests/test_publishing.py tests/test_delivery.py
OLDEST := 3.8
NEWEST := 3.13

test: pythons venv oldest-pika-venv .venv-$(OLDEST)/.installed .venv-$(NEWEST)/.installed broker php nginx chromium tls-proxy lintian
	$(PY) -m pytest tests
	$(OLDEST_VENV)/bin/python -m pytest tests/test_delivery.py tests/test_pika.py tests/test_cluster.py
	.venv-$(OLDEST)/bin/python -m pytest $(CORE_TESTS)
	.venv-$(NEWEST)/bin/python -m pytest $(CORE_TESTS)

# A long run against a private RabbitMQ node, outside CI: mixed load, wrong
# passwords, vhost/user pairs coming and going, one broker restart; prints
# a table of each worker's memory, threads, descriptors and connections.
SOAK_MINUTES ?= 15
soak: venv broker
	$(PY) tests/soak.py $(SOAK_MINUTES)

# Throughput, latency and memory side by side with the alternatives; installs
# wrk, PHP (curl, amqp), nginx and Node.js when missing and root, and enables RabbitMQ's
# management plugin. BENCH_SECONDS sets the seconds per row (default 10).
bench: venv broker node-peer
	$(PY) bench/run.py

# bench/node: the Node.js gateway the benchmark compares with, its amqplib
# from npm; without Node.js and npm its rows are skipped.
node-peer:
	@if ! command -v npm >/dev/null 2>&1 && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -q && $(APT_INSTALL) nodejs npm; \
	fi
	@if command -v npm >/dev/null 2>&1; then \
	  npm ci --prefix bench/node --no-audit --no-fund --loglevel=error; \
	else \
	  echo "no npm (apt-get install nodejs npm): the Node.js rows are skipped"; \
	fi

# Throughput as the ports grow, one wrk per port, then nginx in front, a
# topic exchange and a paced row; SCALE_PORTS="1 2 4 8 12", SCALE_SECONDS.
bench-scale: venv broker wrk nginx
	$(PY) bench/scale.py

wrk:
	@if ! command -v wrk >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && $(APT_INSTALL) wrk; \
	  else \
	    echo "make bench-scale needs wrk: apt-get install wrk"; \
	    exit 1; \
	  fi; \
	fi

venv: $(VENV)/.installed

# make_venv(directory, python[, packages]): statelessd and the test tools
# in a virtualenv, with packages pinned as given.
define make_venv
$(2) -m venv $(1)
$(1)/bin/pip install -q --upgrade pip
$(1)/bin/pip install -q -e . pytest hypothesis $(3)
touch $(1)/.installed
endef

# The default Python's also has schemathesis, for tests/test_openapi.py (it
# needs Python 3.9 or newer; the other Pythons run the core tests only).
$(VENV)/.installed: setup.py Makefile
	$(call make_venv,$(VENV),$(PYTHON),schemathesis)

# .venv-3.8, .venv-3.13: the same on another Python, found as `pythons` does.
.venv-%/.installed: setup.py | pythons
	$(call make_venv,.venv-$*,$(call python_for,$*))

# python_for(X.Y): pyenv's build of Python X.Y, else pythonX.Y on PATH.
python_for = $(or $(lastword $(wildcard $(HOME)/.pyenv/versions/$(1).[0-9]*/bin/python$(1))),$(shell command -v python$(1)))

# Every Python from 3.6 to 3.13: the single-file build runs on each
# supported one and refuses 3.6 and 3.7 in one line.
TEST_PYTHONS := 3.6 3.7 3.8 3.9 3.10 3.11 3.12 3.13
pythons:
	@missing="$(strip $(foreach version,$(TEST_PYTHONS),$(if $(call python_for,$(version)),,$(version))))"; \
	if [ -n "$$missing" ]; then \
	  echo "the tests run statelessd on every Python from 3.6 to 3.13; missing: $$missing"; \
	  echo "install them with pyenv (https://github.com/pyenv/pyenv#installation): pyenv install $$missing"; \
	  echo "or put pythonX.Y for each on PATH (deadsnakes PPA on Ubuntu, python3X packages on RHEL)"; \
	  exit 1; \
	fi

oldest-pika-venv: $(OLDEST_VENV)/.installed

$(OLDEST_VENV)/.installed: setup.py
	$(call make_venv,$(OLDEST_VENV),$(PYTHON),pika==$(PIKA_OLDEST))

# A RabbitMQ answering on localhost: start an installed one, or install it.
broker:
	@if ! $(PY) -c "import socket; socket.create_connection(('127.0.0.1', 5672), 2)" 2>/dev/null; then \
	  if ! command -v rabbitmq-server >/dev/null 2>&1; then \
	    if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	      apt-get update -q && $(APT_INSTALL) rabbitmq-server; \
	    else \
	      echo "statelessd needs RabbitMQ on 127.0.0.1:5672: install rabbitmq-server (apt-get install rabbitmq-server) and start it, or run make as root"; \
	      exit 1; \
	    fi; \
	  fi; \
	  echo "Starting rabbitmq-server"; \
	  rabbitmq-server -detached || rabbitmqctl start_app || true; \
	  for i in $$(seq 120); do \
	    $(PY) -c "import socket; socket.create_connection(('127.0.0.1', 5672), 2)" 2>/dev/null && exit 0; \
	    sleep 1; \
	  done; \
	  echo "RabbitMQ did not start answering on 127.0.0.1:5672 within 120 s"; \
	  exit 1; \
	fi

# PHP's curl client, for the tests that run the README's PHP examples.
php:
	@if ! php -r 'exit(function_exists("curl_init") ? 0 : 1);' 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && $(APT_INSTALL) php-cli php-curl; \
	  else \
	    echo "the PHP client tests need php-cli and php-curl: apt-get install php-cli php-curl"; \
	    exit 1; \
	  fi; \
	fi

# openssl and nginx's stream module, for the tests of TLS to the broker:
# they make a CA and put a TLS listener in front of RabbitMQ.
tls-proxy:
	@if ! command -v openssl >/dev/null 2>&1 || ! PATH="$$PATH:/usr/sbin" command -v nginx >/dev/null 2>&1 \
	    || [ ! -e /usr/lib/nginx/modules/ngx_stream_module.so ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && $(APT_INSTALL) openssl nginx libnginx-mod-stream; \
	  else \
	    echo "the TLS tests need openssl, nginx and its stream module: apt-get install openssl nginx libnginx-mod-stream"; \
	    exit 1; \
	  fi; \
	fi

# nginx, for the tests that run statelessd behind etc/nginx.conf.
nginx:
	@if ! command -v nginx >/dev/null 2>&1 && ! [ -x /usr/sbin/nginx ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && $(APT_INSTALL) nginx; \
	  else \
	    echo "the nginx pool tests need nginx: apt-get install nginx"; \
	    exit 1; \
	  fi; \
	fi

# lintian, for the test that checks the Debian package.
lintian:
	@if ! command -v lintian >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && $(APT_INSTALL) lintian; \
	  else \
	    echo "the Debian package test needs lintian: apt-get install lintian"; \
	    exit 1; \
	  fi; \
	fi

# Headless Chromium, for the test that renders the dashboard.
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -q && $(APT_INSTALL) chromium; \
	  else \
	    echo "the dashboard test needs Chromium: apt-get install chromium"; \
	    exit 1; \
	  fi; \
	fi

# dist/statelessd.pyz: statelessd with pika and pure-Python PyYAML in one
# file that any Python 3.8+ runs: python3 statelessd.pyz -c FILE -f.  Its
# etc/pyz_main.py, the archive's __main__.py, refuses older ones in one line.
# PY=/path/to/python builds with an interpreter that has both already.
PYZ_BUILD := build/pyz
# The modules are declared once, in setup.py's py_modules.
MODULES = $(shell sed -n "s/.*py_modules=\[\(.*\)\].*/\1/p" setup.py | tr -d "',")
pyz: $(if $(filter command line,$(origin PY)),,venv)
	rm -rf $(PYZ_BUILD)
	mkdir -p $(PYZ_BUILD) dist
	cp $(MODULES:%=%.py) $(PYZ_BUILD)/
	$(PY) -c 'import os, pika, yaml; [print(os.path.dirname(m.__file__)) for m in (pika, yaml)]' \
	  | while read package; do cp -R "$$package" $(PYZ_BUILD)/; done
	rm -f $(PYZ_BUILD)/yaml/_yaml*
	find $(PYZ_BUILD) -name __pycache__ -prune -exec rm -rf {} +
	cp etc/pyz_main.py $(PYZ_BUILD)/__main__.py
	$(PY) -m zipapp $(PYZ_BUILD) --compress --python '/usr/bin/env python3' \
	  --output dist/statelessd.pyz
	@echo "built dist/statelessd.pyz"

# dist/statelessd_<version>_all.deb, for hosts that install only from their
# own package mirror: the single-file build as /usr/bin/statelessd run by
# the system's python3, etc/deb/statelessd.yaml as a conffile, the systemd unit,
# a manual page and the README (such hosts reach no web page), and a postinst
# that creates the statelessd user and its 0700 spool.
VERSION = $(shell sed -n "s/^__version__ = '\(.*\)'/\1/p" statelessd.py)
DEB_BUILD := build/deb
DEB_DOC := $(DEB_BUILD)/usr/share/doc/statelessd
deb: pyz
	rm -rf $(DEB_BUILD)
	install -d $(DEB_BUILD)/DEBIAN $(DEB_BUILD)/usr/bin $(DEB_BUILD)/etc/statelessd \
	  $(DEB_BUILD)/lib/systemd/system $(DEB_DOC) $(DEB_BUILD)/usr/share/man/man1
	$(PY) -m zipapp $(PYZ_BUILD) --compress --python /usr/bin/python3 \
	  --output $(DEB_BUILD)/usr/bin/statelessd
	chmod 755 $(DEB_BUILD)/usr/bin/statelessd
	install -m 644 etc/deb/statelessd.yaml $(DEB_BUILD)/etc/statelessd/
	grep -v '^#' etc/statelessd.service | sed -e '1{/^$$/d}' \
	  -e 's|^ExecStart=.*|ExecStart=/usr/bin/statelessd -c /etc/statelessd/statelessd.yaml -f|' \
	  -e '/^Description=/a Documentation=man:statelessd(1)' \
	  > $(DEB_BUILD)/lib/systemd/system/statelessd.service
	install -m 644 etc/deb/copyright $(DEB_DOC)/
	gzip -9n < etc/deb/changelog > $(DEB_DOC)/changelog.gz
	gzip -9n < README.md > $(DEB_DOC)/README.md.gz
	gzip -9n < etc/deb/statelessd.1 > $(DEB_BUILD)/usr/share/man/man1/statelessd.1.gz
	install -m 644 etc/deb/conffiles $(DEB_BUILD)/DEBIAN/
	install -m 755 etc/deb/postinst etc/deb/postrm $(DEB_BUILD)/DEBIAN/
	sed -e 's/@VERSION@/$(VERSION)/' \
	  -e "s/@INSTALLED_SIZE@/$$(du -sk --exclude=DEBIAN $(DEB_BUILD) | cut -f1)/" \
	  etc/deb/control > $(DEB_BUILD)/DEBIAN/control
	cd $(DEB_BUILD) && find etc lib usr -type f -exec md5sum {} + > DEBIAN/md5sums
	chmod 644 $(DEB_DOC)/* $(DEB_BUILD)/usr/share/man/man1/* \
	  $(DEB_BUILD)/lib/systemd/system/* $(DEB_BUILD)/DEBIAN/control $(DEB_BUILD)/DEBIAN/md5sums
	dpkg-deb --root-owner-group -Zxz --build $(DEB_BUILD) dist/statelessd_$(VERSION)_all.deb

clean:
	rm -rf $(VENV) .venv-* build dist *.egg-info .pytest_cache bench/node/node_modules
