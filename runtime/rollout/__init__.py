"""Model updates without fear: canary, blue-green and shadow rollouts with automatic rollback.

The decisions are pure and live here, apart from Ray and I/O, tested with plain data as the autoscaling
policy is: which version answers a request and which also runs it (`routing`), whether an analysis
interval passes (`analysis`), and how a rollout moves through its steps (`steps`).
"""
