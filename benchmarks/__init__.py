"""trtserve benchmarks: each subcommand writes JSON under a results directory; `report` renders
benchmarks/RESULTS.md from them."""
