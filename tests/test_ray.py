"""tvmlm.ray on a local Ray cluster (2 CPUs): the Serve deployment's replicas and the Ray Data
predictor give the single engine's greedy results; a killed replica's requests fail clearly or
succeed elsewhere, and the deployment serves again; nothing hangs."""

from __future__ import annotations

import asyncio
import socket

import pytest

# Ray startup and replica/actor launches take ~60-90 s on a 2-vCPU machine: outside the default tier.
pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")
openai = pytest.importorskip("openai")

PROMPTS = [f"story number {i} about the lighthouse" for i in range(8)]
SAMPLING = {"max_tokens": 8, "temperature": 0.0, "ignore_eos": True}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def package(tiny_package):
    return str(tiny_package("llama").path)


@pytest.fixture(scope="module")
def expected(tiny_engine):
    """Greedy texts of the single in-process engine (same model)."""
    return [tiny_engine.completions.create(prompt=p, **SAMPLING).choices[0].text for p in PROMPTS]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_data_predictor_matches_single_engine(cluster, package, expected):
    import tvmlm.ray

    ds = ray.data.from_items([{"prompt": p} for p in PROMPTS])
    rows = tvmlm.ray.generate(ds, package, concurrency=2, num_cpus=1, batch_size=4, device="cpu",
                              **SAMPLING).take_all()
    got = {r["prompt"]: (r["generated_text"], r["finish_reason"], r["completion_tokens"]) for r in rows}
    assert got == {p: (e, "length", 8) for p, e in zip(PROMPTS, expected)}


def test_serve_replicas_match_single_engine_and_survive_a_kill(cluster, package, expected):
    from ray import serve

    import tvmlm.ray

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(tvmlm.ray.deployment(package, num_replicas=2, num_cpus=1, device="cpu", mode="local",
                                       served_model_name="tiny"), name="tvmlm", route_prefix="/")
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0,
                                    timeout=60)

        async def complete(p):
            r = await client.completions.create(model="tiny", prompt=p, max_tokens=8, temperature=0.0,
                                                extra_body={"ignore_eos": True})
            return r.choices[0].text

        async def long_stream(i):
            try:
                s = await client.completions.create(model="tiny", prompt=f"long {i}", max_tokens=400,
                                                    temperature=0.0, stream=True, extra_body={"ignore_eos": True})
                return [c.choices[0].finish_reason async for c in s][-1]
            except openai.APIError as exc:  # the replica died under it: a clear error, not a hang
                return f"error: {type(exc).__name__}"

        async def scenario():
            first = await asyncio.gather(*[complete(p) for p in PROMPTS])
            streams = [asyncio.create_task(long_stream(i)) for i in range(4)]
            await asyncio.sleep(0.05)
            replicas = [a for a in ray.util.list_named_actors(all_namespaces=True) if "SERVE_REPLICA" in a["name"]]
            ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=False)
            outcomes = await asyncio.wait_for(asyncio.gather(*streams), 60)
            after = None
            for _ in range(60):  # the proxy routes around the dead replica; Serve starts a new one
                try:
                    after = await asyncio.wait_for(asyncio.gather(*[complete(p) for p in PROMPTS]), 60)
                    break
                except openai.APIError:
                    await asyncio.sleep(1)
            return first, outcomes, after

        first, outcomes, after = asyncio.run(scenario())
        assert first == expected
        assert all(o == "length" or o.startswith("error") for o in outcomes), outcomes
        assert after == expected
    finally:
        serve.shutdown()
