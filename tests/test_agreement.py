"""The clear-margin rule the cross-kernel int8 tests use (tests/agreement.py) passes a true greedy run and catches a
wrong pick."""
import numpy as np
import pytest

from agreement import CLEAR_MARGIN, assert_greedy_agrees, forced_logits
from flashlm_runtime import FlashLM


def test_the_rule_passes_the_runtimes_own_greedy_run_and_catches_a_changed_clear_pick():
    lm = FlashLM()
    g = lm.generate("Once upon a time", temperature=0, max_new_tokens=40, stop_at_eos=False)
    assert assert_greedy_agrees(lm, [g.prompt_ids], [g.token_ids]) >= 0.5
    logits = forced_logits(lm, [g.prompt_ids], [g.token_ids])[0]
    top2 = np.sort(logits, axis=-1)[:, -2:]
    clear = int(np.flatnonzero(top2[:, 1] - top2[:, 0] >= CLEAR_MARGIN)[-1])
    wrong = list(g.token_ids)
    wrong[clear] = (wrong[clear] + 1) % lm.config.vocab_size
    with pytest.raises(AssertionError, match=f"token {clear}, "):
        assert_greedy_agrees(lm, [g.prompt_ids], [wrong])
