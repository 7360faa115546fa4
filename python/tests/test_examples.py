"""The worker against the example frames in tests/protocol/, which the Rust tests load too.

Only the fields a worker produces are compared: the agent adds stdout, stderr, truncated,
session and session_lost to exec replies, and answers the non-worker ops itself.
"""

import glob
import json
import os

import pytest

import beephost_worker
from conftest import EXAMPLES

AGENT_FIELDS = {"stdout", "stderr", "truncated", "session", "session_lost"}


def load_examples():
    paths = sorted(glob.glob(os.path.join(EXAMPLES, "*.json")))
    assert paths, "no examples found in %s" % EXAMPLES
    return [(os.path.basename(p)[:-5], json.load(open(p))) for p in paths]


EXAMPLES_ALL = load_examples()
WORKER_EXAMPLES = [(n, e) for n, e in EXAMPLES_ALL if e["worker"]]


def strip(value, ignore):
    """Drops ignored keys at any depth (their presence is checked separately)."""
    if isinstance(value, dict):
        return {k: strip(v, ignore) for k, v in value.items() if k not in ignore}
    if isinstance(value, list):
        return [strip(v, ignore) for v in value]
    return value


def keys_present(expected, actual, ignore, where="reply"):
    if isinstance(expected, dict):
        assert isinstance(actual, dict), "%s: expected an object, got %r" % (where, actual)
        for k, v in expected.items():
            if k in ignore:
                assert k in actual, "%s: missing ignored key %s" % (where, k)
            elif k in actual:
                keys_present(v, actual[k], ignore, where + "." + k)


def test_examples_are_well_formed():
    for name, e in EXAMPLES_ALL:
        assert set(e) == {"description", "worker", "setup", "request", "reply", "ignore"}, name
        assert e["request"]["id"] == e["reply"]["id"], name
        assert ("ok" in e["reply"]) != ("error" in e["reply"]), name


@pytest.mark.parametrize("name,example", WORKER_EXAMPLES, ids=[n for n, _ in WORKER_EXAMPLES])
def test_worker_matches_example(name, example):
    session = beephost_worker.Session()
    for step in example["setup"]:
        reply = session.handle(dict(step))
        assert "ok" in reply, "setup step %r failed: %r" % (step, reply)
        if step["op"] == "exec":
            assert reply["ok"]["error"] is None, reply
    # Compared as the agent receives it: through the worker's encoder (tuples become lists).
    reply = session.handle(dict(example["request"]))
    reply = json.loads(beephost_worker.encode(reply)[beephost_worker.HEADER.size :])
    expected = example["reply"]
    ignore = set(example["ignore"])
    if "ok" in expected:
        assert "ok" in reply, reply
        want = {k: v for k, v in expected["ok"].items() if k not in AGENT_FIELDS}
        got = reply["ok"]
        assert set(got) == set(want), "fields differ: %s vs %s" % (sorted(got), sorted(want))
        keys_present(want, got, ignore)
        assert strip(got, ignore) == strip(want, ignore)
    else:
        assert "error" in reply, reply
        keys_present(expected["error"], reply["error"], ignore)
        assert strip(reply["error"], ignore) == strip(expected["error"], ignore)
