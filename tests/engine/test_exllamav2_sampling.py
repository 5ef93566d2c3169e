"""SamplingParams planned as ExLlamaV2 sampler settings: every field, neutral, per job.

ExLlamaV2 cannot be imported on a machine without CUDA (its import builds the CUDA extension),
so the plan is checked against the field list of ``ExLlamaV2Sampler.Settings`` in 0.3.2, and
against the installed package's source where one is installed. The GPU tests apply plans to
the real class.
"""

from __future__ import annotations

import ast
import importlib.util
from pathlib import Path

import pytest

from exloop.engine.errors import ContextLengthExceeded, InvalidParameter
from exloop.engine.exllamav2_sampling import (
    MIN_DEFAULT_NEW_TOKENS,
    OutputPenalties,
    SamplerPlan,
    TokenTexts,
    cap_new_tokens,
    fresh_state,
    plan_sampler,
)
from exloop.engine.sampling import DrySettings, SamplingParams

#: ``ExLlamaV2Sampler.Settings``' fields in exllamav2 0.3.2, in declaration order.
SETTINGS_FIELDS_0_3_2 = (
    "token_repetition_penalty",
    "token_repetition_range",
    "token_repetition_decay",
    "token_frequency_penalty",
    "token_presence_penalty",
    "temperature",
    "smoothing_factor",
    "min_temp",
    "max_temp",
    "temp_exponent",
    "top_k",
    "top_p",
    "top_a",
    "min_p",
    "tfs",
    "typical",
    "skew",
    "temperature_last",
    "mirostat",
    "mirostat_tau",
    "mirostat_eta",
    "mirostat_mu",
    "token_bias",
    "cfg_scale",
    "post_sampling_hooks",
    "dry_allowed_length",
    "dry_base",
    "dry_multiplier",
    "dry_sequence_breakers",
    "dry_range",
    "dry_max_ngram",
    "ngram_trie",
    "ngram_index",
    "ngram_history",
    "xtc_probability",
    "xtc_threshold",
    "xtc_ignore_tokens",
)

TEXTS = TokenTexts(["<eos>", "Hello", ":", " world", "\n\n", "a*b", "plain"])


def _set_fields(plan: SamplerPlan) -> set[str]:
    return set(plan.settings_fields()) | set(fresh_state())


def test_every_settings_field_is_set() -> None:
    plan = plan_sampler(SamplingParams(), TEXTS)
    assert _set_fields(plan) == set(SETTINGS_FIELDS_0_3_2)
    assert "output_penalties" not in plan.settings_fields()


def test_the_installed_exllamav2_has_the_same_fields() -> None:
    # find_spec on the top-level name only: a submodule's spec would import the package,
    # which compiles its CUDA extension.
    spec = importlib.util.find_spec("exllamav2")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("exllamav2 is not installed (pip install 'exloop[gpu]')")
    source = Path(spec.submodule_search_locations[0], "generator", "sampler.py").read_text()
    settings = next(
        node
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.ClassDef) and node.name == "Settings"
    )
    fields = {
        n.target.id
        for n in settings.body
        if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)
    }
    assert fields == _set_fields(plan_sampler(SamplingParams(), TEXTS))


def test_defaults_are_neutral_where_exllamav2_s_are_not() -> None:
    plan = plan_sampler(SamplingParams(), TEXTS)
    # ExLlamaV2's own defaults: top_k 50, top_p 0.8, temperature 0.8, repetition 1.025.
    assert (plan.top_k, plan.top_p, plan.temperature, plan.token_repetition_penalty) == (
        0,
        1.0,
        1.0,
        1.0,
    )
    assert (plan.min_p, plan.top_a, plan.tfs, plan.typical, plan.skew) == (0.0,) * 5
    assert (plan.smoothing_factor, plan.min_temp, plan.max_temp, plan.temp_exponent) == (
        0.0,
        0.0,
        0.0,
        1.0,
    )
    assert not plan.mirostat and plan.xtc_probability == 0.0 and plan.cfg_scale is None
    assert plan.dry_multiplier == 0.0 and plan.dry_sequence_breakers == frozenset()
    assert plan.token_bias == () and plan.output_penalties is None
    # Temperature last, as on the CPU backend: truncation sees the model's own distribution.
    assert plan.temperature_last


def test_sampling_values_carry_over() -> None:
    params = SamplingParams(
        temperature=0.7, top_p=0.9, top_k=40, min_p=0.05, repetition_penalty=1.1
    )
    plan = plan_sampler(params, TEXTS)
    assert (plan.temperature, plan.top_p, plan.top_k, plan.min_p) == (0.7, 0.9, 40, 0.05)
    assert plan.token_repetition_penalty == 1.1 and plan.token_repetition_range == -1


def test_temperature_zero_is_greedy() -> None:
    plan = plan_sampler(SamplingParams(temperature=0.0, top_p=0.5, top_k=10, min_p=0.2), TEXTS)
    assert (plan.temperature, plan.top_k, plan.top_p, plan.min_p) == (1.0, 1, 0.0, 0.0)


def test_frequency_and_presence_apply_to_the_output_only() -> None:
    plan = plan_sampler(SamplingParams(frequency_penalty=0.5, presence_penalty=-0.25), TEXTS)
    # ExLlamaV2 would penalize the prompt too: its fields stay zero and the backend applies them.
    assert (plan.token_frequency_penalty, plan.token_presence_penalty) == (0.0, 0.0)
    assert plan.output_penalties == OutputPenalties(0.5, -0.25)


def test_dry_fields_map_one_to_one() -> None:
    dry = DrySettings(multiplier=0.8, base=1.5, allowed_length=3, sequence_breakers=(":", "*"))
    plan = plan_sampler(SamplingParams(dry=dry), TEXTS)
    # greedy_clone() in 0.3.2 copies dry_allowed_length into dry_base; the plan never does.
    assert (plan.dry_multiplier, plan.dry_base, plan.dry_allowed_length) == (0.8, 1.5, 3)
    assert plan.dry_sequence_breakers == frozenset({2, 5})
    assert plan.dry_range == 0


def test_logit_bias_is_sparse_and_checked_against_the_vocabulary() -> None:
    plan = plan_sampler(SamplingParams(logit_bias={5: -100.0, 1: 2.5}), TEXTS)
    assert plan.token_bias == ((1, 2.5), (5, -100.0))
    with pytest.raises(InvalidParameter) as caught:
        plan_sampler(SamplingParams(logit_bias={len(TEXTS): 1.0}), TEXTS)
    assert caught.value.param == "logit_bias"


def test_fresh_state_is_never_shared() -> None:
    first, second = fresh_state(), fresh_state()
    assert first["ngram_history"] is not second["ngram_history"]
    assert first["post_sampling_hooks"] is not second["post_sampling_hooks"]
    assert first["ngram_trie"] is None and first["mirostat_mu"] is None


def test_requested_tokens_are_kept_within_the_window() -> None:
    cap = {"max_seq_len": 4096, "cache_tokens": 16384, "max_batch_size": 8}
    assert cap_new_tokens(1000, 100, **cap) == 100
    assert cap_new_tokens(1000, 10_000, **cap) == 3096


def test_unbounded_jobs_get_their_share_of_the_cache() -> None:
    cap = {"max_seq_len": 8192, "cache_tokens": 16384, "max_batch_size": 8}
    # 8 jobs of 2048 tokens fit the cache at once.
    assert cap_new_tokens(500, None, **cap) == 2048 - 500
    # A long prompt still gets a useful answer, within its window.
    assert cap_new_tokens(2000, None, **cap) == MIN_DEFAULT_NEW_TOKENS
    assert cap_new_tokens(8000, None, **cap) == 192


def test_a_prompt_that_fills_the_window_is_rejected() -> None:
    with pytest.raises(ContextLengthExceeded):
        cap_new_tokens(4096, None, max_seq_len=4096, cache_tokens=8192, max_batch_size=2)
    with pytest.raises(ContextLengthExceeded):
        cap_new_tokens(3000, 10, max_seq_len=8192, cache_tokens=2560, max_batch_size=1)
