"""The ingress before and after a model card exists, on the session Ray cluster: `/health` answers 503 `starting`
until a generator has published the card (so a load balancer waits for a replica that can serve), then `ok`; and the
playground's routes under a route prefix: the page (its base is the prefix, its policy admits this origin only), its
two assets and nothing else, and the model route with the API's auth.

The ingress runs in front of a stand-in generator that never publishes a card; the test publishes the card the real
one would (tiny-shapes'). The page in a real browser: tests/browser/test_playground.py.
"""

from __future__ import annotations

import time
from typing import Any, Iterator

import pytest

from tests.conftest import SERVE_HTTP_PORT, TEST_API_KEY, ApiClient

pytestmark = pytest.mark.ray

APP, ROUTE = "pab-health", "/health-app"


@pytest.fixture(scope="module")
def ingress_only(serve_http: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ApiClient, Any, Any]]:
    from ray import serve

    from deployments.ingress import VideoIngress
    from serve_app.config import AppConfig
    from serve_app.store import JobStore

    @serve.deployment(name="NoGenerator", ray_actor_options={"num_cpus": 0})
    class NoGenerator:
        async def run_job(self, job_id: str, take_over: bool = False) -> str:
            raise RuntimeError("no generator in this test")

    store_dir = str(tmp_path_factory.mktemp("health-store"))
    config = AppConfig(model="tiny-shapes", api_key=TEST_API_KEY, storage={"url": store_dir})
    serve.run(VideoIngress.options(num_replicas=1).bind(NoGenerator.bind(), config), name=APP, route_prefix=ROUTE)
    try:
        yield ApiClient(f"http://127.0.0.1:{SERVE_HTTP_PORT}{ROUTE}", TEST_API_KEY), config, JobStore(store_dir)
    finally:
        serve.delete(APP)


def _public(api: ApiClient) -> ApiClient:
    """The same app without the key."""
    return ApiClient(str(api.http.base_url).rstrip("/"), api_key=None)


def _publish_tiny_shapes_card(config: Any, store: Any) -> Any:
    from pab.runtime.pipelines import VideoGenerator, load_pipeline
    from pab.runtime.request.card import ModelCard

    card = ModelCard.from_generator(config.model_name, VideoGenerator(load_pipeline("tiny-shapes")))
    store.put_card(config.card_key(), card.model_dump_json())
    return card


def test_health_is_starting_until_the_card_is_published_then_ok_and_the_playground_follows(ingress_only) -> None:
    api, config, store = ingress_only
    public = _public(api)
    starting = public.http.get("/health")
    assert (starting.status_code, starting.json()) == (503, {"status": "starting"})
    model = api.http.get("/playground/model")
    assert model.status_code == 503 and model.json()["error"]["code"] == "model_loading"

    card = _publish_tiny_shapes_card(config, store)
    deadline = time.monotonic() + 30  # the card cache re-reads a missing card on every request
    while (health := public.http.get("/health")).status_code != 200:
        assert time.monotonic() < deadline, health.text
        time.sleep(0.1)
    assert health.json() == {"status": "ok"}

    assert public.http.get("/playground/model").status_code == 401  # the same auth as the API
    info = api.http.get("/playground/model").json()
    assert info["model"] == "tiny-shapes" and info["defaults"] == card.defaults
    assert info["vocabulary"]["words"] == card.geometry["prompt_vocabulary"]["words"]
    assert info["size_step"] == 4  # pixel space (no VAE) x patch 4: the multiple validate_params asks for
    assert info["frames"] == {"fixed": 4, "temporal_scale": 1}  # the trained model takes 4 frames only
    assert info["default_preset"] == info["preset_now"] == "reference" and info["auth"] is True
    assert info["limits"]["max_steps"] == config.limits.max_steps and "PAB-246" in info["presets"]


def test_the_page_and_its_assets_are_served_under_the_route_prefix_with_a_same_origin_policy(ingress_only) -> None:
    api, _, _ = ingress_only
    public = _public(api)
    root = public.http.get("/", follow_redirects=False)
    assert root.status_code == 307 and root.headers["location"] == f"{ROUTE}/playground"
    page = public.http.get("/playground")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert f'<base href="{ROUTE}/">' in page.text  # relative URLs resolve under the prefix
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script-src 'self'" in policy and "http" not in policy
    for name, kind in (("app.js", "text/javascript"), ("app.css", "text/css")):
        asset = public.http.get(f"/playground/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind) and asset.content
        assert "http://" not in asset.text and "https://" not in asset.text  # nothing from elsewhere
    assert "http://" not in page.text and "https://" not in page.text
    for other in ("index.html", "..%2Fstatic%2Fapp.js", "__init__.py", "missing.js"):
        assert public.http.get(f"/playground/{other}").status_code == 404, other
