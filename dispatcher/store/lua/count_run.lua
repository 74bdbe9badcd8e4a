-- Counts one delivery (count_delivery.lua) inside the transaction that writes a message
-- down (routes/celery/delivery.py). KEYS[1] the job's run count, KEYS[2] its taken
-- mark; ARGV[1] the count's ttl, ARGV[2] '1' when the delivery is held ahead of its
-- start (taken by the consumer), else '0' (counted as it starts). Returns the count.
return count_delivery(KEYS[1], KEYS[2], ARGV[1], ARGV[2] == '1')
