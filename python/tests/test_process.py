"""The worker as the agent runs it: a process with frames on fds 3/4 and output on 1/2."""

import fcntl
import json
import os
import struct
import subprocess
import sys

import pytest

import beephost_worker as bw


class Worker:
    def __init__(self):
        source = open(bw.__file__).read()
        req_r, self.req_w = os.pipe()
        self.rep_r, rep_w = os.pipe()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()

        def child_fds():
            # Above the targets first, so neither dup2 clobbers the other.
            a = fcntl.fcntl(req_r, fcntl.F_DUPFD, 10)
            b = fcntl.fcntl(rep_w, fcntl.F_DUPFD, 10)
            os.dup2(a, 3)
            os.dup2(b, 4)

        self.proc = subprocess.Popen(
            [sys.executable, "-c", source, "3", "4"],
            stdin=subprocess.DEVNULL,
            stdout=out_w,
            stderr=err_w,
            close_fds=False,
            preexec_fn=child_fds,
        )
        for fd in (req_r, rep_w, out_w, err_w):
            os.close(fd)
        self.out = os.fdopen(out_r, "rb", buffering=0)
        self.err = os.fdopen(err_r, "rb", buffering=0)
        self.rep = os.fdopen(self.rep_r, "rb")

    def recv(self):
        magic, n = bw.HEADER.unpack(self.rep.read(bw.HEADER.size))
        assert magic == bw.MAGIC
        return json.loads(self.rep.read(n))

    def call(self, request):
        body = json.dumps(request).encode()
        os.write(self.req_w, bw.HEADER.pack(bw.MAGIC, len(body)) + body)
        return self.recv()

    @staticmethod
    def available(stream):
        """What the pipe holds now: the worker flushes output before it replies."""
        os.set_blocking(stream.fileno(), False)
        data = b""
        while True:
            try:
                chunk = stream.read(65536)
            except BlockingIOError:
                return data
            if not chunk:
                return data
            data += chunk

    def close(self):
        os.close(self.req_w)
        return self.proc.wait(timeout=30)


@pytest.fixture
def worker():
    w = Worker()
    yield w
    if w.proc.poll() is None:
        w.proc.kill()
        w.proc.wait()


def test_ready_frame_then_calls_and_output_before_the_reply(worker):
    ready = worker.recv()
    assert ready["id"] == 0 and ready["ok"]["pid"] == worker.proc.pid
    assert ready["ok"]["python_version"] == "%d.%d.%d" % sys.version_info[:3]
    reply = worker.call({"id": 1, "op": "exec", "code": "import os\nprint('p')\nos.write(1, b'w')\nos.write(2, b'e')\n6 * 7"})
    assert reply["id"] == 1 and reply["ok"]["result"] == {"value": 42, "repr": "42"}
    assert worker.available(worker.out) == b"p\nw"
    assert worker.available(worker.err) == b"e"
    # A subprocess writes to the same pipes; fd 3/4 are not inherited by it.
    reply = worker.call({"id": 2, "op": "exec", "code": "import subprocess\nsubprocess.run(['sh', '-c', 'echo sub; for fd in 3 4; do [ -e /proc/self/fd/$fd ] && echo leak$fd; done; true'], check=True)"})
    assert reply["ok"]["error"] is None
    assert worker.available(worker.out) == b"sub\n"
    assert worker.close() == 0


def test_user_code_replacing_fd1_does_not_break_the_worker(worker):
    worker.recv()
    reply = worker.call({"id": 5, "op": "exec", "code": "import os\nos.dup2(os.open(os.devnull, os.O_WRONLY), 1)\nprint('lost')"})
    assert reply["ok"]["error"] is None
    assert worker.available(worker.out) == b""
    assert worker.close() == 0


def test_bad_json_gets_an_error_reply(worker):
    worker.recv()
    body = b"{nope"
    os.write(worker.req_w, bw.HEADER.pack(bw.MAGIC, len(body)) + body)
    reply = worker.recv()
    assert reply["id"] is None and reply["error"]["type"] == "BadFrame"
    assert worker.call({"id": 7, "op": "ping"}) == {"id": 7, "ok": {"pong": True}}
    assert worker.close() == 0
