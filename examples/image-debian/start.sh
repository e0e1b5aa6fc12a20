#!/bin/bash
# The tutorial's example app (danisla/kubernetes-tproxy examples/image-debian/start.sh), unchanged in
# spirit: every few seconds fetch two URLs, print "URL: HTTP code", then ping. Without tproxy all three
# work; with tproxy the first is refused by policy (418), the bucket is allowed (200) and ping is
# rejected by the pod's egress lock ("Operation not permitted").
# INTERVAL (seconds between rounds, default 5) is the only addition, so the demo can go faster.

_term() {
    echo "Caught SIGTERM signal, exiting."
    exit 0
}

trap _term SIGTERM

INTERVAL="${INTERVAL:-5}"

# main loop
(while true; do
    echo "`date -u` https://www.google.com: `curl -s -m 10 -o /dev/null -w '%{http_code}' https://www.google.com`"
    echo "`date -u` https://storage.googleapis.com/solutions-public-assets/: `curl -s -m 10 -o /dev/null -w '%{http_code}' https://storage.googleapis.com/solutions-public-assets/`"
    echo "`date -u` `ping -c1 -W2 www.google.com 2>&1`"
    sleep "$INTERVAL"
done) &

child=$!
wait "$child"
