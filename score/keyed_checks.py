"""What a run with --key requires of its flags and of its model, and what it records for the
summary; the local job (score.keyed_job) and Spark's (score.spark.keyed) both check these."""

from __future__ import annotations

from dataclasses import dataclass

from score.errors import ModelError, UsageError
from score.model import Scorer


@dataclass
class KeyedRecord:
    """What a run with --key adds to the summary."""

    keys_in_state: int = 0  # keys in --state-in
    keys_scored: int = 0  # keys whose row was scored: their state moved on
    keys_new: int = 0  # of those, keys --state-in did not hold
    keys_carried_unchanged: int = 0  # keys of --state-in carried into --state-out as they were
    keys_in_state_out: int = 0
    steps_resumed: int = 0  # history steps the run did not compute again
    input_sorted: bool | None = None  # streamed in key order (True) or held in memory (False)
    state_in_fingerprint: str = ""
    state_out_fingerprint: str = ""
    input_fingerprint: str = ""

    def to_dict(self) -> dict:
        return {
            "keys_in_state": self.keys_in_state,
            "keys_scored": self.keys_scored,
            "keys_new": self.keys_new,
            "keys_carried_unchanged": self.keys_carried_unchanged,
            "keys_in_state_out": self.keys_in_state_out,
            "steps_resumed": self.steps_resumed,
            "input_sorted_by_key": self.input_sorted,
            "state_lineage": {"input": self.input_fingerprint, "state_in": self.state_in_fingerprint,
                              "state_out": self.state_out_fingerprint},
        }


def check_flags(key: str | None, state_in: str | None, state_out: str | None, output: str,
                input_columns: object) -> None:
    """The usage rules of --key, --state-in and --state-out (exit 2), before anything is read."""
    if key is None:
        if state_in or state_out:
            flag = "--state-in" if state_in else "--state-out"
            raise UsageError(f"{flag} needs --key COL (the column naming each row's entity)")
        return
    if not state_out:
        raise UsageError("--key needs --state-out PATH (where the run writes every key's state)")
    if state_in and state_in.rstrip("/") == state_out.rstrip("/"):
        raise UsageError(
            f"--state-in and --state-out are both {state_out}; a retried run must find its input "
            f"state, so give each run its own state folder (for example state/2026-12-03/)")
    if state_out.rstrip("/") == output.rstrip("/"):
        raise UsageError(f"--state-out is OUTPUT ({output}); choose another path")
    if input_columns is not None:
        raise UsageError("--key takes the sequences from a list column, not --input-columns")


def check_model(scorer: Scorer) -> None:
    """Only a causal model that exposes its states, at any length, can carry state (exit 78)."""
    spec = scorer.spec
    why = None
    if not spec.causal:
        why = "it is not causal (it reads later steps), so a history cannot be resumed"
    elif not spec.variable_length:
        why = (f"it takes sequences of exactly {spec.seq_len} steps (fixed length), so a history "
               f"that grows run after run does not fit it; train it on rows of any length")
    elif not spec.states:
        why = "its file does not expose its LSTM states; export it again with `make export`"
    elif not scorer.exact_states:
        why = ("it is quantised (int8), and a run resumed from a carried state is not exactly "
               "the whole run; use the float model")
    elif not scorer.graph_top_k:
        why = "its file lacks the top-k heads a resumed run needs; export it again with `make export`"
    if why:
        raise ModelError(f"--key: the model {scorer.location} cannot carry state: {why}")
