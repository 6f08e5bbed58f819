"""The optional HTTP server (--http / HTTP_ADDRESS): /metrics, /healthz, /readyz and the
gallery. Nothing here is imported unless the server is turned on, except `settings`,
which reads its variables without importing the web libraries."""
