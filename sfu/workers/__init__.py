"""`python -m sfu serve --workers N`: N node processes of one cluster behind one HTTP port.

plan.py says what each worker is (node id, private port, UDP ports, URLs); front.py is the
reverse proxy on the public port; supervisor.py starts, restarts and stops the workers;
run.py ties them together for the command line. See docs/cluster.md, "All cores of a machine".
"""
