-- The ledger: customers, API keys, the append-only money ledger, the webhook inbox, the
-- transactional outbox and reconciliation with Dodo. Money is integer nano-dollars (BIGINT).

CREATE SCHEMA IF NOT EXISTS ledger;

CREATE TABLE ledger.customers (
    customer_id       text PRIMARY KEY CHECK (customer_id ~ '^[A-Za-z0-9_-]+$'),
    dodo_customer_id  text UNIQUE,
    email             text NOT NULL,
    name              text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ledger.api_keys (
    key_id        text PRIMARY KEY,
    customer_id   text NOT NULL REFERENCES ledger.customers,
    key_hash      text NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    prefix        text NOT NULL,
    name          text NOT NULL DEFAULT '',
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    models        text NOT NULL DEFAULT '',
    created_at    timestamptz NOT NULL DEFAULT now(),
    revoked_at    timestamptz,
    last_used_at  timestamptz
);
CREATE INDEX api_keys_customer ON ledger.api_keys (customer_id);

-- One row per customer: the balance derived from its entries, kept in the same transaction as
-- each entry (seq = number of entries = the version the hot copy in Redis compares against).
CREATE TABLE ledger.accounts (
    customer_id           text PRIMARY KEY REFERENCES ledger.customers,
    balance_nanos         bigint NOT NULL DEFAULT 0,
    seq                   bigint NOT NULL DEFAULT 0 CHECK (seq >= 0),
    lifetime_topup_nanos  bigint NOT NULL DEFAULT 0,
    last_topup_nanos      bigint NOT NULL DEFAULT 0,
    last_topup_at         timestamptz,
    -- NULL: default_low_threshold_percent of the last top-up (or grant).
    low_threshold_nanos   bigint CHECK (low_threshold_nanos >= 0),
    alert_state           text NOT NULL DEFAULT 'ok' CHECK (alert_state IN ('ok', 'low', 'depleted')),
    -- Version of the account's status (frozen during an open dispute) for the hot copy.
    status_v              bigint NOT NULL DEFAULT 0,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ledger.entries (
    id               bigserial PRIMARY KEY,
    customer_id      text NOT NULL REFERENCES ledger.accounts,
    seq              bigint NOT NULL CHECK (seq > 0),
    kind             text NOT NULL CHECK (kind IN ('topup', 'grant', 'usage', 'refund', 'dispute', 'adjustment', 'expiry')),
    amount_nanos     bigint NOT NULL,
    balance_after    bigint NOT NULL,
    idempotency_key  text NOT NULL UNIQUE,
    reference        text,
    model            text,
    input_tokens     integer,
    cached_input_tokens integer,
    output_tokens    integer,
    reasoning_tokens integer,
    list_price_nanos bigint,
    price_book_version text,
    estimated        boolean,
    key_id           text,
    reason           text,
    occurred_at      timestamptz NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (customer_id, seq),
    CHECK ((kind IN ('topup', 'grant') AND amount_nanos >= 0)
        OR (kind IN ('usage', 'refund', 'dispute', 'expiry') AND amount_nanos <= 0)
        OR kind = 'adjustment')
);
CREATE INDEX entries_customer_created ON ledger.entries (customer_id, created_at);
CREATE INDEX entries_reference ON ledger.entries (reference);

CREATE FUNCTION ledger.entries_are_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING
        MESSAGE = 'ledger.entries is append-only (' || TG_OP || ' refused); correct with an adjustment entry',
        ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER entries_no_update_delete BEFORE UPDATE OR DELETE ON ledger.entries
    FOR EACH ROW EXECUTE FUNCTION ledger.entries_are_append_only();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON ledger.entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.entries_are_append_only();

-- Usage that is not charged to credits (subscription and free plans, zero-cost requests), kept
-- so per-period usage can be counted; keyed by request id, so redelivery is a no-op.
CREATE TABLE ledger.plan_usage (
    request_id        text PRIMARY KEY,
    customer_id       text NOT NULL REFERENCES ledger.customers,
    billing_mode      text NOT NULL,
    plan              text,
    model             text NOT NULL,
    input_tokens      integer NOT NULL,
    output_tokens     integer NOT NULL,
    list_price_nanos  bigint NOT NULL,
    occurred_at       timestamptz NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX plan_usage_customer ON ledger.plan_usage (customer_id, occurred_at);

-- Dodo payments as Tollgate applied them: what was credited, and how much of it refunds and
-- lost disputes have taken back since (cumulative, so partial reversals round exactly).
CREATE TABLE ledger.payments (
    payment_id        text PRIMARY KEY,
    customer_id       text NOT NULL REFERENCES ledger.customers,
    total_cents       bigint NOT NULL,
    tax_cents         bigint NOT NULL DEFAULT 0,
    currency          text NOT NULL,
    credited_nanos    bigint NOT NULL,
    product_id        text,
    reversed_cents    bigint NOT NULL DEFAULT 0,
    reversed_nanos    bigint NOT NULL DEFAULT 0,
    source            text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX payments_customer ON ledger.payments (customer_id);

CREATE TABLE ledger.refunds (
    refund_id      text PRIMARY KEY,
    payment_id     text NOT NULL REFERENCES ledger.payments,
    amount_cents   bigint NOT NULL,
    debited_nanos  bigint NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ledger.disputes (
    dispute_id     text PRIMARY KEY,
    payment_id     text NOT NULL REFERENCES ledger.payments,
    customer_id    text NOT NULL REFERENCES ledger.customers,
    status         text NOT NULL CHECK (status IN ('open', 'won', 'lost', 'closed')),
    amount_cents   bigint NOT NULL,
    debited_nanos  bigint NOT NULL DEFAULT 0,
    opened_at      timestamptz NOT NULL DEFAULT now(),
    closed_at      timestamptz
);
CREATE INDEX disputes_open ON ledger.disputes (customer_id) WHERE status = 'open';

-- Every verified Dodo webhook, raw, keyed by webhook-id (a replay is a no-op).
CREATE TABLE ledger.webhook_inbox (
    webhook_id         text PRIMARY KEY,
    type               text NOT NULL,
    payload            text NOT NULL,
    event_timestamp    timestamptz,
    received_at        timestamptz NOT NULL DEFAULT now(),
    applied_at         timestamptz,
    outcome            text NOT NULL,
    detail             text,
    customer_id        text,
    -- Set while the event waits for a payment Tollgate has not seen yet (reordered delivery).
    parked_payment_id  text
);
CREATE INDEX webhook_inbox_parked ON ledger.webhook_inbox (parked_payment_id) WHERE applied_at IS NULL;

CREATE TABLE ledger.outbox (
    id            bigserial PRIMARY KEY,
    subject       text NOT NULL,
    msg_id        text NOT NULL UNIQUE,
    payload       bytea NOT NULL,
    headers       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    published_at  timestamptz,
    attempts      integer NOT NULL DEFAULT 0,
    last_error    text
);
CREATE INDEX outbox_unpublished ON ledger.outbox (id) WHERE published_at IS NULL;

-- Credit movements Tollgate makes on Dodo's credit entitlement (grants, reversals), sent after
-- commit by a worker with the entry's idempotency key.
CREATE TABLE ledger.dodo_sync (
    id                bigserial PRIMARY KEY,
    idempotency_key   text NOT NULL UNIQUE,
    customer_id       text NOT NULL REFERENCES ledger.customers,
    entry_type        text NOT NULL CHECK (entry_type IN ('credit', 'debit')),
    amount_nanos      bigint NOT NULL CHECK (amount_nanos > 0),
    reason            text NOT NULL,
    status            text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done', 'failed', 'skipped')),
    attempts          integer NOT NULL DEFAULT 0,
    next_attempt_at   timestamptz NOT NULL DEFAULT now(),
    last_error        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    done_at           timestamptz
);
CREATE INDEX dodo_sync_pending ON ledger.dodo_sync (next_attempt_at) WHERE status = 'pending';

-- Tollgate's copy of Dodo's credit balance per customer (from credit.* webhooks and the API).
CREATE TABLE ledger.dodo_credit_balances (
    dodo_customer_id       text NOT NULL,
    credit_entitlement_id  text NOT NULL,
    balance                text NOT NULL,
    balance_nanos          bigint NOT NULL,
    overage                text NOT NULL DEFAULT '0',
    as_of                  timestamptz NOT NULL,
    last_entry_id          text,
    last_deduction_at      timestamptz,
    source                 text NOT NULL,
    updated_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dodo_customer_id, credit_entitlement_id)
);

CREATE TABLE ledger.drift_checks (
    check_id          text PRIMARY KEY,
    customer_id       text NOT NULL REFERENCES ledger.customers,
    tollgate_nanos    bigint NOT NULL,
    in_flight_nanos   bigint NOT NULL,
    dodo_nanos        bigint,
    drift_nanos       bigint,
    status            text NOT NULL CHECK (status IN ('ok', 'suspect', 'drift', 'unknown')),
    detail            text,
    checked_at        timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX drift_checks_customer ON ledger.drift_checks (customer_id, checked_at DESC);

-- Contract views read by the gateway's hot-state loader and key lookup (see
-- docs/design/hot-path-and-contracts.md). Plan columns are neutral until subscriptions land.
CREATE VIEW ledger.hot_account AS
SELECT a.customer_id,
       a.balance_nanos AS bal,
       a.seq,
       ''::text AS plan,
       ''::text AS plan_models,
       ''::text AS fallback,
       (-1)::bigint AS cap,
       0::bigint AS pused,
       0::bigint AS plan_v,
       CASE WHEN EXISTS (SELECT 1 FROM ledger.disputes d WHERE d.customer_id = a.customer_id AND d.status = 'open')
            THEN 'frozen' ELSE 'active' END AS status,
       ''::text AS free_models,
       0::bigint AS daily_cap,
       0::bigint AS dused,
       0::bigint AS dday,
       a.status_v
FROM ledger.accounts a;

CREATE VIEW ledger.gateway_keys AS
SELECT k.key_hash, k.key_id, k.customer_id, c.dodo_customer_id, k.status, k.models
FROM ledger.api_keys k
JOIN ledger.customers c USING (customer_id);
