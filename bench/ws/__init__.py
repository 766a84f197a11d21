"""The parts of `python -m bench.ws_bench`: socket clients, client processes, scenarios, report."""
