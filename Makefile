# statelessd: `make run` and `make test` set up everything they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= statelessd.yaml
APT_INSTALL := DEBIAN_FRONTEND=noninteractive apt-get install -y -q

.PHONY: run test venv broker php tls-proxy clean

run: venv broker
	$(PY) statelessd.py -c $(CONFIG) -f

test: venv broker php tls-proxy
	$(PY) -m pytest tests

venv: $(VENV)/.installed

$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e . pytest hypothesis
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
	  rabbitmq-server -detached || true; \
	  rabbitmqctl await_startup --timeout 120 >/dev/null 2>&1 || rabbitmqctl start_app; \
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

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache
