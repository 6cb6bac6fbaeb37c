"""Django's SQLite backend, with writers that wake up when the lock is free.

Use it as ``ENGINE: "kikipounamu.sqlite"`` (settings.py does, for a SQLite
``DATABASE_URL``); everything but how a write transaction starts is Django's.
"""
