"""tvmlm's OpenAI-compatible HTTP server (`tvmlm serve`; needs the `serve` extra: FastAPI, uvicorn,
prometheus-client).

    app.py      the FastAPI app over an AsyncEngine: routes, auth, body limit, per-request log line
    sse.py      the server-sent-events response (ends its request on disconnect or shutdown)
    errors.py   OpenAI-shaped error bodies
    metrics.py  the Prometheus registry behind GET /metrics
    run.py      uvicorn with the draining shutdown
    cli.py      the `tvmlm serve` subcommand
"""

from __future__ import annotations


def create_app(*args, **kwargs):
    """`app.create_app` (imported on use, so `import tvmlm.server` needs no FastAPI)."""
    from .app import create_app as make

    return make(*args, **kwargs)
