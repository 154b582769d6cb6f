"""Capacity planning: how many replicas, at which batch limit, meet a p99 SLO at a request rate.

Measurements (`latency_profile` of the engine in-process, `calibrate` of the HTTP path against a running
server, `load_sweep` and `validate` against an endpoint, `replica_packing` of a machine's memory) feed a
pure simulator (`simulate`) and planner (`plan`), which start nothing and need no Ray or HTTP.
`trtserve capacity ...` is the command line over them (`subcommands`)."""
