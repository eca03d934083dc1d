"""Names shared by the enqueue side, the workers and the monitoring code.

They are part of the wire format: a VM ``rq worker`` and a serverless drain of different
versions must agree on them, so they change only with a new ``PAYLOAD_VERSION``.
"""

from __future__ import annotations

from typing import Final

#: The default RQ queue name (``EMAIL_QUEUE_NAME`` overrides it).
DEFAULT_QUEUE_NAME: Final = "emails"

#: Import path of the job function RQ calls. Enqueued by path, never by reference.
JOB_FUNC_PATH: Final = "emailqueue._jobs.deliver"

#: RQ serializer used for every job: JSON, never pickle.
SERIALIZER_PATH: Final = "rq.serializers.JSONSerializer"

#: Prefix of every key emailqueue writes itself (RQ's own keys keep their ``rq:`` prefix).
KEY_PREFIX: Final = "emailqueue:"

#: Dedup marker of a (event, recipient) pair or an explicit idempotency key.
DEDUP_KEY_TEMPLATE: Final = KEY_PREFIX + "dedup:{queue}:{digest}"

#: Job ids we generate: ``em_<hex>`` (random) and ``ev_<hex>`` (derived from a dedup key).
#: RQ allows letters, digits, ``_`` and ``-`` only.
RANDOM_JOB_PREFIX: Final = "em_"
DERIVED_JOB_PREFIX: Final = "ev_"

#: Prefix of the Idempotency-Key sent to Resend; the rest is the job id, stable across retries.
IDEMPOTENCY_KEY_PREFIX: Final = "emailqueue-"

#: Where a job keeps our structured error and attempt record (``job.meta[META_KEY]``).
META_KEY: Final = "emailqueue"

#: The local mirror of Resend's suppression list: address digest -> entry (see ``_suppress``).
SUPPRESSED_KEY: Final = KEY_PREFIX + "suppressed"
