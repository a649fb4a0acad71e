-- wrk script: POST one small message to statelessd as a raw body, its
-- Content-Type the message's.  bench/run.py sets BENCH_BODY (the message)
-- and BENCH_AUTH (base64 of user:password) in wrk's environment.
wrk.method = "POST"
wrk.body = os.getenv("BENCH_BODY")
wrk.headers["Content-Type"] = "text/plain"
wrk.headers["Authorization"] = "Basic " .. os.getenv("BENCH_AUTH")
dofile(os.getenv("BENCH_DIR") .. "/percentiles.lua")
