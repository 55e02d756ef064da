-- The feature job as one DuckDB query: the reference that `benchmarks/feature_job.py` times beside
-- `features.build.build_features` and checks row by row against it.
--
-- Same rows, same columns, same definitions as features/encoder.py (tokens, aggregates) and
-- features/labels.py (hindsight labels); see those files for the meaning of each column. Times are
-- compared as integer epoch milliseconds, floored as the encoder floors them (`epoch_us(ts) // 1000`:
-- DuckDB's `epoch_ms` rounds).
--
-- Filled in by the Python glue (`render_query`), all plain literals:
--   {events}, {decisions}   Parquet files (decisions: a query of zero rows when there are none)
--   {plan}                  VALUES (cutoff_ms, split): the cutoffs of features.build.plan_splits
--   {enums}                 VALUES (field, token, idx): contract order of event types, channels, actions
--   {dt_bucket}, {value_bucket}  bucket expressions from the encoder's edges (DT_EDGES_S, VALUE_EDGES)
--   the rest                numbers from BuildConfig and the encoder (max_len, windows in days, ...)
-- The statements before the line `-- query` are setup (macros, an enum type); the glue wraps the query
-- in a COPY.

-- n days in milliseconds.
CREATE OR REPLACE TEMP MACRO ms_days(n) AS n::BIGINT * 86400000;
-- Days from the last such event to the cutoff, capped at `never_days`, which is also the answer when
-- nothing happened.
CREATE OR REPLACE TEMP MACRO days_since(last_ms, t) AS
    coalesce(least((t - last_ms)::DOUBLE / 86400000, {never_days}), {never_days});
-- `lo` <= x < `hi`, for x in milliseconds and the bounds in days.
CREATE OR REPLACE TEMP MACRO within(x, lo, hi) AS x >= ms_days(lo) AND x < ms_days(hi);
-- The last `max_len` of a customer's first n events (its events before a cutoff), oldest first.
CREATE OR REPLACE TEMP MACRO last_events(history, n) AS history[greatest(n - {max_len}, 0) + 1:n];
-- The contract's event types as an enum: comparisons with them are comparisons of small integers.
CREATE TYPE event_type_enum AS ENUM ({event_types});

-- query
WITH
raw AS (
    SELECT
        customer_id::VARCHAR AS customer_id,
        epoch_us(ts) // 1000 AS ts_ms,
        event_type::VARCHAR AS event_type,
        channel::VARCHAR AS channel,
        item_id::VARCHAR AS item_id,
        category::VARCHAR AS category,
        message_type::VARCHAR AS message_type,
        value::DOUBLE AS value,
        file_index,
        file_row_number
    FROM read_parquet({events})
),
plan(cutoff_ms, split) AS (VALUES {plan}),
enums(field, token, idx) AS (VALUES {enums}),

-- Vocabularies of items and categories, fitted on the events before the validation window: most
-- frequent first, ties by token; index 0 is "none", 1 out-of-vocabulary, fitted tokens from 2.
item_vocab AS (
    SELECT item_id AS token, (row_number() OVER (ORDER BY n DESC, item_id) + 1)::INTEGER AS idx
    FROM (
        SELECT item_id, count(*) AS n FROM raw
        WHERE item_id IS NOT NULL AND ts_ms < {vocab_end_ms}
        GROUP BY item_id HAVING count(*) >= {item_min_count}
    )
    QUALIFY idx < {max_items} + 2
),
category_vocab AS (
    SELECT category AS token, (row_number() OVER (ORDER BY n DESC, category) + 1)::INTEGER AS idx
    FROM (
        SELECT category, count(*) AS n FROM raw
        WHERE category IS NOT NULL AND ts_ms < {vocab_end_ms}
        GROUP BY category HAVING count(*) >= {item_min_count}
    )
),

-- Events in (customer, time, input order), with their position per customer (1, 2, ...) and the
-- seconds since the customer's previous event.
ordered AS (
    SELECT
        r.*,
        row_number() OVER w AS pos,
        (r.ts_ms - lag(r.ts_ms) OVER w) // 1000 AS dt_s
    FROM raw r
    WINDOW w AS (PARTITION BY r.customer_id ORDER BY r.ts_ms, r.file_index, r.file_row_number)
),
-- ... and their tokens (0 padding or none, 1 out-of-vocabulary; bucket 2 is "first event" or "no value").
ev AS MATERIALIZED (
    SELECT
        r.customer_id,
        r.ts_ms,
        r.pos,
        TRY_CAST(r.event_type AS event_type_enum) AS event_type,
        r.event_type NOT IN ('email_sent', 'sms_sent') AS act,
        r.event_type = 'purchase' AS pur,
        -- Stage labels count days: an order is the first purchase of a customer-day (UTC), an active day
        -- the first event the customer did that day; carts and checkouts count on days without an order.
        r.event_type = 'purchase' AND row_number() OVER (
            PARTITION BY r.customer_id, r.ts_ms // 86400000, r.event_type = 'purchase'
            ORDER BY r.ts_ms, r.file_index, r.file_row_number) = 1 AS is_order,
        r.event_type NOT IN ('email_sent', 'sms_sent') AND row_number() OVER (
            PARTITION BY r.customer_id, r.ts_ms // 86400000, r.event_type NOT IN ('email_sent', 'sms_sent')
            ORDER BY r.ts_ms, r.file_index, r.file_row_number) = 1 AS is_active_day,
        r.event_type IN ('add_to_cart', 'checkout_start') AND NOT bool_or(r.event_type = 'purchase') OVER (
            PARTITION BY r.customer_id, r.ts_ms // 86400000) AS is_open_cart,
        CASE WHEN r.value IS NULL OR isnan(r.value) THEN 0
             ELSE round_even(r.value * 100, 0)::BIGINT END AS cents,
        coalesce(et.idx, 1) AS tok_event_type,
        CASE WHEN r.item_id IS NULL THEN 0 ELSE coalesce(iv.idx, 1) END AS tok_item_id,
        CASE WHEN r.category IS NULL THEN 0 ELSE coalesce(cv.idx, 1) END AS tok_category,
        CASE WHEN r.channel IS NULL THEN 0 ELSE coalesce(ch.idx, 1) END AS tok_channel,
        CASE WHEN r.message_type IS NULL THEN 0 ELSE coalesce(mt.idx, 1) END AS tok_message_type,
        CASE WHEN r.dt_s IS NULL THEN 2 ELSE {dt_bucket} END AS tok_dt_bucket,
        ((r.ts_ms // 3600000) % 24 + 1)::INTEGER AS tok_hour,
        ((r.ts_ms // 86400000 + 3) % 7 + 1)::INTEGER AS tok_weekday,  -- 1970-01-01 was a Thursday
        CASE WHEN r.value IS NULL OR isnan(r.value) THEN 2 ELSE {value_bucket} END AS tok_value_bucket
    FROM ordered r
    LEFT JOIN enums et ON et.field = 'event_type' AND et.token = r.event_type
    LEFT JOIN enums ch ON ch.field = 'channel' AND ch.token = r.channel
    LEFT JOIN enums mt ON mt.field = 'message_type' AND mt.token = r.message_type
    LEFT JOIN item_vocab iv ON iv.token = r.item_id
    LEFT JOIN category_vocab cv ON cv.token = r.category
),
dec AS (
    SELECT
        customer_id::VARCHAR AS customer_id,
        epoch_us(ts) // 1000 AS d_ms,
        decision_id::VARCHAR AS decision_id,
        action::VARCHAR AS action,
        propensity::DOUBLE AS propensity
    FROM {decisions}
),

-- Rows: a customer at a cutoff when active (an event of their own, not a message the shop sent) in the
-- `active_within_days` before it, or, in a split not in `active_only_splits`, with any event before it;
-- or when a decision was logged for them at it (the decision's cutoff is the last one at or before it, if
-- the decision came within `decision_window_days`). Cutoffs are midnights, so customer-days suffice.
active AS (
    SELECT DISTINCT d.customer_id, p.cutoff_ms
    FROM (
        SELECT DISTINCT customer_id, ts_ms // 86400000 * 86400000 AS day_ms,
            event_type NOT IN ('email_sent', 'sms_sent') AS own
        FROM ev
    ) d
    JOIN plan p ON p.cutoff_ms > d.day_ms
        AND ((d.own AND p.cutoff_ms <= d.day_ms + ms_days({active_within_days}))
            OR p.split NOT IN ({active_only_splits}))
),
logged AS (
    SELECT DISTINCT d.customer_id, p.cutoff_ms
    FROM dec d
    ASOF JOIN plan p ON d.d_ms >= p.cutoff_ms
    WHERE d.d_ms < p.cutoff_ms + ms_days({decision_window_days})
        AND d.customer_id IN (SELECT customer_id FROM ev)
),
rows AS MATERIALIZED (
    SELECT c.customer_id, c.cutoff_ms, p.split, row_number() OVER () AS row_id
    FROM (SELECT * FROM active UNION SELECT * FROM logged) c
    JOIN plan p USING (cutoff_ms)
),
-- The decision logged at each row's cutoff: the first within `decision_window_days` after it.
row_dec AS (
    SELECT r.row_id, d.decision_id, d.action, d.propensity, d.d_ms
    FROM rows r
    JOIN dec d ON d.customer_id = r.customer_id
        AND d.d_ms >= r.cutoff_ms AND d.d_ms < r.cutoff_ms + ms_days({decision_window_days})
    QUALIFY row_number() OVER (PARTITION BY r.row_id ORDER BY d.d_ms, d.decision_id) = 1
),

-- Every row meets its customer's events up to the end of its label windows: the aggregates and labels
-- are conditional counts and sums over these pairs. `rel`: the event's time from the cutoff (negative
-- before it); `rel_d`: from the row's logged decision (null without one).
pairs AS (
    SELECT r.row_id, e.ts_ms - r.cutoff_ms AS rel, e.ts_ms - rd.d_ms AS rel_d, e.*
    FROM rows r
    LEFT JOIN row_dec rd USING (row_id)
    JOIN ev e ON e.customer_id = r.customer_id AND e.ts_ms < r.cutoff_ms + ms_days({pairs_days})
),
agg AS (
    SELECT
        row_id,
        -- Inputs: events before the cutoff, over all history or in the last n days.
        count(*) FILTER (rel < 0) AS n_before,
        max(rel) FILTER (rel < 0 AND act) AS last_act_rel,
        count(*) FILTER (rel < 0 AND act) AS n_events,
        count(*) FILTER (within(rel, -28, 0) AND act) AS n_events_28d,
        count(*) FILTER (rel < 0 AND pur) AS n_purchases,
        count(*) FILTER (within(rel, -90, 0) AND pur) AS n_purchases_90d,
        count(*) FILTER (rel < 0 AND event_type = 'refund') AS n_refunds,
        count(*) FILTER (within(rel, -7, 0) AND event_type = 'product_view') AS n_product_views_7d,
        count(*) FILTER (within(rel, -28, 0) AND event_type = 'product_view') AS n_product_views_28d,
        count(*) FILTER (within(rel, -28, 0) AND event_type = 'search') AS n_searches_28d,
        count(*) FILTER (within(rel, -7, 0) AND event_type = 'add_to_cart') AS n_carts_7d,
        count(*) FILTER (within(rel, -28, 0) AND event_type = 'add_to_cart') AS n_carts_28d,
        count(*) FILTER (within(rel, -28, 0) AND event_type = 'checkout_start') AS n_checkouts_28d,
        count(*) FILTER (within(rel, -28, 0) AND event_type = 'email_open') AS n_email_opens_28d,
        count(*) FILTER (within(rel, -28, 0) AND event_type = 'email_click') AS n_email_clicks_28d,
        count(*) FILTER (within(rel, -7, 0) AND event_type = 'email_sent') AS emails_received_7d,
        count(*) FILTER (within(rel, -28, 0) AND event_type = 'email_sent') AS emails_received_28d,
        coalesce(sum(cents) FILTER (rel < 0 AND pur), 0)
            - coalesce(sum(abs(cents)) FILTER (rel < 0 AND event_type = 'refund'), 0) AS monetary_cents,
        min(ts_ms) AS first_ms,
        max(ts_ms) FILTER (rel < 0 AND act) AS last_activity_ms,
        max(ts_ms) FILTER (rel < 0 AND pur) AS last_purchase_ms,
        -- Orders: days (UTC) with a purchase; the first purchase of each customer-day marks one.
        count(*) FILTER (rel < 0 AND is_order) AS n_purchase_days,
        -- The last signup of either kind (account or newsletter).
        max(ts_ms) FILTER (rel < 0 AND event_type IN ('signup', 'newsletter_signup')) AS last_signup_ms,
        max(ts_ms) FILTER (rel < 0 AND event_type = 'email_sent') AS last_email_ms,
        max(ts_ms) FILTER (rel < 0 AND event_type = 'add_to_cart') AS last_cart_ms,
        -- Consent: the last subscribe or unsubscribe wins.
        arg_max(event_type = 'newsletter_signup', pos)
            FILTER (rel < 0 AND event_type IN ('newsletter_signup', 'email_unsubscribe')) AS subscribed,
        -- Labels: what happened around the cutoff.
        count(*) FILTER (within(rel, 0, 7) AND pur) > 0 AS purchase_7d,
        count(*) FILTER (within(rel, 0, 30) AND pur) > 0 AS purchase_30d,
        count(*) FILTER (within(rel, 0, {churn_days}) AND act) > 0 AS active_after,
        -- The stage rules of features/labels.py, as counts of orders, active days and events in windows.
        min(rel) FILTER (rel < 0) AS first_rel,
        count(*) FILTER (within(rel, -{post_purchase_days}, 0) AND is_order) AS orders_recent,
        count(*) FILTER (within(rel, -{feedback_days}, 0) AND is_order) AS orders_feedback,
        count(*) FILTER (within(rel, -{post_purchase_days}, {post_purchase_days})
                         AND event_type IN ('review', 'support_contact')) AS feedback,
        count(*) FILTER (within(rel, -{loyal_days}, 0) AND is_order) AS orders_loyal,
        count(*) FILTER (within(rel, -{loyal_recent_days}, 0) AND is_order) AS orders_loyal_recent,
        count(*) FILTER (within(rel, 0, {decision_days}) AND is_order) AS orders_next,
        count(*) FILTER (within(rel, -{decision_days}, {decision_days}) AND is_open_cart) AS open_carts,
        count(*) FILTER (within(rel, -{consideration_days}, {consideration_days})
                         AND event_type IN ('product_view', 'search', 'add_to_cart')) AS interest,
        count(*) FILTER (within(rel, -{at_risk_days}, {at_risk_days}) AND is_active_day) AS active_days_around,
        count(*) FILTER (within(rel, 0, {quiet_days}) AND is_active_day) AS active_days_after,
        -- Outcome of the logged decision: the `outcome_days` from the decision on.
        count(*) FILTER (within(rel_d, 0, {outcome_days}) AND pur) > 0 AS outcome_purchase,
        coalesce(sum(cents) FILTER (within(rel_d, 0, {outcome_days}) AND pur), 0) AS outcome_cents,
        count(*) FILTER (within(rel_d, 0, {outcome_days}) AND event_type = 'email_unsubscribe') > 0
            AS outcome_unsubscribe
    FROM pairs
    GROUP BY row_id
),
-- Each customer's tokens in event order: a row's sequence is the slice of its last `max_len` events
-- before the cutoff (positions n_before - max_len + 1 .. n_before), oldest first.
history AS (
    SELECT
        customer_id,
        list(struct_pack(
            event_type := tok_event_type,
            item_id := tok_item_id,
            category := tok_category,
            channel := tok_channel,
            message_type := tok_message_type,
            dt_bucket := tok_dt_bucket,
            hour := tok_hour,
            weekday := tok_weekday,
            value_bucket := tok_value_bucket
        ) ORDER BY pos) AS tokens
    FROM ev
    GROUP BY customer_id
),
-- Distinct items bought in the `next_items_days` after the cutoff, in order of first purchase.
next_items AS (
    SELECT row_id, list(tok_item_id ORDER BY first_pos)[1:{max_next_items}] AS items
    FROM (
        SELECT r.row_id, e.tok_item_id, min(e.pos) AS first_pos
        FROM rows r
        JOIN ev e ON e.customer_id = r.customer_id AND e.pur AND e.tok_item_id > 0
            AND e.ts_ms >= r.cutoff_ms AND e.ts_ms < r.cutoff_ms + ms_days({next_items_days})
        GROUP BY ALL
    )
    GROUP BY row_id
)
SELECT
    r.customer_id,
    make_timestamptz(r.cutoff_ms * 1000) AS cutoff,
    r.split,
    -- Segment: new (first event recent, or none before the cutoff), else active (an event of their own in
    -- the window), else lapsed.
    CASE
        WHEN a.first_rel IS NULL OR a.first_rel >= -ms_days({new_within_days}) THEN 'new'
        WHEN a.last_act_rel >= -ms_days({active_within_days}) THEN 'active'
        ELSE 'lapsed'
    END AS segment,
    least(a.n_before, {max_len})::INTEGER AS seq_len,
    list_transform(last_events(h.tokens, a.n_before), lambda x: x.event_type) AS tok_event_type,
    list_transform(last_events(h.tokens, a.n_before), lambda x: x.item_id) AS tok_item_id,
    list_transform(last_events(h.tokens, a.n_before), lambda x: x.category) AS tok_category,
    list_transform(last_events(h.tokens, a.n_before), lambda x: x.channel) AS tok_channel,
    list_transform(last_events(h.tokens, a.n_before), lambda x: x.message_type) AS tok_message_type,
    list_transform(last_events(h.tokens, a.n_before), lambda x: x.dt_bucket) AS tok_dt_bucket,
    list_transform(last_events(h.tokens, a.n_before), lambda x: x.hour) AS tok_hour,
    list_transform(last_events(h.tokens, a.n_before), lambda x: x.weekday) AS tok_weekday,
    list_transform(last_events(h.tokens, a.n_before), lambda x: x.value_bucket) AS tok_value_bucket,
    a.n_events::DOUBLE AS n_events,
    a.n_events_28d::DOUBLE AS n_events_28d,
    a.n_purchases::DOUBLE AS n_purchases,
    a.n_purchases_90d::DOUBLE AS n_purchases_90d,
    a.n_refunds::DOUBLE AS n_refunds,
    a.n_product_views_7d::DOUBLE AS n_product_views_7d,
    a.n_product_views_28d::DOUBLE AS n_product_views_28d,
    a.n_searches_28d::DOUBLE AS n_searches_28d,
    a.n_carts_7d::DOUBLE AS n_carts_7d,
    a.n_carts_28d::DOUBLE AS n_carts_28d,
    a.n_checkouts_28d::DOUBLE AS n_checkouts_28d,
    a.n_email_opens_28d::DOUBLE AS n_email_opens_28d,
    a.n_email_clicks_28d::DOUBLE AS n_email_clicks_28d,
    a.emails_received_7d::DOUBLE AS emails_received_7d,
    a.emails_received_28d::DOUBLE AS emails_received_28d,
    a.monetary_cents::DOUBLE / 100 AS monetary,
    days_since(a.last_activity_ms, r.cutoff_ms) AS recency_days,
    CASE WHEN a.n_before > 0 THEN days_since(a.first_ms, r.cutoff_ms) ELSE 0.0 END AS tenure_days,
    a.n_purchase_days::DOUBLE AS n_purchase_days,
    days_since(a.last_purchase_ms, r.cutoff_ms) AS days_since_last_purchase,
    days_since(a.last_signup_ms, r.cutoff_ms) AS days_since_signup,
    days_since(a.last_email_ms, r.cutoff_ms) AS days_since_last_email,
    -- An open cart: something added since the last purchase, within the last 7 days.
    (days_since(a.last_cart_ms, r.cutoff_ms) < 7
        AND days_since(a.last_cart_ms, r.cutoff_ms) < days_since(a.last_purchase_ms, r.cutoff_ms))::DOUBLE
        AS open_cart,
    (CASE WHEN a.subscribed IS NULL THEN -1 WHEN a.subscribed THEN 1 ELSE 0 END)::DOUBLE AS email_consent,
    a.purchase_7d,
    a.purchase_30d,
    NOT a.active_after AS churn_30d,
    -- Stage: features/labels.py's rules in its order, first match wins; a customer with no event before
    -- the cutoff is a new contact (first_rel null).
    CASE
        WHEN a.orders_recent > 0
            OR (a.orders_feedback > 0 AND a.feedback > 0 AND a.orders_loyal <= {feedback_max_orders})
            THEN 'post_purchase'
        WHEN a.orders_next > 0 OR a.open_carts >= {decision_min_cart_events} THEN 'decision'
        WHEN (a.first_rel IS NULL OR a.first_rel > -ms_days({awareness_days})) AND a.n_purchase_days = 0
            AND a.interest < {consideration_min_events} THEN 'awareness'
        WHEN a.active_days_around <= {at_risk_max_active_days}
            OR a.active_days_after <= {quiet_max_active_days} THEN 'at_risk'
        WHEN a.orders_loyal >= {loyal_min_orders} AND a.orders_loyal_recent > 0 THEN 'loyal'
        ELSE 'consideration'
    END AS stage,
    coalesce(n.items, []::INTEGER[]) AS next_items,
    rd.decision_id,
    rd.action AS logged_action,
    rd.propensity AS logged_propensity,
    CASE WHEN rd.decision_id IS NOT NULL THEN a.outcome_purchase END AS outcome_purchase,
    CASE WHEN rd.decision_id IS NOT NULL THEN a.outcome_cents::DOUBLE / 100 END AS outcome_revenue,
    CASE WHEN rd.decision_id IS NOT NULL THEN a.outcome_unsubscribe END AS outcome_unsubscribe
FROM rows r
JOIN agg a USING (row_id)
JOIN history h USING (customer_id)
LEFT JOIN next_items n USING (row_id)
LEFT JOIN row_dec rd USING (row_id)
