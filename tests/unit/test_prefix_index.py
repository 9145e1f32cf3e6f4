"""The gateway's prefix index: chained chunk hashes per backend, bounded and corrected, and
the guards counting a backend's expected cache hits."""

from __future__ import annotations

from gateway.prefix_index import (
    CHUNK_CHARS,
    MAX_REPLY_CHARS,
    PrefixIndex,
    ReplyText,
    answer_hashes,
    chunk_hashes,
    prompt_text,
)
from gateway.scheduling.guards import BackendLoad, admit, placement_cost, predicted_prefill
from gateway.scheduling.latency import PrefillParams
from gateway.scheduling.policy import SloPolicy
from gateway.scheduling.snapshot import BackendView, Demand, WaitingView

HISTORY = "x" * (4 * CHUNK_CHARS)


def test_chunks_chain_and_conversations_share_their_history() -> None:
    first = {"messages": [{"role": "user", "content": HISTORY + " first"}]}
    later = {
        "messages": [
            {"role": "user", "content": HISTORY + " first"},
            {"role": "assistant", "content": "answer " * 100},
            {"role": "user", "content": "more"},
        ]
    }
    a, b = chunk_hashes(prompt_text(first)), chunk_hashes(prompt_text(later))
    assert len(a) == 4
    assert b[:4] == a  # the earlier turn is the later one's prefix
    # A chunk is named by all that came before it.
    assert chunk_hashes("y" + HISTORY)[1] != chunk_hashes(HISTORY)[1]
    assert chunk_hashes("short") == ()
    assert prompt_text({"prompt": ["a", "b"]}) == "a b"


def test_an_answer_covers_the_next_turn_as_far_as_its_reply() -> None:
    reply = "answer " * 100  # 700 characters: past two more chunk boundaries
    first = {"messages": [{"role": "user", "content": HISTORY + " first"}]}
    later = {
        "messages": [
            *first["messages"],
            {"role": "assistant", "content": reply},
            {"role": "user", "content": "more"},
        ]
    }
    answered, next_turn = answer_hashes(first, reply), chunk_hashes(prompt_text(later))
    assert len(answered) == 6 > len(chunk_hashes(prompt_text(first)))
    assert next_turn[:6] == answered
    # A reply the client changed (or another one) matches only as far as the prompt.
    changed = answer_hashes(first, "other " * 120)
    assert changed[:4] == answered[:4]
    assert changed[4] != answered[4]
    # A completion continues its prompt.
    completion = {"prompt": HISTORY}
    assert answer_hashes(completion, "y" * CHUNK_CHARS) == chunk_hashes(HISTORY + "y" * CHUNK_CHARS)


def test_a_reply_past_the_bound_is_not_kept() -> None:
    reply = ReplyText()
    reply.add("a")
    reply.add("")
    reply.add("b")
    assert reply.text == "ab"
    reply.add("c" * MAX_REPLY_CHARS)
    assert reply.text is None
    reply.add("d")  # nothing more is held
    assert reply.text is None


def test_index_matches_leading_chunks_and_evicts_the_oldest() -> None:
    index = PrefixIndex()
    index.set_capacity("b0", 3 * CHUNK_CHARS // 4)  # KV tokens for three chunks
    index.record("b0", (1, 2, 3))
    assert index.matched("b0", (1, 2, 9)) == 2
    assert index.matched("b1", (1, 2)) == 0
    index.record("b0", (7,))  # the oldest chunk (1) goes
    assert index.matched("b0", (1, 2)) == 0
    assert index.matched("b0", (2, 3)) == 2
    found = index.cached_tokens((2, 3, 4, 5), prompt_tokens=400)
    assert set(found) == {"b0"}
    assert 0 < found["b0"] < 400


def test_a_backend_that_held_less_than_expected_shrinks_its_bound() -> None:
    index = PrefixIndex()
    index.set_capacity("b0", 300 * CHUNK_CHARS // 4)
    index.record("b0", tuple(range(200)))
    index.correct("b0", expected=1000, reported=100)
    assert index.size("b0") == 180  # what it held, less a tenth
    index.record("b0", tuple(range(1000, 1060)))
    assert index.size("b0") == 180
    index.correct("b0", expected=1000, reported=1000)  # it met the expectation: regrows
    index.record("b0", (5000, 5001, 5002))
    assert index.size("b0") == 183


def _view(name: str) -> BackendView:
    return BackendView(
        name,
        True,
        frozenset({"m"}),
        0,
        64,
        prefill=PrefillParams(phi=0.0, theta=0.0, alpha=1e-4, beta=0.0),
        kv_capacity=10_000,
    )


def _wait(cached: dict[str, int]) -> WaitingView:
    return WaitingView(1, Demand("m", 0.0, 0.5, 0.05, 4000, 100, 6000), cached=cached)


def test_guards_count_the_uncached_prompt_on_each_backend() -> None:
    warm, cold = BackendLoad.of(_view("warm")), BackendLoad.of(_view("cold"))
    w = _wait({"warm": 3600})
    # Prefill of 400 tokens where 3600 are cached, 4000 where none are.
    assert predicted_prefill(warm, w.prefill_on("warm")) < predicted_prefill(cold, 4000)
    # Its KV need there is the uncached part: it fits where the whole would not.
    small = BackendLoad.of(BackendView("warm", True, frozenset({"m"}), 0, 64, kv_capacity=5000))
    assert admit(small, w, epsilon=1.3, margin=0.99).value == "ok"
    assert (
        admit(
            BackendLoad.of(BackendView("x", True, frozenset({"m"}), 0, 64, kv_capacity=5000)),
            w,
            epsilon=1.3,
            margin=0.99,
        ).value
        == "kv"
    )
    assert placement_cost(warm, w, now=0.0, epsilon=1.3) < placement_cost(
        cold, w, now=0.0, epsilon=1.3
    )


def test_placement_prefers_the_backend_holding_the_prefix() -> None:
    plan = SloPolicy(credits=False)([_wait({"b": 3000})], [_view("a"), _view("b")], 0.0)
    assert [p.backend for p in plan.placements] == ["b"]
    # Without the index's hint, the tie goes by name.
    plan = SloPolicy(credits=False)([_wait({})], [_view("a"), _view("b")], 0.0)
    assert [p.backend for p in plan.placements] == ["a"]


def test_a_session_scores_its_last_backend_up() -> None:
    demand = Demand("m", 0.0, 0.5, 0.05, 400, 100, 600, session="s1")
    plan = SloPolicy(credits=False)(
        [WaitingView(1, demand, affine="b")], [_view("a"), _view("b")], 0.0
    )
    assert [p.backend for p in plan.placements] == ["b"]


def test_changes_are_stamped_per_backend_and_departed_backends_forgotten() -> None:
    index = PrefixIndex()
    index.record("b0", (1, 2))
    seen = index.version
    index.record("b1", (1,))
    assert index.changed_since(seen) == ["b1"]
    index.set_capacity("b0", CHUNK_CHARS // 4)  # one chunk: b0 evicts, and that is a change
    assert sorted(index.changed_since(seen)) == ["b0", "b1"]
    index.retain({"b1"})
    assert index.cached_tokens((1, 2), 100) == {"b1": index.cached_on("b1", (1, 2), 100)}
    assert index.matched("b0", (1,)) == 0
