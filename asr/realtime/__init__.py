"""Realtime: WebSockets served by Django Channels.

``jobs``: who may watch a job and what they get (a snapshot, then events with a
sequence number); ``sender``: pushing to the channel layer from sync code;
``consumers``: the sockets themselves, thin.
"""
