"""Signals other parts listen to, so that services need not know them.

``transcription_event`` is sent after the transaction that recorded an event commits,
with ``event`` (a TranscriptionEvent) and ``job`` (the Transcription as the event left
it, or ``None`` when the sender did not hold it: read it then). Receivers: the realtime push to browsers, the
Telegram reply delivery. They must be quick and must not raise: enqueue, don't work.

``transcription_events_recorded`` is sent inside the transaction that records events,
before it commits, with ``pairs``: (TranscriptionEvent, Transcription or ``None``) per
event, as above. A receiver's rows are then written with the job's new state or not at
all (the webhooks app writes each delivery it owes there). It may only write rows: an
error fails the caller's transaction, and its own enqueueing waits for the commit.
"""

from django.dispatch import Signal

transcription_event = Signal()
transcription_events_recorded = Signal()
