-- Notifier state: preferences, the alert state machine, alerts (one per crossing/fact) and
-- deliveries (one per alert and channel). Uniqueness lives here, not in memory, so any number of
-- replicas and redeliveries produce one message per crossing per channel.

CREATE SCHEMA IF NOT EXISTS notifier;

CREATE TABLE notifier.preferences (
    customer_id text PRIMARY KEY,
    channels text[] NOT NULL DEFAULT '{email,slack}',
    email text,
    slack_webhook_url text,
    webhook_url text,
    webhook_secret text,
    -- The ledger decides crossings; the preference is kept here for the ledger and the console.
    low_balance_threshold_nanos bigint CHECK (low_balance_threshold_nanos >= 0),
    low_balance_threshold_percent numeric(6, 3) CHECK (low_balance_threshold_percent > 0 AND low_balance_threshold_percent <= 100),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK (channels <@ '{email,slack,webhook}'::text[]),
    CHECK (low_balance_threshold_nanos IS NULL OR low_balance_threshold_percent IS NULL)
);

-- One row per customer: the lock that serialises its balance events across replicas, and the
-- newest top-up (restored) seq seen, so a late-arriving older crossing is recognised as stale.
CREATE TABLE notifier.balance_watch (
    customer_id text PRIMARY KEY,
    last_restored_seq bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The edge-triggered state machine for balance alerts, keyed by customer, kind, threshold, period.
CREATE TABLE notifier.alert_states (
    customer_id text NOT NULL,
    kind text NOT NULL,
    threshold_key text NOT NULL DEFAULT '',
    period_key text NOT NULL DEFAULT '',
    state text NOT NULL DEFAULT 'ok' CHECK (state IN ('ok', 'alarm')),
    opened_seq bigint NOT NULL DEFAULT 0,
    resolved_seq bigint NOT NULL DEFAULT 0,
    last_seq bigint NOT NULL DEFAULT 0,
    -- The newest crossing's event, so an alarm reopened by a late restore can quote its balance.
    last_context jsonb,
    opened_at timestamptz,
    resolved_at timestamptz,
    PRIMARY KEY (customer_id, kind, threshold_key, period_key)
);

CREATE TABLE notifier.alerts (
    id bigserial PRIMARY KEY,
    kind text NOT NULL,
    audience text NOT NULL CHECK (audience IN ('customer', 'operator')),
    customer_id text,
    dedup_key text NOT NULL UNIQUE,
    context jsonb NOT NULL,
    trace jsonb NOT NULL DEFAULT '{}',
    source_subject text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alerts_customer ON notifier.alerts (customer_id, created_at DESC);

CREATE TABLE notifier.deliveries (
    id bigserial PRIMARY KEY,
    alert_id bigint NOT NULL REFERENCES notifier.alerts (id),
    channel text NOT NULL CHECK (channel IN ('email', 'slack', 'webhook')),
    target text,
    status text NOT NULL CHECK (status IN ('pending', 'sent', 'failed', 'skipped')),
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    claim uuid,
    last_error text,
    created_at timestamptz NOT NULL DEFAULT now(),
    sent_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (alert_id, channel)
);
CREATE INDEX deliveries_due ON notifier.deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX deliveries_status ON notifier.deliveries (status, id DESC);

CREATE TABLE notifier.delivery_attempts (
    delivery_id bigint NOT NULL REFERENCES notifier.deliveries (id),
    attempt integer NOT NULL,
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    outcome text NOT NULL CHECK (outcome IN ('sent', 'retry', 'failed')),
    error text,
    PRIMARY KEY (delivery_id, attempt)
);

-- What the ledger (which decides low-balance crossings) reads for a customer's preference.
CREATE VIEW notifier.low_balance_thresholds AS
    SELECT customer_id, low_balance_threshold_nanos AS threshold_nanos,
           low_balance_threshold_percent AS threshold_percent
    FROM notifier.preferences
    WHERE low_balance_threshold_nanos IS NOT NULL OR low_balance_threshold_percent IS NOT NULL;
