"""`python -m sfu loadtest`: synthetic publishers and packet-counting viewers against any
deployment (runner.py orchestrates worker processes, worker.py runs the clients, media.py
pre-encodes the media once, report.py turns what the workers saw into the table and JSON)."""
