"""The Telegram webhook: a small ASGI application ahead of Django's handler (``app``),
its rules (``intake``), the group-commit writer thread that stores updates
(``writer``), and the thread that hands stored updates to the ``bots`` queue
(``publisher``)."""
