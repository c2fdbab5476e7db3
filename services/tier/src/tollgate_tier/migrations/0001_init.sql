-- Lifetime spend per customer and the tier it earns; everything in schema `tier`.
CREATE SCHEMA IF NOT EXISTS tier;

-- One row per money movement that counts towards lifetime spend. The primary key is the
-- source event's business id, so a redelivered or replayed event is a no-op.
CREATE TABLE tier.spend_events (
    source_id    text PRIMARY KEY,
    customer_id  text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('payment', 'refund', 'dispute_lost')),
    delta_nanos  bigint NOT NULL,
    occurred_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX spend_events_customer ON tier.spend_events (customer_id, occurred_at);

-- The tier table in force (from config/tiers.toml), written by the service at start-up so the
-- views below and the sweep can use it from SQL. rank 0 is the lowest tier.
CREATE TABLE tier.levels (
    rank                  int PRIMARY KEY,
    name                  text NOT NULL UNIQUE,
    preset                text NOT NULL,
    min_spend_nanos       bigint NOT NULL,
    rpm                   int NOT NULL,
    tpm                   int NOT NULL,
    min_account_age_days  int NOT NULL DEFAULT 0
);

-- tier/rpm/tpm are the limits last written to the hot state, version their `limits_v`.
CREATE TABLE tier.customers (
    customer_id           text PRIMARY KEY,
    lifetime_spend_nanos  bigint NOT NULL DEFAULT 0,
    first_payment_at      timestamptz,
    tier                  text NOT NULL,
    rpm                   int NOT NULL,
    tpm                   int NOT NULL,
    pinned_tier           text,
    version               bigint NOT NULL DEFAULT 0,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- Transactional outbox: written in the same transaction as the change, relayed after commit
-- to Redis (every row) and JetStream (rows with a subject).
CREATE TABLE tier.outbox (
    id              bigserial PRIMARY KEY,
    customer_id     text NOT NULL,
    limits_version  bigint NOT NULL,
    tier            text NOT NULL,
    rpm             int NOT NULL,
    tpm             int NOT NULL,
    subject         text,
    msg_id          text UNIQUE,
    payload         bytea,
    headers         jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    published_at    timestamptz,
    attempts        int NOT NULL DEFAULT 0,
    last_error      text
);
CREATE INDEX outbox_pending ON tier.outbox (id) WHERE published_at IS NULL;

-- What the gateway's hot-state loader reads (customer_id, tier, rpm, tpm, version) and what the
-- gateway's GET /v1/billing/tier and the console show (spend and the next tier).
CREATE VIEW tier.hot_limits AS
SELECT c.customer_id,
       c.tier,
       c.rpm,
       c.tpm,
       c.version,
       c.lifetime_spend_nanos,
       n.name            AS next_tier,
       n.min_spend_nanos AS next_tier_min_spend_nanos
FROM tier.customers c
LEFT JOIN tier.levels cur ON cur.name = c.tier
LEFT JOIN LATERAL (
    SELECT l.name, l.min_spend_nanos
    FROM tier.levels l
    WHERE l.rank > coalesce(cur.rank, -1)
    ORDER BY l.rank
    LIMIT 1
) n ON c.pinned_tier IS NULL;

-- Limits of a customer the tier service has never seen (no payment yet): the lowest tier.
CREATE VIEW tier.default_limits AS
SELECT name AS tier, rpm, tpm FROM tier.levels WHERE rank = 0;
