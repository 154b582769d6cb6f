"""The serving layer: the engine layer's models on Ray Serve behind the Open Inference Protocol.

The Serve application is `runtime.serve.app:build_app`. Only `app`, `deployment` and `telemetry`'s
`RayTelemetry` need Ray; the HTTP handling (`handler`, `protocol`), batching (`batcher`, `batching`),
autoscaling and placement decisions are plain Python, tested without Ray.
"""
