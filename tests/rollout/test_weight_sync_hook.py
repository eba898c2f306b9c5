"""After every verl weight sync, the adapter tells its server once (TP leader only)."""

import asyncio

import pytest

pytest.importorskip("verl")


class Remote:
    def __init__(self, calls):
        self.calls = calls

    def remote(self, *args):
        self.calls.append(args)
        fut = asyncio.get_event_loop().create_future()
        fut.set_result(len(self.calls))
        return fut


def make_adapter(monkeypatch, leader, synced):
    from verl.workers.rollout.sglang_rollout.sglang_rollout import ServerAdapter

    from er_verl.rollout.adapter import EfficientServerAdapter

    async def fake_update(self, weights, global_steps=None, wire_format="named_tensors", **kw):
        synced.append((list(weights), global_steps, wire_format))

    monkeypatch.setattr(ServerAdapter, "update_weights", fake_update)
    adapter = EfficientServerAdapter.__new__(EfficientServerAdapter)
    adapter._engine = object()
    adapter._is_server_tp_leader = lambda: leader
    calls = []
    adapter.server_actor = type("Actor", (), {"after_weight_sync": Remote(calls)})()
    return adapter, calls


@pytest.mark.parametrize("leader,expected_calls", [(True, [(7,)]), (False, [])])
def test_adapter_calls_server_hook_after_the_weights_arrived(monkeypatch, leader, expected_calls):
    synced = []
    adapter, calls = make_adapter(monkeypatch, leader, synced)
    asyncio.run(adapter.update_weights(iter([("w", 1)]), global_steps=7))
    assert synced == [([("w", 1)], 7, "named_tensors")]
    assert calls == expected_calls


def test_server_hook_counts_syncs_and_resets_group_stats():
    from er_verl.rollout.server import EfficientSGLangHttpServer

    server = EfficientSGLangHttpServer.__new__(EfficientSGLangHttpServer)
    server.config = {"custom": None}
    server._init_efficient_state()
    server._groups_since_sync = {"g": 4}
    assert asyncio.run(server.after_weight_sync(1)) == 1
    assert asyncio.run(server.after_weight_sync(2)) == 2
    assert server._groups_since_sync == {}
