-- depends: 0001_init
-- The web console: one-time sign-in links, the demo's synthetic usage history, and the indexes
-- that keep its pages fast on customers with many usage entries.

-- A link an operator mints for a customer (POST /admin/v1/customers/{id}/console-link). Only the
-- SHA-256 of the token is stored; consuming it sets used_at, so it signs in exactly once.
CREATE TABLE ledger.console_links (
    token_hash   text PRIMARY KEY CHECK (token_hash ~ '^[0-9a-f]{64}$'),
    customer_id  text NOT NULL REFERENCES ledger.customers,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    used_at      timestamptz
);
CREATE INDEX console_links_customer ON ledger.console_links (customer_id);

-- Demo usage history (scripts/seed_demo.py) so the charts show something on a fresh install.
-- Deliberately NOT ledger entries: it is not money. Dodo never metered it, so as entries it
-- would be "in flight" to reconciliation forever and show as drift; it never moves a balance.
CREATE TABLE ledger.console_synthetic_usage (
    customer_id    text NOT NULL REFERENCES ledger.customers,
    request_id     text NOT NULL,
    model          text NOT NULL,
    input_tokens   integer NOT NULL CHECK (input_tokens >= 0),
    output_tokens  integer NOT NULL CHECK (output_tokens >= 0),
    cost_nanos     bigint NOT NULL CHECK (cost_nanos >= 0),
    occurred_at    timestamptz NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (customer_id, request_id)
);
CREATE INDEX console_synthetic_usage_time ON ledger.console_synthetic_usage (customer_id, occurred_at);

-- The usage chart and the recent-requests table read usage by time; billing history reads the
-- few non-usage entries of a customer who may have hundreds of thousands of usage entries.
CREATE INDEX entries_usage_time ON ledger.entries (customer_id, occurred_at) WHERE kind = 'usage';
CREATE INDEX entries_money_seq ON ledger.entries (customer_id, seq) WHERE kind <> 'usage';
