"""Operators' side of the asr app: metrics, health, the live dashboard, backpressure,
rate limits, structured logs, worker heartbeats and retention."""
