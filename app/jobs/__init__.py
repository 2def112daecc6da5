"""Jobs: each module has `run_once(settings, ...)`, one unit of work that is safe to run on both
nodes and twice at once, started by a systemd timer through the `mailrelay` command."""
