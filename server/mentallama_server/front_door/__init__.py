"""The front door: the public gRPC and HTTP endpoints, in front of a tritonserver bound to loopback.

Triton 2.51 (the binary the `nvidia-pytriton` wheel bundles) can be crashed or wedged by a single client: its
gRPC stream-cancellation race, its recursive HTTP JSON parser, integers wrapped to 32 bits, no size limits
(docs/RELIABILITY.md). The front door speaks the same KServe v2 protocols, so every client works unchanged, but
it owns the sockets clients reach:

- requests are validated before they are forwarded (size, nesting, integer ranges, ids, content type; only the
  entry models `mentallama` and `ensemble` are reachable; admin APIs need the admin key);
- requests travel to Triton over a few long-lived upstream `ModelStreamInfer` streams that are never cancelled:
  a client that cancels, disconnects or times out becomes an in-band `stop` (`upstream`);
- request ids are namespaced per client (`admission`), so clients cannot collide or stop each other;
- requests in flight are bounded per client and in all (`admission`), answered UNAVAILABLE / 429 / 503 beyond;
- TLS (mutual TLS too) and API keys on both protocols (`config`).

Modules: `config` (what the launcher hands over), `upstream` (the stream pool), `admission` (limits and
namespaces), `tensors` (request checks and JSON <-> tensors), `grpc_front` and `http_front` (the two protocols),
`openai_api` / `openai_schema` / `chat_template` (OpenAI-compatible `/v1` and `/v1/analyze` on the HTTP app),
`http_app` (the HTTP app's routes), `server` (runs both on one event loop; `python -m mentallama_server.front_door
CONFIG`).
"""
