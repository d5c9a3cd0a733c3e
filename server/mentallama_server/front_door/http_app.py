"""The public HTTP app: the routes of the KServe v2 endpoint (`http_front.HttpFront`) and of the OpenAI-compatible
`/v1` API (`openai_api`), and a 404 for every other path."""

from __future__ import annotations

import contextlib

from fastapi import FastAPI, Request
from fastapi.responses import Response

from mentallama_server.front_door.config import ENTRY_MODELS
from mentallama_server.front_door.http_front import ADMIN_ROUTES, HttpFront, error_response
from mentallama_server.front_door.openai_api import install

__all__ = ["build_app"]


def build_app(front: HttpFront) -> FastAPI:
    app = FastAPI(title="MentaLLaMA front door", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/v2/health/live")
    async def live() -> Response:
        return await front.health("live")

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return await front.health("ready")

    @app.get("/v2")
    async def server_metadata(request: Request) -> Response:
        return await front.server_metadata(request)

    for path in ADMIN_ROUTES:  # before the model routes: /v2/models/stats is not a model called "stats"
        app.add_api_route(path, front.admin, methods=["GET", "POST"], include_in_schema=False)

    for prefix in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):

        @app.get(prefix)
        async def model_metadata(model: str, request: Request, version: str = "") -> Response:
            return await front.metadata(model, request, version)

        @app.get(prefix + "/ready")
        async def model_ready(model: str, request: Request, version: str = "") -> Response:
            return await front.model_ready(model, request, version)

        @app.post(prefix + "/generate")
        async def generate(model: str, request: Request, version: str = "") -> Response:
            return await front.generate(model, request, stream=False, version=version)

        @app.post(prefix + "/generate_stream")
        async def generate_stream(model: str, request: Request, version: str = "") -> Response:
            return await front.generate(model, request, stream=True, version=version)

        @app.post(prefix + "/infer")
        async def infer(model: str) -> Response:
            if model in ENTRY_MODELS:
                return error_response("HTTP end point doesn't support models with decoupled transaction policy", 501)
            return error_response(f"Request for unknown model: '{model}' is not found", 404)

    install(app, front)  # the OpenAI-compatible and analysis /v1 routes, and /openapi.json (of /v1 alone)

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "DELETE", "PATCH"])
    async def other(path: str) -> Response:
        return error_response(f"/{path} is not served here", 404)

    with contextlib.suppress(Exception):
        app.router.redirect_slashes = False
    return app
