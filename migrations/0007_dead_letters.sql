-- Dead letters: events a consumer could not handle after its bounded retries, while
-- other events went through (socialhub/infra/events/retry.py says how that is told
-- apart from an outage). The stream goes on without them; they wait here until
-- `socialhub events retry` asks the running readers to handle them again.
--
-- The event is kept whole (topic, key and the value as sent), not as a reference to
-- the outbox row: the janitor drops consumed outbox rows after a week, and on the Kafka
-- path the record may be gone from the topic. `error` is the exception's type and
-- message only (no traceback, URL credentials masked).
--
-- status: dead (waiting) -> retry (asked for by the CLI) -> replaying (claimed by one
-- running reader) -> replayed (handled), or back to dead when it fails again.
CREATE TABLE dead_letters (
    id               bigint PRIMARY KEY DEFAULT socialhub_id(),
    consumer         text NOT NULL,
    event_id         bigint NOT NULL,
    topic            text NOT NULL,
    key              text NOT NULL,
    event            jsonb NOT NULL,
    error            text NOT NULL,
    attempts         integer NOT NULL CHECK (attempts > 0),
    first_failed_at  timestamptz NOT NULL,
    dead_at          timestamptz NOT NULL DEFAULT now(),
    status           text NOT NULL DEFAULT 'dead' CHECK (status IN ('dead', 'retry', 'replaying', 'replayed')),
    status_at        timestamptz NOT NULL DEFAULT now(),
    -- One row per consumer and event: dead-lettered again (a restart re-read it before
    -- its position was saved, or a replay failed), the row is updated.
    UNIQUE (consumer, event_id)
);
-- The readers' poll for retry requests, and the count of those waiting.
CREATE INDEX dead_letters_pending_idx ON dead_letters (consumer, id) WHERE status <> 'replayed';
