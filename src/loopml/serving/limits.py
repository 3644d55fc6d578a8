"""A request body size limit, enforced while the body streams in (a declared length is refused at once)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loopml.serving.bodies import json_bytes

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024


class BodyLimit:
    """ASGI middleware answering 413 with a JSON error when a body exceeds `max_bytes`."""

    def __init__(self, app: ASGIApp, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for key, value in scope["headers"]:
            if key == b"content-length":
                if not value.isdigit() or int(value) > self.max_bytes:
                    await self._refuse(send, value.decode("latin-1"))
                    return
                break
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge
            return message

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracked_send)
        except _TooLarge:
            if not started:
                await self._refuse(send, f"more than {received}")

    async def _refuse(self, send: Send, size: str) -> None:
        body = json_bytes(
            {
                "error": f"The request body ({size} bytes) is over the limit of {self.max_bytes} bytes; send "
                "fewer rows per request (or raise serving.max_body_bytes in loopml.yaml)."
            }
        )
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
