"""Business logic of completion webhooks. The path of one event:

1. ``events``: a job's finishing event (recorded by ``asr.events``) becomes one
   delivery row per receiver that wants it, in the finish's own transaction; their
   tasks are sent on commit.
2. ``delivery``: an attempt claims a due delivery under a lease, signs it
   (``secrets``, the Standard Webhooks way), calls the receiver through
   ``kikipounamu.outbound`` (SSRF rules after DNS, no redirects, a deadline for the
   whole call) and records what the answer means: delivered, retried later with
   back-off, or given up.
3. ``reconcile`` (beat): deliveries whose task was lost, or whose process died
   mid-call, are sent again, with the same ``webhook-id``.

Beside them: ``subscriptions`` (endpoints, per-job secrets, the URL check) and
``dispatch`` (the tasks, sent by name).
"""

from webhooks.services.delivery import webhook_deliver
from webhooks.services.delivery import webhook_delivery_resend
from webhooks.services.events import deliveries_create
from webhooks.services.reconcile import webhooks_reconcile
from webhooks.services.subscriptions import endpoint_create
from webhooks.services.subscriptions import endpoint_secret_rotate
from webhooks.services.subscriptions import endpoint_update
from webhooks.services.subscriptions import job_secret_rotate

__all__ = [
    "deliveries_create",
    "endpoint_create",
    "endpoint_secret_rotate",
    "endpoint_update",
    "job_secret_rotate",
    "webhook_deliver",
    "webhook_delivery_resend",
    "webhooks_reconcile",
]
