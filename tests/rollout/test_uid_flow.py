"""The GRPO uid travels: real agent loop → server generate → the SGLang GenerateReqInput."""

import asyncio
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("verl")

from hydra import compose, initialize_config_dir  # noqa: E402

import verl  # noqa: E402
from er_verl.rollout.agent_loop import AGENT_LOOP_NAME, GROUP_KEY, with_group  # noqa: E402
from er_verl.engine.spec_round import DRAFTED_TAG, ROUNDS_TAG  # noqa: E402

CONFIG_DIR = os.path.join(os.path.dirname(verl.__file__), "trainer", "config")


class FakeTokenizerManager:
    """Stands in for SGLang's TokenizerManager: records requests, answers with spec meta_info."""

    def __init__(self):
        self.requests = []

    def generate_request(self, obj, request=None):
        self.requests.append(obj)

        async def stream():
            yield {
                "output_ids": [7, 8, 9],
                "meta_info": {
                    "finish_reason": {"type": "stop"},
                    "output_token_logprobs": [(-0.5, 7, None), (-0.25, 8, None), (-1.0, 9, None)],
                    "spec_verify_ct": 2, "spec_num_correct_drafts": 1, "spec_num_proposed_drafts": 6,
                    DRAFTED_TAG: [0, 2, 2], ROUNDS_TAG: [0, 1, 1],  # one K=2 round: 2 drafted, 1 accepted
                },
            }

        return stream()


def make_server(config, speculating=True):
    from er_verl.rollout.server import EfficientSGLangHttpServer

    class Server(EfficientSGLangHttpServer):
        lora_as_adapter = False

    server = Server.__new__(Server)  # no SGLang launch: the generate path only
    server.config, server.replica_rank, server.global_steps = config, 0, 3
    server._disaggregation_role, server._pd_decode_peers = "null", []
    server._init_efficient_state()
    server.speculating = speculating
    server.tokenizer_manager = FakeTokenizerManager()
    server._keep_meta_info()
    return server


class ServerManager:
    """What LLMServerClient does for one replica: forward generate kwargs to the server."""

    def __init__(self, server):
        self.server = server

    async def generate(self, request_id, *, prompt_ids, sampling_params, image_data=None, video_data=None, **_):
        return await self.server.generate(prompt_ids, sampling_params, request_id, image_data=image_data, video_data=video_data)


def trainer_config(agent_loop):
    from verl.utils.config import omega_conf_to_dataclass

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        cfg = compose("ppo_trainer", overrides=[
            "actor_rollout_ref.rollout.name=efficient_sglang",
            f"actor_rollout_ref.rollout.agent.default_agent_loop={agent_loop}",
            "actor_rollout_ref.rollout.prompt_length=64", "actor_rollout_ref.rollout.response_length=16",
        ])
    rollout = omega_conf_to_dataclass(cfg.actor_rollout_ref.rollout)
    rollout.max_model_len = 128
    return cfg, rollout


def run_loop(agent_loop, tokenizer_dir, samples, speculating=True):
    import hydra
    from transformers import AutoTokenizer
    from verl.experimental.agent_loop.agent_loop import DictConfigWrap, _agent_loop_registry

    cfg, rollout = trainer_config(agent_loop)
    server = make_server(rollout, speculating)
    shared_params = {"temperature": 1.0, "top_p": 1.0, "logprobs": True}

    async def go():  # the agent loop binds the running event loop when it is built
        loop = hydra.utils.instantiate(
            _agent_loop_registry[agent_loop], trainer_config=DictConfigWrap(cfg), server_manager=ServerManager(server),
            tokenizer=AutoTokenizer.from_pretrained(tokenizer_dir), processor=None, dataset_cls=None,
            data_config=DictConfigWrap(cfg.data),
        )
        return [await loop.run(shared_params, **s) for s in samples]

    outputs = asyncio.run(go())
    assert shared_params == {"temperature": 1.0, "top_p": 1.0, "logprobs": True}  # never mutated
    return server, outputs


def sample(uid, text="What is 6 * 7?"):
    return {"raw_prompt": [{"role": "user", "content": text}], "uid": uid, "index": 0}


def test_uid_reaches_the_sglang_request(tiny_tokenizer_dir):
    server, outputs = run_loop(AGENT_LOOP_NAME, tiny_tokenizer_dir, [sample("g-1"), sample("g-1"), sample("g-2")])
    groups = [req.sampling_params["custom_params"][GROUP_KEY] for req in server.tokenizer_manager.requests]
    assert groups == ["g-1", "g-1", "g-2"]
    assert [o.response_ids for o in outputs] == [[7, 8, 9]] * 3
    assert server._groups_since_sync == {"g-1": 2, "g-2": 1}


def test_forced_response_lengths_reach_the_request_and_repeat_across_runs(tiny_tokenizer_dir, monkeypatch):
    """The systems knob: each request gets a drawn max_tokens (capped at verl's response_length 16) and
    ignore_eos; the draw depends on the prompt and its occurrence, so a second backend's run repeats it."""
    from er_verl.rollout import agent_loop

    monkeypatch.setenv(agent_loop.FORCE_LEN_ENV, "12:1.5:7")
    samples = [dict(sample("g-1"), extra_info={"index": i // 2}) for i in range(8)]  # 4 prompts x 2 samples
    runs = []
    for _ in range(2):
        monkeypatch.setattr(agent_loop, "_forced_spec", None)  # a fresh process: counts start again
        server, outputs = run_loop(AGENT_LOOP_NAME, tiny_tokenizer_dir, samples)
        sent = [(r.sampling_params["max_new_tokens"], r.sampling_params["ignore_eos"]) for r in server.tokenizer_manager.requests]
        drawn = [o.extra_fields[agent_loop.FORCED_LEN_FIELD] for o in outputs]
        assert sent == [(n, True) for n in drawn] and max(drawn) == 16  # capped at verl's response length
        runs.append(drawn)
    assert runs[0] == runs[1] and len(set(runs[0])) > 2  # repeatable, and not one length for all
    monkeypatch.delenv(agent_loop.FORCE_LEN_ENV)
    server, outputs = run_loop(AGENT_LOOP_NAME, tiny_tokenizer_dir, samples[:1])
    assert "ignore_eos" not in server.tokenizer_manager.requests[0].sampling_params  # off: untouched
    assert agent_loop.FORCED_LEN_FIELD not in outputs[0].extra_fields


def test_forced_length_spec_errors_say_what_is_allowed():
    from er_verl.rollout.agent_loop import ForcedLengths, parse_forced_len

    assert parse_forced_len("") is None and parse_forced_len(None) is None
    assert parse_forced_len("300:1.0") == (300.0, 1.0, 0) and parse_forced_len("50:0:3") == (50.0, 0.0, 3)
    for bad in ("300", "a:b", "0:1", "300:-1", "1:2:3:4"):
        with pytest.raises(ValueError, match="ER_VERL_FORCE_RESPONSE_LEN"):
            parse_forced_len(bad)
    lengths = ForcedLengths(300, 1.0)
    draws = [lengths.draw(f"index:{i}") for i in range(2000)]
    assert 270 < float(np.median(draws)) < 330 and max(draws) > 3 * 300 and min(draws) >= 8  # long-tailed


def test_stock_loop_falls_back_to_prompt_hash(tiny_tokenizer_dir):
    samples = [sample("g-1"), sample("g-1"), sample("g-2", text="Another question?")]
    server, _ = run_loop("single_turn_agent", tiny_tokenizer_dir, samples)
    groups = [req.sampling_params["custom_params"][GROUP_KEY] for req in server.tokenizer_manager.requests]
    assert groups[0] == groups[1] != groups[2]
    assert all(g.startswith("prompt:") for g in groups)
    assert server._warned_no_uid


def test_spec_metrics_reach_extra_fields_under_verl_names(tiny_tokenizer_dir):
    server, _ = make_and_generate(tiny_tokenizer_dir, speculating=True)
    assert server["extra"]["spec_num_draft_tokens"] == 2  # the worker's tag, not SGLang's 2 passes x Kmax 3
    assert server["extra"]["spec_num_accepted_tokens"] == 1
    assert server["extra"]["spec_num_verify_steps"] == 1
    assert server["extra"]["global_steps"] == 3
    plain, _ = make_and_generate(tiny_tokenizer_dir, speculating=False)
    assert not any(k.startswith("spec_") for k in plain["extra"])


def make_and_generate(tokenizer_dir, speculating):
    _, rollout = trainer_config(AGENT_LOOP_NAME)
    server = make_server(rollout, speculating)
    params = with_group({"temperature": 1.0, "logprobs": True}, "g")
    out = asyncio.run(server.generate([1, 2, 3], params, "rid-1"))
    assert server._meta_by_rid == {}  # kept meta_info is consumed, not leaked
    assert out.log_probs == [-0.5, -0.25, -1.0]
    return {"extra": out.extra_fields}, out


def test_with_group_copies():
    params = {"custom_params": {"x": 1}}
    tagged = with_group(params, 12)
    assert tagged["custom_params"] == {"x": 1, GROUP_KEY: "12"} and params == {"custom_params": {"x": 1}}
    assert with_group(params, None) == params


def restore_env(monkeypatch):
    """The server writes the self-drafter's variables into its own environment: undo that after the test."""
    from er_verl.config import EfficientConfig
    from er_verl.engine.server_args import self_draft_env

    for name in [*self_draft_env(0, EfficientConfig()), "ER_VERL_ENGINE", "ER_VERL_PLAIN_GRAPH_MAX_BS"]:
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


def launch_config(tmp_path, arch="Qwen2ForCausalLM", **sglang_kwargs):
    _, rollout = trainer_config(AGENT_LOOP_NAME)
    rollout.engine_kwargs = {"sglang": dict(sglang_kwargs)}
    (tmp_path / "config.json").write_text(json.dumps({
        "architectures": [arch], "hidden_size": 256, "num_attention_heads": 4, "num_key_value_heads": 2,
        "intermediate_size": 512}))
    server = make_server(rollout, speculating=False)
    server.model_config = SimpleNamespace(local_path=str(tmp_path))
    return server, rollout


def test_speculate_merges_self_draft_args_and_env(tmp_path, monkeypatch):
    from er_verl.config import EfficientConfig

    restore_env(monkeypatch)
    server, rollout = launch_config(tmp_path, mem_fraction_static=0.5)
    server.efficient = EfficientConfig(max_draft_len=3, gate="always")
    server._enable_self_draft()
    merged = rollout.engine_kwargs["sglang"]
    assert merged["speculative_algorithm"] == "STANDALONE" and merged["speculative_num_steps"] == 3
    assert merged["speculative_draft_model_path"] is None and merged["mem_fraction_static"] == 0.5
    assert merged["max_running_requests"] == rollout.max_num_seqs
    assert os.environ["ER_VERL_SELF_DRAFT"] == "1"
    assert json.loads(os.environ["ER_VERL_CONTROL"])["gate"] == "always"
    assert "ER_VERL_SPEC_K" not in os.environ  # the controller chooses K
    assert server.speculating
    # decode graphs: drafter / verify ones within 768 tokens (bs 192 at Kmax 3); K=0 ones to K0_GRAPH_MAX_BS (512)
    plain = min(512, rollout.max_num_seqs)
    assert merged["cuda_graph_max_bs_decode"] == min(192, plain)
    assert os.environ["ER_VERL_PLAIN_GRAPH_MAX_BS"] == str(plain)


def test_graph_sizes_follow_the_user_and_keep_verify_graphs_within_the_token_budget():
    from er_verl.engine.server_args import graph_sizes

    assert graph_sizes(5, 1024, {}) == ({"cuda_graph_max_bs_decode": 128}, {"ER_VERL_PLAIN_GRAPH_MAX_BS": "512"})
    assert graph_sizes(5, 1024, {"cuda_graph_max_bs_decode": 256}) == (
        {"cuda_graph_max_bs_decode": 128}, {"ER_VERL_PLAIN_GRAPH_MAX_BS": "256"})  # the user's size is kept
    assert graph_sizes(5, 64, {}) == ({"cuda_graph_max_bs_decode": 64}, {"ER_VERL_PLAIN_GRAPH_MAX_BS": "64"})
    assert graph_sizes(8, None, {"cuda_graph_max_bs_decode": 512}) == (
        {"cuda_graph_max_bs_decode": 85}, {"ER_VERL_PLAIN_GRAPH_MAX_BS": "512"})
    assert graph_sizes(5, 1024, {"cuda_graph_bs_decode": [1, 2, 4]}) == ({}, {})  # an explicit list is kept
    with pytest.raises(ValueError, match="cuda_graph_max_bs_decode='8'.*>= 1"):
        graph_sizes(5, 1024, {"cuda_graph_max_bs_decode": "8"})


def test_speculate_refuses_conflicting_engine_kwargs(tmp_path, monkeypatch):
    restore_env(monkeypatch)
    server, rollout = launch_config(tmp_path, attention_backend="fa3")
    with pytest.raises(ValueError, match="attention_backend"):
        server._enable_self_draft()
    assert rollout.engine_kwargs["sglang"] == {"attention_backend": "fa3"}  # untouched
    assert "ER_VERL_SELF_DRAFT" not in os.environ and not server.speculating


def test_speculate_refuses_unsupported_architecture(tmp_path, monkeypatch):
    restore_env(monkeypatch)
    server, _ = launch_config(tmp_path, arch="DeepseekV3ForCausalLM")
    with pytest.raises(ValueError, match="speculate=False"):
        server._enable_self_draft()
