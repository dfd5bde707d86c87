"""Scale-out on Ray (the `tvmlm[ray]` extra): the HTTP server as a Ray Serve deployment, and a
predictor for Ray Data batch inference.

    import ray, tvmlm.ray
    from ray import serve
    serve.run(tvmlm.ray.deployment("/models/pkg", num_replicas=4, num_cpus=2))   # :8000/v1/...

    ds = ray.data.from_items([{"prompt": "Once upon a time"}, ...])
    out = tvmlm.ray.generate(ds, "/models/pkg", concurrency=4, max_tokens=64)   # + generated_text

Each replica (or predictor actor) loads its own engine, with the actor's CPU share as its compute
threads (`num_cpus`) or its GPU (`num_gpus=1`, device "cuda"). Ray Serve's proxy routes requests
across replicas and restarts a replica that dies; a request that was in flight on it fails (HTTP
500 from the proxy) and the client may retry it. Every node needs tvmlm installed and the model at
the same path: give a compiled package directory (the cache of `tvmlm serve`, or one from
`tvmlm.compile`) so replicas skip compiling, on shared storage or copied to each node.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .config import EngineConfig


def _engine_config(num_cpus: float, engine_config: dict[str, Any] | None) -> EngineConfig:
    fields = dict(engine_config or {})
    fields.setdefault("num_threads", max(1, int(num_cpus)))
    return EngineConfig(**fields)


def deployment(model: str, *, num_replicas: int = 1, num_cpus: float = 1, num_gpus: float = 0,
               device: str = "auto", mode: str = "server", engine_config: dict[str, Any] | None = None,
               served_model_name: str | None = None, api_key: str | None = None, **deployment_options: Any):
    """A Ray Serve application: `num_replicas` replicas of the tvmlm server app (app.py), each with
    its own AsyncEngine on `num_cpus` CPUs (and `num_gpus` GPUs). `serve.run(...)` it."""
    from ray import serve

    from .async_engine import AsyncEngine
    from .server.app import create_app

    config = _engine_config(num_cpus, engine_config)

    @serve.ingress()
    class TvmlmServer:
        def __init__(self) -> None:
            self.engine = AsyncEngine(model, device=device, mode=mode, engine_config=config)

        def __serve_build_asgi_app__(self):
            self.tvmlm_app = create_app(self.engine, served_model_name=served_model_name, api_key=api_key)
            return self.tvmlm_app

        def __del__(self) -> None:
            state = getattr(getattr(self, "tvmlm_app", None), "state", None)
            if state is not None:
                state.tvmlm.draining = True
            self.engine.terminate()

    options = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    return serve.deployment(TvmlmServer, name="tvmlm", num_replicas=num_replicas, ray_actor_options=options,
                            **deployment_options).bind()


class Predictor:
    """A Ray Data callable class: one engine per actor; each batch's rows (column "prompt" for
    text completion, or "messages" for chat) run concurrently in the engine, in one event loop.
    Adds "generated_text", "finish_reason", "prompt_tokens" and "completion_tokens"."""

    def __init__(self, model: str, *, device: str = "auto", mode: str = "local", num_cpus: float = 1,
                 engine_config: dict[str, Any] | None = None, **sampling: Any) -> None:
        from .async_engine import AsyncEngine

        self.engine = AsyncEngine(model, device=device, mode=mode, engine_config=_engine_config(num_cpus, engine_config))
        self.sampling = sampling
        self.loop = asyncio.new_event_loop()

    async def _one(self, row: dict[str, Any]) -> dict[str, Any]:
        if "messages" in row:
            messages = [dict(m) for m in row["messages"]]
            r = await self.engine.chat.completions.create(messages=messages, **self.sampling)
            text = r.choices[0].message.content
        else:
            prompt = row["prompt"]
            prompt = prompt if isinstance(prompt, str) else [int(t) for t in prompt]
            r = await self.engine.completions.create(prompt=prompt, **self.sampling)
            text = r.choices[0].text
        return {"generated_text": text, "finish_reason": r.choices[0].finish_reason,
                "prompt_tokens": r.usage.prompt_tokens, "completion_tokens": r.usage.completion_tokens}

    async def _all(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return await asyncio.gather(*[self._one(r) for r in rows])

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        n = len(next(iter(batch.values())))
        rows = [{k: v[i] for k, v in batch.items()} for i in range(n)]
        results = self.loop.run_until_complete(self._all(rows))
        out = dict(batch)
        for key in ("generated_text", "finish_reason", "prompt_tokens", "completion_tokens"):
            out[key] = [r[key] for r in results]
        return out

    def __del__(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.terminate()


def generate(ds, model: str, *, concurrency: int = 1, num_cpus: float = 1, batch_size: int = 16,
             device: str = "auto", engine_config: dict[str, Any] | None = None, **sampling: Any):
    """`ds.map_batches(Predictor, concurrency=...)`: the dataset with the generated columns added."""
    return ds.map_batches(Predictor, concurrency=concurrency, num_cpus=num_cpus, batch_size=batch_size,
                          batch_format="numpy",
                          fn_constructor_kwargs={"model": model, "device": device, "num_cpus": num_cpus,
                                                 "engine_config": engine_config, **sampling})
