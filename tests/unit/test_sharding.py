"""The stride data position: exactly once across a change of worker count."""

from __future__ import annotations

import pytest

from raylm.datasets.sharding import check_resume, resolve_sharding, stride_share
from raylm.errors import UserError

pytestmark = pytest.mark.unit


def _steps(world: int, skip: int, steps: int, total: int) -> list[int]:
    """Global batches (ids 0..total-1) consumed by `steps` lockstep steps of `world` ranks after `skip`."""
    shares = [list(stride_share(range(total), world, r, skip))[:steps] for r in range(world)]
    assert len({len(s) for s in shares}) == 1  # every rank has the same number of batches
    return [b for s in shares for b in s]


@pytest.mark.parametrize("before,after", [(2, 1), (1, 2), (3, 2), (2, 3), (4, 4)])
def test_resume_at_another_worker_count_sees_every_batch_once(before, after):
    total, steps = 60, 7
    first = _steps(before, 0, steps, total)
    position = steps * before  # global batches consumed: what the checkpoint keeps
    rest = _steps(after, position, 10**6, total)
    seen = sorted(first + rest)
    assert seen == sorted(set(seen))  # nothing twice
    dropped = total - len(seen)
    assert dropped < after and seen == list(range(len(seen)))  # nothing skipped but the incomplete last round


def test_ranks_share_a_round_and_drop_the_incomplete_one():
    assert [list(stride_share(range(7), 3, r)) for r in range(3)] == [[0, 3], [1, 4], [2, 5]]
    assert list(stride_share(range(7), 3, 1, skip=2)) == [3]


def test_split_positions_refuse_another_worker_count_with_the_fix():
    check_resume("split", 2, "split", 2)
    check_resume("stride", 2, "stride", 1)
    check_resume("split", 0, "split", 3)  # a checkpoint from before raylm recorded its worker count
    with pytest.raises(UserError, match="2 workers.*cannot resume with 1"):
        check_resume("split", 2, "split", 1)
    with pytest.raises(UserError, match="sharding=split, the config now says stride"):
        check_resume("split", 2, "stride", 2)
    assert resolve_sharding("auto", True) == "stride" and resolve_sharding("auto", False) == "split"
