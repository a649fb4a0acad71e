<?php
/*
 * Publish one message through statelessd with fields encoded by
 * http_build_query (application/x-www-form-urlencoded).  The nested
 * 'headers' array becomes headers[x-a]=1&headers[x-b]=two, which statelessd
 * turns into the AMQP header table {x-a: "1", x-b: "two"}.
 *
 * Usage: php publisher_query.php URL USER PASSWORD [BODY]
 * Each argument may instead come from the environment: STATELESSD_URL,
 * STATELESSD_USER, STATELESSD_PASSWORD, STATELESSD_BODY.
 *
 * Prints the HTTP status code; exits 0 on 204 No Content, 1 otherwise.
 */

function setting($argv, $index, $name, $default = null)
{
    if (isset($argv[$index])) {
        return $argv[$index];
    }
    $value = getenv($name);
    return $value === false ? $default : $value;
}

$url = setting($argv, 1, 'STATELESSD_URL',
               'http://127.0.0.1:8000/%2f/example/routing.key');
$user = setting($argv, 2, 'STATELESSD_USER', 'guest');
$password = setting($argv, 3, 'STATELESSD_PASSWORD', 'guest');
$body = setting($argv, 4, 'STATELESSD_BODY', 'hello from php');

$fields = array(
    'body' => $body,
    'content_type' => 'text/plain',
    'delivery_mode' => 2,
    'message_id' => 'php-query-1',
    'headers' => array('x-a' => '1', 'x-b' => 'two'),
);

$ch = curl_init($url);
curl_setopt($ch, CURLOPT_POST, true);
curl_setopt($ch, CURLOPT_POSTFIELDS, http_build_query($fields));
curl_setopt($ch, CURLOPT_USERPWD, $user . ':' . $password);
curl_setopt($ch, CURLOPT_RETURNTRANSFER, true);
curl_setopt($ch, CURLOPT_TIMEOUT, 30);
$response = curl_exec($ch);
$code = curl_getinfo($ch, CURLINFO_HTTP_CODE);
if ($response === false) {
    fwrite(STDERR, 'curl error: ' . curl_error($ch) . "\n");
} elseif ($code != 204) {
    fwrite(STDERR, $response . "\n");
}
curl_close($ch);

echo $code, "\n";
exit($code == 204 ? 0 : 1);
