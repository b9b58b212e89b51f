"""`fwc lab`: bring a compiled cluster up in network namespaces and drill it.

Modules: netns (namespaces, links, PID-tracked processes, teardown),
topology (LabCluster and the plan), daemons (per-member mount namespace,
rules, keepalived/conntrackd), probe (in-namespace echo server and clients),
drills (expectations, failover/failback, control), runner (orchestration with
guaranteed teardown), report (text/JSON), cli (argparse glue).
"""
