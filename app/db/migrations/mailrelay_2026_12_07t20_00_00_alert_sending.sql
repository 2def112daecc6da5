-- A notice is claimed (what it tells, and when) before it is sent, so that of two runs at once
-- only one sends it. A run killed between the claim and the send left the notice marked as
-- told, and the channel never heard of it. sending_since marks a claim whose send is not
-- confirmed yet: a later run undoes one older than any run may live (app/alerts/state.py,
-- SEND_LEASE), and the notice goes out then.
-- IF NOT EXISTS: a database of the old chain runs the migrations after the baseline again.
ALTER TABLE alert_notices ADD COLUMN IF NOT EXISTS sending_since timestamptz;
