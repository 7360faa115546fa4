"""The worker's conversions and execution semantics, in-process."""

import json
import math
import signal

import pytest

import beephost_worker as bw


@pytest.fixture
def s():
    return bw.Session()


def run(session, code):
    reply = session.handle({"op": "exec", "code": code})
    assert "ok" in reply, reply
    return reply["ok"]


@pytest.mark.parametrize(
    "value",
    [None, True, 0, -(2**63), 2**64 - 1, 1.5, "é", [], [1, [2, {"a": None}]], {"k": (1, 2)}, (1, "x")],
)
def test_plain_values(value):
    assert bw.plain(value)


class Sub(int):
    pass


@pytest.mark.parametrize(
    "value",
    [2**64, -(2**63) - 1, float("nan"), float("inf"), b"x", {1: "a"}, {"a": object()}, Sub(1), set(), [1, object()]],
)
def test_not_plain_values(value):
    assert not bw.plain(value)


def test_deep_nesting_is_a_handle_not_a_crash(s):
    deep = []
    for _ in range(200):
        deep = [deep]
    assert not bw.plain(deep)
    assert "handle" in s.to_object(deep)


def test_trailing_expression_and_state(s):
    assert run(s, "x = 20")["result"] is None
    assert run(s, "x + 22")["result"] == {"value": 42, "repr": "42"}
    assert run(s, "if x:\n    y = 1\ny")["result"]["value"] == 1
    assert run(s, "x = 1; x")["result"]["value"] == 1
    assert run(s, "")["result"] is None
    assert run(s, "# only a comment")["result"] is None


def test_handles_have_type_and_repr(s):
    r = run(s, "class Point:\n    def __repr__(self):\n        return 'Point()'\nPoint()")["result"]
    assert r == {"handle": "h1", "type": "Point", "repr": "Point()"}
    assert type(s.handles["h1"]).__name__ == "Point"


def test_broken_repr_does_not_break_the_reply(s):
    r = run(s, "class Bad:\n    def __repr__(self):\n        raise RuntimeError('no')\nBad()")["result"]
    assert r["repr"] == "<unrepresentable Bad: RuntimeError>"


def test_long_reprs_are_cut(s):
    r = run(s, "'x' * 10000")["result"]
    assert r["value"] == "x" * 10000
    assert len(r["repr"]) == bw.REPR_LIMIT + 3


def test_compile_cache_is_used(s):
    run(s, "a = 1")
    run(s, "a = 1")
    assert len(s.code_cache) == 1
    assert s.cells == 1


def test_tracebacks_hide_worker_frames_and_show_cell_source(s):
    err = run(s, "def f():\n    raise ValueError('bad value')\nf()")["error"]
    assert err["type"] == "ValueError" and err["message"] == "bad value"
    assert "raise ValueError('bad value')" in err["traceback"]
    assert bw.WORKER_FILE not in err["traceback"]


def test_syntax_errors(s):
    err = run(s, "def (")["error"]
    assert err["type"] == "SyntaxError"


def test_base_exceptions_are_reported_not_raised(s):
    assert run(s, "raise SystemExit(2)")["error"]["type"] == "SystemExit"
    assert run(s, "raise KeyboardInterrupt")["error"]["type"] == "KeyboardInterrupt"


def test_user_code_runs_in_main(s):
    assert run(s, "__name__")["result"]["value"] == "__main__"
    assert run(s, "class A: pass\nA.__module__")["result"]["value"] == "__main__"


def test_resolve_handle_references(s):
    s.handle({"op": "wrap", "value": [1, 2]})
    assert s.resolve({"a": [{"$handle": "h1"}]}) == {"a": [[1, 2]]}
    assert s.resolve({"$handle": "h1", "other": 1}) == {"$handle": "h1", "other": 1}
    with pytest.raises(bw.OpError) as e:
        s.resolve({"$handle": "h5"})
    assert e.value.kind == "NoSuchHandle"


def test_bad_requests_name_the_field(s):
    assert s.handle({"op": "exec"})["error"] == {"type": "BadRequest", "message": "missing field `code`"}
    assert s.handle({"op": "exec", "code": 1})["error"] == {"type": "BadRequest", "message": "field `code`: expected a str"}
    assert s.handle({"op": "call", "handle": "h1"})["error"]["type"] == "NoSuchHandle"
    s.handle({"op": "wrap", "value": []})
    err = s.handle({"op": "call", "handle": "h1", "method": "append", "args": {}})["error"]
    assert err == {"type": "BadRequest", "message": "field `args`: expected a list"}
    assert s.handle([1])["error"]["type"] == "BadRequest"
    assert s.handle({"op": 5})["error"]["type"] == "UnknownOp"


def test_float_arrays_without_numpy(s, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_numpy(name, *args, **kwargs):
        if name == "numpy":
            raise ImportError("no numpy here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_numpy)
    s.handle({"op": "wrap", "value": [1, 2.5]})
    assert s.handle({"op": "to_float_array", "handle": "h1"}) == {"ok": {"values": [1.0, 2.5]}}
    s.handle({"op": "wrap", "value": [[1], [2, 3]]})
    err = s.handle({"op": "to_float_array_2d", "handle": "h2"})["error"]
    assert err["type"] == "ValueError" and "different lengths" in err["message"]


def test_encode_replaces_lone_surrogates_and_refuses_nan():
    frame = bw.encode({"id": 1, "ok": {"value": "a\udcffb"}})
    magic, length = bw.HEADER.unpack(frame[: bw.HEADER.size])
    assert magic == bw.MAGIC and length == len(frame) - bw.HEADER.size
    assert json.loads(frame[bw.HEADER.size :].decode("utf-8")) == {"id": 1, "ok": {"value": "a?b"}}
    bad = json.loads(bw.encode({"id": 2, "ok": {"x": math.nan}})[bw.HEADER.size :])
    assert bad["error"]["type"] == "WorkerProtocol"


def test_encoder_is_reused_and_recovers_from_a_failed_reply():
    shared = [1, 2]
    reply = {"id": 3, "ok": {"a": shared, "b": shared}}  # the same list twice is not a cycle
    for _ in range(2):
        assert json.loads(bw.encode(reply)[bw.HEADER.size :]) == {"id": 3, "ok": {"a": [1, 2], "b": [1, 2]}}
    # A failure half-way through a reply must not poison the next one.
    assert json.loads(bw.encode({"id": 4, "ok": [shared, math.inf]})[bw.HEADER.size :])["error"]["type"] == "WorkerProtocol"
    assert json.loads(bw.encode({"id": 5, "ok": shared})[bw.HEADER.size :]) == {"id": 5, "ok": [1, 2]}


def test_decode_request_is_json_loads():
    assert bw.decode_request(b'{"id":1,"op":"exec","code":"\xc3\xa9"}') == {"id": 1, "op": "exec", "code": "é"}
    assert bw.decode_request(b' {"id": 2} ') == {"id": 2}  # whitespace takes json.loads
    for bad in (b'{"id": 1} x', b"\xff", b"", b"[1,"):
        with pytest.raises(ValueError):
            bw.decode_request(bad)


def test_sigint_outside_user_code_is_ignored(s):
    # Handler as installed by serve(): only raises while user code runs.
    def on_sigint(signum, frame):
        if s.in_user:
            raise KeyboardInterrupt

    old = signal.signal(signal.SIGINT, on_sigint)
    try:
        signal.raise_signal(signal.SIGINT) if hasattr(signal, "raise_signal") else None
        err = run(s, "import signal\nsignal.raise_signal(signal.SIGINT)\nnever = 1")["error"]
        assert err["type"] == "KeyboardInterrupt"
        assert "never" not in s.ns
    finally:
        signal.signal(signal.SIGINT, old)
