-- wrk script: POST one small form-encoded message to statelessd.
-- bench/run.py sets BENCH_BODY (the urlencoded form) and BENCH_AUTH
-- (base64 of user:password) in wrk's environment.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
wrk.headers["Authorization"] = "Basic " .. os.getenv("BENCH_AUTH")
dofile(os.getenv("BENCH_DIR") .. "/percentiles.lua")
