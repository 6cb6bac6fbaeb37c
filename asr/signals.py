"""Signals other parts listen to, so that services need not know them.

``transcription_event`` is sent after the transaction that recorded an event commits,
with ``event`` (a TranscriptionEvent) and ``job`` (the Transcription as the event left
it, or ``None`` when the sender did not hold it: read it then). Receivers: the realtime push to browsers, the
Telegram reply delivery. They must be quick and must not raise: enqueue, don't work.
"""

from django.dispatch import Signal

transcription_event = Signal()
