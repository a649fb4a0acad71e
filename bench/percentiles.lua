-- Shared by the wrk scripts: print the 99.9th percentile, which wrk's
-- --latency table leaves out, for bench/run.py to read.
function done(summary, latency, requests)
   io.write(string.format("p99.9 %d\n", latency:percentile(99.9)))
end
