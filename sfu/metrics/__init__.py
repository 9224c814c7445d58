"""Prometheus metrics of one node: `add_metrics(app, node)` (sfu/metrics/routes.py) serves
GET /metrics from a per-application registry whose collector reads, at scrape time, the
counters rooms, producers and downtracks already keep (totals.py, collector.py) and the
histograms observed from events (observers.py). Nothing is added to the per-packet path."""
