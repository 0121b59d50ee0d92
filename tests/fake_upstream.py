"""A fake OpenRouter: a real Tornado app on a loopback port, scripted per key, with counters.

``FakeOpenRouter.script(key, *behaviours)`` queues what the next requests made with ``key`` get
(the last behaviour repeats). A behaviour is a dict:

- ``{"status": 429, "error": {...}, "headers": {...}}``: an error answer (JSON body)
- ``{"chunks": 5, "interval": 0.01, "first_delay": 0, "comments": 2}``: a good answer (SSE when
  the request asks for a stream)
- plus, for streams: ``"error_first": {...}`` (an error event before any data),
  ``"mid_error": (n, {...})`` (error event after n chunks), ``"drop_after": n`` (close the
  socket after n chunks), ``"done": False`` (no [DONE]), ``"tool_calls": True``,
  ``"comments_between": True`` (a keep-alive comment after every chunk), ``"pad": n``
  (each chunk's content is n bytes of "x"),
  ``"raw": [b"...", ...]`` (exactly these pieces, flushed one by one, ``interval`` apart)
- ``{"hang": True}``: never answer; ``{"inband_error": {...}}``: HTTP 200 with an error body;
  ``{"body": b"..."}``: HTTP 200 with exactly these bytes;
  ``{"choice_error": {...}}``: HTTP 200, partial content and ``finish_reason: "error"``
- ``"silence": s`` (streams): stop sending for ``s`` seconds after the first chunk
- ``"usage": {...}``: fields of the answer's ``usage`` (``cost``, ``cached_tokens``,
  ``reasoning_tokens``, ...); a good answer always carries usage as OpenRouter's does: in the
  body, or for a stream in one last chunk with empty ``choices`` just before ``[DONE]``

Counters: ``requests`` (per key), ``order`` (keys in request order), ``bodies``, ``headers``,
``paths``, ``disconnects`` and ``closed_at`` (clients that went away mid-answer, with the
monotonic time the fake noticed), ``finished_streams``, ``last_chunk_at``, ``active``,
``generation_lookups`` (per id).
/generation answers with OpenRouter's stats fields (``generations[id]`` overrides them) after
``generation_misses`` 404s per id.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter, defaultdict
from typing import Any

import tornado.web
from tornado.iostream import StreamClosedError

GENERATION_ID = "gen-fake"  # the ``id`` of every answer, and its X-Generation-Id header
MODELS = [
    {
        "id": "openai/gpt-4o",
        "name": "GPT-4o",
        "created": 1715367049,
        "context_length": 128000,
        "pricing": {"prompt": "0.0000025", "completion": "0.00001"},
    },
    {
        "id": "deepseek/deepseek-chat-v3-0324:free",
        "name": "DeepSeek V3 (free)",
        "created": 1742824755,
        "context_length": 163840,
        "pricing": {"prompt": "0", "completion": "0"},
    },
]


def chunk(i: int, model: str, content: str | None = None, **extra: Any) -> bytes:
    delta = {"content": content if content is not None else f"tok{i} "}
    if i == 0:
        delta["role"] = "assistant"
    return stream_event(model, [{"index": 0, "delta": delta, "finish_reason": None}], **extra)


def stream_event(model: str, choices: list[dict[str, Any]], **extra: Any) -> bytes:
    """One ``data:`` event of a stream: a chat.completion.chunk with these choices."""
    body = {
        "id": GENERATION_ID,
        "object": "chat.completion.chunk",
        "created": 1,
        "model": model,
        "provider": "Fake",
        "choices": choices,
        **extra,
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


PROMPT_TOKENS = 3
PRICE_PROMPT, PRICE_COMPLETION = 2.5e-06, 1e-05  # USD per token (openai/gpt-4o's, above)


def usage(completion_tokens: int, **extra: Any) -> dict[str, Any]:
    """OpenRouter's ``usage`` object, always sent: token counts, their details and the cost
    in USD. ``extra`` overrides top-level fields; ``cached_tokens`` and ``reasoning_tokens``
    go into the details."""
    cached = extra.pop("cached_tokens", 0)
    reasoning = extra.pop("reasoning_tokens", 0)
    prompt = extra.pop("prompt_tokens", PROMPT_TOKENS)
    cost = prompt * PRICE_PROMPT + completion_tokens * PRICE_COMPLETION
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt + completion_tokens,
        "cost": round(cost, 12),
        "is_byok": False,
        "prompt_tokens_details": {
            "cached_tokens": cached,
            "cache_write_tokens": 0,
            "audio_tokens": 0,
        },
        "completion_tokens_details": {"reasoning_tokens": reasoning, "image_tokens": 0},
        "cost_details": {"upstream_inference_cost": None},
        **extra,
    }


def usage_chunk(n: int, model: str, **extra: Any) -> bytes:
    """The last event of a stream of ``n`` chunks before ``[DONE]``: empty ``choices`` and the
    usage of the whole answer (OpenRouter sends it exactly once, there)."""
    return stream_event(model, [], usage=usage(n, **extra))


def completion(model: str, content: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": GENERATION_ID,
        "object": "chat.completion",
        "created": 1,
        "model": model,
        "provider": "Fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": "stop",
                "native_finish_reason": "stop",
            }
        ],
        "usage": usage(2, **extra),
    }


def content_of(n: int) -> str:
    """What a good stream of n chunks says in total."""
    return "".join(f"tok{i} " for i in range(n))


class FakeOpenRouter:
    """Scripted behaviour and observed counters, shared by the fake's handlers and the tests."""

    def __init__(self) -> None:
        self.scripts: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.default: dict[str, Any] = {"chunks": 3}
        self.requests: Counter[str] = Counter()  # chat requests per key
        self.bodies: list[bytes] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.order: list[str] = []  # the key of every chat/pass-through request, in order
        self.disconnects = 0  # requests whose client went away before the end
        self.closed_at: list[float] = []  # monotonic time of each of those
        self.last_chunk_at = 0.0  # monotonic time the latest stream chunk was flushed
        self.finished_streams = 0
        self.active = 0
        self.peak = 0  # the most streams running at once
        self.peers: set[Any] = set()  # client addresses of streams: one per upstream connection
        self.key_info: dict[str, tuple[int, dict[str, Any]]] = {}
        self.key_probes: Counter[str] = Counter()
        self.probe_active = 0
        self.probe_peak = 0
        self.probe_delay = 0.0
        self.models_calls = 0
        self.models_status = 200
        self.models_delay = 0.0
        self.generations: dict[str, dict[str, Any]] = {}  # /generation fields per id
        self.generation_misses = 0  # 404s each id gets before its stats
        self.generation_lookups: Counter[str] = Counter()

    def script(self, key: str, *behaviours: dict[str, Any]) -> None:
        self.scripts[key] = list(behaviours)

    def next_for(self, key: str) -> dict[str, Any]:
        queue = self.scripts.get(key)
        if not queue:
            return self.default
        return queue.pop(0) if len(queue) > 1 else queue[0]


class FakeHandler(tornado.web.RequestHandler):
    def initialize(self, state: FakeOpenRouter) -> None:
        self.state = state
        self.gone = False
        self.dropping = False  # we close the socket ourselves: not a client disconnect
        self.counted_gone = False

    def check_xsrf_cookie(self) -> None:
        pass

    @property
    def key(self) -> str:
        return self.request.headers.get("Authorization", "").removeprefix("Bearer ")

    def on_connection_close(self) -> None:
        self.gone = True
        if not self.dropping:
            self.note_disconnect()

    def note_disconnect(self) -> None:
        """Count the client going away, once (Tornado skips on_connection_close when a write
        already failed and the handler finished first)."""
        if not self.counted_gone:
            self.counted_gone = True
            self.state.disconnects += 1
            self.state.closed_at.append(time.monotonic())

    def send_json(self, obj: Any, status: int = 200, headers: dict | None = None) -> None:
        self.set_status(status)
        for name, value in (headers or {}).items():
            self.set_header(name, value)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(obj))


class ChatHandler(FakeHandler):
    async def post(self, path: str = "chat/completions") -> None:
        st = self.state
        st.requests[self.key] += 1
        st.order.append(self.key)
        st.bodies.append(self.request.body)
        st.headers.append(dict(self.request.headers))
        st.paths.append(path)
        req = json.loads(self.request.body)
        model = req.get("model", "?")
        b = st.next_for(self.key)
        if "status" in b and b["status"] != 200:
            error = b.get("error") or {"code": b["status"], "message": f"fake {b['status']}"}
            return self.send_json({"error": error}, b["status"], b.get("headers"))
        if b.get("hang"):
            while not self.gone:
                await asyncio.sleep(0.02)
            return
        if b.get("first_delay"):
            await asyncio.sleep(b["first_delay"])
        if b.get("inband_error"):
            return self.send_json({"error": b["inband_error"]})
        if "body" in b:
            self.set_header("Content-Type", "application/json")
            return self.finish(b["body"])
        if b.get("choice_error"):
            body = completion(model, "partial answ")
            body["choices"][0]["finish_reason"] = "error"
            body["choices"][0]["error"] = b["choice_error"]
            return self.send_json(body)
        if req.get("stream") is True:
            return await self.stream(req, model, b)
        content = f"answer from {self.key[-4:]}"
        body = completion(model, content, **b.get("usage", {}))
        if b.get("tool_calls"):
            body["choices"][0]["message"]["tool_calls"] = [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ]
            body["choices"][0]["finish_reason"] = "tool_calls"
        if path == "embeddings":
            body = {
                "object": "list",
                "model": model,
                "key": self.key[-4:],
                "data": [{"object": "embedding", "index": 0, "embedding": [0.1, 0.2]}],
                "usage": {"prompt_tokens": 1, "total_tokens": 1},
            }
        elif path == "completions":
            body = {
                "id": GENERATION_ID,
                "object": "text_completion",
                "created": 1,
                "model": model,
                "choices": [{"index": 0, "text": content, "finish_reason": "stop"}],
                "usage": usage(2, **b.get("usage", {})),
            }
        self.send_json(body, headers={"X-Generation-Id": GENERATION_ID})

    async def stream(self, req: dict, model: str, b: dict[str, Any]) -> None:
        st = self.state
        st.active += 1
        st.peak = max(st.peak, st.active)
        st.peers.add(self.request.connection.context.address)
        self.set_header("Content-Type", "text/event-stream")
        self.set_header("X-Generation-Id", GENERATION_ID)
        try:
            for _ in range(b.get("comments", 0)):
                self.write(b": OPENROUTER PROCESSING\n\n")
                await self.flush()
                await asyncio.sleep(0.01)
            if "raw" in b:
                for piece in b["raw"]:
                    self.write(piece)
                    await self.flush()
                    st.last_chunk_at = time.monotonic()
                    await asyncio.sleep(b.get("interval", 0.01))
                self.finish()
                st.finished_streams += 1
                return
            if b.get("error_first"):
                self.write(chunk(0, model, "", error=b["error_first"]))
                return self.finish()
            n = b.get("chunks", 3)
            mid = b.get("mid_error")
            for i in range(n):
                if b.get("tool_calls") and i == 0:
                    self.write(self.tool_chunk(model))
                pad = b.get("pad")
                self.write(chunk(i, model, "x" * pad if pad else None))
                if b.get("comments_between"):
                    self.write(b": OPENROUTER PROCESSING\n\n")
                await self.flush()
                st.last_chunk_at = time.monotonic()
                if i == 0 and b.get("silence"):
                    await asyncio.sleep(b["silence"])
                if mid and i + 1 == mid[0]:
                    self.write(chunk(i + 1, model, "", error=mid[1]))
                    if b.get("done", True):
                        self.write(b"data: [DONE]\n\n")
                    return self.finish()
                if b.get("drop_after") == i + 1:
                    self.write(b'data: {"id":"gen-fake","choi')  # half an event, then gone
                    await self.flush()
                    self.dropping = True
                    self.request.connection.stream.close()
                    return
                if b.get("interval"):
                    await asyncio.sleep(b["interval"])
            if n:  # (``chunks: 0`` is a stream that ends before any data)
                self.write(usage_chunk(n, model, **b.get("usage", {})))
            if b.get("done", True):
                self.write(b"data: [DONE]\n\n")
            self.finish()
            st.finished_streams += 1
        except StreamClosedError:
            self.note_disconnect()
        finally:
            st.active -= 1

    @staticmethod
    def tool_chunk(model: str) -> bytes:
        call = {
            "index": 0,
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        }
        body = {
            "id": GENERATION_ID,
            "object": "chat.completion.chunk",
            "created": 1,
            "model": model,
            "choices": [{"index": 0, "delta": {"tool_calls": [call]}, "finish_reason": None}],
        }
        return b"data: " + json.dumps(body).encode() + b"\n\n"


class GenerationHandler(FakeHandler):
    """GET /api/v1/generation?id=...: a keyed GET, scripted like chat (status behaviours).

    Otherwise OpenRouter's stats for that generation, with its field names: ``generations[id]``
    overrides fields (``tokens_*``, ``native_tokens_*``, ``total_cost``...). The first
    ``generation_misses`` lookups of each id answer 404, as OpenRouter does while the stats of a
    just-ended generation are not written yet.
    """

    def get(self) -> None:
        st = self.state
        st.requests[self.key] += 1
        st.order.append(self.key)
        st.paths.append("generation?" + self.request.query)
        b = st.next_for(self.key)
        if "status" in b and b["status"] != 200:
            error = b.get("error") or {"code": b["status"], "message": f"fake {b['status']}"}
            return self.send_json({"error": error}, b["status"], b.get("headers"))
        gid = self.get_argument("id")
        st.generation_lookups[gid] += 1
        if st.generation_lookups[gid] <= st.generation_misses:
            error = {"code": 404, "message": f"Generation {gid} not found"}
            return self.send_json({"error": error}, 404)
        self.send_json({"data": generation_stats(gid, self.key, st.generations.get(gid, {}))})


def generation_stats(gid: str, key: str, extra: dict[str, Any]) -> dict[str, Any]:
    """``data`` of /api/v1/generation: the fields OpenRouter documents (``key`` is the fake's
    own, the last 4 characters of the key that asked)."""
    completion = extra.get("native_tokens_completion", 2)
    cost = PROMPT_TOKENS * PRICE_PROMPT + completion * PRICE_COMPLETION
    return {
        "id": gid,
        "key": key[-4:],
        "model": "openai/gpt-4o",
        "provider_name": "Fake",
        "total_cost": round(cost, 12),
        "usage": round(cost, 12),
        "upstream_inference_cost": None,
        "tokens_prompt": PROMPT_TOKENS,
        "tokens_completion": completion,
        "native_tokens_prompt": PROMPT_TOKENS,
        "native_tokens_completion": completion,
        "native_tokens_reasoning": 0,
        "native_tokens_cached": 0,
        "finish_reason": "stop",
        "native_finish_reason": "stop",
        "cancelled": False,
        "streamed": True,
        "latency": 120,
        "generation_time": 300,
        "is_byok": False,
        "created_at": "2026-01-01T00:00:00Z",
        **extra,
    }


class EchoHandler(FakeHandler):
    """POST or DELETE /api/v1/audio/...: any body (multipart too); echoes what arrived."""

    def post(self, path: str) -> None:
        st = self.state
        st.requests[self.key] += 1
        st.order.append(self.key)
        st.paths.append(path)
        st.bodies.append(self.request.body)
        b = st.next_for(self.key)
        if "status" in b and b["status"] != 200:
            error = b.get("error") or {"code": b["status"], "message": f"fake {b['status']}"}
            return self.send_json({"error": error}, b["status"], b.get("headers"))
        ctype = self.request.headers.get("Content-Type", "")
        answer = {"text": "echo", "content_type": ctype, "key": self.key[-4:]}
        if self.request.method != "POST":
            answer["method"] = self.request.method
        self.send_json(answer)

    delete = post


class ModelsHandler(FakeHandler):
    async def get(self) -> None:
        self.state.models_calls += 1
        if self.state.models_delay:
            await asyncio.sleep(self.state.models_delay)
        if self.state.models_status != 200:
            return self.send_json(
                {"error": {"code": 500, "message": "down"}}, self.state.models_status
            )
        self.send_json({"data": MODELS})


class KeyInfoHandler(FakeHandler):
    async def get(self) -> None:
        st = self.state
        st.key_probes[self.key] += 1
        st.probe_active += 1
        st.probe_peak = max(st.probe_peak, st.probe_active)
        try:
            if st.probe_delay:
                await asyncio.sleep(st.probe_delay)
            status, data = st.key_info.get(
                self.key,
                (
                    200,
                    {
                        "label": "sk-or-v1-...",
                        "limit": None,
                        "limit_remaining": None,
                        "usage": 0.5,
                        "is_free_tier": False,
                    },
                ),
            )
        finally:
            st.probe_active -= 1
        if status != 200:
            return self.send_json({"error": {"code": status, "message": "User not found."}}, status)
        self.send_json({"data": data})


def make_fake_app(state: FakeOpenRouter) -> tornado.web.Application:
    args = {"state": state}
    return tornado.web.Application(
        [
            (r"/api/v1/chat/completions", ChatHandler, args),
            (r"/api/v1/models", ModelsHandler, args),
            (r"/api/v1/key", KeyInfoHandler, args),
            (r"/api/v1/(completions|embeddings)", ChatHandler, args),
            (r"/api/v1/generation", GenerationHandler, args),
            (r"/api/v1/(audio/.+)", EchoHandler, args),
        ]
    )


def now() -> float:
    return time.time()
