"""A seeded simulator of an online shop that knows the truth.

Customers move through latent journey stages by a daily Markov chain, emit the events of their stage, receive
e-mails chosen by a randomised logging policy, and react to them with true, stage-dependent effects. Because
the world is known, the latent stage of every customer-day and the exact 7-day conversion probability of every
logged decision under every action are written beside the events, so that stage models and policies can be
scored exactly: value(policy) = mean over decisions of sum_a pi(a | x) * p_convert[a].

Dynamics (one step per day, per customer; see `world._EDGES`, `world._HAZARD_BASE` and `world._EFFECTS` for
the numbers):

* Latent stages: awareness, consideration, decision, post_purchase, loyal, at_risk, lapsed. `lapsed` exists
  only here; compare with the model's `schema.Stage` through `LATENT_TO_STAGE` (lapsed -> at_risk).
* Each day a customer in stage s first buys with probability h(s) (the purchase hazard); a purchase moves
  them to post_purchase. Otherwise they move along one of the stage's outgoing edges with that edge's daily
  rate, or stay. Hazard and rates depend on the stage, on two fixed traits of the customer (an activity
  multiplier and the number of past purchases, which only changes through a purchase) and on the action of
  the e-mail sent in the last 7 days. Nothing else enters, so the chain is Markov in the stage given the
  traits, and the exact conversion probability is a 7-step forward pass (`true_conversion_probabilities`).
* Events: each day a stage-specific Poisson number of events with a stage-specific mix of types, grouped
  into sessions (views before carts before checkouts) on web or app; purchase days add a purchase session
  (view, cart, checkout, purchase per item) or a store purchase. Items come from the customer's own recent
  views and purchases (repeat) or from their Dirichlet category taste and Zipf popularity within category.
* Decisions: every `decision_every_days` (7) days from the customer's first campaign weekday after arrival,
  at `decision_hour` UTC, before any of that day's activity. The logging policy
  (`logging_policy_probabilities`) sends with probability `send_rate` and picks among the nine messages
  with weights that depend only on observable history; every action keeps a propensity > 0 for consented
  customers. Non-consented or unsubscribed customers get no_send with propensity 1.
* Control group (`control_share`, 0 by default): a stable random share of customers (sha256 of the seed and
  the customer id, as the service's control group) whose every decision is no_send. The logging policy still
  draws for them, and its draw is kept as `intended_action`, so that a campaign report can compare the
  customers sent action a with the control customers the policy meant to send a. Membership is random
  across customers, so every decision logs the marginal propensity of the action taken,
  control_share * [a = no_send] + (1 - control_share) * pi(a | x), as the service does (`serving.scoring`).
  With control_share 0 the random stream and every output are those of a run without a control group.
* The realised conversion of a decision (a purchase on days d .. d+6) is drawn from the same chain that the
  forward pass uses, so it is a Bernoulli draw of exactly `p_convert__<action taken>`.

Realism (ranges that `tests/test_simulate.py` checks on a 2,500-customer, 91-day shop; in brackets what the
default 20,000-customer, 182-day run measured):

* events per customer over 182 days 30 .. 80 [65]; events per customer-day from arrival 0.35 .. 0.8 [0.55];
* share of customer-days per latent stage: awareness 3-18 % [7.0], consideration 8-25 % [14.7],
  decision 1-6 % [3.3], post_purchase 5-20 % [12.3], loyal 4-20 % [10.0], at_risk 5-20 % [8.7],
  lapsed 15-55 % [44.1] (many customers lapse; the share grows with the length of the period);
* decision-stage customers: 10-30 % of their days carry a purchase [21.7], and 40-80 % of the no_send
  decisions made while in decision convert within 7 days [62.9];
* 7-day conversion of all decisions under no_send: 4-15 % [10.1];
* e-mail: 20-30 % of sends opened [23.4], 2-5 % clicked [3.1], unsubscribes below 1 % of sends [0.63],
  growing with the e-mails of the last 28 days [0.12 % at one, 0.97 % at four];
* true lift, mean p_convert(a) - p_convert(no_send) by latent stage: cart_abandonment | decision > 0.05
  [0.18], winback_offer | at_risk > 0.01 [0.045], browse_abandonment | consideration > 0.02 [0.096],
  loyalty_reward | loyal > 0.02 [0.13], cross_sell and post_purchase_onboarding | post_purchase > 0.01,
  welcome_series | awareness > 0.005 [0.019]; wrong-stage pairs (cart_abandonment | awareness,
  winback_offer | loyal, welcome_series | decision, ...) within +-0.015.

Outputs of `simulate(config, out)` (the three single files get one row group per chunk, so memory stays
bounded at any number of customers):

* `events/part-NNNNN.parquet`: one part per chunk of `chunk_size` customers, each customer in one part,
  sorted by customer_id then ts; `schema.EVENT_SCHEMA` field names, types and nullability, with
  customer_id, event_type, channel, item_id, category and message_type dictionary-encoded. Ids: customer
  "C0000001", item "I000001", event "C0000001-E000042", session "C0000001-S0421" (customer, day, slot),
  campaign_id of e-mail events = the decision_id. Customers who exist at the start signed up during the
  year before it, so their signup (and newsletter_signup) events lie before `start`.
* `catalog.parquet`: item_id, category, price, popularity (probability; sums to 1).
* `decisions.parquet`: the observable log: decision_id ("D0000001-003"), customer_id, ts (decision time;
  the email_sent event has the same ts), action, propensity, policy, control (bool: the customer is in the
  control group) and intended_action (the logging policy's draw; equal to action outside the control group).
* `truth/stages.parquet`: customer_id, day (date32), stage (latent, incl. lapsed) for every customer-day
  from arrival (the stage at the start of the day).
* `truth/decisions.parquet`: decision_id, customer_id, ts, stage (latent at the decision), action,
  propensity, converted (0/1, a purchase within the outcome window), unsubscribed (0/1), sends_28d (e-mails
  in the 28 days up to and including this decision), and p_convert__<action> for every action in `ACTIONS`.
* `simulation.json`: `SimSummary` with the config.

The package, in the order the data flows: `world` (the truth: stages, edges, hazards, effects, event mix,
the exact forward pass), `config` (`SimConfig`), `catalog`, `logging_policy` (the policy and the control
group), `customers` (a chunk of customers and their state), `day` (one day of a chunk), `writer` (a
chunk's tables) and `run` (`simulate`: the chunks, the files, the summary).
"""

from features.sim.config import SimConfig
from features.sim.logging_policy import PolicyInputs, control_group, logging_policy_probabilities
from features.sim.run import SimSummary, format_summary, simulate
from features.sim.world import (
    ACTIONS,
    LATENT_STAGES,
    LATENT_TO_STAGE,
    true_conversion_probabilities,
    unsubscribe_probability,
)

__all__ = [
    "ACTIONS",
    "LATENT_STAGES",
    "LATENT_TO_STAGE",
    "PolicyInputs",
    "SimConfig",
    "SimSummary",
    "control_group",
    "format_summary",
    "logging_policy_probabilities",
    "simulate",
    "true_conversion_probabilities",
    "unsubscribe_probability",
]
