"""The Jepsen-style checker: concurrent transactional read-process-write loops."""

from __future__ import annotations

import pytest
from txn_checker import PipelineChecker, open_test_core

from storage.memory import open_memory_storage


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_pipeline_keeps_every_invariant(seed: int) -> None:
    async with open_memory_storage() as storage, open_test_core(storage) as core:
        result = await PipelineChecker(core, inputs=40, workers=4, seed=seed).run()
    assert result.errors == []
    assert result.committed == 40
    assert result.aborted > 0  # aborts happened and were retried
    assert result.reads >= 40  # the readers saw every committed output
