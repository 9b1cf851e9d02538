"""A cancel reaches the model replica that holds the request it names (`serving.routing`), whichever of
several replicas that is; other calls are spread over the replicas as Serve's default router spreads them."""

from __future__ import annotations

from collections import Counter

import pytest
from ray import serve

from serve_app.app import model_deployment_options
from serve_app.serving.model import EmbeddingModel


class ReportsWhoAnswers(EmbeddingModel):
    """The real model deployment whose `cancel` and `whoami` say which replica answered."""

    async def whoami(self) -> str | None:
        return self._replica_id

    async def cancel(self, request_ids: list[str], replica: str | None = None) -> str | None:  # type: ignore[override]
        await super().cancel(request_ids, replica)
        return self._replica_id


@pytest.fixture(scope="module")
def two_replicas(serve_instance, encoder_config):
    options = {**model_deployment_options(), "num_replicas": 2, "ray_actor_options": {"num_cpus": 0.5}}
    handle = serve.run(serve.deployment(ReportsWhoAnswers, **options).bind(encoder_config), name="routing",
                       route_prefix=None)
    yield handle
    serve.delete("routing")


def test_a_cancel_goes_to_the_replica_it_names_and_other_calls_to_both(two_replicas):
    spread = Counter(two_replicas.whoami.remote().result() for _ in range(40))
    assert len(spread) == 2 and min(spread.values()) >= 5, spread  # unpinned calls: both replicas
    for replica in spread:
        answered = {two_replicas.cancel.remote(["some-request"], replica=replica).result() for _ in range(20)}
        assert answered == {replica}
