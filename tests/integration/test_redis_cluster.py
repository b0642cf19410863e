"""The whole path on a 3-master Redis Cluster (the cluster client, every script in one hash slot): sync
inference, async jobs (idempotency, cancel), the producer's stored results and topic replies, and a redelivered
sync request answered once. Chosen tests of the single-server modules run here again on the cluster."""

from __future__ import annotations

import pytest

from tests.conftest import single_or_cluster
from tests.integration.test_async_jobs import (  # noqa: F401 (collected here again, on the cluster)
    jobs_stack,
    test_cancelled_pending_job_is_skipped_by_a_later_worker,
    test_idempotency_key_gives_one_job_and_one_execution,
    test_submit_poll_done_with_the_right_tensor,
)
from tests.integration.test_producer import (  # noqa: F401
    producer_stack,
    test_a_resent_request_gets_the_first_answer,
    test_infer_and_submit_round_trip_numpy,
    test_result_key_delivery_and_stored_results,
)
from tests.integration.test_reply_topic import (  # noqa: F401
    output_topic,
    producer,
    test_stored_first_result_is_emitted_after_a_crash_before_produce,
    test_topic_reply_lands_exactly_once,
)
from tests.integration.test_sync_path import (  # noqa: F401
    sync_stack,
    test_binary_infer_matches_onnxruntime,
    test_json_infer_matches_onnxruntime,
    test_worker_loss_loses_no_request,
)

# Module-scoped (one kind only), so that the module-scoped stack of the sync-path tests can use it.
redis_url = pytest.fixture(params=["cluster"], name="redis_url", scope="module")(single_or_cluster)
