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

.PHONY: run test soak bench venv oldest-pika-venv broker php nginx chromium tls-proxy pyz clean

run: venv broker
	$(PY) statelessd.py -c $(CONFIG) -f

test: venv oldest-pika-venv broker php nginx chromium tls-proxy
	$(PY) -m pytest tests
	$(OLDEST_VENV)/bin/python -m pytest tests/test_delivery.py tests/test_pika.py tests/test_cluster.py

# A long run against a private RabbitMQ node, outside CI: mixed load, wrong
# passwords, vhost/user pairs coming and going, one broker restart; prints
# a table of each worker's memory, threads, descriptors and connections.
SOAK_MINUTES ?= 15
soak: venv broker
	$(PY) tests/soak.py $(SOAK_MINUTES)

# Throughput, latency and memory side by side with the alternatives; installs
# wrk, PHP (curl, amqp) and nginx when missing and root, and enables RabbitMQ's
# management plugin. BENCH_SECONDS sets the seconds per row (default 10).
bench: venv broker
	$(PY) bench/run.py

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e . pytest hypothesis
	touch $@

oldest-pika-venv: $(OLDEST_VENV)/.installed

$(OLDEST_VENV)/.installed: setup.py
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/pip install -q --upgrade pip
	$(OLDEST_VENV)/bin/pip install -q -e . pika==$(PIKA_OLDEST) pytest
	touch $@

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
# file that any Python 3.9+ runs: python3 statelessd.pyz -c FILE -f.
# PY=/path/to/python builds with an interpreter that has both already.
PYZ_BUILD := build/pyz
pyz: $(if $(filter command line,$(origin PY)),,venv)
	rm -rf $(PYZ_BUILD)
	mkdir -p $(PYZ_BUILD) dist
	cp statelessd.py statelessd_amqp.py statelessd_stats.py $(PYZ_BUILD)/
	$(PY) -c 'import os, pika, yaml; [print(os.path.dirname(m.__file__)) for m in (pika, yaml)]' \
	  | while read package; do cp -R "$$package" $(PYZ_BUILD)/; done
	rm -f $(PYZ_BUILD)/yaml/_yaml*
	find $(PYZ_BUILD) -name __pycache__ -prune -exec rm -rf {} +
	printf 'import sys\n\nimport statelessd\n\nsys.exit(statelessd.main())\n' \
	  > $(PYZ_BUILD)/__main__.py
	$(PY) -m zipapp $(PYZ_BUILD) --compress --python '/usr/bin/env python3' \
	  --output dist/statelessd.pyz
	@echo "built dist/statelessd.pyz"

clean:
	rm -rf $(VENV) $(OLDEST_VENV) build dist *.egg-info .pytest_cache
