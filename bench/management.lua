-- wrk script: publish one message through RabbitMQ's management HTTP API
-- (POST /api/exchanges/<vhost>/<exchange>/publish).  bench/run.py sets
-- BENCH_BODY (the JSON document) and BENCH_AUTH (base64 of user:password).
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Basic " .. os.getenv("BENCH_AUTH")
dofile(os.getenv("BENCH_DIR") .. "/percentiles.lua")
