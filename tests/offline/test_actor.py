"""The encoder actor (`EncodeBatch`) in this process, and how the driver sizes and checks it: the identity it
reports with every block, the cache it is given (none by default), its CPUs."""

from __future__ import annotations

import pyarrow as pa
import pytest

from serve_app.core.cache import CacheConfig
from serve_app.offline import OfflineJob
from serve_app.offline.actor import EncodeBatch, block_identities, resolve_encoder
from serve_app.offline.dataset import actor_cpus
from serve_app.offline.shards import check_identity

TABLE = pa.table({"id": ["a", "b"], "text": ["東京 library", "river bank"]})


@pytest.fixture(scope="module")
def actor(encoder_config) -> EncodeBatch:
    """An actor of the jobs' settings, without a cache (a job's default)."""
    return EncodeBatch(encoder_config, cache=OfflineJob(input="in", output="out").cache)


def test_a_job_has_no_cache_unless_given_one(actor):
    assert OfflineJob(input="in", output="out").cache is None
    assert actor._cached.cache is None


def test_actor_reports_the_identity_of_its_encoder_on_every_row(actor, direct, encoder_config):
    block = actor(TABLE)
    assert block.column("identity").null_count == 0 and block.num_rows == 2
    assert block_identities(block) == [direct.identity]
    assert resolve_encoder(encoder_config) == direct.identity  # what it would be, without loading the model


def test_blocks_encoded_with_another_identity_are_refused(actor, direct):
    block = actor(TABLE)
    check_identity(block, direct.identity)  # the job's own
    for other in ({"revision": "local-0"}, {"dtype": "bf16"}, {"max_length": 32}):
        with pytest.raises(RuntimeError, match="every node must load the same checkpoint, in the same dtype"):
            check_identity(block, direct.identity.model_copy(update=other))


def test_actor_with_a_cache_answers_known_texts_without_the_model(encoder_config):
    actor = EncodeBatch(encoder_config, cache=CacheConfig(backend="memory"))
    first = actor(TABLE)

    def model_must_not_run(batch):
        raise AssertionError("the model ran for a cached text")

    actor._encoder.forward = model_must_not_run
    assert actor(TABLE).equals(first)


def test_actor_cpus_default_to_the_node_shared_by_the_actors(local_ray, encoder_config):
    job = OfflineJob(input="in", output="out", encoder=encoder_config)
    assert actor_cpus(job) == 4.0  # the suite's Ray has 4 CPUs: torch gets a thread per core
    assert actor_cpus(job.model_copy(update={"concurrency": 2})) == 2.0
    assert actor_cpus(job.model_copy(update={"num_gpus": 0.5})) == 1.0
    assert actor_cpus(job.model_copy(update={"num_cpus": 1.5})) == 1.5
