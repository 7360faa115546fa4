"""beephost worker: one Python session, driven by the agent over two dedicated pipes.

Standard library only, Python 3.8+. The agent starts it as
``python -c <this source> REQUEST_FD REPLY_FD`` with the user's stdout and stderr on fds 1
and 2 (pipes the agent reads). Frames are MAGIC + 4-byte big-endian length + UTF-8 JSON,
mirroring src/protocol/. Every request gets exactly one reply, written after the user's
output is flushed: whatever the agent finds in the output pipes once the reply arrives belongs
to that call.

The session keeps one namespace (a fresh ``__main__`` module) and a handle table for objects
that JSON cannot carry.
"""

import ast
import builtins
import importlib
import importlib.util
import json
import linecache
import math
import os
import signal
import struct
import sys
import time
import traceback
import types

MAGIC = b"\xffBH1"
HEADER = struct.Struct(">4sI")
PROTOCOL = 1
REPR_LIMIT = 4096
CODE_CACHE_LIMIT = 512
MAX_DEPTH = 64
INT_MIN = -(2**63)
INT_MAX = 2**64 - 1
WORKER_FILE = sys._getframe().f_code.co_filename


class OpError(Exception):
    """A failure the worker reports with its own type name (not a Python exception)."""

    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind
        self.message = message


def plain(value, depth=0):
    """True when JSON can carry ``value`` exactly (tuples become lists)."""
    t = type(value)
    if value is None or t is bool or t is str:
        return True
    if t is int:
        return INT_MIN <= value <= INT_MAX
    if t is float:
        return math.isfinite(value)
    if depth >= MAX_DEPTH:
        return False
    if t is list or t is tuple:
        for item in value:
            if not plain(item, depth + 1):
                return False
        return True
    if t is dict:
        for key, item in value.items():
            if type(key) is not str or not plain(item, depth + 1):
                return False
        return True
    return False


def safe_repr(value):
    try:
        text = repr(value)
    except BaseException as e:  # a broken __repr__ must not break the reply
        text = "<unrepresentable %s: %s>" % (type(value).__name__, type(e).__name__)
    if len(text) > REPR_LIMIT:
        text = text[:REPR_LIMIT] + "..."
    return text


def finite_or_none(x):
    return x if math.isfinite(x) else None


class Session:
    """One namespace, one handle table, and the operations on them."""

    def __init__(self):
        self.main = types.ModuleType("__main__")
        self.ns = self.main.__dict__
        self.ns["__builtins__"] = builtins
        self.handles = {}
        self.next_handle = 1
        self.code_cache = {}
        self.cells = 0
        self.in_user = False
        self.ops = {
            "exec": self.op_exec,
            "eval": self.op_eval,
            "import": self.op_import,
            "create": self.op_create,
            "call": self.op_call,
            "getattr": self.op_getattr,
            "setattr": self.op_setattr,
            "dispose": self.op_dispose,
            "wrap": self.op_wrap,
            "module_available": self.op_module_available,
            "to_float_array": self.op_to_float_array,
            "to_float_array_2d": self.op_to_float_array_2d,
            "ping": self.op_ping,
        }

    # -- dispatch ---------------------------------------------------------------------------

    def handle(self, request):
        """Runs one request (a dict) and returns the reply body: {"ok": ...} or {"error": ...}."""
        if type(request) is not dict:
            return {"error": {"type": "BadRequest", "message": "request is not a json object"}}
        op = request.get("op")
        fn = self.ops.get(op) if type(op) is str else None
        if fn is None:
            return {"error": {"type": "UnknownOp", "message": "unknown op `%s`" % (op,)}}
        try:
            return {"ok": fn(request)}
        except OpError as e:
            return {"error": {"type": e.kind, "message": e.message}}
        except BaseException as e:
            return {"error": self.describe(e)}

    def run_user(self, fn, /, *args, **kwargs):
        """Calls user code with KeyboardInterrupt enabled (see on_sigint)."""
        self.in_user = True
        try:
            return fn(*args, **kwargs)
        finally:
            self.in_user = False

    def describe(self, exc):
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == WORKER_FILE:
            tb = tb.tb_next
        try:
            message = str(exc)
        except BaseException:
            message = "<unprintable %s>" % type(exc).__name__
        try:
            text = "".join(traceback.format_exception(type(exc), exc, tb))
        except BaseException:
            text = "%s: %s\n" % (type(exc).__name__, message)
        return {"type": type(exc).__name__, "message": message, "traceback": text}

    # -- conversions ------------------------------------------------------------------------

    def to_object(self, value, with_repr=False):
        if plain(value):
            out = {"value": value}
            if with_repr:
                out["repr"] = safe_repr(value)
            return out
        return self.new_handle(value)

    def new_handle(self, value):
        hid = "h%d" % self.next_handle
        self.next_handle += 1
        self.handles[hid] = value
        return {"handle": hid, "type": type(value).__name__, "repr": safe_repr(value)}

    def lookup(self, hid):
        if type(hid) is not str:
            raise OpError("BadRequest", "field `handle`: expected a string")
        try:
            return self.handles[hid]
        except KeyError:
            raise OpError("NoSuchHandle", "no handle `%s` in this session" % hid) from None

    def resolve(self, value):
        """Replaces {"$handle": "h1"} anywhere in arguments with the object it names."""
        t = type(value)
        if t is dict:
            if len(value) == 1 and "$handle" in value:
                return self.lookup(value["$handle"])
            return {k: self.resolve(v) for k, v in value.items()}
        if t is list:
            return [self.resolve(v) for v in value]
        return value

    def arguments(self, request):
        args = request.get("args")
        kwargs = request.get("kwargs")
        args = [] if args is None else args
        kwargs = {} if kwargs is None else kwargs
        if type(args) is not list:
            raise OpError("BadRequest", "field `args`: expected a list")
        if type(kwargs) is not dict:
            raise OpError("BadRequest", "field `kwargs`: expected an object")
        return self.resolve(args), self.resolve(kwargs)

    @staticmethod
    def field(request, name, kind=str):
        value = request.get(name)
        if type(value) is not kind:
            if name not in request:
                raise OpError("BadRequest", "missing field `%s`" % name)
            raise OpError("BadRequest", "field `%s`: expected a %s" % (name, kind.__name__))
        return value

    # -- exec -------------------------------------------------------------------------------

    def compile_cell(self, code):
        """Compiles a cell into (statements, trailing expression); cached by source text."""
        cached = self.code_cache.get(code)
        if cached is not None:
            return cached
        self.cells += 1
        filename = "<cell-%d>" % self.cells
        tree = ast.parse(code, filename, "exec")
        expr = None
        if tree.body and isinstance(tree.body[-1], ast.Expr):
            last = tree.body.pop()
            expr = compile(ast.Expression(last.value), filename, "eval", dont_inherit=True)
        body = compile(tree, filename, "exec", dont_inherit=True) if tree.body else None
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        if len(self.code_cache) >= CODE_CACHE_LIMIT:
            self.code_cache.clear()
        compiled = (body, expr)
        self.code_cache[code] = compiled
        return compiled

    def exec_cell(self, body, expr):
        if body is not None:
            exec(body, self.ns)
        if expr is not None:
            return eval(expr, self.ns)
        return None

    def op_exec(self, request):
        code = self.field(request, "code")
        start = time.perf_counter()
        result = None
        error = None
        try:
            body, expr = self.compile_cell(code)
            value = self.run_user(self.exec_cell, body, expr)
            if value is not None:
                self.ns["_"] = value
                result = self.to_object(value, with_repr=True)
        except BaseException as e:
            error = self.describe(e)
        return {
            "result": result,
            "error": error,
            "duration_ms": (time.perf_counter() - start) * 1000.0,
        }

    # -- objects ----------------------------------------------------------------------------

    def op_eval(self, request):
        expression = self.field(request, "expression")
        local_values = request.get("locals")
        if local_values is not None and type(local_values) is not dict:
            raise OpError("BadRequest", "field `locals`: expected an object")
        local_ns = self.resolve(local_values) if local_values else None
        code = compile(expression, "<eval>", "eval", dont_inherit=True)
        value = self.run_user(eval, code, self.ns, local_ns)
        return self.to_object(value)

    def op_import(self, request):
        module = self.run_user(importlib.import_module, self.field(request, "module"))
        return self.new_handle(module)

    def op_create(self, request):
        class_name = self.field(request, "class")
        if request.get("module_handle") is not None:
            module = self.lookup(request["module_handle"])
        else:
            module = self.run_user(importlib.import_module, self.field(request, "module"))
        cls = module
        for part in class_name.split("."):
            cls = getattr(cls, part)
        args, kwargs = self.arguments(request)
        return self.new_handle(self.run_user(cls, *args, **kwargs))

    def op_call(self, request):
        target = self.lookup(request.get("handle"))
        method = request.get("method")
        if method is not None:
            if type(method) is not str:
                raise OpError("BadRequest", "field `method`: expected a string")
            target = getattr(target, method)
        args, kwargs = self.arguments(request)
        return self.to_object(self.run_user(target, *args, **kwargs))

    def op_getattr(self, request):
        target = self.lookup(request.get("handle"))
        name = self.field(request, "name")
        return self.to_object(self.run_user(getattr, target, name))

    def op_setattr(self, request):
        target = self.lookup(request.get("handle"))
        name = self.field(request, "name")
        if "value" not in request:
            raise OpError("BadRequest", "missing field `value`")
        self.run_user(setattr, target, name, self.resolve(request["value"]))
        return {"ok": True}

    def op_dispose(self, request):
        hid = request.get("handle")
        if type(hid) is not str:
            raise OpError("BadRequest", "field `handle`: expected a string")
        if hid not in self.handles:
            return {"disposed": False}
        del self.handles[hid]
        return {"disposed": True}

    def op_wrap(self, request):
        if "value" not in request:
            raise OpError("BadRequest", "missing field `value`")
        return self.new_handle(self.resolve(request["value"]))

    def op_module_available(self, request):
        name = self.field(request, "module")
        try:
            available = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError, AttributeError):
            available = False
        return {"available": available}

    def float_array(self, request, ndim):
        obj = self.lookup(request.get("handle"))
        try:
            import numpy
        except ImportError:
            numpy = None
        if numpy is not None:
            arr = numpy.asarray(obj, dtype=float)
            if ndim == 1:
                arr = arr.reshape(-1)
            elif arr.ndim != 2:
                raise ValueError("expected a 2-d array, got %d dimensions" % arr.ndim)
            values = arr.tolist()
        elif ndim == 1:
            values = [float(x) for x in obj]
        else:
            values = [[float(x) for x in row] for row in obj]
            if len({len(row) for row in values}) > 1:
                raise ValueError("expected a 2-d array, got rows of different lengths")
        if ndim == 1:
            return {"values": [finite_or_none(x) for x in values]}
        return {"values": [[finite_or_none(x) for x in row] for row in values]}

    def op_to_float_array(self, request):
        return self.float_array(request, 1)

    def op_to_float_array_2d(self, request):
        return self.float_array(request, 2)

    def op_ping(self, request):
        return {"pong": True}


def reply_encoder():
    """json.dumps with options builds an encoder on every call; this one is built once (and
    again after a failure, which may leave its circular-reference markers dirty)."""
    encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    try:
        # The C encoder behind json.dumps, called the way json.encoder calls it.
        chunks = json.encoder.c_make_encoder(
            {}, encoder.default, json.encoder.encode_basestring, None, ":", ",", False, False, False
        )
        if "".join(chunks({"a": [1, "é"]}, 0)) == '{"a":[1,"é"]}':
            return lambda value: "".join(chunks(value, 0))
    except Exception:  # another Python's private API: fall back to the public one
        pass
    return encoder.encode


REPLY_ENCODER = reply_encoder()


def encode(reply):
    global REPLY_ENCODER
    try:
        data = REPLY_ENCODER(reply)
    except (TypeError, ValueError, RecursionError) as e:
        REPLY_ENCODER = reply_encoder()
        data = json.dumps(
            {
                "id": reply.get("id"),
                "error": {"type": "WorkerProtocol", "message": "reply not encodable: %s" % e},
            }
        )
    # Lone surrogates (from undecodable file names, for example) become "?", so the agent
    # always receives valid UTF-8.
    body = data.encode("utf-8", "replace")
    return HEADER.pack(MAGIC, len(body)) + body


SCAN_JSON = json.JSONDecoder().scan_once


def decode_request(payload):
    """json.loads without its per-call encoding detection and whitespace matching (frames from
    the agent are compact UTF-8); anything else takes json.loads, which also words the error."""
    try:
        text = payload.decode("utf-8")
        value, end = SCAN_JSON(text, 0)
        if end == len(text):
            return value
    except (ValueError, StopIteration):
        pass
    return json.loads(payload)


def write_all(fd, data):
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def flush_user_streams():
    streams = (sys.stdout, sys.stderr)
    if sys.__stdout__ is not streams[0] or sys.__stderr__ is not streams[1]:
        streams += (sys.__stdout__, sys.__stderr__)
    for stream in streams:
        if stream is not None:
            try:
                stream.flush()
            except BaseException:
                pass


def read_exact(reader, n):
    data = reader.read(n)
    if data is None or len(data) < n:
        return None
    return data


def serve(request_fd, reply_fd):
    # The protocol pipes must not leak into subprocesses the user starts.
    os.set_inheritable(request_fd, False)
    os.set_inheritable(reply_fd, False)
    reader = os.fdopen(request_fd, "rb", buffering=1 << 16)
    session = Session()
    sys.modules["__main__"] = session.main
    sys.argv = [""]

    def on_sigint(signum, frame):
        # The agent interrupts only running user code; a late signal is ignored so it can
        # never break the worker's own bookkeeping.
        if session.in_user:
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_sigint)
    ready = {
        "id": 0,
        "ok": {
            "python_version": "%d.%d.%d" % sys.version_info[:3],
            "pid": os.getpid(),
            "protocol": PROTOCOL,
        },
    }
    write_all(reply_fd, encode(ready))
    while True:
        header = read_exact(reader, HEADER.size)
        if header is None:
            return 0
        magic, length = HEADER.unpack(header)
        if magic != MAGIC:
            return 65
        payload = read_exact(reader, length)
        if payload is None:
            return 0
        try:
            request = decode_request(payload)
        except ValueError as e:
            request = None
            reply = {"error": {"type": "BadFrame", "message": "frame is not valid json: %s" % e}}
        else:
            reply = session.handle(request)
        rid = request.get("id") if type(request) is dict else None
        reply["id"] = rid
        flush_user_streams()
        write_all(reply_fd, encode(reply))


def main(argv):
    code = serve(int(argv[1]), int(argv[2]))
    flush_user_streams()
    os._exit(code)


if __name__ == "__main__" and len(sys.argv) == 3:
    main(sys.argv)
