"""Bearer-token authentication for the HTTP API: tokens kept as SHA-256 digests, each with a scope
(runtime.auth.tokens). Pure: no Ray, no web framework; the serving layer asks it about each request."""
