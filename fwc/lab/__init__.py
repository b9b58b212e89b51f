"""`fwc lab`: bring a compiled cluster up in network namespaces and drill it.

Modules: adapter (the checked model and its files, compiled in-process),
topology (the plan derived from the model: namespaces, bridges, test hosts,
probes), netns (namespaces, links, PID-tracked processes, teardown), daemons
(per-member mount namespace, reached through the install code's
NetnsTransport; keepalived/conntrackd), running (the running lab; files go on
the members through `fwc install`), probe (in-namespace echo server and
clients), drills and reboot (expectations, failover/failback, control,
reboot), runner (orchestration with guaranteed teardown), results and report
(text/JSON), cli (argparse glue).
"""
