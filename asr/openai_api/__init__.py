"""The OpenAI-compatible door: ``POST /v1/audio/transcriptions`` and ``GET /v1/models``
in the shapes of OpenAI's audio API, so that clients written for it (the official
``openai`` package, scripts, editors' plug-ins) use this deployment unchanged.

``app`` is the ASGI application (served ahead of Django, see ``kikipounamu/asgi.py``),
``intake`` its synchronous parts (token, rate limits, the upload, the job's state),
``shapes`` what it answers. Jobs are made by the same intake service as the REST API's
and are ordinary jobs of the ``asr`` queue, with source ``openai``.
"""
