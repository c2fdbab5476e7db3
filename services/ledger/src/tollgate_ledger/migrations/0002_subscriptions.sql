-- depends: 0001_init
-- Subscriptions next to credits: the plans of the price book, Dodo subscriptions as last seen,
-- the plan each customer is on now (with the version the hot copy compares), team members and
-- member keys. The hot_account view now returns real plan fields.

-- The [plans.*] of config/pricing.toml as the ledger last loaded them (at start-up), so the
-- contract view can compute caps in SQL. models = ',a,b,', fallback = ',a=b,c=d,' (the Lua's
-- encodings); caps in nanos of list price.
CREATE TABLE ledger.plan_definitions (
    plan                     text PRIMARY KEY,
    models                   text NOT NULL DEFAULT '',
    fallback                 text NOT NULL DEFAULT '',
    soft_cap_nanos           bigint,
    soft_cap_per_seat_nanos  bigint,
    daily_hard_cap_nanos     bigint,
    price_book_version       text NOT NULL,
    updated_at               timestamptz NOT NULL DEFAULT now()
);

-- Every Dodo subscription as last applied. event_at is Dodo's timestamp of the webhook that set
-- this state: an older event never overwrites a newer one. period_start is the local start of
-- the current billing period (Dodo's previous_billing_date, or the event's time or the ledger's
-- clock if earlier: a period never starts in the future); usage since then counts against the cap.
CREATE TABLE ledger.subscriptions (
    subscription_id       text PRIMARY KEY,
    customer_id           text NOT NULL REFERENCES ledger.customers,
    product_id            text NOT NULL,
    plan                  text NOT NULL,
    status                text NOT NULL,
    seats                 integer NOT NULL CHECK (seats >= 1),
    dodo_period_start     timestamptz,
    period_start          timestamptz NOT NULL,
    period_end            timestamptz,
    cancel_at_period_end  boolean NOT NULL DEFAULT false,
    cancelled_at          timestamptz,
    -- Set once the subscription stopped paying for good (cancelled, expired, failed, or the end
    -- of a period it was cancelled at): final, a late event never revives it.
    ended_at              timestamptz,
    event_at              timestamptz NOT NULL,
    last_event_type       text NOT NULL,
    last_webhook_id       text,
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX subscriptions_customer ON ledger.subscriptions (customer_id);
CREATE INDEX subscriptions_period_end ON ledger.subscriptions (period_end)
    WHERE ended_at IS NULL AND cancel_at_period_end;

-- The plan each customer is on now: '' (credits only, never subscribed), 'free' (a paid plan
-- ended or is on hold, or an operator said so), or a paid plan. Derived from the customer's
-- subscriptions unless an operator override is set. plan_v is the version the hot copy compares
-- (set_fields with version field plan_v); softcap_period is the period whose soft-cap event has
-- been published (once per period).
CREATE TABLE ledger.customer_plans (
    customer_id           text PRIMARY KEY REFERENCES ledger.customers,
    plan                  text NOT NULL DEFAULT '',
    subscription_id       text,
    subscription_status   text,
    seats                 integer NOT NULL DEFAULT 1 CHECK (seats >= 1),
    period_start          timestamptz,
    period_end            timestamptz,
    cancel_at_period_end  boolean NOT NULL DEFAULT false,
    operator_plan         text,
    operator_seats        integer CHECK (operator_seats >= 1),
    operator_set_at       timestamptz,
    plan_v                bigint NOT NULL DEFAULT 0,
    -- List-price subscription usage since period_start: kept by the usage consumer under this
    -- row's lock (and recounted when a period starts), so loads and cap checks never scan usage.
    period_used_nanos     bigint NOT NULL DEFAULT 0,
    softcap_period        timestamptz,
    updated_at            timestamptz NOT NULL DEFAULT now()
);

-- Team members: each gets their own keys; the keys belong to the team's customer, so their
-- usage counts against the team's cap. A member beyond the paid seat count cannot be added.
CREATE TABLE ledger.members (
    member_id    text PRIMARY KEY,
    customer_id  text NOT NULL REFERENCES ledger.customers,
    email        text NOT NULL,
    name         text NOT NULL DEFAULT '',
    status       text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'removed')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    removed_at   timestamptz
);
CREATE UNIQUE INDEX members_active_email ON ledger.members (customer_id, lower(email)) WHERE status = 'active';

ALTER TABLE ledger.api_keys ADD COLUMN member_id text REFERENCES ledger.members;
CREATE INDEX api_keys_member ON ledger.api_keys (member_id) WHERE member_id IS NOT NULL;

-- Same columns as before (the hot-state loader copies each into the Redis hash), now with the
-- customer's plan. pused = list-price subscription usage since the period start (the counter
-- above); dused = Free usage since the start of today (UTC, bounded by the small daily cap);
-- dday = days since the epoch, as admit.lua computes it.
CREATE OR REPLACE VIEW ledger.hot_account AS
SELECT a.customer_id,
       a.balance_nanos AS bal,
       a.seq,
       COALESCE(p.plan, '') AS plan,
       CASE WHEN p.plan NOT IN ('', 'free') THEN COALESCE(d.models, '') ELSE '' END AS plan_models,
       CASE WHEN p.plan NOT IN ('', 'free') THEN COALESCE(d.fallback, '') ELSE '' END AS fallback,
       CASE WHEN p.plan IS NULL OR p.plan IN ('', 'free') THEN (-1)::bigint
            WHEN d.soft_cap_per_seat_nanos IS NOT NULL THEN d.soft_cap_per_seat_nanos * GREATEST(p.seats, 1)
            ELSE COALESCE(d.soft_cap_nanos, -1) END AS cap,
       CASE WHEN p.plan NOT IN ('', 'free') THEN p.period_used_nanos ELSE 0 END::bigint AS pused,
       COALESCE(p.plan_v, 0)::bigint AS plan_v,
       CASE WHEN EXISTS (SELECT 1 FROM ledger.disputes x WHERE x.customer_id = a.customer_id AND x.status = 'open')
            THEN 'frozen' ELSE 'active' END AS status,
       CASE WHEN p.plan = 'free' THEN COALESCE(f.models, '') ELSE '' END AS free_models,
       CASE WHEN p.plan = 'free' THEN COALESCE(f.daily_hard_cap_nanos, 0) ELSE 0 END::bigint AS daily_cap,
       CASE WHEN p.plan = 'free' THEN (
            SELECT COALESCE(sum(u.list_price_nanos), 0) FROM ledger.plan_usage u
            WHERE u.customer_id = a.customer_id AND u.billing_mode = 'free'
              AND u.occurred_at >= to_timestamp(today.day * 86400))
            ELSE 0 END::bigint AS dused,
       today.day AS dday,
       a.status_v
FROM ledger.accounts a
LEFT JOIN ledger.customer_plans p USING (customer_id)
LEFT JOIN ledger.plan_definitions d ON d.plan = p.plan
LEFT JOIN ledger.plan_definitions f ON f.plan = 'free'
CROSS JOIN LATERAL (SELECT floor(extract(epoch FROM now()) / 86400)::bigint AS day) today;
