"""The HTTP floor of the online benchmark: FastAPI on uvicorn, as `loopml serve` runs them, doing no work.

It answers every POST to /v1/features/online with a fixed response (a real loopml answer, same bytes), so its
latency is what the framework, the loopback and the load generator cost on this machine under the same load.

    .venv/bin/python benchmarks/http_floor.py PORT RESPONSE_FILE
"""

from __future__ import annotations

import sys
from pathlib import Path

import uvicorn
from fastapi import FastAPI, Request, Response


def floor_app(answer: bytes) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/features/online")
    async def online(request: Request) -> Response:
        await request.body()
        return Response(answer, media_type="application/json")

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(b"{}", media_type="application/json")

    return app


if __name__ == "__main__":
    port, response_file = int(sys.argv[1]), Path(sys.argv[2])
    uvicorn.run(
        floor_app(response_file.read_bytes()),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
    )
