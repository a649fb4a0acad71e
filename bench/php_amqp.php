<?php
// One PHP process publishing straight to RabbitMQ the way a PHP web request
// must without statelessd: a new AMQP connection for every message
// (php-amqp: connect, open a channel, publish, disconnect).
// usage: php php_amqp.php HOST PORT USER PASSWORD EXCHANGE ROUTING_KEY BODY SECONDS
// Prints JSON: {"ok": n, "failed": n, "seconds": s, "latencies_ms": [...]}.
if (!class_exists('AMQPConnection')) {
    fwrite(STDERR, "php_amqp.php needs the amqp extension (php-amqp)\n");
    exit(2);
}
[, $host, $port, $user, $password, $exchange, $routing_key, $body, $seconds] = $argv;
$ok = 0;
$failed = 0;
$errors = [];
$latencies = [];
$start = microtime(true);
$deadline = $start + (float)$seconds;
while (($t0 = microtime(true)) < $deadline) {
    try {
        $connection = new AMQPConnection(['host' => $host, 'port' => (int)$port,
                                          'vhost' => '/', 'login' => $user,
                                          'password' => $password]);
        $connection->connect();
        $channel = new AMQPChannel($connection);
        $target = new AMQPExchange($channel);
        $target->setName($exchange);
        $target->publish($body, $routing_key, AMQP_NOPARAM,
                         ['content_type' => 'text/plain']);
        $connection->disconnect();
        $ok++;
    } catch (Exception $error) {
        $failed++;
        $name = get_class($error) . ': ' . $error->getMessage();
        $errors[$name] = ($errors[$name] ?? 0) + 1;
    }
    $latencies[] = round((microtime(true) - $t0) * 1000, 3);
}
echo json_encode(['ok' => $ok, 'failed' => $failed, 'codes' => $errors,
                  'seconds' => microtime(true) - $start,
                  'latencies_ms' => $latencies]), "\n";
