"""The service's request slots: all clients together, and one client's share of them."""

from __future__ import annotations

import pytest

from tlearn.deploy.admission import Admission, Busy


def test_a_client_at_its_share_is_refused_while_others_are_taken_on_until_the_queue_is_full():
    admission = Admission(limit=3, per_client=2)
    admission.take("a")
    admission.take("a")
    with pytest.raises(Busy, match=r"^busy: this client already has 2 requests being served; retry shortly$"):
        admission.take("a")
    admission.take("b")
    assert admission.pending == 3 and admission.by_client == {"a": 2, "b": 1}
    with pytest.raises(Busy, match=r"^busy: 3 requests are already being served; retry shortly$"):
        admission.take("c")
    assert admission.by_client == {"a": 2, "b": 1}  # a refusal holds nothing


def test_released_slots_are_free_again_and_idle_clients_are_forgotten():
    admission = Admission(limit=2, per_client=1)
    admission.take("a")
    admission.release("a")
    assert admission.by_client == {} and admission.pending == 0
    admission.take("a")
    admission.take("b")
    admission.release("b")
    admission.take("c")
    assert admission.by_client == {"a": 1, "c": 1}


@pytest.mark.parametrize(("limit", "given", "share"), [(32, None, 24), (5, None, 3), (1, None, 1), (32, 5, 5)])
def test_the_default_share_is_three_quarters_of_the_queue(limit, given, share):
    admission = Admission.sharing(limit, given)
    assert (admission.limit, admission.per_client) == (limit, share)
