"""The ceiling for one Python publisher: a pika BlockingConnection
publishing the benchmark message in a loop for a number of seconds, no HTTP
and no confirms.

usage: python pika_publish.py HOST PORT USER PASSWORD EXCHANGE ROUTING_KEY BODY SECONDS
Prints JSON: {"ok": messages, "failed": 0, "seconds": elapsed}.
"""
import json
import sys
import time

import pika


def main(argv):
    host, port, user, password, exchange, routing_key, body, seconds = argv
    parameters = pika.ConnectionParameters(
        host, int(port), '/', pika.PlainCredentials(user, password))
    connection = pika.BlockingConnection(parameters)
    channel = connection.channel()
    properties = pika.BasicProperties(content_type='text/plain')
    body = body.encode()
    count = 0
    start = time.monotonic()
    deadline = start + float(seconds)
    while time.monotonic() < deadline:
        for _ in range(100):
            channel.basic_publish(exchange, routing_key, body, properties)
        count += 100
    elapsed = time.monotonic() - start
    connection.close()
    print(json.dumps({'ok': count, 'failed': 0, 'seconds': elapsed}))


if __name__ == '__main__':
    main(sys.argv[1:])
