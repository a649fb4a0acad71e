<?php
/*
 * Publish many messages in one request: http_build_query names each
 * message's fields messages[0][body], messages[0][headers][x-seq], ...
 *
 * Usage: php publisher_batch.php URL USER PASSWORD COUNT
 * Each message gets the body "message <i>", the header x-seq and, for odd
 * i, the routing key "odd"; the others go to the path's.
 *
 * Prints the HTTP status code and the answer; exits 0 on 200, 1 otherwise.
 */

list(, $url, $user, $password, $count) = $argv;

$messages = array();
for ($i = 0; $i < (int) $count; $i++) {
    $message = array(
        'body' => "message $i",
        'message_id' => "php-batch-$i",
        'headers' => array('x-seq' => (string) $i),
    );
    if ($i % 2) {
        $message['routing_key'] = 'odd';
    }
    $messages[] = $message;
}

$ch = curl_init($url);
curl_setopt($ch, CURLOPT_POST, true);
curl_setopt($ch, CURLOPT_POSTFIELDS,
            http_build_query(array('messages' => $messages)));
curl_setopt($ch, CURLOPT_USERPWD, $user . ':' . $password);
curl_setopt($ch, CURLOPT_RETURNTRANSFER, true);
curl_setopt($ch, CURLOPT_TIMEOUT, 30);
$response = curl_exec($ch);
$code = curl_getinfo($ch, CURLINFO_HTTP_CODE);
if ($response === false) {
    fwrite(STDERR, 'curl error: ' . curl_error($ch) . "\n");
}
echo $code, ' ', $response, "\n";
exit($code == 200 ? 0 : 1);
