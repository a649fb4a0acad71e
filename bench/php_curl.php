<?php
// One PHP process publishing through statelessd the way a PHP web request
// does: a new curl handle (and TCP connection) for every message.
// usage: php php_curl.php URL USER:PASSWORD BODY SECONDS
// Prints JSON: {"ok": n, "failed": n, "seconds": s, "latencies_ms": [...]}.
if (!function_exists('curl_init')) {
    fwrite(STDERR, "php_curl.php needs the curl extension (php-curl)\n");
    exit(2);
}
[, $url, $auth, $body, $seconds] = $argv;
$fields = http_build_query(['body' => $body, 'content_type' => 'text/plain']);
$ok = 0;
$failed = 0;
$codes = [];
$latencies = [];
$start = microtime(true);
$deadline = $start + (float)$seconds;
while (($t0 = microtime(true)) < $deadline) {
    $curl = curl_init($url);
    curl_setopt($curl, CURLOPT_POST, true);
    curl_setopt($curl, CURLOPT_POSTFIELDS, $fields);
    curl_setopt($curl, CURLOPT_USERPWD, $auth);
    curl_setopt($curl, CURLOPT_RETURNTRANSFER, true);
    curl_exec($curl);
    $code = curl_getinfo($curl, CURLINFO_HTTP_CODE);
    curl_close($curl);
    $latencies[] = round((microtime(true) - $t0) * 1000, 3);
    if ($code === 204) {
        $ok++;
    } else {
        $failed++;
        $codes[$code] = ($codes[$code] ?? 0) + 1;
    }
}
echo json_encode(['ok' => $ok, 'failed' => $failed, 'codes' => $codes,
                  'seconds' => microtime(true) - $start,
                  'latencies_ms' => $latencies]), "\n";
