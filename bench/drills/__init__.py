"""Failure drills: faults injected under load, each checked and printed as one table row.

Every drill runs on its own fleet of real processes on this machine: the embedded broker (Tansu), a Valkey
server, a gateway and worker processes (``python -m gateway`` / ``python -m workers``) serving the tiny
MLP on a topic of 4 partitions. Load is closed-loop HTTP (JSON infer) with a unique request id per request;
every 200 answer is checked against the model's output computed in this process.

* ``worker-kill``   SIGKILL a random worker every 4 s for 60 s (a replacement starts at once, as a
  supervisor would): 0 lost, 0 wrong, 0 duplicated client-visible results.
* ``redis-restart`` stop Redis for 5 s under sync load and async job submissions, then start it again (same
  port, append-only file, as the local stack's and a production Redis): the gateway answers 503 quickly while it is
  down, answers 200 again within 5 s of its return, and every accepted (202) async job completes.
* ``broker-stop``   stop the broker for 5 s under load: 503 within the gateway's 1 s backend timeout, no hang;
  recovery once it is back.
  The embedded broker keeps its log in memory, so what was queued in it is gone after its restart; a
  Kafka cluster keeps it (the drill reports how many requests got a 503/504 instead of an answer).
* ``fuzz``          10,000 undecodable or invalid records on the model topic while sync load runs: every sync
  request answered, every bad record in the dead-letter topic with a reason.
* ``sigterm-all``   SIGTERM the gateway and every worker at once under load: every request in flight gets an
  HTTP answer (200, or 503/504 when its record was still queued), no connection is cut, and the
  committed offsets equal the requests answered 200 (the workers committed what they replied to).

The fault drills (``bench/drills/faults.py``) check four promises each: no accepted (202) job is lost, no answer
is wrong, every request gets an HTTP answer (a 2xx, or an error with a specific code) within its timeout + 1 s,
and normal traffic's p99 beside large or slow bodies stays within 2x of its idle value.

* ``gateway-kill``  SIGKILL the gateway every 1-3 s for 30 s while 8 clients submit async jobs, each under its
  own Idempotency-Key and retrying that key until it gets a 202; the gateway restarts at once.
* ``redis-kill``    SIGKILL the local stack's Redis (append-only file, fsynced before each answer) under sync load and
  async submissions and start it again: the registry and every accepted job survive.
* ``freeze``        SIGSTOP the broker for 5 s, then Redis for 5 s (a GC pause, a stuck disk, a VM migration).
* ``overload``      3x the measured capacity for 60 s of sync requests, then 60 s of async submissions: the
  excess is shed with a specific code and Retry-After, never as a broken backend.
* ``redis-maxmemory`` Redis refuses writes (maxmemory, noeviction) for 5 s: replies wait and arrive, none lost.
* ``heavy-bodies``  4 clients sending 15 MiB bad bodies and 200 slow connections beside normal traffic.

The failover drill (``bench/drills/failover.py``) runs the fleet (a gateway, an autoscaler and its pool worker) on
a local Redis Cluster of 3 masters, each with a replica (node timeout 2 s):

* ``redis-failover`` SIGKILL a master that holds slots and has a replica under sync load and async submissions:
  503 BACKEND_UNAVAILABLE (nothing else) while its slots are unavailable, the replica promoted within 15 s, 200
  again within 5 s of that without restarting anything, every accepted (202) job done with the right answer.

    .venv/bin/python -m bench.drills [--drill NAME ...] [--out bench/results]
"""

